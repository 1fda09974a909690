"""Losses on the special tokens' logits, as upstream: per special token k a loss averaged over the rows,
weighted by 0.8^(k-1), summed over k and divided by N.

Every function takes student logits [R, N, vocab] (R rows: cuts or batch items) and a validity mask [R, N].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prompt.data.files import IGNORE_INDEX

DECAY = 0.8


def weighted_mean(per_position: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[R, N] losses -> sum_k 0.8^(k-1) * mean over valid rows of column k, divided by N."""
    n = per_position.shape[1]
    weights = DECAY ** torch.arange(n, device=per_position.device, dtype=torch.float32)
    valid = valid.float()
    column_means = (per_position * valid).sum(0) / valid.sum(0).clamp(min=1)
    return (column_means * weights).sum() / n


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) with the teacher's full distribution."""
    student = F.log_softmax(student_logits.float(), -1)
    teacher = F.log_softmax(teacher_logits.float(), -1)
    per_position = (teacher.exp() * (teacher - student)).sum(-1)
    return weighted_mean(per_position, valid)


def kl_to_top_k(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_probs: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
    """KL(q || student) where q is the teacher's top-K renormalised to sum to one (the rest of the vocabulary gets 0)."""
    student = F.log_softmax(student_logits.float(), -1).gather(-1, teacher_ids.long())
    q = teacher_probs.float()
    q = q / q.sum(-1, keepdim=True).clamp(min=1e-12)
    per_position = (q * (torch.log(q.clamp(min=1e-12)) - student)).sum(-1)
    return weighted_mean(per_position, valid)


def cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against target ids [R, N] (IGNORE_INDEX = ignored)."""
    valid = targets != IGNORE_INDEX
    log_probs = F.log_softmax(student_logits.float(), -1)
    per_position = -log_probs.gather(-1, targets.clamp(min=0).long()[..., None])[..., 0]
    return weighted_mean(per_position, valid)
