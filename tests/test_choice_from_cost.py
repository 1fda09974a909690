"""The decoding chosen from what the prompt tokens accept (acceptance.json) and what a forward costs here (the cost
profile): cheap trees are chosen where wide forwards cost little, plain decoding where nothing pays, a tuned entry
only on the machine it was tuned on."""
import json
import os
import shutil

import pytest

from prompt import Decoder, PPDError
from prompt.inference import choice as ch
from prompt.inference import cost_profile as cp
from test_batch import ppd_model

DEFAULT = os.path.join(os.path.dirname(ch.__file__), "..", "weights", "smollm2-135m-instruct")

ACCEPTANCE = {"greedy": {"configs": [
    {"tree_length": 0, "prompt_lookup_num_tokens": 10, "suffix_nodes": 0, "accept_length": 1.3, "inputs_per_step": 4.0},
    {"tree_length": 6, "prompt_lookup_num_tokens": 0, "suffix_nodes": 0, "accept_length": 1.8, "inputs_per_step": 10.0},
    {"tree_length": 12, "prompt_lookup_num_tokens": 10, "suffix_nodes": 0, "accept_length": 2.3, "inputs_per_step": 22.0},
    {"tree_length": 12, "prompt_lookup_num_tokens": 0, "suffix_nodes": 16, "accept_length": 2.5, "inputs_per_step": 30.0},
]}}
FLAT = {"1": 10.0, "4": 10.2, "8": 10.4, "16": 11.0, "24": 11.5, "32": 12.0, "64": 16.0}  # an AMX-like machine
STEEP = {"1": 10.0, "4": 14.0, "8": 16.0, "16": 24.0, "24": 30.0, "32": 34.0, "64": 50.0}  # an AVX2-like machine


