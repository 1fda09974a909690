"""Upstream's generation call, `model.ppd_generate(input_ids, ...)`, on our PromptDecoder (its web UI and tutorial use it).

It is our decode loop (`prompt.inference.decoding.Decoder`) behind upstream's signature, installed as a method of
`PromptDecoder` when `prompt.inference` is imported (`import prompt` always imports it; the model layer cannot import
the decode loop above it):

    for output_ids in model.ppd_generate(input_ids, temperature=0.0, max_steps=512):
        text = model.tokenizer.decode(output_ids[0, input_ids.shape[1]:])
"""
from __future__ import annotations

import torch

from prompt.errors import PPDError
from prompt.inference.acceptance import ACCEPTANCE_RULES, POSTERIOR_ALPHA, POSTERIOR_THRESHOLD, UPSTREAM_SAMPLING
from prompt.model.prompt_decoder import PromptDecoder
from prompt.model.stops import stop_token_ids_for


def ppd_generate(model, input_ids, max_steps: int = 512, temperature: float = 0.0,
                 posterior_threshold: float = POSTERIOR_THRESHOLD, posterior_alpha: float = POSTERIOR_ALPHA,
                 sampling: str = "greedy", max_new_tokens: int | None = None, seed: int | None = None):
    """Yield the whole sequence so far ([1, prompt + new tokens] ids, on `input_ids`' device) after each decoding
    step, as upstream's `PromptDecoder.ppd_generate`, until a stop token (the tokenizer's or the generation
    config's EOS) or `max_steps` steps.

    `sampling` takes upstream's names with upstream's meaning: at temperature 0 every value is greedy; above it
    "greedy" (upstream's default) is typical acceptance with an argmax next token (rule `upstream_greedy`) and
    "typical" upstream's sample-and-compare (`upstream_typical`); our rules' names (`exact`, `typical_sampling`, ...)
    work too. `max_new_tokens` (ours) bounds the new tokens (default: the rest of the context).
    """
    if sampling not in ACCEPTANCE_RULES:
        raise PPDError(f"sampling must be one of {', '.join(ACCEPTANCE_RULES)}, got {sampling!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise PPDError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    decoder = model_decoder(model, UPSTREAM_SAMPLING.get(sampling, sampling), temperature, posterior_threshold,
                            posterior_alpha)
    ids = as_batch_of_one(input_ids)
    if max_new_tokens is None:
        context = decoder.max_positions
        max_new_tokens = max(context - ids.shape[-1], 1) if context else max_steps * 64
    new = []
    for steps, tokens in enumerate(decoder.stream(ids, max_new_tokens, seed=seed), start=1):
        new.extend(tokens)
        yield torch.cat([ids, torch.tensor([new], dtype=ids.dtype, device=ids.device)], dim=1)
        if steps >= max_steps:
            return


def model_decoder(model, rule: str, temperature: float, posterior_threshold: float, posterior_alpha: float):
    """The model's Decoder of these settings, made on first use and kept on the model (every greedy call shares one)."""
    from prompt.inference.decoding import Decoder

    greedy = not temperature
    key = ("greedy",) if greedy else (rule, float(temperature), posterior_threshold, posterior_alpha)
    decoders = model.__dict__.setdefault("_ppd_generate_decoders", {})
    if key not in decoders:
        stops = stop_token_ids_for(model.tokenizer, model=model) if model.tokenizer is not None else None
        settings = {} if greedy else {"temperature": float(temperature), "sampling": rule,
                                      "posterior_threshold": posterior_threshold, "posterior_alpha": posterior_alpha}
        decoders[key] = Decoder(model, stop_token_ids=stops, **settings)
    return decoders[key]


def as_batch_of_one(input_ids) -> torch.Tensor:
    """`input_ids` (a list, a [T] or a [1, T] tensor) as a [1, T] tensor; anything else is a PPDError."""
    try:
        ids = torch.as_tensor(input_ids)
    except (TypeError, ValueError, RuntimeError):
        raise PPDError("input_ids must be a sequence of token ids") from None
    return ids.reshape(1, -1) if ids.dim() == 1 else ids


PromptDecoder.ppd_generate = ppd_generate
