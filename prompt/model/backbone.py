"""Thin helpers around any transformers causal LM: run its decoder body with a custom 4D mask and apply its head.

No modeling file is copied: the body is `model.get_decoder()`, the head `model.get_output_embeddings()`.
"""
from __future__ import annotations

import torch

from prompt.errors import PPDError

# Families whose layers carry a recurrent or state-space state: a rejected tree branch would leave its trace in
# that state (it cannot be cut back to the accepted path like a KV cache), so the method cannot serve them.
RECURRENT_MODEL_TYPES = {
    "mamba", "mamba2", "falcon_mamba", "rwkv", "jamba", "recurrent_gemma", "zamba", "zamba2", "bamba", "falcon_h1",
    "granitemoehybrid", "lfm2", "lfm2_moe", "nemotron_h", "qwen3_next", "xlstm", "plamo2", "minimax", "mllama",
    "olmo_hybrid", "kimi_linear", "qwen3_5", "qwen3_5_moe",
}
RECURRENT_LAYER_TYPES = {"conv", "linear_attention", "hybrid", "hybrid_sliding", "mamba", "recurrent", "rwkv"}
WINDOWED_LAYER_TYPE = "sliding_attention"


def layer_types(config) -> list:
    """Each decoder layer's attention type as transformers' caches see it ("full_attention", "sliding_attention", ...)."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    try:
        return list(get_layer_types_and_kwargs(text)[0])
    except (AttributeError, TypeError, ValueError):
        return list(getattr(text, "layer_types", None) or [])


def check_supported(model_or_config) -> None:
    """Refuse, with one clear PPDError, an architecture the method cannot serve: recurrent or state-space layers
    (Mamba, RWKV, Jamba and other hybrids, RecurrentGemma, ...), chunked attention, or an encoder-decoder."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", "") or ""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    types = set(layer_types(config))
    recurrent = types & RECURRENT_LAYER_TYPES
    if model_type in RECURRENT_MODEL_TYPES or getattr(text, "model_type", "") in RECURRENT_MODEL_TYPES or recurrent:
        detail = f" ({', '.join(sorted(recurrent))} layers)" if recurrent else ""
        raise PPDError(f"{model_type or type(config).__name__} models carry a recurrent or state-space state{detail}: "
                       "parallel prompt decoding verifies a tree of guesses in one forward and keeps only the accepted "
                       "path, which needs attention layers whose cache can be cut back; this architecture cannot be served")
    if "chunked_attention" in types:
        raise PPDError(f"{model_type} models use chunked attention, which tree verification does not support yet")
    if getattr(config, "is_encoder_decoder", False):
        raise PPDError(f"{model_type} is an encoder-decoder model; PPD serves decoder-only causal language models")


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean "may attend" matrix -> additive float mask (0 allowed, dtype's minimum elsewhere), shaped [B, 1, Q, K].

    An additive float mask is read correctly by both the sdpa and eager attention implementations.
    """
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask


def body(model):
    """The decoder stack (embeddings, layers, final norm) of a causal LM."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None:
        raise TypeError(f"{type(model).__name__} exposes no decoder body (get_decoder)")
    return decoder


def apply_head(head, hidden: torch.Tensor) -> torch.Tensor:
    """`head(hidden)` with the leading dimensions flattened. torch's matmul does not fold a 3-D input of one sequence
    sliced from a longer one ([1, n, H] with a batch stride of another length) into one matrix product when the weight
    needs no gradient: it copies the whole weight for a batched product instead (about 0.2 s for the default model's
    vocabulary head on this CPU, against 0.01 s for the same product in 2-D)."""
    flat = head(hidden.reshape(-1, hidden.shape[-1]))
    return flat.reshape(*hidden.shape[:-1], flat.shape[-1])


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's own output head applied to final hidden states (with final logit soft-capping where configured)."""
    logits = apply_head(model.get_output_embeddings(), hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def windowed_masks(model, attention_mask, position_ids, cache=None):
    """A custom 4D additive mask for a model with sliding-window layers: the same mask with the window applied, as
    the model itself would (a key more than `sliding_window - 1` positions behind a query is hidden). transformers
    uses a custom 4D mask as it is, so without this a tree forward would see past the window.

    Returns the mask unchanged for models without sliding layers, the windowed mask when every layer slides, and
    {"full_attention": mask, "sliding_attention": windowed} for models that mix both (they accept such a dict).
    Key positions: the cache's first `prefix_length` slots (prefix tuning) have none and are never hidden, the
    following slots hold positions 0, 1, ... after a row's left padding (its leading slots that no query sees),
    and the new inputs carry `position_ids`.
    """
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 4:
        return attention_mask
    types = getattr(model, "_ppd_layer_types", None)
    if types is None:
        types = layer_types(model.config)
        model._ppd_layer_types = types
    window = getattr(model.config.get_text_config(decoder=True), "sliding_window", None)
    if WINDOWED_LAYER_TYPE not in types or not window:
        return attention_mask
    queries, keys = attention_mask.shape[-2], attention_mask.shape[-1]
    cached = keys - queries
    prefix = getattr(cache, "prefix_length", 0) if cache is not None else 0
    device = attention_mask.device
    if position_ids is None:
        position_ids = torch.arange(cached - prefix, cached - prefix + queries, device=device)[None]
    position_ids = position_ids.to(device)
    padding = (attention_mask[:, 0, :, prefix:cached] == torch.finfo(attention_mask.dtype).min).all(1)  # [B, slots]
    padding = padding.int().cumprod(-1).sum(-1, keepdim=True)  # leading slots no query sees: left padding
    past = torch.arange(cached - prefix, device=device)[None] - padding
    past = past.expand(position_ids.shape[0], -1)
    key_positions = torch.cat([past, position_ids], -1)  # [B, keys - prefix]
    far = (position_ids[:, :, None] - key_positions[:, None, :]) >= window  # [B, Q, keys - prefix]
    if prefix:
        far = torch.cat([torch.zeros(*far.shape[:2], prefix, dtype=torch.bool, device=device), far], -1)
    windowed = attention_mask.masked_fill(far[:, None], torch.finfo(attention_mask.dtype).min)
    if set(types) <= {WINDOWED_LAYER_TYPE, "dummy"}:
        return windowed
    return {"full_attention": attention_mask, WINDOWED_LAYER_TYPE: windowed}


def run_body(model, inputs_embeds, attention_mask, position_ids, cache=None, output_hidden_states=False):
    """One forward of the decoder body. Returns the model output (last_hidden_state, hidden_states).

    A custom 4D mask gets the model's sliding window (`windowed_masks`), and the cache's sliding layers keep their
    whole history (`prompt.model.cache.full_history`), so that tree steps can be cut back past the window.
    """
    from prompt.model.cache import full_history

    if cache is not None:
        full_history(cache)
    attention_mask = windowed_masks(model, attention_mask, position_ids, cache)
    return body(model)(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=cache is not None,
        output_hidden_states=output_hidden_states,
    )
