"""Reading the raw text sources: ShareGPT conversations (JSON or JSON Lines) and GSM8K-style question files.

A source may carry a slice, `PATH:START:END` (either bound may be empty), so that a training set and a
held-out set can come from different parts of one file. Evaluation sets are refused by content.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

from prompt.errors import PPDError
from prompt.jsonio import parse_jsonl

# sha256 of the evaluation-only files in ../shared/data (see its README): never train or distil on them.
EVALUATION_SETS = {
    "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7": "MT-Bench (mt_bench/question.jsonl)",
    "af0bc112f08c88bf589bbfe6fc1036806d0a0f6fec9c4d5a4db860f5afe73b4b": "AlpacaEval (alpaca_eval/alpaca_eval.json)",
    "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14": "GSM8K test (gsm8k/test.jsonl)",
}
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
         "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}
_SLICE = re.compile(r"^(?P<path>.+?):(?P<start>-?\d*):(?P<end>-?\d*)$")


@dataclass
class Source:
    """A file and the slice [start:end] of its records to use."""

    path: str
    start: int | None = None
    end: int | None = None

    def __str__(self) -> str:
        if self.start is None and self.end is None:
            return self.path
        return f"{self.path}[{'' if self.start is None else self.start}:{'' if self.end is None else self.end}]"


def parse_source(spec: str) -> Source:
    """`file.json` or `file.json:START:END` (the slice form only applies when `spec` itself is not a file)."""
    match = _SLICE.match(spec)
    if match and not os.path.exists(spec):
        start, end = match.group("start"), match.group("end")
        return Source(match.group("path"), int(start) if start else None, int(end) if end else None)
    return Source(spec)


def refuse_evaluation_set(path: str) -> None:
    """Raise if `path` is byte for byte one of the evaluation-only files."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    name = EVALUATION_SETS.get(digest.hexdigest())
    if name:
        raise PPDError(f"{path!r} is {name}, an evaluation set: never train or distil on it")


def read_records(path: str, refuse_evaluation: bool = True) -> list:
    """All records of a JSON list file or a JSON Lines file (detected by content), after the checks (an evaluation
    set is refused unless `refuse_evaluation` is False: the evaluation reads it)."""
    if not os.path.isfile(path):
        raise PPDError(f"data file {path!r} does not exist")
    if refuse_evaluation:
        refuse_evaluation_set(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise PPDError(f"data file {path!r} is not UTF-8 text") from None
    if not text.strip():
        raise PPDError(f"data file {path!r} is empty")
    if not path.endswith(".jsonl"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if text.lstrip().startswith("["):
                raise PPDError(f"malformed JSON in {path!r}: {exc}") from None
            data = None  # not one document: try JSON Lines
        if data is not None:
            if not isinstance(data, list):
                raise PPDError(f"malformed data file {path!r}: expected a JSON list of records")
            return data
    return parse_jsonl(text.splitlines(), path, "JSON Lines file")


def _conversation(record, path: str, index: int) -> list[dict]:
    """One ShareGPT record -> [{"role", "content"}] (leading non-user turns dropped, as upstream does)."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list):
        raise PPDError(f"malformed ShareGPT file {path!r}: record {index} has no 'conversations' list")
    messages = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or not isinstance(turn.get("from"), str):
            raise PPDError(f"malformed ShareGPT file {path!r}: record {index}, turn {number} needs string 'from' and 'value'")
        role = ROLES.get(turn["from"].lower())
        if role is None:
            raise PPDError(f"malformed ShareGPT file {path!r}: record {index}, turn {number} has unknown role {turn['from']!r}")
        messages.append({"role": role, "content": turn["value"]})
    while messages and messages[0]["role"] == "assistant":
        messages.pop(0)
    return messages


def read_conversations(source: Source) -> list[list[dict]]:
    """The ShareGPT conversations of a source, as chat messages."""
    records = read_records(source.path)
    if not records:
        raise PPDError(f"ShareGPT file {source.path!r} holds no conversations")
    conversations = [_conversation(record, source.path, i) for i, record in enumerate(records)]
    return conversations[source.start:source.end]


def prompt_records(path: str, kind: str | None = None, refuse_evaluation: bool = True) -> list[tuple]:
    """(id, prompt) of every record: a ShareGPT file's first user turn ("" if none; the id is the record's `id`, else
    its index) or a GSM8K-style file's `question` (the id is the index). `kind` ("sharegpt" or "gsm8k") says which
    format to expect; None tells them apart by content."""
    records = read_records(path, refuse_evaluation)
    if not records:
        raise PPDError(f"prompt file {path!r} holds no records")
    first = records[0]
    if kind is None:
        kind = "gsm8k" if isinstance(first, dict) and "question" in first and "conversations" not in first else "sharegpt"
    rows = []
    for i, record in enumerate(records):
        if kind == "gsm8k":
            if not isinstance(record, dict) or not isinstance(record.get("question"), str):
                raise PPDError(f"malformed question file {path!r}: record {i} has no text 'question'")
            rows.append((i, record["question"]))
        else:
            users = [m["content"] for m in _conversation(record, path, i) if m["role"] == "user"]
            rows.append((record.get("id", i), users[0] if users else ""))
    return rows


def read_prompts(source: Source) -> list[str]:
    """User prompts of a source: a ShareGPT file's first user turns, or a GSM8K-style file's `question` fields."""
    prompts = [prompt for _, prompt in prompt_records(source.path)[source.start:source.end]]
    return [p for p in prompts if p.strip()]
