"""A PromptDecoder by name: a prompt-token folder, or the default model's names for the shipped prompt tokens."""
from __future__ import annotations

from prompt.model.prompt_decoder import AutoPromptDecoder


def load_prompt_decoder(model_path=None, base_model_path=None, dtype="float32", device="cpu"):
    """A PromptDecoder for `model_path`: a prompt-token folder, or the default model's name (or None) for the
    prompt tokens that ship with the package."""
    return AutoPromptDecoder.from_pretrained(model_path, base_model_path=base_model_path, dtype=dtype, device=device)
