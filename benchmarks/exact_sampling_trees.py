"""Accept length of sampling decoders per tree and lookup length (BENCHMARKS.md, issue 20, second pass).

    PYTHONPATH=$PWD python3 benchmarks/exact_sampling_trees.py TEMPERATURE PROMPTS MAX_NEW_TOKENS TREE:LOOKUP,...

bfloat16, the default model, ShareGPT validation prompts 940.., seeded per prompt, 1 thread; prints one JSON line
per configuration (accept length does not depend on machine load; the seconds do).
"""
import sys, time, json, torch
torch.set_num_threads(1)
from prompt.model.defaults import load_prompt_decoder
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.questions import load_questions
from prompt.inference.decoding import Decoder
T = float(sys.argv[1]); n = int(sys.argv[2]); tokens = int(sys.argv[3])
configs = [tuple(map(int, c.split(":"))) for c in sys.argv[4].split(",")]
model = load_prompt_decoder(None, dtype=torch.bfloat16)
fmt = ChatFormatter(model.tokenizer)
qs = load_questions("sharegpt", "/work/shared/data/sharegpt/ShareGPT_V3_filtered_1000.json", 940, 940 + n)
stops = fmt.stops(model)
for tree, look in configs:
    m = model if tree else model.base_model
    kw = {"tree_length": tree} if tree else {}
    d = Decoder(m, prompt_lookup_num_tokens=look, stop_token_ids=stops, temperature=T, **kw)
    tok = passes = wins = 0; t0 = time.time()
    for i, q in enumerate(qs):
        r = d.generate(fmt.input_ids([q["turns"][0]]), tokens, seed=i)
        tok += r.new_tokens; passes += r.forward_passes; wins += r.chain_wins
    print(json.dumps({"T": T, "tree": tree, "lookup": look, "tokens": tok, "passes": passes, "accept": round(tok / passes, 3),
                      "chain_wins": wins, "s": round(time.time() - t0, 1)}), flush=True)
