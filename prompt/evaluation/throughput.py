"""Throughput, accept length and forward time from FastChat answer files."""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass

from prompt.errors import PPDError


@dataclass
class Throughput:
    macro_tokens_per_s: float  # all new tokens / all wall time
    micro_tokens_per_s: float  # mean over turns of tokens/s
    accept_length: float  # new tokens per forward pass
    forward_time: float  # seconds per forward pass
    turns: int


def file_throughput(path: str) -> Throughput:
    if not os.path.isfile(path):
        raise PPDError(f"answer file {path!r} does not exist")
    tokens, times, passes, rates = 0, 0.0, 0, []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                for choice in row["choices"]:
                    for n, t, idx in zip(choice["new_tokens"], choice["wall_time"], choice["idxs"]):
                        tokens += n
                        times += t
                        passes += idx + 1
                        if t > 0:
                            rates.append(n / t)
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise PPDError(f"{path}: line {number} is not a FastChat answer row ({exc})") from None
    if not rates:
        raise PPDError(f"{path} holds no timed answers")
    return Throughput(tokens / times, sum(rates) / len(rates), tokens / max(passes, 1), times / max(passes, 1),
                      len(rates))


def summarize(paths: list[str]) -> dict:
    """Mean and standard deviation, over files (runs), of each figure."""
    results = [file_throughput(p) for p in paths]
    summary = {}
    for name in ("macro_tokens_per_s", "micro_tokens_per_s", "accept_length", "forward_time"):
        values = [getattr(r, name) for r in results]
        summary[name] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return summary
