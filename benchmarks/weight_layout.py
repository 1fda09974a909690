"""Our decode loop with the base model's weights in the standard and the transposed layout (prompt/model/weight_layout.py),
side by side: plain decoding, prompt lookup 10, PPD tree 6, PPD tree 12 + lookup 10; 3 prompts, 48 new tokens, float32,
2 threads, best of 2 interleaved rounds.   PYTHONPATH=$PWD python3 benchmarks/weight_layout.py"""
from dataclasses import replace

import torch
torch.set_num_threads(2)
from prompt.model.defaults import load_prompt_decoder
from prompt import Decoder
from prompt.evaluation.chat import ChatFormatter
from prompt.model.weight_layout import STANDARD, TRANSPOSED
m = load_prompt_decoder(dtype="float32")
base = m.base_model; tok = m.tokenizer
f = ChatFormatter(tok)
qs = ["Write a short story about a robot who learns to paint.","Explain how vaccines work in simple terms.","Summarise this: The quick brown fox jumps over the lazy dog. The dog was not amused and barked at the fox, who ran away into the forest."]
stops = f.stops(m)
decs = {"plain": Decoder(base, tree_length=0, prompt_lookup_num_tokens=0, stop_token_ids=stops),
        "lookup10": Decoder(base, prompt_lookup_num_tokens=10, stop_token_ids=stops),
        "tree6": Decoder(m, tree_length=6, prompt_lookup_num_tokens=0, stop_token_ids=stops),
        "tree12+lk10": Decoder(m, tree_length=12, prompt_lookup_num_tokens=10, stop_token_ids=stops)}
ids = [f.input_ids([q]) for q in qs]
res = {}
for rep in range(2):
    for on in (False, True):
        for name, d in decs.items():
            seconds = 0.0; toks = 0; outs = []; steps = 0
            for i in ids:
                d.decoding = replace(d.decoding, weight_layout=TRANSPOSED if on else STANDARD)
                r = d.generate(i, 48); seconds += r.wall_time; toks += len(r.token_ids); outs.append(r.token_ids); steps += r.forward_passes
            res.setdefault((name, on), []).append((toks / seconds, outs, toks/steps))
base_plain = max(x[0] for x in res[("plain", False)])
for (name, on), v in res.items():
    print(f"{name:12s} {'T' if on else 'S'} tok/s {max(x[0] for x in v):6.2f}  vs plain-S {max(x[0] for x in v)/base_plain:.2f}x  accept {v[0][2]:.2f}  same-as-S {v[0][1]==res[(name,False)][0][1]}")
