"""Acceptance rules on hand-built trees: the vectorised verification against the rule written out node by node."""
import json
import math
import random

import pytest
import torch

from conftest import with_chains
from prompt import PPDError
from prompt.inference.acceptance import (GreedyAcceptance, TypicalAcceptance, TypicalSampling, acceptance_rule, draw,
                                         greedy_best, typical_filtered_probs)
from prompt.inference.tree import DEFAULT_TREE_FILE, DynamicTree, build_tree_buffers
from prompt.model.layout import SpecialTokenLayout

VOCAB = 8
#          0 root, 1 [0], 2 [1], 3 [0,0], 4 [0,1], 5 [1,0]
NODES = [([0], 2), ([1], 2), ([0, 0], 1), ([0, 1], 1), ([1, 0], 1)]


def one_hot_logits(argmaxes):
    logits = torch.full((len(argmaxes), VOCAB), -10.0)
    logits[torch.arange(len(argmaxes)), torch.tensor(argmaxes)] = 10.0
    return logits


def test_greedy_takes_the_deepest_path_the_model_agrees_with():
    tree = build_tree_buffers(NODES, SpecialTokenLayout(2), depth=2)
    assert tree.node_paths == [[], [0], [1], [0, 0], [0, 1], [1, 0]]
    tokens = torch.tensor([7, 1, 2, 3, 4, 5])
    # the model predicts 2 after the root (node [1]), 5 after [1] (node [1,0]), then 6
    logits = one_hot_logits([2, 3, 5, 0, 0, 6])
    best, next_token = GreedyAcceptance().verify(tree, tokens, logits)
    assert int(best) == 5 and int(next_token) == 6 and tree.accepted_path[5] == [0, 2, 5]
    # a rejected parent rejects its children even when they would match
    logits = one_hot_logits([0, 3, 5, 0, 0, 6])
    best, next_token = GreedyAcceptance().verify(tree, tokens, logits)
    assert int(best) == 0 and int(next_token) == 0
    # one level only: [0] accepted, its children not
    logits = one_hot_logits([1, 0, 5, 0, 0, 6])
    best, next_token = GreedyAcceptance().verify(tree, tokens, logits)
    assert int(best) == 1 and int(next_token) == 0


def test_typical_acceptance_breaks_depth_ties_by_path_likelihood():
    tree = build_tree_buffers(NODES, SpecialTokenLayout(2), depth=2)
    tokens = torch.tensor([7, 1, 2, 3, 4, 5])
    probs = torch.full((6, VOCAB), 1e-4)
    probs[0, 1], probs[0, 2] = 0.3, 0.6  # both children of the root pass the threshold, [1] more likely
    probs[1, 3], probs[1, 6] = 0.9, 0.1  # [0,0] very likely after [0]
    probs[2, 5], probs[2, 6] = 0.4, 0.6  # [1,0] less likely after [1]
    probs[3:, 6] = 0.99
    logits = torch.log(probs / probs.sum(-1, keepdim=True))
    rule = TypicalAcceptance(temperature=1.0, posterior_threshold=0.09, posterior_alpha=0.3)
    best, _ = rule.verify(tree, tokens, logits, torch.Generator().manual_seed(0))
    # depth-2 candidates [0,0] (0.3 * 0.9) and [1,0] (0.6 * 0.4): the first path is likelier
    assert int(best) == 3
    probs[1, 3] = 1e-4  # [0,0] now falls below the threshold: [1,0] is the only depth-2 path
    logits = torch.log(probs / probs.sum(-1, keepdim=True))
    best, _ = rule.verify(tree, tokens, logits, torch.Generator().manual_seed(0))
    assert int(best) == 5


def test_typical_sampling_with_a_certain_model_is_greedy():
    tree = build_tree_buffers(NODES, SpecialTokenLayout(2), depth=2)
    tokens = torch.tensor([7, 1, 2, 3, 4, 5])
    logits = one_hot_logits([2, 3, 5, 0, 0, 6]) * 5
    best, next_token = TypicalSampling(1.0).verify(tree, tokens, logits, torch.Generator().manual_seed(3))
    assert (int(best), int(next_token)) == (5, 6)


