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
    accept_length: float | None  # new tokens per forward pass (None: unknown, see below)
    forward_time: float | None  # seconds per forward pass (None: unknown)
    turns: int


def file_throughput(path: str) -> Throughput:
    if not os.path.isfile(path):
        raise PPDError(f"answer file {path!r} does not exist")
    latest = {}  # one row per (question, model), the last one, as the answer runner keeps them
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                latest[(json.dumps(row["question_id"]), json.dumps(row.get("model_id")))] = (number, row)
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise PPDError(f"{path}: line {number} is not a FastChat answer row ({exc})") from None
    tokens, times, passes, rates = 0, 0.0, 0, []
    uncounted = 0  # turns without a forward-pass count (idxs -1: transformers generate with prompt lookup)
    for number, row in latest.values():
        try:
            for choice in row["choices"]:
                for n, t, idx in zip(choice["new_tokens"], choice["wall_time"], choice["idxs"]):
                    tokens += n
                    times += t
                    if idx < 0:
                        uncounted += 1
                    passes += idx + 1
                    if t > 0:
                        rates.append(n / t)
        except (KeyError, TypeError) as exc:
            raise PPDError(f"{path}: line {number} is not a FastChat answer row ({exc})") from None
    if not rates:
        raise PPDError(f"{path} holds no timed answers")
    if uncounted or passes < 1:  # an accept length from part of the turns would be wrong: report none
        return Throughput(tokens / times, sum(rates) / len(rates), None, None, len(rates))
    return Throughput(tokens / times, sum(rates) / len(rates), tokens / passes, times / passes, len(rates))


def summarize(paths: list[str]) -> dict:
    """Mean and standard deviation, over files (runs), of each figure."""
    results = [file_throughput(p) for p in paths]
    summary = {}
    for name in ("macro_tokens_per_s", "micro_tokens_per_s", "accept_length", "forward_time"):
        values = [getattr(r, name) for r in results]
        if any(value is None for value in values):
            summary[name] = (None, None)
            continue
        summary[name] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return summary
