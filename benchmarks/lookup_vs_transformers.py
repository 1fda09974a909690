"""Our prompt-lookup loop against transformers' prompt lookup, prompt by prompt: tokens, forwards, accept length, speed,
and whether the two texts are the same (BENCHMARKS.md, issue 21).

    PYTHONPATH=$PWD python3 benchmarks/lookup_vs_transformers.py DTYPE QUESTION_FILE BEGIN END [THREADS]

Both propose 10 tokens after the latest context n-gram (n from 3 down to 1) found earlier in the text (transformers:
`prompt_lookup_num_tokens=10, max_matching_ngram_size=3`); each runs twice per prompt and the second run is timed.
transformers' forwards are counted by wrapping the model's `forward` (its prefill shares a forward with the first
verification). Accept length does not depend on machine load; the speeds do (one prompt at a time, not interleaved
rounds: read them as indications).
"""
import sys
import time

import torch

from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.questions import load_questions
from prompt.inference.decoding import Decoder
from prompt.model.defaults import load_prompt_decoder

dtype, question_file, begin, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else 2)
model = load_prompt_decoder(None, None, dtype=getattr(torch, dtype)).eval()
base = model.base_model
formatter = ChatFormatter(model.tokenizer)
stops = formatter.stops(model)
forwards = {"n": 0}
model_forward = base.forward


def counted_forward(*args, **kwargs):
    forwards["n"] += 1
    return model_forward(*args, **kwargs)


base.forward = counted_forward  # our loop runs the decoder body directly: only transformers' calls are counted
ours = Decoder(base, stop_token_ids=stops, prompt_lookup_num_tokens=10)
for index, question in enumerate(load_questions("sharegpt", question_file, begin, end)):
    ids = formatter.input_ids(question["turns"][:1])
    texts = {}
    for name in ("transformers", "ours"):
        for _ in range(2):
            forwards["n"] = 0
            start = time.perf_counter()
            with torch.inference_mode():
                if name == "transformers":
                    out = base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=128, do_sample=False,
                                        prompt_lookup_num_tokens=10, max_matching_ngram_size=3, eos_token_id=stops,
                                        pad_token_id=stops[0])
                    tokens, passes = out[0, ids.shape[1]:].tolist(), forwards["n"]
                else:
                    result = ours.generate(ids, 128)
                    tokens, passes = result.token_ids, result.forward_passes
            seconds = time.perf_counter() - start
        texts[name] = tokens
        print(f"prompt {begin + index} ({ids.shape[1]} tokens) {name}: {len(tokens)} new tokens, {passes} forwards, "
              f"accept {len(tokens) / passes:.2f}, {len(tokens) / seconds:.1f} tokens/s", flush=True)
    print(f"prompt {begin + index}: same text: {texts['transformers'] == texts['ours']}", flush=True)