def reference_greedy(tree, tokens, logits):
    """The greedy rule node by node, as the paper states it: parents come before children."""
    targets = logits.argmax(-1).tolist()
    accepted = [True] + [False] * (tree.num_nodes - 1)
    best = 0
    for i in range(1, tree.num_nodes):
        parent = tree.node_parent[i]
        accepted[i] = accepted[parent] and tokens[i] == targets[parent]
        if accepted[i] and len(tree.node_paths[i]) > len(tree.node_paths[best]):
            best = i
    return best, targets[best]


@pytest.mark.parametrize("seed", range(20))
def test_vectorised_greedy_equals_the_node_by_node_rule(seed):
    rng = random.Random(seed)
    spec = json.load(open(DEFAULT_TREE_FILE))
    dynamic = DynamicTree(spec, SpecialTokenLayout(3))
    tree = dynamic.for_special_tokens(rng.randint(0, 3))
    if rng.random() < 0.5:
        tree = with_chains(tree, (rng.randint(1, 5),), 0, SpecialTokenLayout(3))
    vocab = 5  # few tokens: many matches, long accepted paths
    tokens = torch.tensor([rng.randrange(vocab) for _ in range(tree.num_nodes)])
    logits = torch.randn(tree.num_nodes, vocab, generator=torch.Generator().manual_seed(seed))
    best, next_token = GreedyAcceptance().verify(tree, tokens, logits)
    assert (int(best), int(next_token)) == reference_greedy(tree, tokens.tolist(), logits)
    # the batch's host-side form of the rule picks the same node
    assert greedy_best(tree, tokens.tolist(), logits.argmax(-1).tolist()) == int(best)


def test_draw_samples_each_row_by_its_probabilities():
    """The inverse-CDF draw that replaces torch.multinomial: frequencies within sampling noise of the probabilities
    (unnormalised rows too), zero-probability tokens never drawn (also at the ends), seeded draws repeat."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.2, 0.3, 0.0],  # zeros first, between and last
                          [2.0, 0.0, 0.0, 0.0, 0.0, 6.0]])  # unnormalised: 0.25 / 0.75
    n = 40_000
    samples = draw(probs[:, None, :].expand(2, n, 6), torch.Generator().manual_seed(0))
    assert samples.shape == (2, n)
    for row, expected in zip(samples, probs / probs.sum(-1, keepdim=True)):
        counts = torch.bincount(row, minlength=6).double()
        assert (counts[expected == 0] == 0).all()
        # chi-square with 2 and 1 degrees of freedom: 13.8 and 10.8 are the 0.1% points
        observed, mass = counts[expected > 0], expected[expected > 0].double() * n
        assert float(((observed - mass) ** 2 / mass).sum()) < 13.8
    one = torch.tensor([0.1, 0.0, 0.9])
    assert draw(one).shape == () and int(draw(torch.tensor([0.0, 0.0, 1.0]))) == 2
    assert torch.equal(draw(probs, torch.Generator().manual_seed(3)), draw(probs, torch.Generator().manual_seed(3)))


def test_typical_filter_keeps_the_likely_tokens():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    probs = typical_filtered_probs(logits, 1.0, 0.09, 0.3)
    assert probs[0, 2] == 0 and probs[0, 3] == 0 and torch.isclose(probs.sum(), torch.tensor(1.0))


def test_rules_by_name():
    assert acceptance_rule().name == "greedy"
    assert acceptance_rule(temperature=0.7).name == "exact"
    assert acceptance_rule("typical_sampling", 0.7).name == "typical_sampling"
    with pytest.raises(PPDError, match="no temperature"):
        acceptance_rule("greedy", 0.7)  # greedy no longer means the threshold rule at temperature > 0
    with pytest.raises(PPDError, match="temperature > 0"):
        acceptance_rule("typical", 0.0)
    with pytest.raises(PPDError):
        acceptance_rule("beam")
    with pytest.raises(PPDError):
        acceptance_rule(temperature=float("nan"))


# --------------------------------------------------------------------------------------------------
# upstream's two modes, against upstream's formula (`evaluate_posterior` there) computed here path by path
def upstream_paths(tree):
    """Upstream's candidate paths (`retrieve_indices`): one per leaf, root first, the last leaf first."""
    parents = set(tree.node_parent[1:])
    leaves = [i for i in range(tree.num_nodes) if i not in parents]
    return [tree.accepted_path[leaf] for leaf in reversed(leaves)]


