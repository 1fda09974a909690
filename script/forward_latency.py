"""Probe: forward latency of the default model against the number of new inputs after a fixed prefix.

    python script/forward_latency.py [--prefix 300] [--inputs 1,8,16,24,32] [--repeats 6]

Prints the median milliseconds per dtype. (A throw-away probe behind BENCHMARKS.md's latency table.)
"""
import argparse
import time

import torch
from transformers import DynamicCache

from prompt.model.loading import load_base_model


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefix", type=int, default=300)
    parser.add_argument("--inputs", default="1,8,16,24,32")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    sizes = [int(n) for n in args.inputs.split(",")]
    for dtype in args.dtypes.split(","):
        model, _ = load_base_model(None, dtype=dtype)
        prefix = torch.randint(100, 1000, (1, args.prefix))
        medians = {}
        with torch.inference_mode():
            for n in sizes:
                times = []
                for _ in range(args.repeats):
                    cache = DynamicCache(config=model.config)
                    model(prefix, cache=cache)
                    new = torch.randint(100, 1000, (1, n))
                    start = time.perf_counter()
                    model(new, cache=cache)
                    times.append(time.perf_counter() - start)
                medians[n] = sorted(times)[len(times) // 2] * 1000
        print(dtype, " ".join(f"{n}:{ms:.0f}ms" for n, ms in medians.items()))


if __name__ == "__main__":
    main()
