"""Dataset files: one `torch.save`d dict holding the records and what they were built for.

Layout (every value loads with `torch.load(..., weights_only=True)`)::

    {"format": "ppd-dataset", "version": 1, "dataset_type": "finetune" | "distillation" | "self_distillation",
     "num_special_tokens": N, "model_name_or_path": "...", "model_max_length": 2048, "info": {...},
     "records": [ {...}, ... ]}

Records by type:

- finetune: `input_ids` (the prefix x_0..x_c), `continuation` (x_{c+1}..x_{c+N+1}) and `labels` (the
  continuation with IGNORE_INDEX, -100, where a token is not assistant text).
- distillation: `input_ids` (prefix), `continuation` (the base model's N+1 greedy tokens after it),
  `labels` (the same, IGNORE_INDEX after a stop token), `teacher_ids` / `teacher_probs` ([N+1, K]: the top-K of the
  base model's distribution at each of those N+1 positions; row k is the target of special token k).
- self_distillation: `input_ids` (prompt + the base model's own reply) and `reply_start` (where the reply begins).
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import torch

from prompt.errors import PPDError
from prompt.jsonio import atomic_write, read_json
from prompt.model.loading import DEFAULT_MODEL_ID, is_default_model, looks_like_path

CHUNK_MANIFEST = "manifest.json"  # in a chunk folder: the build's flags, and which chunks are done of how many
FORMAT = "ppd-dataset"
IGNORE_INDEX = -100  # a label that no loss counts (not assistant text, or after a stop token)
VERSION = 1
DATASET_TYPES = ("finetune", "distillation", "self_distillation")


@dataclass
class DatasetFile:
    """The content of one dataset file."""

    dataset_type: str
    num_special_tokens: int
    model_name_or_path: str
    model_max_length: int
    records: list
    info: dict = field(default_factory=dict)
    path: str = ""


def dataset_file_name(save_path: str, num_special_tokens: int, dataset_type: str, model_max_length: int) -> str:
    """Upstream naming: `{save_path}_{n}_{type}_{max_len}.pt`."""
    return f"{save_path}_{num_special_tokens}_{dataset_type}_{model_max_length}.pt"


def canonical_model_name(name_or_path) -> str:
    """The default model's id for any of its aliases; an absolute path for a local folder; a Hub repo id as it is."""
    if is_default_model(name_or_path):
        return DEFAULT_MODEL_ID
    path = os.path.expanduser(str(name_or_path))
    if not os.path.exists(path) and not looks_like_path(str(name_or_path)):
        return str(name_or_path)
    return os.path.abspath(path)


