"""Many cuts per forward: supervise the special tokens at many positions of one sequence with two forwards.

For a sequence x_0..x_{L-1}, one forward without gradients gives the base model's (teacher) hidden states at
every position and a KV cache. Then the N*V special-token inputs of every cut c are appended at once, in one
forward over C*N*V inputs on top of that cache, with a 4D mask: cut c's special tokens see cache columns
0..c and their own special tokens (`prompt.model.layout`), nothing of other cuts; special token j
(0-based) of cut c sits at position c+1+j. So each cut's special logits equal `PromptDecoder.forward(x[:c+1])`'s.
Special token k (1-based) of cut c is supervised by the teacher at position c+k, which predicts x_{c+k+1}.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from prompt.model import backbone


def valid_cuts(length: int, reply_start: int, num_special_tokens: int) -> torch.Tensor:
    """Cuts c inside the reply (x_{c+1} is a reply token) with c + N + 1 <= L - 1."""
    first = max(reply_start - 1, 0)
    last = length - num_special_tokens - 2
    return torch.arange(first, last + 1) if last >= first else torch.zeros(0, dtype=torch.long)


def choose_cuts(length: int, reply_start: int, num_special_tokens: int, count: int, generator=None) -> torch.Tensor:
    """`count` distinct valid cuts in increasing order, drawn at random (all of them if count <= 0 or too few)."""
    cuts = valid_cuts(length, reply_start, num_special_tokens)
    if count <= 0 or count >= len(cuts):
        return cuts
    pick = torch.randperm(len(cuts), generator=generator)[:count]
    return cuts[pick.sort().values]


def teacher_pass(base_model, input_ids: torch.Tensor):
    """One causal forward of the frozen base model over `input_ids` [1, L]: (last hidden states [L, H], cache)."""
    length = input_ids.shape[1]
    device = input_ids.device
    embeds = base_model.get_input_embeddings()(input_ids)
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=device))
    cache = DynamicCache(config=base_model.config)
    with torch.no_grad():
        output = backbone.run_body(base_model, embeds, backbone.additive_mask(causal, embeds.dtype),
                                   torch.arange(length, device=device)[None], cache)
    return output.last_hidden_state[0], cache


def teacher_logits(base_model, hidden: torch.Tensor, cuts: torch.Tensor, num_special_tokens: int) -> torch.Tensor:
    """The teacher's logits for special token k of every cut, i.e. at position c+k: [C, N, vocab] (float32)."""
    positions = cuts[:, None] + torch.arange(1, num_special_tokens + 1, device=cuts.device)[None]
    first, last = int(positions.min()), int(positions.max())
    with torch.no_grad():
        logits = backbone.head_logits(base_model, hidden[first: last + 1]).float()
    return logits[positions - first]


def many_cuts_special_logits(model, cache, past: int, cuts: torch.Tensor, restore_cache: bool = False) -> torch.Tensor:
    """Special logits [C, N, vocab] of a PromptDecoder at every cut, in one forward over the cache of x_0..x_{past-1}.

    The forward appends the special tokens to `cache`; `restore_cache=True` crops them off again so that
    the cache can serve another call (e.g. cuts in chunks). With prefix tuning the forward runs on a copy of
    the cache behind the prefix, and `cache` is left as it is.
    """
    nv = model.config.num_virtual_tokens
    count = len(cuts)
    prompt = model.prompt_embeds()
    embeds = prompt[None].expand(count, nv, prompt.shape[-1]).reshape(1, count * nv, prompt.shape[-1])
    # cut c's special tokens follow x_c: they see columns 0..c and their own block
    sees = torch.arange(past, device=cuts.device)[None, :] <= cuts[:, None]
    positions, allowed, special = model.layout.append(cuts, sees)
    positions = positions[None]
    if model.prefix is not None:
        allowed = model.layout.with_prefix_columns(allowed, special)
        cache, restore_cache = model.with_prefix(cache), False
    mask = backbone.additive_mask(allowed, model.dtype)
    output = backbone.run_body(model.base_model, embeds, mask, positions, cache,
                               output_hidden_states=model.needs_hidden_states())
    if restore_cache:
        cache.crop(-count * nv)
    hidden = model.special_hidden(output, slice(0, count * nv))[0]
    return model.special_token_logits(hidden.reshape(count, nv, hidden.shape[-1]))
