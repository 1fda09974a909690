"""Exact sampling: the joint distribution of the first sampled tokens equals plain sampling's, for any tree.

On a tiny random model with a 4-token vocabulary, the distribution of the first three tokens is enumerated from
the base model (with temperature, top-k and top-p applied by transformers' own warpers) and compared with
samples from the PPD loop by a chi-square test. The guesses are often right at this vocabulary size, so most
samples go through accepted children, refused children, chains and residual draws. The same test, with the
same sample size, rejects typical acceptance.
"""
import itertools

import pytest
import torch
from scipy.stats import chi2

from conftest import tiny_llama
from prompt import Decoder, PPDError, PromptConfig, PromptDecoder
from prompt.inference.acceptance import ExactSampling
from prompt.inference.candidates import Branches, StatelessSource

VOCAB = 4
SAMPLES = 1200
WIDE_TREE = {"1": [[[0], 0.5, 2], [[1], 0.3, 2], [[2], 0.1, 1]],
             "2": [[[0], 0.5, 2], [[1], 0.3, 2], [[2], 0.1, 1], [[0, 0], 0.3, 1], [[0, 1], 0.2, 1],
                   [[1, 0], 0.1, 1], [[1, 1], 0.1, 1]]}


class FixedChain(StatelessSource):
    """A deterministic draft: always the same two tokens after the root (often refused, sometimes taken)."""

    def propose(self, seq, context):
        return [1, 3]


class FixedTree(StatelessSource):
    """A deterministic context tree: 1 -> {3, 2}, and 0 (siblings at two depths, as a suffix tree proposes)."""

    def propose(self, seq, context):
        return Branches((1, 3, 2, 0), (-1, 0, 0, -1))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny forwards: thread start-up costs more than it saves here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spread_model(seed):
    model = tiny_llama(seed, vocab=VOCAB)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.1)  # undo most of tiny_llama's sharpening: spread-out distributions
    return model


def exact_joint(model, ids, rule, length=3):
    """P(first `length` tokens) of plain sampling, enumerated: {tuple: probability}."""
    joint = {}
    for tokens in itertools.product(range(VOCAB), repeat=length - 1):
        sequence = torch.tensor([ids + list(tokens)])
        with torch.no_grad():
            logits = model(sequence).logits[0, len(ids) - 1:]
        probs = rule.probs(logits)  # [length, vocab]: after the prompt, then after each token
        prefix = 1.0
        for k, t in enumerate(tokens):
            prefix *= float(probs[k, t])
        for last in range(VOCAB):
            joint[tokens + (last,)] = prefix * float(probs[length - 1, last])
    return joint


def chi_square_p_value(joint, samples):
    counts = {}
    for sample in samples:
        counts[sample] = counts.get(sample, 0) + 1
    n = len(samples)
    # pool the outcomes expected fewer than 5 times into one bin
    stat, pooled_expected, pooled_observed, bins = 0.0, 0.0, 0, 0
    for outcome, p in joint.items():
        expected, observed = p * n, counts.get(outcome, 0)
        if expected < 5:
            pooled_expected += expected
            pooled_observed += observed
            continue
        stat += (observed - expected) ** 2 / expected
        bins += 1
    if pooled_expected > 0:
        stat += (pooled_observed - pooled_expected) ** 2 / max(pooled_expected, 1e-9)
        bins += 1
    return float(chi2.sf(stat, bins - 1))


def ppd_model(seed):
    model = spread_model(seed)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=2, prompt_tuning_init="RANDOM"))
    return model, ppd


@pytest.mark.parametrize("temperature,top_p,top_k,source", [(1.0, None, None, FixedChain), (0.7, 0.9, 3, None),
                                                            (1.0, None, None, FixedTree)])
def test_exact_sampling_matches_plain_sampling(temperature, top_p, top_k, source):
    model, ppd = ppd_model(11)
    ids = [3, 1, 2, 1]
    sources = [source()] if source else []
    decoder = Decoder(ppd, tree_spec=WIDE_TREE, sources=sources, temperature=temperature, sampling="exact",
                      top_p=top_p, top_k=top_k)
    joint = exact_joint(model, ids, decoder.rule)
    results = [decoder.generate(torch.tensor([ids]), 3, seed=seed) for seed in range(SAMPLES)]
    samples = [tuple(r.token_ids) for r in results]
    # the tree did work: many steps accepted more than the root
    assert sum(r.forward_passes == 2 for r in results) > SAMPLES * 0.2
    assert chi_square_p_value(joint, samples) > 1e-3


def test_the_same_test_rejects_typical_acceptance():
    model, ppd = ppd_model(11)
    ids = [3, 1, 2, 1]
    decoder = Decoder(ppd, tree_spec=WIDE_TREE, sources=[FixedChain()], temperature=1.0, sampling="typical")
    joint = exact_joint(model, ids, ExactSampling(1.0))
    samples = [tuple(decoder.generate(torch.tensor([ids]), 3, seed=seed).token_ids) for seed in range(SAMPLES)]
    assert chi_square_p_value(joint, samples) < 1e-6


def test_exact_sampling_is_reproducible_and_plain_without_prompt_tokens():
    model, ppd = ppd_model(12)
    ids = torch.tensor([[3, 1, 2, 1, 2]])
    decoder = Decoder(ppd, temperature=0.8, top_p=0.9)
    assert decoder.rule.name == "exact"  # the default above temperature 0
    first = decoder.generate(ids, 20, seed=5).token_ids
    assert decoder.generate(ids, 20, seed=5).token_ids == first
    assert len({tuple(decoder.generate(ids, 20, seed=s).token_ids) for s in range(5)}) > 1
    plain = Decoder(model, temperature=0.8, top_p=0.9)
    assert plain.generate(ids, 20, seed=5).new_tokens == 20


def test_shaping_arguments_are_checked():
    model = spread_model(0)
    for kwargs in ({"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"top_k": 2.5}):
        with pytest.raises(PPDError):
            Decoder(model, temperature=0.7, **kwargs)
    with pytest.raises(PPDError, match="exact sampling only"):
        Decoder(model, temperature=0.7, sampling="typical", top_p=0.9)
