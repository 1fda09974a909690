"""Upstream PPD's dataset files, read into this package's records (`prompt.data.files`).

Upstream saves a whole dataset object with `torch.save`: `prompt.utils.FineTuningDataset` (rows `input_ids`,
`attention_mask`, `labels`, left-padded and cut at a random point: the labels hold, after the prefix's own labels,
the N+1 tokens that follow the cut) or `prompt.utils.DistillationDataset` (its self-distillation data: rows
`input_ids`, `attention_mask` and `labels` = the base model's logits [N, vocab] for the N tokens after the next one,
its own greedy continuation fed back). Its chunk files (`dataset_chunk_<i>.pt`, upstream's `chunk_dataset`) hold one
slice of such a dataset: a dict of the three lists. Both load here without running upstream's code: its two dataset
classes are stood in for by empty classes of the same names that torch's weights-only unpickler is allowed to build.
The same rows saved as a Hugging Face `datasets` object (`save_to_disk`) load through `datasets.load_from_disk`.
"""
from __future__ import annotations

import os

import torch

from prompt.errors import PPDError

TEACHER_TOP_K = 20  # teacher probabilities kept per position, as generate_dataset.py's --top_k default


class _UpstreamDataset:
    """Stands in for upstream's dataset classes while unpickling: only their attributes are read."""


class FineTuningDataset(_UpstreamDataset):
    pass


class DistillationDataset(_UpstreamDataset):
    pass


for _cls in (FineTuningDataset, DistillationDataset):
    _cls.__module__ = "prompt.utils"  # the name upstream's pickles refer to


def read_upstream_file(path: str):
    """The content of an upstream dataset or chunk file (a stand-in object or a dict), or None if it is not one."""
    try:
        with torch.serialization.safe_globals([FineTuningDataset, DistillationDataset]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not an upstream file either: the caller reports it
        return None


def _rows(value, name: str, path: str) -> list:
    if isinstance(value, torch.Tensor):
        return list(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
        return list(value)
    raise PPDError(f"upstream dataset file {path!r}: {name} is not a tensor or a list of tensors")


def upstream_records(content, path: str, num_special_tokens: int | None):
    """(dataset_type, num_special_tokens, records) of an upstream dataset object or chunk dict; None if `content` is
    neither."""
    if isinstance(content, _UpstreamDataset):
        fields = vars(content)
    elif isinstance(content, dict) and {"input_ids", "labels", "attention_mask"} <= set(content):
        fields = content
    else:
        return None
    try:
        ids, masks, labels = (_rows(fields[k], k, path) for k in ("input_ids", "attention_mask", "labels"))
    except KeyError as exc:
        raise PPDError(f"upstream dataset file {path!r} has no {exc.args[0]}") from None
    if not (len(ids) == len(masks) == len(labels)) or not ids:
        raise PPDError(f"upstream dataset file {path!r}: input_ids, attention_mask and labels differ in length or "
                       f"are empty")
    distillation = labels[0].dim() == 2  # logits [N, vocab] per row; a fine-tuning row has token labels [L]
    if distillation:
        n = labels[0].shape[0]
        if num_special_tokens is not None and n != num_special_tokens:
            raise PPDError(f"{path!r} was built for num_special_tokens={n}, but --num_special_tokens is "
                           f"{num_special_tokens}")
    else:
        if num_special_tokens is None:
            raise PPDError(f"{path!r} is an upstream fine-tuning dataset, which does not record its number of special "
                           f"tokens: pass --num_special_tokens")
        n = num_special_tokens
    records = []
    for row_ids, row_mask, row_labels in zip(ids, masks, labels):
        prefix = row_ids[row_mask.bool()].long()
        if distillation:
            probs = row_labels.float().softmax(-1)
            top = probs.topk(min(TEACHER_TOP_K, probs.shape[-1]), -1)
            greedy = top.indices[:, 0]
            # row 0 (the base model's next token) is not in upstream's file and no loss reads it
            teacher_ids = torch.cat([torch.zeros_like(top.indices[:1]), top.indices])
            teacher_probs = torch.cat([torch.zeros_like(top.values[:1]), top.values])
            continuation = torch.cat([torch.full((1,), -100), greedy])
            records.append({"input_ids": prefix, "continuation": continuation, "labels": continuation.clone(),
                            "teacher_ids": teacher_ids, "teacher_probs": teacher_probs})
        else:
            following = row_labels[-(n + 1):].long()  # the N+1 tokens after the cut (-100: not assistant text)
            records.append({"input_ids": prefix, "continuation": following.clamp(min=0), "labels": following})
    return ("distillation" if distillation else "finetune"), n, records


def is_saved_hf_dataset(path: str) -> bool:
    """A folder written by `datasets.Dataset.save_to_disk`."""
    return os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json"))


def hf_dataset_records(path: str, num_special_tokens: int | None):
    """(dataset_type, num_special_tokens, records) of a saved `datasets` object with upstream's columns."""
    import datasets

    try:
        data = datasets.load_from_disk(path)
    except Exception as exc:  # datasets raises many types for a damaged folder
        raise PPDError(f"cannot read the saved datasets object {path!r}: {str(exc).splitlines()[0]}") from None
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise PPDError(f"{path!r} holds splits {', '.join(data)}; train.py reads a 'train' split")
        data = data["train"]
    missing = {"input_ids", "attention_mask", "labels"} - set(data.column_names)
    if missing:
        raise PPDError(f"saved datasets object {path!r} has no column {', '.join(sorted(missing))} (upstream's columns: "
                       f"input_ids, attention_mask, labels)")
    rows = {name: [] for name in ("input_ids", "attention_mask", "labels")}
    for row in data.with_format("torch"):  # each row read once
        for name, values in rows.items():
            values.append(row[name])
    return upstream_records(rows, path, num_special_tokens)
