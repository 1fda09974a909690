"""Tree specs as data and the buffers built from them."""
import json

import pytest

from prompt import PPDError
from prompt.inference.tree import (DEFAULT_TREE_FILE, DynamicTree, build_tree_buffers, load_tree_specs,
                                   select_tree_spec, spec_input_length, spec_tree_length, specs_by_length)
from prompt.model.layout import SpecialTokenLayout


def test_buffers_of_a_small_tree():
    nodes = [([0], 2), ([1], 1), ([0, 0], 1)]
    buffers = build_tree_buffers(nodes, SpecialTokenLayout(2), depth=2)
    assert buffers.node_paths == [[], [0], [1], [0, 0]]
    assert buffers.node_parent == [-1, 0, 0, 1]
    assert buffers.top_k == 2
    assert buffers.candidate_index.tolist() == [0, 1, 2, 3]  # [root, s1 top0, s1 top1, s2 top0, s2 top1]
    # special tokens: root 2, node [0] 2, node [1] 1, node [0,0] 1
    assert buffers.special_rows == [[4, 5], [6, 7], [8], [9]]
    assert buffers.num_inputs == 10
    assert buffers.positions.tolist() == [0, 1, 1, 2, 1, 2, 2, 3, 2, 3]
    allowed = buffers.allowed.int()
    assert allowed[3].tolist() == [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]  # [0,0] sees root, [0], itself
    assert allowed[7].tolist() == [1, 1, 0, 0, 0, 0, 1, 1, 0, 0]  # 2nd special of [0] sees root, [0], both specials
    assert allowed[8].tolist() == [1, 0, 1, 0, 0, 0, 0, 0, 1, 0]


def test_dynamic_tree_picks_deepest_fillable_tree():
    tree = DynamicTree(json.load(open(DEFAULT_TREE_FILE)), SpecialTokenLayout(3))
    assert tree.for_special_tokens(3).depth == 3
    assert tree.for_special_tokens(2).depth == 2
    assert tree.for_special_tokens(1).depth == 1
    assert tree.input_length == max(b.num_inputs for b in tree.buffers.values())


def test_virtual_tokens_multiply_special_inputs():
    spec = {"1": [[[0], 0.5, 1]]}
    one = DynamicTree(spec, SpecialTokenLayout(1, 1))
    three = DynamicTree(spec, SpecialTokenLayout(1, 3))
    assert one.input_length == 4 and three.input_length == 8
    assert three.buffers[1].positions.tolist() == [0, 1, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("spec,message", [
    ({}, "non-empty"),
    ({"x": []}, "not an integer"),
    ({"4": [[[0], 0.1, 1]]}, "outside"),
    ({"1": [[[0, 0], 0.1, 1]]}, "deeper"),
    ({"2": [[[0, 0], 0.1, 1]], "1": [[[0], 0.1, 1]]}, "no parent"),
    ({"1": [[[0], 0.1, 5]]}, "special tokens"),
    ({"1": [[[-1], 0.1, 1]]}, "bad node"),
    ({"1": [["a", 0.1, 1]]}, "bad node"),
    ({"3": [[[0], 0.1, 1]]}, "no tree of depth"),
])
def test_malformed_specs_are_clear_errors(spec, message):
    with pytest.raises(PPDError, match=message):
        DynamicTree(spec, SpecialTokenLayout(3))


def test_tree_files_and_lengths(tmp_path):
    """Files are keyed by upstream's tree length (candidate nodes plus their special tokens), a key being a budget
    its tree may undershoot; a key smaller than its tree is refused."""
    small = {"1": [[[0], 0.5, 1]]}  # one node + one special token: length 2
    big = {"1": [[[0], 0.5, 1], [[1], 0.2, 1]]}  # length 4
    path = tmp_path / "trees.json"
    path.write_text(json.dumps({"2": small, "5": big}))
    assert set(load_tree_specs(str(path))) == {"2", "5"}
    assert select_tree_spec(str(path), 1, tree_length=5) == big
    assert select_tree_spec(str(path), 1, tree_length=2) == small
    assert select_tree_spec(str(path), 1) == big
    with pytest.raises(PPDError, match="no tree of length 4.*2, 5"):
        select_tree_spec(str(path), 1, tree_length=4)
    path.write_text(json.dumps({"3": big}))
    with pytest.raises(PPDError, match="more than its length 3"):
        select_tree_spec(str(path), 1)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PPDError, match="malformed"):
        select_tree_spec(str(tmp_path / "bad.json"), 1)
    with pytest.raises(PPDError, match="does not exist"):
        select_tree_spec(str(tmp_path / "none.json"), 1)


def test_files_keyed_by_forward_inputs_are_rekeyed_by_tree_length(tmp_path):
    """A file written before tree lengths took upstream's meaning (keys = inputs of the forward: root, its special
    token, then each node and its special tokens) reads as keyed by tree length."""
    small = {"1": [[[0], 0.5, 1]]}
    big = {"1": [[[0], 0.5, 1], [[1], 0.2, 1]]}
    path = tmp_path / "trees.json"
    path.write_text(json.dumps({"4": small, "6": big}))
    assert specs_by_length(str(path), 1) == {2: small, 4: big}
    assert spec_tree_length(big, 1) == 4 and spec_input_length(big, 1) == 6
    assert DynamicTree(big, SpecialTokenLayout(1)).tree_length == 4
