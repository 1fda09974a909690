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


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends new entries into spare capacity instead of concatenating.

    transformers' dynamic layer copies its whole history at every forward (`torch.cat`), a cost that grows with the
    batch and the context (at 8 sequences of the default model, tens of MB a step). This layer keeps its keys and
    values as the leading slots of a larger buffer and writes each forward's entries after them; it copies only when
    the buffer is full (to an eighth more, at least 32 slots more) or when its tensors were replaced by others (a
    cut, a row selection). `keys`/`values` stay ordinary tensors (views of the buffer), so every cache function that
    reads, cuts or writes them in place works unchanged. Entries past the current length are free space.
    """

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = self._append(self.keys, key_states, "_key_buffer")
        self.values = self._append(self.values, value_states, "_value_buffer")
        return self.keys, self.values

    def _append(self, current, new, name):
        buffer = getattr(self, name, None)
        length = current.shape[-2] if current.dim() == new.dim() else 0
        needed = length + new.shape[-2]
        if not (buffer is not None and _leading_view(current, buffer) and needed <= buffer.shape[-2]):
            shape = list(new.shape)
            shape[-2] = needed + max(32, needed // 8)
            buffer = new.new_empty(shape)
            if length:
                buffer[..., :length, :] = current
            setattr(self, name, buffer)
        buffer[..., length:needed, :] = new
        return buffer[..., :needed, :]


def _leading_view(tensor, buffer) -> bool:
    """True when `tensor` is the leading slots of `buffer` (same rows, heads and layout)."""
    return (tensor.dim() == buffer.dim() and tensor.data_ptr() == buffer.data_ptr()
            and tensor.shape[:-2] == buffer.shape[:-2] and tensor.shape[-1] == buffer.shape[-1]
            and tensor.stride() == buffer.stride() and tensor.dtype == buffer.dtype
            and tensor.device == buffer.device)


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
        plain = GrowingLayer()
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
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and not layer.is_initialized:
            cache.layers[i] = GrowingLayer()
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
def cache_capacity(cache) -> int:
    """Slots the cache has allocated (its growing layers' spare slots included): what its memory holds."""
    for layer in _stored_layers(cache):
        buffer = getattr(layer, "_key_buffer", None)
        if buffer is not None and _leading_view(layer.keys, buffer):
            return buffer.shape[-2]
        return layer.keys.shape[-2]
    return 0


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
