"""Thin helpers around any transformers causal LM: run its decoder body with a custom 4D mask and apply its head.

No modeling file is copied: the body is `model.get_decoder()`, the head `model.get_output_embeddings()`.
"""
from __future__ import annotations

import torch


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


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's own output head applied to final hidden states (with final logit soft-capping where configured)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def run_body(model, inputs_embeds, attention_mask, position_ids, cache=None, output_hidden_states=False):
    """One forward of the decoder body. Returns the model output (last_hidden_state, hidden_states)."""
    return body(model)(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=cache is not None,
        output_hidden_states=output_hidden_states,
    )
