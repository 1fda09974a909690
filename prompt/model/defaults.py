"""The default model and its prompt tokens, so every script runs out of the box."""
from __future__ import annotations

import os
import sys

from prompt.model.config import PromptConfig
from prompt.model.loading import DEFAULT_MODEL_ID, is_default_model, load_base_model

# Trained prompt tokens for the default model ship inside the package (once trained).
SHIPPED_PROMPT_TOKENS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights", "smollm2-135m-instruct")


def default_prompt_tokens_path() -> str | None:
    path = SHIPPED_PROMPT_TOKENS
    return path if os.path.isfile(os.path.join(path, "adapter_config.json")) else None


def load_prompt_decoder(model_path=None, base_model_path=None, dtype="float32", device=None, quiet=False,
                        load_in_4bit: bool = False, load_in_8bit: bool = False):
    """A PromptDecoder for `model_path` (a prompt-token folder or Hub repo id, or the default model's name/None).

    `device`: None (cuda when available, else cpu), "cpu", "cuda:N" or "auto" (device_map="auto");
    `load_in_4bit`/`load_in_8bit`: the base model's weights through bitsandbytes.

    For the default model without shipped trained tokens, the prompt tokens are initialised from
    text (untrained: correct output, little speed-up) and a notice says so.
    """
    from prompt.model.prompt_decoder import AutoPromptDecoder, PromptDecoder

    quant = {"load_in_4bit": load_in_4bit, "load_in_8bit": load_in_8bit}
    if is_default_model(model_path):
        shipped = default_prompt_tokens_path()
        if shipped is not None:
            return AutoPromptDecoder.from_pretrained(shipped, base_model_path=base_model_path, dtype=dtype,
                                                      device=device, **quant)
        if not quiet:
            print("note: no trained prompt tokens ship for the default model yet; using text-initialised "
                  "(untrained) prompt tokens", file=sys.stderr)
        base, tokenizer = load_base_model(base_model_path or DEFAULT_MODEL_ID, dtype=dtype, device=device, **quant)
        config = PromptConfig(base_model_name_or_path=DEFAULT_MODEL_ID, num_special_tokens=3)
        return PromptDecoder(base, config, tokenizer=tokenizer).eval()
    return AutoPromptDecoder.from_pretrained(model_path, base_model_path=base_model_path, dtype=dtype, device=device,
                                             **quant)


def checkpoint_folder(model_path=None) -> str | None:
    """The local folder of a prompt-token checkpoint (a folder, a Hub repo id, or the default model's name/None:
    its shipped tokens), None when the default model ships none."""
    from prompt.model.loading import resolve_checkpoint_path

    if is_default_model(model_path):
        return default_prompt_tokens_path()
    return resolve_checkpoint_path(model_path)
