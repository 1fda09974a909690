"""Helpers for the training tests: a tiny model folder with a chat tokenizer, and small ShareGPT / GSM8K files."""
from __future__ import annotations

import json
import os
import random

from conftest import tiny_llama
from webui_helpers import tiny_chat_tokenizer

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "big", "red", "ball", "and", "then", "it", "was"]


def save_tiny_model(folder, seed: int = 0) -> str:
    """A random tiny Llama and a character-level chat tokenizer saved as a model folder (loadable by path)."""
    model = tiny_llama(seed)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    tiny_chat_tokenizer().save_pretrained(folder)
    return str(folder)


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def write_sharegpt(path, count: int, with_replies: bool = True, seed: int = 0) -> str:
    """A ShareGPT-format file; with replies, each conversation has two human/gpt exchanges."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        turns = [{"from": "human", "value": sentence(rng, 3)}]
        if with_replies:
            turns += [{"from": "gpt", "value": sentence(rng, 6)}, {"from": "human", "value": sentence(rng, 2)},
                      {"from": "gpt", "value": sentence(rng, 5)}]
        records.append({"id": f"c{i}", "conversations": turns})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f)
    return str(path)


def write_questions(path, count: int, seed: int = 1) -> str:
    """A GSM8K-train-style jsonl file ({question, answer} rows)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(count):
            f.write(json.dumps({"question": sentence(rng, 4) + "?", "answer": "#### 1"}) + "\n")
    return str(path)


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
