"""The training losses of one micro-batch of dataset records, for each kind of data.

- self-distilled sequences, many cuts per forward (the default): teacher and student from two forwards per sequence;
- one cut per record (upstream's truncation): the prefix through `PromptDecoder.forward`, batched with left padding,
  against stored top-k teacher probabilities (distillation data), stored labels (finetune data), or the teacher
  computed on the fly at one random cut (self-distilled data with --many_cuts false).

Each function returns (loss or None when nothing could be supervised, number of cuts supervised).
"""
from __future__ import annotations

import torch

from prompt.data.files import IGNORE_INDEX
from prompt.data.generation import left_pad
from prompt.train import losses
from prompt.train.many_cuts import choose_cuts, many_cuts_special_logits, teacher_logits, teacher_pass

DISTILLATION = "distillation_trainer"
FINE_TUNING = "param_efficient_fine_tuner"


def sequence_ids(record: dict, max_length: int) -> tuple[torch.Tensor, int]:
    """A self-distilled record's ids (cut to max_length) and where its reply starts."""
    return record["input_ids"][:max_length].long(), int(record["reply_start"])


def future_tokens(ids: torch.Tensor, cuts: torch.Tensor, num_special_tokens: int) -> torch.Tensor:
    """x_{c+1+k} for k = 1..N: the token special token k of cut c should predict, [C, N]."""
    return ids[cuts[:, None] + 1 + torch.arange(1, num_special_tokens + 1, device=cuts.device)[None]]


def many_cuts_loss(model, record: dict, trainer_type: str, cuts_per_sequence: int, max_length: int, generator):
    """Loss of one self-distilled sequence, all chosen cuts in one forward."""
    n = model.config.num_special_tokens
    ids, reply_start = sequence_ids(record, max_length)
    cuts = choose_cuts(len(ids), reply_start, n, cuts_per_sequence, generator)
    if len(cuts) == 0:
        return None, 0
    device = model.device
    ids, cuts = ids.to(device), cuts.to(device)
    hidden, cache = teacher_pass(model.base_model, ids[None])
    student = many_cuts_special_logits(model, cache, len(ids), cuts)
    valid = torch.ones(len(cuts), n, dtype=torch.bool, device=device)
    if trainer_type == DISTILLATION:
        loss = losses.kl_to_teacher(student, teacher_logits(model.base_model, hidden, cuts, n), valid)
    else:
        loss = losses.cross_entropy(student, future_tokens(ids, cuts, n))
    return loss, len(cuts)


def _one_cut_of_sequence(model, record: dict, max_length: int, generator):
    """(prefix, teacher logits [N, vocab], target ids [N]) at one random cut of a self-distilled sequence, or None."""
    n = model.config.num_special_tokens
    ids, reply_start = sequence_ids(record, max_length)
    cuts = choose_cuts(len(ids), reply_start, n, 1, generator)
    if len(cuts) == 0:
        return None
    c = int(cuts[0])
    window = ids[: c + n + 1].to(model.device)
    hidden, _ = teacher_pass(model.base_model, window[None])
    teacher = teacher_logits(model.base_model, hidden, cuts.to(model.device), n)[0]
    return ids[: c + 1], teacher, future_tokens(ids, cuts, n)[0]


def one_cut_loss(model, records: list[dict], dataset_type: str, trainer_type: str, max_length: int, generators):
    """Loss of a batch of single cuts, the prefixes batched through `PromptDecoder.forward`."""
    n = model.config.num_special_tokens
    device = model.device
    prefixes, teachers, targets, top_ids, top_probs = [], [], [], [], []
    for record, generator in zip(records, generators):
        if dataset_type == "self_distillation":
            cut = _one_cut_of_sequence(model, record, max_length, generator)
            if cut is None:
                continue
            prefixes.append(cut[0])
            teachers.append(cut[1])
            targets.append(cut[2])
        else:
            prefixes.append(record["input_ids"][-max_length:].long())
            targets.append(record["labels"][1: n + 1].long())
            if dataset_type == "distillation":
                top_ids.append(record["teacher_ids"][1: n + 1])
                top_probs.append(record["teacher_probs"][1: n + 1])
    if not prefixes:
        return None, 0
    ids, keep = left_pad(prefixes, 0)
    student, _ = model(ids.to(device), keep.long().to(device))
    targets = torch.stack(targets).to(device)
    if trainer_type == FINE_TUNING:
        return losses.cross_entropy(student, targets), len(prefixes)
    valid = targets != IGNORE_INDEX
    if dataset_type == "self_distillation":
        return losses.kl_to_teacher(student, torch.stack(teachers), torch.ones_like(valid)), len(prefixes)
    return losses.kl_to_top_k(student, torch.stack(top_ids).to(device), torch.stack(top_probs).to(device), valid), len(prefixes)
