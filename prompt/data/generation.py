"""Running the frozen base model over many sequences in left-padded batches: teacher distributions and greedy replies."""
from __future__ import annotations

import torch
from transformers import DynamicCache

from prompt.model import backbone
from prompt.model.stops import truncate_at_stop


def left_pad(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1D id tensors into [B, T] with padding on the left; returns (ids, keep mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    keep = torch.zeros(len(sequences), width, dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = seq
        keep[row, width - len(seq):] = True
    return ids, keep


def batches_by_length(sequences: list, batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so that little padding is needed."""
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def greedy_teacher(model, prefixes: list[torch.Tensor], steps: int, top_k: int, pad_id: int = 0):
    """Extend each prefix greedily by `steps` - 1 tokens and return, per prefix, (tokens [steps], top-k ids, top-k probs).

    Row j of the top-k is the base model's distribution after the prefix and its first j greedy tokens:
    row 0 predicts the next token, row k is the target of special token k.
    """
    device = model.get_input_embeddings().weight.device
    ids, keep = left_pad(prefixes, pad_id)
    ids, keep = ids.to(device), keep.to(device)
    batch, width = ids.shape
    dtype = model.get_input_embeddings().weight.dtype
    cache = DynamicCache(config=model.config)
    allowed = torch.tril(torch.ones(width, width, dtype=torch.bool, device=device))[None] & keep[:, None, :]
    allowed |= torch.eye(width, dtype=torch.bool, device=device)[None]  # padded rows see themselves
    positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
    output = backbone.run_body(model, model.get_input_embeddings()(ids), backbone.additive_mask(allowed[:, None], dtype),
                               positions, cache)
    hidden = output.last_hidden_state[:, -1]
    lengths = keep.sum(-1)
    tokens, top_ids, top_probs = [], [], []
    for step in range(steps):
        probs = backbone.head_logits(model, hidden).float().softmax(-1)
        values, indices = probs.topk(top_k, dim=-1)
        top_ids.append(indices)
        top_probs.append(values)
        token = probs.argmax(-1)
        tokens.append(token)
        if step == steps - 1:
            break
        keep = torch.cat([keep, torch.ones(batch, 1, dtype=torch.bool, device=device)], 1)
        mask = backbone.additive_mask(keep[:, None, None, :], dtype)
        output = backbone.run_body(model, model.get_input_embeddings()(token[:, None]), mask,
                                   (lengths + step)[:, None], cache)
        hidden = output.last_hidden_state[:, -1]
    tokens = torch.stack(tokens, 1).cpu()
    top_ids = torch.stack(top_ids, 1).cpu()
    top_probs = torch.stack(top_probs, 1).cpu()
    return [(tokens[i], top_ids[i], top_probs[i]) for i in range(batch)]


@torch.no_grad()
def greedy_replies(model, prompts: list[torch.Tensor], max_new_tokens: int, stop_ids, pad_id: int) -> list[torch.Tensor]:
    """The base model's greedy reply to each prompt (one left-padded batch), cut after the first stop token."""
    device = model.get_input_embeddings().weight.device
    ids, keep = left_pad(prompts, pad_id)
    out = model.generate(ids.to(device), attention_mask=keep.long().to(device), max_new_tokens=max_new_tokens,
                         do_sample=False, num_beams=1, eos_token_id=list(stop_ids) or None, pad_token_id=pad_id,
                         temperature=None, top_p=None, top_k=None)
    stops = set(stop_ids)
    return [torch.tensor(truncate_at_stop(row.tolist(), stops), dtype=torch.long) for row in out[:, ids.shape[1]:].cpu()]
