"""The decode loop's cache: the growing layer against transformers' concatenating one, under every cache operation."""
import random

import pytest
import torch
from transformers import LlamaConfig
from transformers.cache_utils import DynamicLayer

from prompt.model.cache import (GrowingLayer, append_rows, cache_capacity, cache_slots, keep_cache_entries, move_row_entries,
                                new_cache, pad_cache, select_rows)


def tiny_llama_config(num_hidden_layers=1):
    return LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=num_hidden_layers,
                       num_attention_heads=2, num_key_value_heads=2)


class Pair:
    """Two one-layer caches fed the same operations: ours (GrowingLayer) and a plain DynamicLayer."""

    def __init__(self, rows):
        self.caches = []
        for layer_type in (GrowingLayer, DynamicLayer):
            cache = new_cache(tiny_llama_config(num_hidden_layers=1))
            cache.layers[0] = layer_type()
            self.caches.append(cache)
        self.rows = rows

    def update(self, count, generator):
        keys = torch.randn(self.rows, 2, count, 4, generator=generator)
        values = torch.randn(self.rows, 2, count, 4, generator=generator)
        returned = [cache.update(keys.clone(), values.clone(), 0) for cache in self.caches]
        for a, b in zip(*returned):
            assert torch.equal(a, b)

    def apply(self, function, *args):
        for cache in self.caches:
            function(cache, *args)

    def check(self):
        ours, reference = (cache.layers[0] for cache in self.caches)
        assert torch.equal(ours.keys, reference.keys) and torch.equal(ours.values, reference.values)


@pytest.mark.parametrize("seed", range(8))
def test_growing_layer_holds_what_the_concatenating_layer_holds(seed):
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    pair = Pair(rows=3)
    pair.update(rng.randint(1, 80), generator)  # a prefill
    for _ in range(60):
        slots = cache_slots(pair.caches[1])
        written = rng.randint(1, 12)
        pair.update(written, generator)  # a tree step
        choice = rng.random()
        if choice < 0.4:  # one sequence keeps an accepted path
            count = rng.randint(0, written)
            kept = sorted(rng.sample(range(written), count))
            pair.apply(keep_cache_entries, slots, kept, written)
        elif choice < 0.8:  # a batch moves each row's accepted entries behind its sequence, then cuts
            rows, targets, sources = [], [], []
            for row in range(pair.rows):
                length = rng.randint(max(slots - 20, 0), slots)
                for i, offset in enumerate(sorted(rng.sample(range(written), rng.randint(0, written)))):
                    rows.append(row)
                    targets.append(length + i)
                    sources.append(slots + offset)
            end = max(targets, default=slots - 1) + 1
            pair.apply(move_row_entries, *(torch.tensor(m, dtype=torch.long) for m in (rows, targets, sources)), end)
        elif choice < 0.9:  # rows leave, or a row joins
            if pair.rows > 1 and rng.random() < 0.5:
                keep = sorted(rng.sample(range(pair.rows), pair.rows - 1))
                pair.apply(select_rows, keep, max(cache_slots(pair.caches[1]) - rng.randint(0, 5), 1))
                pair.rows -= 1
            else:
                other_keys = torch.randn(1, 2, rng.randint(1, 90), 4, generator=generator)
                for cache in pair.caches:
                    joining = new_cache(tiny_llama_config(num_hidden_layers=1))
                    joining.update(other_keys.clone(), other_keys.clone() + 1, 0)
                    append_rows(cache, joining)
                pair.rows += 1
        else:
            pair.apply(pad_cache, rng.randint(0, 3), rng.randint(0, 3))
        pair.check()


def test_growing_layer_appends_in_place_until_full_and_new_caches_never_share_a_buffer():
    config = tiny_llama_config(num_hidden_layers=1)
    cache = new_cache(config)
    assert isinstance(cache.layers[0], GrowingLayer)
    cache.update(torch.ones(1, 2, 10, 4), torch.ones(1, 2, 10, 4), 0)
    start = cache.layers[0].keys.data_ptr()
    assert cache_capacity(cache) == 10 + 32
    for step in range(20):  # 20 more slots fit the first buffer (10 + 32 spare)
        cache.update(torch.full((1, 2, 1, 4), float(step)), torch.zeros(1, 2, 1, 4), 0)
        assert cache.layers[0].keys.data_ptr() == start
    assert cache_slots(cache) == 30
    # a view handed out earlier keeps its entries: later appends write only past it
    early = cache.layers[0].keys
    cache.update(torch.full((1, 2, 100, 4), 7.0), torch.zeros(1, 2, 100, 4), 0)  # beyond the spare slots: a new buffer
    assert cache.layers[0].keys.data_ptr() != start and cache_slots(cache) == 130
    assert cache_capacity(cache) == 130 + 32  # an eighth of 130 is less than 32
    assert torch.equal(cache.layers[0].keys[..., :30, :], early)
    other = new_cache(config)
    other.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 0)
    assert other.layers[0]._key_buffer.data_ptr() != cache.layers[0]._key_buffer.data_ptr()
