"""Upstream's tree lengths and trees: the shipped upstream trees, their pick by checkpoint name, and trees of other
lengths built on the spot from a checkpoint's accuracies. Tiny random Llamas; greedy output must equal generate's."""
import json
import os

import pytest
import torch

from conftest import tiny_llama
from prompt import Decoder, PPDError, PromptConfig, PromptDecoder
from prompt.inference.choice import resolve_decoding
from prompt.inference.tree import (TREES_DIR, DynamicTree, specs_by_length, spec_tree_length, upstream_tree_file)
from prompt.model.layout import SpecialTokenLayout
from prompt.model.prompt_decoder import AutoPromptDecoder

ACCURACIES = [[0.3, 0.4, 0.45, 0.5], [0.15, 0.22, 0.26, 0.3], [0.1, 0.14, 0.17, 0.2]]
# upstream's tree files (prompt/inference/dynamic_sparse_trees_*.py): the lengths each one defines
UPSTREAM_LENGTHS = {
    ("vicuna-7b", 3): set(range(50, 121)) | {5, 10, 20, 35, 200, 500},
    ("vicuna-7b", 2): set(range(60, 121)),
    ("vicuna-13b", 3): set(range(40, 121)),
    ("vicuna-13b", 2): set(range(2, 125)),  # upstream's length-1 tree holds 2 and is left out
    ("mobilellama", 3): {75, 105, 135, 165, 195, 225, 255, 285, 315, 345, 405, 435},
    ("vicuna-68m", 3): set(range(300, 701, 50)),
}


def reference(model, ids, n):
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("family,n", sorted(UPSTREAM_LENGTHS))
def test_shipped_upstream_trees_hold_upstreams_lengths(family, n):
    path, default = upstream_tree_file([f"hmarkc/ppd-{family}-v1.3"], n)
    assert os.path.basename(path) == f"{family}_{n}.json.gz"
    specs = specs_by_length(path, n)
    assert set(specs) == UPSTREAM_LENGTHS[(family, n)]
    for length, spec in specs.items():
        # a key is the builder's budget: upstream's trees fill it, or fall short by a few
        assert length - 4 <= spec_tree_length(spec, n) <= length
    if n == 3:
        assert default in specs
        DynamicTree(specs[default], SpecialTokenLayout(n))  # builds its buffers


def test_upstream_trees_are_picked_by_name_as_upstream_does():
    """Upstream looks for the family in the model path (its answer script) or the base model's name (its model):
    case-insensitive; the number of special tokens picks the 2- or 3-token file."""
    assert upstream_tree_file(["lmsys/vicuna-7b-v1.3"], 3) == (os.path.join(TREES_DIR, "vicuna-7b_3.json.gz"), 105)
    assert upstream_tree_file([None, "/ckpt/ppd-Vicuna-13B-2-1"], 2)[0].endswith("vicuna-13b_2.json.gz")
    assert upstream_tree_file(["hmarkc/ppd-MobileLLaMA-1.4B-Chat"], 3) == (
        os.path.join(TREES_DIR, "mobilellama_3.json.gz"), 285)
    assert upstream_tree_file(["hmarkc/ppd-MobileLLaMA-1.4B-Chat"], 2) is None  # upstream has no such file
    assert upstream_tree_file(["HuggingFaceTB/SmolLM2-135M-Instruct"], 3) is None


def save_checkpoint(folder, seed=0, accuracies=None):
    model = tiny_llama(seed)
    PromptDecoder(model, PromptConfig(num_special_tokens=3, base_model_name_or_path="unused",
                                      prompt_tuning_init="RANDOM")).save_pretrained(str(folder))
    if accuracies is not None:
        (folder / "accuracies.json").write_text(json.dumps({"top_k_accuracy": accuracies}))
    return model, AutoPromptDecoder.from_pretrained(str(folder), base_model=model)


def test_an_upstream_checkpoint_decodes_with_upstreams_tree(tmp_path):
    """A checkpoint named as upstream's published one decodes with upstream's default tree (105 for Vicuna-7B) and
    with any of upstream's lengths, exactly as greedy decoding."""
    model, ppd = save_checkpoint(tmp_path / "ppd-vicuna-7b-v1.3")
    choice = resolve_decoding(ppd)
    assert spec_tree_length(choice.tree_spec, 3) == 105 and "vicuna-7b_3.json.gz" in choice.tree_source
    assert "length 105" in choice.tree_source
    ids = torch.randint(3, 97, (1, 7), generator=torch.Generator().manual_seed(0))
    expected = reference(model, ids, 20)
    for length in (None, 60):
        decoder = Decoder(ppd, tree_length=length)
        assert decoder.tree.tree_length == (length or 105)
        assert decoder.generate(ids, 20).token_ids == expected


def test_a_length_no_tree_file_holds_is_built_from_the_checkpoints_accuracies(tmp_path):
    model, ppd = save_checkpoint(tmp_path / "ckpt", accuracies=ACCURACIES)
    # the packaged default tree (length 17) comes from its file; another length is built
    assert "default_3.json" in resolve_decoding(ppd, tree_length=17).tree_source
    choice = resolve_decoding(ppd, tree_length=23)
    assert "built from" in choice.tree_source and "accuracies.json" in choice.tree_source
    assert 21 <= spec_tree_length(choice.tree_spec, 3) <= 23
    ids = torch.randint(3, 97, (1, 5), generator=torch.Generator().manual_seed(1))
    assert Decoder(ppd, tree_length=23).generate(ids, 20).token_ids == reference(model, ids, 20)
    with pytest.raises(PPDError, match="smaller than the smallest tree"):
        resolve_decoding(ppd, tree_length=1)


def test_without_accuracies_a_missing_length_is_a_clear_error(tmp_path):
    _, ppd = save_checkpoint(tmp_path / "ckpt")
    with pytest.raises(PPDError, match=r"no tree of length 999 .*available lengths.*no accuracies\.json"):
        resolve_decoding(ppd, tree_length=999)
    _, ppd = save_checkpoint(tmp_path / "two", accuracies=ACCURACIES[:2])
    with pytest.raises(PPDError, match="accuracies of 2 special tokens; the checkpoint has 3"):
        resolve_decoding(ppd, tree_length=999)


def test_corrupt_compressed_tree_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "trees.json.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(PPDError, match="corrupt or unreadable"):
        specs_by_length(str(bad), 3)
