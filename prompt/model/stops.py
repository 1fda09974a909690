"""Stop tokens: which ids end a reply, and where a run of tokens ends."""
from __future__ import annotations


def _add_ids(ids: set, value) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        ids.add(value)
    elif isinstance(value, (list, tuple, set)):
        ids.update(v for v in value if isinstance(v, int) and not isinstance(v, bool))


def stop_token_ids_for(tokenizer, extra=(), model=None) -> list[int]:
    """The tokenizer's EOS ids, the model's generation-config EOS ids (when a model is given; a PromptDecoder's
    are its base model's) and `extra` ids, sorted."""
    ids = set()
    _add_ids(ids, list(extra))
    _add_ids(ids, getattr(tokenizer, "eos_token_id", None))
    if model is not None:
        config = getattr(model, "generation_config", None) or getattr(getattr(model, "base_model", None),
                                                                      "generation_config", None)
        _add_ids(ids, getattr(config, "eos_token_id", None))
    return sorted(ids)


def truncate_at_stop(tokens: list, stop_token_ids) -> list:
    """`tokens` up to and including the first stop token (all of them if none is a stop token)."""
    for i, token in enumerate(tokens):
        if token in stop_token_ids:
            return tokens[: i + 1]
    return tokens
