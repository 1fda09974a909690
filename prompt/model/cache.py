"""The KV cache of the decode loop: one that keeps every layer's whole history, and the cut back to an accepted path.

transformers' sliding-window cache layers keep only the last `sliding_window - 1` entries and refuse to be cut
back once past the window, while a tree step writes entries for every candidate and keeps only the accepted
ones. So every layer here keeps its whole history (a plain `DynamicLayer`) and the window is applied by the
attention mask instead: the model's own mask when it builds one, `prompt.model.backbone.windowed_masks` for the
decode loop's custom tree masks. The output is what the model computes with its sliding-window cache; the cost
is the memory of full-length sliding layers.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from prompt.errors import PPDError


def full_history(cache):
    """Turn the cache's sliding-window layers into plain layers that keep every entry (in place; returns the cache).

    A layer already past its window has dropped entries that cannot be recovered: that is refused.
    """
    layers = getattr(cache, "layers", None)
    if not layers:
        return cache
    for i, layer in enumerate(layers):
        if not isinstance(layer, DynamicSlidingWindowLayer):
            continue
        plain = DynamicLayer()
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            if layer.cumulative_length != layer.keys.shape[-2]:
                raise PPDError("this cache already dropped entries behind its sliding window; "
                               "build it with prompt.model.cache.new_cache")
            plain.lazy_initialization(layer.keys, layer.values)
            plain.keys, plain.values = layer.keys, layer.values
        layers[i] = plain
    return cache


def new_cache(model, prefix_length: int = 0):
    """An empty cache for `model` (a causal LM or anything with its `.config`) whose layers keep their whole history.

    `prefix_length`: cache slots that will hold prefix-tuning keys and values, which carry no position.
    """
    config = getattr(model, "config", model)
    cache = full_history(DynamicCache(config=config))
    cache.prefix_length = prefix_length
    return cache


def _stored_layers(cache):
    """The layers that store keys and values (shared or uninitialized layers store nothing)."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is not None and getattr(layer, "is_initialized", True) and keys.dim() >= 2:
            yield layer


def _set(layer, keys, values) -> None:
    layer.keys, layer.values = keys, values
    if hasattr(layer, "cumulative_length"):
        layer.cumulative_length = keys.shape[-2]


def keep_cache_entries(cache, start: int, kept_offsets, written: int) -> None:
    """After a step that wrote `written` new entries from slot `start` on: keep the entries at `start + kept_offsets`
    (in that order) in slots start, start+1, ..., and drop the rest of the new entries."""
    kept_offsets = list(kept_offsets)
    count = len(kept_offsets)
    if count > written:
        raise PPDError(f"cannot keep {count} of {written} new cache entries")
    moved = kept_offsets != list(range(count))
    index = None
    for layer in _stored_layers(cache):
        end = layer.keys.shape[-2] - written + count
        if moved:
            if index is None or index.device != layer.keys.device:
                index = torch.tensor(kept_offsets, device=layer.keys.device) + start
            layer.keys[..., start: start + count, :] = layer.keys[..., index, :]
            layer.values[..., start: start + count, :] = layer.values[..., index, :]
        _set(layer, layer.keys[..., :end, :], layer.values[..., :end, :])


# ------------------------------------------------------------------------------------------------------
# batches: one cache of B rows whose sequences have different lengths
#
# Row b's entries sit in slots [0, length_b) (its prefix slots, then its sequence); the cache is as long as its
# longest row, and a shorter row's slots past its own length are stale (the decode loop's masks hide them).
def cache_slots(cache) -> int:
    """Slots of the cache (the longest row's length in a batch cache)."""
    for layer in _stored_layers(cache):
        return layer.keys.shape[-2]
    return 0


def _pad(tensor, front: int, back: int):
    if not front and not back:
        return tensor
    shape = list(tensor.shape)
    parts = []
    if front:
        parts.append(tensor.new_zeros(shape[:-2] + [front, shape[-1]]))
    parts.append(tensor)
    if back:
        parts.append(tensor.new_zeros(shape[:-2] + [back, shape[-1]]))
    return torch.cat(parts, -2)


def pad_cache(cache, front: int = 0, back: int = 0):
    """Add `front` zero slots before every row's entries and `back` after them (in place; returns the cache)."""
    for layer in _stored_layers(cache):
        _set(layer, _pad(layer.keys, front, back), _pad(layer.values, front, back))
    return cache


def append_rows(cache, other):
    """Append `other`'s rows after `cache`'s (in place), the shorter of the two padded at the end."""
    slots, other_slots = cache_slots(cache), cache_slots(other)
    for layer, add in zip(_stored_layers(cache), _stored_layers(other)):
        keys = torch.cat([_pad(layer.keys, 0, max(other_slots - slots, 0)),
                          _pad(add.keys, 0, max(slots - other_slots, 0))], 0)
        values = torch.cat([_pad(layer.values, 0, max(other_slots - slots, 0)),
                            _pad(add.values, 0, max(slots - other_slots, 0))], 0)
        _set(layer, keys, values)
    return cache


def select_rows(cache, rows, slots: int | None = None):
    """Keep the rows at `rows` (in that order) and the first `slots` slots (all by default), in place."""
    index = None
    for layer in _stored_layers(cache):
        if index is None or index.device != layer.keys.device:
            index = torch.as_tensor(rows, dtype=torch.long, device=layer.keys.device)
        end = layer.keys.shape[-2] if slots is None else slots
        _set(layer, layer.keys[index, ..., :end, :], layer.values[index, ..., :end, :])
    return cache


def move_row_entries(cache, rows: torch.Tensor, targets: torch.Tensor, sources: torch.Tensor, slots: int) -> None:
    """The batch version of `keep_cache_entries`: entry (rows[i], sources[i]) moves to slot targets[i] (all sources
    are read before anything is written), then the cache is cut to `slots` slots. In place."""
    moved = {}  # the indices on each device the layers sit on
    for layer in _stored_layers(cache):
        if rows.numel():
            device = layer.keys.device
            if device not in moved:
                moved[device] = (rows.to(device), targets.to(device), sources.to(device))
            r, t, s = moved[device]
            layer.keys[r, :, t] = layer.keys[r, :, s]
            layer.values[r, :, t] = layer.values[r, :, s]
        _set(layer, layer.keys[..., :slots, :], layer.values[..., :slots, :])
