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
    accept_length: float | None  # upstream's: new tokens per decoding step after the prefill (None: unknown)
    forward_time: float | None  # seconds per forward pass (None: unknown)
    turns: int


def _numbered_rows(path: str, what: str, row_name: str):
    """(line number, parsed row) of each non-blank line of the jsonl file `path` (a `what`)."""
    if not os.path.isfile(path):
        raise PPDError(f"{what} {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PPDError(f"{path}: line {number} is not {row_name} ({exc})") from None
            yield number, row


def _latest_rows(path: str) -> dict:
    """{(question, model): (line number, row)}: the last row of each, as the answer runner keeps them."""
    latest = {}
    for number, row in _numbered_rows(path, "answer file", "a FastChat answer row"):
        try:
            latest[(json.dumps(row["question_id"]), json.dumps(row.get("model_id")))] = (number, row)
        except (KeyError, TypeError) as exc:
            raise PPDError(f"{path}: line {number} is not a FastChat answer row ({exc})") from None
    return latest


def _rows(path: str) -> list:
    return [row for _, row in _latest_rows(path).values()]


def file_throughput(path: str) -> Throughput:
    latest = _latest_rows(path)
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


def gpu_power(paths: list[str]) -> dict:
    """Mean and standard deviation over files of power and energy per token, and per answer, from the `power` (W)
    and `energy` (J) lists that --gpu-power writes into each choice."""
    figures = {"Power per token (W/token)": [], "Power (W)": [], "Energy per token (J/token)": [], "Energy (J)": []}
    for path in paths:
        power, energy, tokens, per_token_power, per_token_energy = [], [], 0, [], []
        for row in _rows(path):
            for choice in row["choices"]:
                if "power" not in choice or "energy" not in choice:
                    raise PPDError(f"{path}: answers without power measurements (write them with --gpu-power)")
                power += choice["power"]
                energy += choice["energy"]
                tokens += sum(choice["new_tokens"])
                per_token_power.append(sum(choice["power"]) / max(sum(choice["new_tokens"]), 1))
                per_token_energy.append(sum(choice["energy"]) / max(sum(choice["new_tokens"]), 1))
        if not power:
            raise PPDError(f"{path} holds no answers")
        figures["Power per token (W/token)"].append(statistics.mean(per_token_power))
        figures["Power (W)"].append(statistics.mean(power))
        figures["Energy per token (J/token)"].append(statistics.mean(per_token_energy))
        figures["Energy (J)"].append(statistics.mean(energy))
    return {name: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for name, v in figures.items()}


def tree_latencies(path: str) -> dict:
    """{tree length: seconds} from a tree latency file: tree_latency.py's --answer-file rows, or upstream's (rows of
    tree_length and choices only, no question_id); the last row of a tree length counts, as upstream keeps it."""
    latencies = {}
    for number, row in _numbered_rows(path, "tree latency file", "a tree latency row"):
        try:
            latencies[int(row["tree_length"])] = float(sum(row["choices"][0]["wall_time"]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PPDError(f"{path}: line {number} is not a tree latency row ({type(exc).__name__}: {exc})") from None
    if not latencies:
        raise PPDError(f"{path} holds no tree latency rows")
    return latencies
