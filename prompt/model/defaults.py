"""A PromptDecoder by name: a prompt-token folder, or the default model's names for the shipped prompt tokens."""
from __future__ import annotations

from prompt.model.loading import resolve_checkpoint_path, resolve_prompt_tokens_path
from prompt.model.prompt_decoder import AutoPromptDecoder


def load_prompt_decoder(model_path=None, base_model_path=None, dtype="float32", device=None,
                        load_in_4bit: bool = False, load_in_8bit: bool = False):
    """A PromptDecoder for `model_path`: a prompt-token folder or Hub repo id, or the default model's name (or None)
    for the prompt tokens that ship with the package.

    `device`: None (cuda when available, else cpu), "cpu", "cuda:N" or "auto" (device_map="auto");
    `load_in_4bit`/`load_in_8bit`: the base model's weights through bitsandbytes.
    """
    return AutoPromptDecoder.from_pretrained(model_path, base_model_path=base_model_path, dtype=dtype, device=device,
                                             load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)


def checkpoint_folder(model_path=None) -> str:
    """The local folder of a prompt-token checkpoint (a folder, a Hub repo id, or the default model's name/None:
    its shipped tokens)."""
    return resolve_checkpoint_path(resolve_prompt_tokens_path(model_path))
