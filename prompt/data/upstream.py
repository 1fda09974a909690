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


# --------------------------------------------------------------------------------------------------
# writing our records in upstream's layout (generate_dataset.py --upstream_format)
def upstream_file_name(save_path: str, num_special_tokens: int, dataset_type: str, model_max_length: int,
                       model_name: str) -> str:
    """Upstream's names: `{save_path}_{n}_finetune_{max_len}.pt` and `{save_path}_{n}_{model}_distillation__{max_len}.pt`
    (model: the last part of the model's name or path)."""
    if dataset_type == "distillation":
        model = os.path.basename(str(model_name).rstrip("/"))
        return f"{save_path}_{num_special_tokens}_{model}_distillation__{model_max_length}.pt"
    return f"{save_path}_{num_special_tokens}_{dataset_type}_{model_max_length}.pt"


def _left_padded(prefix: torch.Tensor, length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    if len(prefix) > length:
        raise PPDError(f"a prefix of {len(prefix)} tokens does not fit upstream's rows of --model_max_length {length}")
    ids = torch.full((length,), pad_id, dtype=torch.long)
    mask = torch.zeros(length, dtype=torch.bool)
    ids[length - len(prefix):], mask[length - len(prefix):] = prefix.long(), True
    return ids, mask


def teacher_logits(record: dict, vocab_size: int) -> torch.Tensor:
    """[N, vocab] logits whose softmax is the record's kept teacher distribution of special tokens 1..N: log p at the
    top-K ids, and the mass left over spread evenly over the other ids (so softmax gives back the top-K exactly)."""
    ids, probs = record["teacher_ids"][1:].long(), record["teacher_probs"][1:].double()
    if int(ids.max()) >= vocab_size:
        raise PPDError(f"teacher token id {int(ids.max())} is outside the model's vocabulary of {vocab_size}")
    rest = (1.0 - probs.sum(-1, keepdim=True)).clamp(min=1e-30) / max(vocab_size - ids.shape[1], 1)
    logits = rest.log().expand(ids.shape[0], vocab_size).clone()
    logits.scatter_(1, ids, probs.clamp(min=1e-30).log())
    return logits.float()


def upstream_dataset(dataset_type: str, records: list, num_special_tokens: int, model_max_length: int, pad_id: int,
                     vocab_size: int | None = None):
    """Our finetune or distillation records as upstream's dataset object (a `prompt.utils` stand-in whose attributes
    are upstream's): finetune rows [count, model_max_length] left-padded, a bool attention mask, labels -100 but for
    the last N+1 (the tokens after the cut; upstream also labels the prefix's assistant tokens there, which no loss
    reads); distillation rows as lists, a float mask, and labels the teacher's [N, vocab] logits."""
    n = num_special_tokens
    if dataset_type == "finetune":
        rows = [_left_padded(r["input_ids"], model_max_length, pad_id) for r in records]
        labels = torch.full((len(records), model_max_length), -100, dtype=torch.long)
        for row, record in zip(labels, records):
            row[-(n + 1):] = record["labels"].long()
        dataset = FineTuningDataset()
        dataset.input_ids = torch.stack([ids for ids, _ in rows])
        dataset.attention_mask = torch.stack([mask for _, mask in rows])
        dataset.labels = labels
        return dataset
    if dataset_type != "distillation":
        raise PPDError(f"upstream has no {dataset_type} dataset; --upstream_format writes finetune and distillation")
    dataset = DistillationDataset()
    rows = [_left_padded(r["input_ids"], model_max_length, pad_id) for r in records]
    dataset.input_ids = [ids for ids, _ in rows]
    dataset.attention_mask = [mask.float() for _, mask in rows]
    dataset.labels = [teacher_logits(r, vocab_size) for r in records]
    return dataset


def save_upstream_dataset(path: str, dataset) -> str:
    """`torch.save` an upstream dataset object atomically (the caller has checked that `path` may be written); it
    unpickles as upstream's `prompt.utils` class (with upstream's code on the path) or as our stand-in
    (`read_upstream_file`)."""
    import sys
    import types

    from prompt.jsonio import atomic_write

    module = types.ModuleType("prompt.utils")  # pickle finds a class by its module's name: upstream's
    module.FineTuningDataset, module.DistillationDataset = FineTuningDataset, DistillationDataset
    saved = sys.modules.get("prompt.utils")
    sys.modules["prompt.utils"] = module
    try:
        atomic_write(path, lambda tmp: torch.save(dataset, tmp))
    finally:
        if saved is None:
            del sys.modules["prompt.utils"]
        else:
            sys.modules["prompt.utils"] = saved
    return path
