"""Time of the default model's vocabulary head against the number of rows it is applied to (BENCHMARKS.md, issue 21).

    PYTHONPATH=$PWD python3 benchmarks/head_rows.py [THREADS] [DTYPE]

Prints milliseconds per call (mean of 20 after 3 untimed) for 1 to 34 rows of random hidden states.
"""
import sys
import time

import torch

from prompt.model import backbone
from prompt.model.defaults import load_prompt_decoder

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
dtype = getattr(torch, sys.argv[2]) if len(sys.argv) > 2 else torch.bfloat16
model = load_prompt_decoder(None, dtype=dtype).base_model
hidden_size = model.config.hidden_size
for rows in (1, 4, 8, 13, 22, 34):
    hidden = torch.randn(rows, hidden_size, dtype=dtype)
    for _ in range(3):
        backbone.head_logits(model, hidden)
    start = time.perf_counter()
    for _ in range(20):
        backbone.head_logits(model, hidden)
    print(f"{rows} rows: {(time.perf_counter() - start) / 20 * 1000:.2f} ms", flush=True)
