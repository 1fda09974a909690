"""Chat-template token ids (the tokenizer's own template), shared by the datasets and the evaluation."""
from __future__ import annotations

import torch


def chat_template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                      chat_template: str | None = None) -> torch.Tensor:
    """[1, L] ids of `messages` under the tokenizer's chat template (or `chat_template`).

    transformers 5 may return a BatchEncoding instead of a tensor; this always gives the ids.
    """
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, return_tensors="pt",
                                        chat_template=chat_template)
    if not torch.is_tensor(ids):
        ids = ids["input_ids"]
    return ids


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of `messages` under the tokenizer's chat template, as a list."""
    return chat_template_ids(tokenizer, messages, add_generation_prompt)[0].tolist()
