"""Checks of the sampling options a request asks for: what PPD decodes as asked, or one clear error.

Shared by the worker (which decodes) and the API server (which refuses before a stream starts).
No torch import here: the API server process stays light.
"""
from __future__ import annotations

from prompt.errors import PPDError

ROLES = ("system", "user", "assistant")


def check_sampling(temperature=None, top_p=None, top_k=None, presence_penalty=None, frequency_penalty=None,
                   logprobs=None, best_of=None, use_beam_search=None) -> tuple:
    """(temperature, top_p, top_k) to decode with (None: no truncation); PPDError for what cannot be honoured.

    Temperature 0 is greedy (PPD's output equals plain greedy); above 0 the decoder samples exactly from the base
    model's distribution after temperature, top-k and top-p (lossless speculative sampling).
    """
    temperature = 1.0 if temperature is None else float(temperature)
    if temperature < 0:
        raise PPDError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < float(top_p) <= 1:
        raise PPDError(f"top_p must lie in (0, 1], got {top_p}")
    top_p = float(top_p) if top_p is not None and float(top_p) < 1 else None
    top_k = int(top_k) if top_k is not None and int(top_k) >= 1 else None  # OpenAI clients send -1 for "off"
    if temperature == 0:
        top_p = top_k = None  # greedy: they change nothing
    for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        if value is not None and float(value) != 0:
            raise PPDError(f"{name}={value} is not supported (only 0)")
    if logprobs is not None and logprobs is not False:
        raise PPDError("logprobs are not supported")
    if best_of is not None and int(best_of) > 1:
        raise PPDError("best_of > 1 is not supported")
    if use_beam_search:
        raise PPDError("beam search is not supported")
    return temperature, top_p, top_k


def check_messages(messages) -> None:
    """PPDError unless `messages` is a non-empty list of {role, content: str} chat messages (or a prompt string)."""
    if isinstance(messages, str):
        return
    if not isinstance(messages, list) or not messages:
        raise PPDError("messages must be a non-empty list")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise PPDError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(message.get("content"), str):
            raise PPDError(f"messages[{i}].content must be a string (text only)")
    if all(m["role"] == "system" for m in messages):
        raise PPDError("messages hold no user message")
