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


def keep_cache_entries(cache, start: int, kept_offsets, written: int) -> None:
    """After a step that wrote `written` new entries from slot `start` on: keep the entries at `start + kept_offsets`
    (in that order) in slots start, start+1, ..., and drop the rest of the new entries."""
    kept_offsets = list(kept_offsets)
    count = len(kept_offsets)
    if count > written:
        raise PPDError(f"cannot keep {count} of {written} new cache entries")
    moved = kept_offsets != list(range(count))
    index = None
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is None or not getattr(layer, "is_initialized", True) or keys.dim() < 2:
            continue  # layers that store nothing (shared key/values, uninitialized)
        end = keys.shape[-2] - written + count
        if moved:
            if index is None or index.device != keys.device:
                index = torch.tensor(kept_offsets, device=keys.device) + start
            layer.keys[..., start: start + count, :] = layer.keys[..., index, :]
            layer.values[..., start: start + count, :] = layer.values[..., index, :]
        if count < written:
            layer.keys = layer.keys[..., :end, :]
            layer.values = layer.values[..., :end, :]
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = layer.keys.shape[-2]