def filtered(logits, temperature):
    """Upstream's typical filter written out: tokens below min(0.09, 0.3 * exp(-entropy)) removed."""
    probs = torch.softmax(logits.double() / temperature, -1)
    entropy = -(probs * torch.log(probs + 1e-5)).sum()
    kept = torch.where(probs < min(0.09, 0.3 * float(torch.exp(-entropy))), 0.0, probs)
    return kept / kept.sum()


def upstream_greedy_reference(tree, tokens, logits, temperature):
    """Upstream's --sampling greedy above 0: each path accepted while every candidate's probability exceeds the
    entropy threshold; the likeliest of the longest; the argmax after it."""
    best_path, best_length, best_likelihood = None, 0, None
    for path in upstream_paths(tree):
        length, likelihood = 0, 0.0
        for parent, node in zip(path, path[1:]):
            probs = torch.softmax(logits[parent].double() / temperature, -1)
            entropy = -(probs * torch.log(probs + 1e-5)).sum()
            p = float(probs[tokens[node]])
            if not p > min(0.09, 0.3 * float(torch.exp(-entropy))):
                break
            length, likelihood = length + 1, likelihood + math.log(p)
        if length > best_length or (length == best_length and length and likelihood > best_likelihood):
            best_path, best_length, best_likelihood = path, length, likelihood
    best = best_path[best_length] if best_length else 0
    return best, int(logits[best].argmax())


def upstream_typical_reference(tree, tokens, logits, temperature, generator):
    """Upstream's --sampling typical: every path draws its own sample at every depth and is accepted while its
    candidates equal them; the first longest path; a fresh filtered draw after it."""
    best, best_length = 0, 0
    for path in upstream_paths(tree):
        length = 0
        for parent, node in zip(path, path[1:]):
            if int(torch.multinomial(filtered(logits[parent], temperature), 1, generator=generator)) != tokens[node]:
                break
            length += 1
        if length > best_length:
            best, best_length = path[length], length
    return best, int(torch.multinomial(filtered(logits[best], temperature), 1, generator=generator))


@pytest.mark.parametrize("seed", range(20))
def test_upstream_greedy_is_upstreams_typical_acceptance_with_an_argmax_next_token(seed):
    rng = random.Random(seed)
    tree = DynamicTree(json.load(open(DEFAULT_TREE_FILE)), SpecialTokenLayout(3)).for_special_tokens(rng.randint(0, 3))
    vocab = 4  # few tokens: many candidates pass, long accepted paths and depth ties
    tokens = [rng.randrange(vocab) for _ in range(tree.num_nodes)]
    logits = torch.randn(tree.num_nodes, vocab, generator=torch.Generator().manual_seed(seed)) * 2
    temperature = rng.choice([0.5, 0.7, 1.0])
    rule = acceptance_rule("upstream_greedy", temperature)
    best, next_token = rule.verify(tree, torch.tensor(tokens), logits)
    assert (int(best), int(next_token)) == upstream_greedy_reference(tree, tokens, logits, temperature)
    assert int(rule.first_token(logits[0])) == int(logits[0].argmax())


