"""Checks of what a checkpoint's decoding.json asks for, reported against decoding.json itself."""
from __future__ import annotations

import os

from prompt.errors import PPDError
from prompt.inference.tree import select_tree_spec
from prompt.jsonio import read_json


def checkpoint_files(model) -> tuple:
    """(decoding.json, trees.json) of the checkpoint `model` was loaded from (None where absent), whether the model
    records them directly (`decoding_file`, `tree_file`) or records its folder (`checkpoint_dir`)."""
    folder = getattr(model, "checkpoint_dir", None)
    if folder:
        found = [os.path.join(folder, name) for name in ("decoding.json", "trees.json")]
        return tuple(path if os.path.isfile(path) else None for path in found)
    return getattr(model, "decoding_file", None), getattr(model, "tree_file", None)


def check_tuned_decoding(model, dtype: str | None = None) -> None:
    """Refuse a decoding.json whose tree length for `dtype` (default: the model's) names no tree that this checkpoint
    has: its trees.json, or the shipped default trees when the folder has no trees.json. Without this check the
    decoder reports the missing tree against the tree file, which is not the file to fix."""
    path, tree_file = checkpoint_files(model)
    if not path:
        return
    dtype = dtype or str(model.dtype).replace("torch.", "")
    data = read_json(path, "tuned decoding file")
    if not isinstance(data, dict):
        raise PPDError(f"malformed tuned decoding file {path!r}: expected a JSON object keyed by dtype")
    entry = data.get(dtype)
    if entry is None:
        return
    if not isinstance(entry, dict):
        raise PPDError(f"malformed tuned decoding file {path!r}: the {dtype} entry is not an object")
    length = entry.get("tree_length")
    if length is None:
        return  # the decoder takes the largest tree
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise PPDError(f"malformed tuned decoding file {path!r}: the {dtype} entry has no tree_length >= 0")
    if length == 0:
        return  # plain decoding: no tree needed
    config = model.config
    try:
        select_tree_spec(tree_file, config.num_special_tokens, config.virtual_tokens_per_special_token, length)
    except PPDError as exc:
        where = "its trees.json has none" if tree_file else "the folder has no trees.json (the default trees have none)"
        raise PPDError(f"{path} asks for a {dtype} tree of length {length}, but {where}: {exc}; re-run "
                       f"prompt.inference.tune for this checkpoint, restore its trees.json, or pass --tree-length") from None
