"""The sparse tree builder: best trees from accuracies, agreement with a Monte-Carlo simulation, bad input."""
import itertools
import json
import random
import subprocess
import sys

import pytest

from prompt import PPDError
from prompt.inference.budget import tree_input_length
from prompt.inference.sparse_tree_builder import (best_paths, build_tree, build_trees, expected_accept_length,
                                                  predicted_accept_length, rank_probabilities, steady_accept_length,
                                                  tree_spec)
from prompt.inference.tree import DEFAULT_TREE_FILE, DynamicTree, load_tree_specs
from prompt.model.layout import SpecialTokenLayout

ACCURACIES = [[0.3, 0.4, 0.45, 0.5], [0.15, 0.22, 0.26, 0.3], [0.1, 0.14, 0.17, 0.2]]


def test_best_paths_is_the_best_tree_by_brute_force():
    probs = rank_probabilities(ACCURACIES)
    all_paths = [list(p) for d in (1, 2) for p in itertools.product(range(4), repeat=d)]

    def value(paths):
        return sum(probs[0][p[0]] * (probs[1][p[1]] if len(p) > 1 else 1) for p in paths)

    for n in (1, 3, 5):
        best = max((c for c in itertools.combinations(all_paths, n)
                    if all(len(p) == 1 or [p[0]] in c for p in c)), key=value)
        chosen = best_paths(probs, n, max_depth=2)
        assert value([p for p, _ in chosen]) == pytest.approx(value(best))


def test_predicted_accept_length_matches_monte_carlo():
    probs = rank_probabilities(ACCURACIES)
    paths = best_paths(probs, 12, max_depth=3)
    tree = {tuple(p) for p, _ in paths}
    rng = random.Random(0)
    total, trials = 0, 40000
    for _ in range(trials):
        # the rank at which each special token's guess list holds the true token (4 = not in its top-4)
        ranks = [rng.choices(range(5), weights=row + [1 - sum(row)])[0] for row in probs]
        accepted = 0
        while accepted < 3 and tuple(ranks[: accepted + 1]) in tree:
            accepted += 1
        total += 1 + accepted
    assert total / trials == pytest.approx(expected_accept_length(paths), abs=0.02)


def test_specs_are_valid_and_fit_their_budget():
    """The budget is upstream's tree length: candidate nodes plus their special tokens, whatever the virtual
    tokens per special token."""
    trees = build_trees(ACCURACIES, 8, 24)
    assert list(trees) == [str(n) for n in range(8, 25)]
    for length, spec in trees.items():
        for virtual in (1, 3):
            tree = DynamicTree(spec, SpecialTokenLayout(3, virtual))
            assert tree.tree_length <= int(length)
    assert DynamicTree(trees["24"], SpecialTokenLayout(3)).tree_length >= 22  # the budget is used
    spec = tree_spec(rank_probabilities(ACCURACIES), 6)
    assert [len(v) for v in spec.values()] == [4, 6, 6]  # depth 1 has only 4 candidates (top-4)


def test_the_builder_keeps_the_tree_with_the_best_long_run_accept_length():
    """Among the node counts that fit the budget, the builder's tree beats each alternative by the Markov-chain
    accept length, and that accept length agrees with a simulation of the dynamic tree's steps."""
    probs = rank_probabilities(ACCURACIES)
    best = build_tree(ACCURACIES, 20)
    value = steady_accept_length(best, 3)
    for nodes in range(1, 11):
        other = tree_spec(probs, nodes, 20)
        if DynamicTree(other, SpecialTokenLayout(3)).tree_length <= 20:
            assert steady_accept_length(other, 3) <= value + 1e-9
    rng = random.Random(1)
    trees = {int(d): {tuple(p): k for p, _, k in nodes} for d, nodes in best.items()}
    available, total, steps = 3, 0, 20000
    for _ in range(steps):
        tree = trees[max(d for d in trees if d <= available)]
        ranks = [rng.choices(range(5), weights=row + [1 - sum(row)])[0] for row in probs]
        accepted = 0
        while accepted < 3 and tuple(ranks[: accepted + 1]) in tree:
            accepted += 1
        available = tree[tuple(ranks[:accepted])] if accepted else 3
        total += 1 + accepted
    assert total / steps == pytest.approx(value, abs=0.03)


def test_bad_accuracies_and_budgets(tmp_path):
    with pytest.raises(PPDError):
        rank_probabilities([[0.5, 0.4]])  # decreasing
    with pytest.raises(PPDError):
        rank_probabilities([])
    with pytest.raises(PPDError, match="smaller than the smallest tree"):
        build_trees(ACCURACIES, 0, 1)
    with pytest.raises(PPDError, match="smaller than the smallest tree"):
        build_tree(ACCURACIES, 1)
    bad = tmp_path / "acc.json"
    bad.write_text(json.dumps({"top_k_accuracy": [[1.5]]}))
    proc = subprocess.run([sys.executable, "-m", "prompt.inference.sparse_tree_builder", "--accuracies-file", str(bad),
                           "--output-file", str(tmp_path / "t.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("virtual", [1, 3])
def test_input_budget_formula_counts_the_inputs_of_the_tree_buffers(virtual):
    specs = list(load_tree_specs(DEFAULT_TREE_FILE).values()) + list(build_trees(ACCURACIES, 8, 30).values())
    for spec in specs:
        tree = DynamicTree(spec, SpecialTokenLayout(3, virtual))
        for depth, nodes in spec.items():
            assert tree_input_length([n for _, _, n in nodes], 3, virtual) == tree.buffers[int(depth)].num_inputs
    assert tree_input_length([], 3, virtual) == tree.recovery.num_inputs == 1 + 3 * virtual


def test_predicted_accept_length_of_a_spec_is_its_deepest_trees_expectation():
    probs = rank_probabilities(ACCURACIES)
    spec = tree_spec(probs, 6)
    assert predicted_accept_length(spec) == pytest.approx(expected_accept_length(best_paths(probs, 6, 3)), abs=1e-5)