def test_upstream_typical_compares_each_path_with_its_own_samples():
    """On the two-level tree, with the grandchildren impossible: node [1] (one path) is taken with probability q2;
    node [0] is on two paths, each drawing its own sample, so it is taken with 1 - (1 - q1)^2 of the rest (one draw
    per node, as typical_sampling draws, would give q1)."""
    tree = build_tree_buffers(NODES, SpecialTokenLayout(2), depth=2)
    tokens = torch.tensor([7, 1, 2, 3, 4, 5])
    probs = torch.full((6, VOCAB), 1e-6)
    probs[0, 1], probs[0, 2], probs[0, 6] = 0.3, 0.2, 0.5  # root: [0] is token 1, [1] token 2
    probs[1:, 6] = 1.0  # after [0] and [1] the model says 6: their children (3, 4, 5) are filtered out
    logits = torch.log(probs / probs.sum(-1, keepdim=True))
    q1, q2 = (float(filtered(logits[0], 1.0)[t]) for t in (1, 2))
    expected = {2: q2, 1: (1 - q2) * (1 - (1 - q1) ** 2), 0: (1 - q2) * (1 - q1) ** 2}
    rule = acceptance_rule("upstream_typical", 1.0)
    generator = torch.Generator().manual_seed(0)
    n = 6000
    counts = {0: 0, 1: 0, 2: 0}
    for _ in range(n):
        best, next_token = rule.verify(tree, tokens, logits, generator)
        counts[int(best)] += 1
        assert int(next_token) == 6 if int(best) else int(next_token) in (1, 2, 6)
    chi2 = sum((counts[k] - n * p) ** 2 / (n * p) for k, p in expected.items())
    assert chi2 < 13.8  # 2 degrees of freedom, the 0.1% point
    assert abs(counts[1] / n - (1 - q2) * q1) > 0.05  # not one draw per node


def test_upstream_typical_matches_upstreams_formula_on_a_real_tree():
    """Distribution of the chosen node and next token, ours against upstream's formula with real draws (two-sample
    chi-square over the outcomes seen often enough)."""
    tree = DynamicTree(json.load(open(DEFAULT_TREE_FILE)), SpecialTokenLayout(3)).for_special_tokens(2)
    rng = random.Random(1)
    vocab = 3
    tokens = [rng.randrange(vocab) for _ in range(tree.num_nodes)]
    logits = torch.randn(tree.num_nodes, vocab, generator=torch.Generator().manual_seed(1))
    rule = acceptance_rule("upstream_typical", 0.8)
    ours, theirs = {}, {}
    generator, reference = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    n = 3000
    for _ in range(n):
        best, next_token = rule.verify(tree, torch.tensor(tokens), logits, generator)
        key = (int(best), int(next_token))
        ours[key] = ours.get(key, 0) + 1
        key = upstream_typical_reference(tree, tokens, logits, 0.8, reference)
        theirs[key] = theirs.get(key, 0) + 1
    keys = [k for k in set(ours) | set(theirs) if ours.get(k, 0) + theirs.get(k, 0) >= 20]
    assert len(keys) >= 4  # the test distinguishes something
    chi2 = sum((ours.get(k, 0) - theirs.get(k, 0)) ** 2 / (ours.get(k, 0) + theirs.get(k, 0)) for k in keys)
    assert chi2 < 3.3 * len(keys) + 10  # well inside the 0.1% point of chi-square with len(keys) - 1 dof
    assert int(rule.first_token(logits[0], generator)) in range(vocab)


def test_upstream_rules_are_greedy_at_temperature_0_and_named():
    assert acceptance_rule("upstream_greedy", 0.0).name == "greedy"
    assert acceptance_rule("upstream_typical", 0).name == "greedy"
    assert acceptance_rule("upstream_greedy", 0.7).describe().startswith("upstream's greedy")
    with pytest.raises(PPDError, match="exact sampling only"):
        acceptance_rule("upstream_typical", 0.7, top_p=0.9)
