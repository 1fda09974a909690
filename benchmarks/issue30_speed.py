"""Time our loop's single-sequence and batch paths (float32, the default model, 1 thread), from the code folder
it runs in: python /tmp/speed30.py TAG. Each method decodes the first 4 MT-Bench first turns, 64 new tokens; the
fastest of 2 rounds counts; prints tokens/s per method as JSON."""
import json, sys, time
import torch
torch.set_num_threads(1)
from prompt.model.defaults import load_prompt_decoder
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.questions import load_questions
from prompt.inference.decoding import Decoder

model = load_prompt_decoder(dtype="float32", device="cpu").eval()
formatter = ChatFormatter(model.tokenizer)
questions = load_questions("mt_bench", "/work/shared/data/mt_bench/question.jsonl", 0, 4)
prompts = [formatter.input_ids([q["turns"][0]]) for q in questions]
stops = formatter.stops(model)
methods = {"single plain": Decoder(model.base_model, stop_token_ids=stops),
           "single ppd tree 12": Decoder(model, stop_token_ids=stops, tree_length=12, prompt_lookup_num_tokens=0),
           "single tuned": Decoder(model, stop_token_ids=stops)}
batch = {"batch 4 plain": Decoder(model.base_model, stop_token_ids=stops),
         "batch 4 ppd tree 12 + lookup 10": Decoder(model, stop_token_ids=stops, tree_length=12, prompt_lookup_num_tokens=10)}
best, tokens_of = {}, {}
for name, d in {**methods, **batch}.items():  # warm-up
    d.generate(prompts[0], 8)
for rnd in range(2):
    for name, d in methods.items():
        start, tokens = time.perf_counter(), []
        for p in prompts:
            tokens.append(d.generate(p, 64).token_ids)
        t = time.perf_counter() - start
        best[name] = max(best.get(name, 0), sum(map(len, tokens)) / t)
        tokens_of[name] = tokens
    for name, d in batch.items():
        start = time.perf_counter()
        results = d.generate_batch([p[0].tolist() for p in prompts], 64)
        t = time.perf_counter() - start
        best[name] = max(best.get(name, 0), sum(r.new_tokens for r in results) / t)
        tokens_of[name] = [r.token_ids for r in results]
same = all(tokens_of[n] == tokens_of["single plain"] for n in tokens_of)
print(json.dumps({"tag": sys.argv[1], "identical_to_plain": same, **{k: round(v, 2) for k, v in best.items()}}))
