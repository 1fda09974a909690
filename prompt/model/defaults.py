"""A PromptDecoder by name: a prompt-token folder, or the default model's names for the shipped prompt tokens."""
from __future__ import annotations

from prompt.model.loading import SHIPPED_PROMPT_TOKENS
from prompt.model.prompt_decoder import AutoPromptDecoder


def default_prompt_tokens_path() -> str:
    """The shipped prompt tokens' folder (kept for AutoPromptDecoder.from_pretrained until it calls
    `prompt.model.loading.resolve_prompt_tokens_path` itself)."""
    return SHIPPED_PROMPT_TOKENS


def load_prompt_decoder(model_path=None, base_model_path=None, dtype="float32", device="cpu"):
    """A PromptDecoder for `model_path`: a prompt-token folder, or the default model's name (or None) for the
    prompt tokens that ship with the package."""
    return AutoPromptDecoder.from_pretrained(model_path, base_model_path=base_model_path, dtype=dtype, device=device)
