"""The truncated ("finetune") dataset: chat-templated conversations cut at a random point inside assistant text.

Each conversation gives one record: the prefix x_0..x_c and the N+1 tokens after it, x_{c+1}..x_{c+N+1}
(the next token and the targets of the N special tokens), with IGNORE_INDEX labels where those are not assistant text.
"""
from __future__ import annotations

import random

import torch

from prompt.data.chat import chat_ids
from prompt.data.files import IGNORE_INDEX


def tokenize_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]] | None:
    """(ids, labels): labels are the ids on assistant turns and IGNORE_INDEX elsewhere.

    Assistant spans are found by templating growing prefixes of the conversation; None if the template
    is not prefix-stable (or rejects the conversation), so that spans cannot be located.
    """
    try:
        ids = chat_ids(tokenizer, messages)
        labels = [IGNORE_INDEX] * len(ids)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(chat_ids(tokenizer, messages[:i], add_generation_prompt=True))
            upto = chat_ids(tokenizer, messages[: i + 1])
            if ids[: len(upto)] != upto or start > len(upto):
                return None
            labels[start: len(upto)] = ids[start: len(upto)]
    except Exception:  # jinja raises for conversations a template does not accept (e.g. two user turns in a row)
        return None
    return ids, labels


def cut_positions(labels: list[int], num_special_tokens: int) -> list[int]:
    """Cuts c whose next token x_{c+1} is assistant text and after which N+1 tokens exist."""
    last = len(labels) - num_special_tokens - 2
    return [c for c in range(0, last + 1) if labels[c + 1] != IGNORE_INDEX]


def truncated_record(ids: list[int], labels: list[int], num_special_tokens: int, rng: random.Random) -> dict | None:
    """One random cut of a tokenized conversation (None if no cut fits)."""
    cuts = cut_positions(labels, num_special_tokens)
    if not cuts:
        return None
    c = cuts[rng.randrange(len(cuts))]
    end = c + num_special_tokens + 2
    return {"input_ids": torch.tensor(ids[: c + 1]), "continuation": torch.tensor(ids[c + 1: end]),
            "labels": torch.tensor(labels[c + 1: end])}


def build_finetune_records(tokenizer, conversations: list[list[dict]], num_special_tokens: int,
                           model_max_length: int, seed: int = 0) -> tuple[list[dict], int]:
    """Truncated records of `conversations` (cut inside the first `model_max_length` tokens); returns (records, skipped)."""
    rng = random.Random(seed)
    records, skipped = [], 0
    for messages in conversations:
        tokenized = tokenize_conversation(tokenizer, messages) if messages else None
        record = None
        if tokenized is not None:
            ids, labels = tokenized
            record = truncated_record(ids[:model_max_length], labels[:model_max_length], num_special_tokens, rng)
        if record is None:
            skipped += 1
        else:
            records.append(record)
    return records, skipped