def check_output_file(path: str, overwrite: bool) -> None:
    """Refuse to replace an existing file unless asked to; create the parent folder."""
    if os.path.isdir(path):
        raise PPDError(f"output {path!r} is a folder")
    if os.path.exists(path) and not overwrite:
        raise PPDError(f"output file {path!r} already exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def save_dataset(path: str, dataset_type: str, records: list, *, num_special_tokens: int, model_name_or_path,
                 model_max_length: int, overwrite: bool = False, info: dict | None = None) -> str:
    """Write a dataset file atomically (a half-written file never carries the final name)."""
    if dataset_type not in DATASET_TYPES:
        raise ValueError(f"unknown dataset type {dataset_type!r}")
    check_output_file(path, overwrite)
    payload = {"format": FORMAT, "version": VERSION, "dataset_type": dataset_type,
               "num_special_tokens": int(num_special_tokens), "model_name_or_path": canonical_model_name(model_name_or_path),
               "model_max_length": int(model_max_length), "info": dict(info or {}), "records": list(records)}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def _read_payload(path: str, payload=None) -> dict:
    """The checked content of one of our dataset files (`payload`: already read from it)."""
    if not os.path.isfile(path):
        raise PPDError(f"dataset file {path!r} does not exist")
    try:
        payload = payload if payload is not None else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickler errors come in many types
        raise PPDError(f"cannot read dataset file {path!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PPDError(f"{path!r} is not a dataset written by generate_dataset.py (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise PPDError(f"{path!r} has dataset format version {payload.get('version')!r}; this code reads {VERSION}")
    return payload


def check_chunk_folder_complete(path: str, records: int) -> None:
    """Refuse a chunk folder whose build has not finished (its manifest counts the chunks and their records)."""
    manifest_path = os.path.join(path, CHUNK_MANIFEST)
    if not os.path.isfile(manifest_path):
        return  # chunk files put together by hand: nothing says how many there should be
    manifest = read_json(manifest_path, "chunk manifest")
    if not isinstance(manifest, dict):
        raise PPDError(f"malformed chunk manifest {manifest_path!r}: expected a JSON object")
    chunks, done, counts = manifest.get("chunks"), manifest.get("done", []), manifest.get("records", {})
    finish = "run generate_dataset.py again with the same flags to finish it"
    if chunks is None:
        raise PPDError(f"dataset folder {path!r} may be incomplete: its {CHUNK_MANIFEST} does not say how many chunks "
                       f"it should hold (an interrupted build, or one from an older version); {finish}")
    if len(set(done)) < chunks:
        raise PPDError(f"dataset folder {path!r} is incomplete: {len(set(done))} of {chunks} chunks were built "
                       f"({records} records so far); {finish}")
    counted = isinstance(counts, dict) and all(str(i) in counts for i in done)
    if counted and sum(counts.values()) != records:
        raise PPDError(f"dataset folder {path!r} holds {records} records but its {CHUNK_MANIFEST} counts {sum(counts.values())}: "
                       f"chunk files are missing or were replaced; {finish} (with --overwrite to rebuild it)")


def _check_type(path: str, dataset_type: str, expected_types, kind: str = "a ") -> None:
    if expected_types is not None and dataset_type not in expected_types:
        raise PPDError(f"{path!r} is {kind}{dataset_type} dataset; expected {' or '.join(expected_types)}")


def load_dataset(path: str, expected_types=None, num_special_tokens: int | None = None) -> DatasetFile:
    """Read a dataset file (or, for a folder, every `*.pt` chunk in it, in name order) and check what it was built for."""
    if os.path.isdir(path):
        from prompt.data.upstream import hf_dataset_records, is_saved_hf_dataset

        if is_saved_hf_dataset(path):
            dataset_type, n, records = hf_dataset_records(path, num_special_tokens)
            _check_type(path, dataset_type, expected_types)
            return DatasetFile(dataset_type, n, "", 0, records, {"source": "saved datasets object"}, path)
        files = sorted(glob.glob(os.path.join(path, "*.pt")), key=lambda name: (len(name), name))
        if not files:
            raise PPDError(f"dataset folder {path!r} holds no .pt chunk files")
        parts = [load_dataset(name, expected_types, num_special_tokens) for name in files]
        first = parts[0]
        for part in parts[1:]:
            if (part.dataset_type, part.num_special_tokens, part.model_name_or_path) != (
                    first.dataset_type, first.num_special_tokens, first.model_name_or_path):
                raise PPDError(f"chunks in {path!r} were built differently ({part.path!r} against {first.path!r})")
        records = [record for part in parts for record in part.records]
        check_chunk_folder_complete(path, len(records))
        return DatasetFile(first.dataset_type, first.num_special_tokens, first.model_name_or_path,
                           first.model_max_length, records, first.info, path)
    content = None
    if os.path.isfile(path):
        from prompt.data.upstream import read_upstream_file, upstream_records

        content = read_upstream_file(path)  # ours, upstream's, or None (then _read_payload says what is wrong)
        ours = isinstance(content, dict) and content.get("format") == FORMAT
        upstream = None if content is None or ours else upstream_records(content, path, num_special_tokens)
        if upstream is not None:
            dataset_type, n, records = upstream
            _check_type(path, dataset_type, expected_types, "an upstream ")
            return DatasetFile(dataset_type, n, "", 0, records, {"source": "upstream PPD dataset file"}, path)
    payload = _read_payload(path, content)
    dataset = DatasetFile(payload["dataset_type"], int(payload["num_special_tokens"]), payload["model_name_or_path"],
                          int(payload["model_max_length"]), payload["records"], payload.get("info", {}), path)
    _check_type(path, dataset.dataset_type, expected_types)
    if num_special_tokens is not None and dataset.num_special_tokens != num_special_tokens:
        raise PPDError(f"{path!r} was built for num_special_tokens={dataset.num_special_tokens}, "
                       f"but --num_special_tokens is {num_special_tokens}")
    if not dataset.records:
        raise PPDError(f"dataset file {path!r} holds no records")
    return dataset