def checkpoint(tmp_path, monkeypatch, curve, batch=None, decoding=None):
    monkeypatch.setenv("PPD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(cp.PROFILE_ENV, "shipped")
    _, ppd = ppd_model(3)
    ppd.checkpoint_dir = str(tmp_path)
    (tmp_path / ch.ACCEPTANCE_NAME).write_text(json.dumps(ACCEPTANCE))
    shutil.copy(os.path.join(DEFAULT, ch.ACCURACIES_NAME), tmp_path)  # trees of any length are built from it
    profile = {"fingerprint": {"device": "cpu", "cpu": "Test CPU", "isa": ["avx2"], "threads": 2}, "model": "m",
               "dtype": "float32", "latency_ms": curve, "batch_latency_ms": batch or {}, "date": "2026-12-03",
               "source": "the test's machine"}
    (tmp_path / cp.SHIPPED_PROFILES).write_text(json.dumps([profile]))
    if decoding is not None:
        (tmp_path / ch.DECODING_NAME).write_text(json.dumps(decoding))
    return ppd


def test_cheap_wide_forwards_choose_a_big_tree_steep_ones_plain_decoding(tmp_path, monkeypatch):
    ppd = checkpoint(tmp_path, monkeypatch, FLAT)
    choice = ch.resolve_decoding(ppd)
    # 2.5 x 10 / cost(30) = 2.11 (suffix) against 2.3 x 10 / cost(22) = 2.02: the suffix tree config wins
    assert (choice.prompt_lookup_num_tokens, choice.suffix_nodes) == (0, 16) and choice.tree_spec is not None
    assert choice.reason.startswith("tree 12 + suffix 16: predicted 2.11x") and "shipped profile" in choice.reason
    steep = checkpoint(tmp_path, monkeypatch, STEEP)
    choice = ch.resolve_decoding(steep)
    # best: lookup alone, 1.3 x 10 / 14 = 0.93 < 1: plain decoding, and the line says why
    assert choice.tree_spec is None and choice.prompt_lookup_num_tokens == 0 and choice.suffix_nodes == 0
    assert choice.reason.startswith("plain decoding: nothing predicted to pay") and "best other" in choice.reason
    decoder = Decoder(steep)
    assert not decoder.ppd and decoder.describe().startswith("plain decoding")


def test_the_callers_fixed_part_restricts_the_choice(tmp_path, monkeypatch):
    ppd = checkpoint(tmp_path, monkeypatch, FLAT)
    choice = ch.resolve_decoding(ppd, prompt_lookup_num_tokens=10)  # lookup fixed: the best tree with it
    assert choice.prompt_lookup_num_tokens == 10 and choice.suffix_nodes == 0 and choice.tree_spec is not None
    assert choice.reason.startswith("tree 12 + lookup 10")
    choice = ch.resolve_decoding(ppd, tree_length=6)
    assert choice.prompt_lookup_num_tokens == 0 and choice.reason.startswith("tree 6:")
    assert ch.resolve_decoding(ppd, tree_length=6, prompt_lookup_num_tokens=3).reason is None


def test_a_tuned_entry_applies_only_on_its_own_machine(tmp_path, monkeypatch):
    here = cp.fingerprint_key(cp.fingerprint("cpu"))
    entry = {"tree_length": 6, "prompt_lookup_num_tokens": 3, "machine": "Other CPU", "date": "2026-12-01"}
    ppd = checkpoint(tmp_path, monkeypatch, STEEP, decoding={"float32": {**entry, "fingerprint": "elsewhere"}})
    assert ch.resolve_decoding(ppd).tree_spec is None  # tuned elsewhere: priced here instead
    ppd = checkpoint(tmp_path, monkeypatch, STEEP, decoding={"float32": {**entry, "fingerprint": here}})
    choice = ch.resolve_decoding(ppd)
    assert choice.prompt_lookup_num_tokens == 3 and choice.tree_spec is not None
    assert choice.reason.startswith("tuned on this machine")
    # no acceptance to price with: the entry of the other machine, said so
    ppd = checkpoint(tmp_path, monkeypatch, STEEP, decoding={"float32": {**entry, "fingerprint": "elsewhere"}})
    (tmp_path / ch.ACCEPTANCE_NAME).unlink()
    choice = ch.resolve_decoding(ppd)
    assert choice.prompt_lookup_num_tokens == 3 and "tuned on Other CPU" in choice.reason


def test_batches_are_priced_per_size(tmp_path, monkeypatch):
    # one sequence: wide forwards nearly free; 16 rows: every input costs (a batch saturates the machine)
    batch = {"2": {"1": 11.0, "8": 12.0, "16": 13.0}, "16": {"1": 40.0, "8": 300.0, "16": 600.0}}
    ppd = checkpoint(tmp_path, monkeypatch, FLAT, batch=batch)
    choices = ch.tuned_batch_decodings(ppd)
    assert sorted(choices) == list(cp.PROFILE_BATCH_SIZES)
    assert choices[2].tree_spec is not None and choices[2].suffix_nodes == 0  # a batch runs no suffix tree
    assert choices[16].tree_spec is None and choices[16].prompt_lookup_num_tokens == 0
    assert "for batches of 16" in choices[16].reason
    assert Decoder(ppd).batch_setting(16).tree_spec is None


def test_a_bad_acceptance_file_is_one_clear_error(tmp_path, monkeypatch):
    ppd = checkpoint(tmp_path, monkeypatch, FLAT)
    bad = {"greedy": {"configs": [{"tree_length": 6, "prompt_lookup_num_tokens": 0, "accept_length": 0.5,
                                   "inputs_per_step": 9}]}}
    (tmp_path / ch.ACCEPTANCE_NAME).write_text(json.dumps(bad))
    with pytest.raises(PPDError, match="below 1"):
        ch.resolve_decoding(ppd)
    (tmp_path / ch.ACCEPTANCE_NAME).write_text(json.dumps({"greedy": {"configs": [{"tree_length": "x"}]}}))
    with pytest.raises(PPDError, match="config 0"):
        ch.resolve_decoding(ppd)


def test_shipped_mode_takes_the_first_shipped_profile_whatever_the_machine(tmp_path, monkeypatch):
    ppd = checkpoint(tmp_path, monkeypatch, FLAT)
    mine = {"fingerprint": cp.fingerprint("cpu"), "model": "m", "dtype": "float32", "latency_ms": STEEP}
    data = json.loads((tmp_path / cp.SHIPPED_PROFILES).read_text()) + [mine]
    (tmp_path / cp.SHIPPED_PROFILES).write_text(json.dumps(data))
    assert cp.machine_profile(ppd, "float32").latency_ms[4] == 10.2
    monkeypatch.delenv(cp.PROFILE_ENV)  # otherwise the shipped profile of this very machine comes first
    assert cp.machine_profile(ppd, "float32").latency_ms[4] == 14.0


def test_the_weight_layout_switches_in_place_and_keeps_the_answers(tiny_model):
    import torch

    from prompt.model.weight_layout import STANDARD, TRANSPOSED, set_weight_layout, weight_layout

    ids = torch.tensor([[5, 9, 3, 7]])
    expected = Decoder(tiny_model).generate(ids, 12).token_ids
    count = sum(p.numel() for p in tiny_model.parameters())
    assert set_weight_layout(tiny_model, TRANSPOSED) == TRANSPOSED == weight_layout(tiny_model)
    weight = tiny_model.model.layers[0].mlp.up_proj.weight
    assert not weight.is_contiguous() and weight.t().is_contiguous()
    assert sum(p.numel() for p in tiny_model.parameters()) == count  # no second copy of the weights
    assert Decoder(tiny_model).generate(ids, 12).token_ids == expected
    set_weight_layout(tiny_model, STANDARD)
    assert weight_layout(tiny_model) == STANDARD and tiny_model.model.layers[0].mlp.up_proj.weight.is_contiguous()
    with pytest.raises(ValueError, match="weight layout"):
        set_weight_layout(tiny_model, "diagonal")


def test_a_profile_that_measured_both_layouts_prices_plain_decoding_in_the_faster_one(tmp_path, monkeypatch):
    from prompt.model.weight_layout import STANDARD, TRANSPOSED, weight_layout

    ppd = checkpoint(tmp_path, monkeypatch, STEEP)
    data = json.loads((tmp_path / cp.SHIPPED_PROFILES).read_text())
    data[0]["transposed_ms"] = {"1": 8.0, "2": 11.0, "8": 18.0, "16": 30.0, "32": 45.0}  # one row cheaper, more dearer
    (tmp_path / cp.SHIPPED_PROFILES).write_text(json.dumps(data))
    choice = ch.resolve_decoding(ppd)
    assert choice.tree_spec is None and choice.weight_layout == TRANSPOSED
    assert "weights transposed" in choice.reason and "predicted 1.25x the standard layout" in choice.reason
    decoder = Decoder(ppd)
    assert "(weights transposed)" in decoder.describe()
    decoder.generate([[5, 9, 3]], 4)  # a single sequence runs in its choice's layout ...
    assert weight_layout(ppd) == TRANSPOSED
    decoder.generate_batch([[5, 9, 3], [4, 4]], 4)  # ... a batch in the standard one
    assert weight_layout(ppd) == STANDARD
    # a flat machine: the tree wins, priced in the standard layout where it is cheaper
    ppd = checkpoint(tmp_path, monkeypatch, FLAT)
    data = json.loads((tmp_path / cp.SHIPPED_PROFILES).read_text())
    data[0]["transposed_ms"] = {"1": 9.0, "16": 30.0, "32": 45.0}
    (tmp_path / cp.SHIPPED_PROFILES).write_text(json.dumps(data))
    choice = ch.resolve_decoding(ppd)
    assert choice.tree_spec is not None and choice.weight_layout == STANDARD
