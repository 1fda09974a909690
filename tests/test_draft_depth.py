"""Drafts cut to the depth that pays (prompt.inference.draft_depth): the scoring of drafts against what the sequence
emitted, the depth chosen from the rates and the machine's costs, lossless decoding, and the choice that turns it
on for a decoding without a tree chosen for this machine."""
import json

import pytest
import torch

from conftest import tiny_llama
from prompt import Decoder, PPDError
from prompt.inference import choice as ch
from prompt.inference.candidates import Branches
from prompt.inference.choice import DecodingChoice, priced_drafts
from prompt.inference.draft_depth import (
    DraftPricing,
    accepted_depth,
    cut_to_depth,
    node_depths,
)
from test_choice_from_cost import STEEP, checkpoint
from test_lookup import reference
from test_suffix import repeating_reply

FLAT_COSTS = (1.0,) * 64  # a machine where any number of inputs costs one forward
STEEP_COSTS = tuple(1.0 + 2.0 * i for i in range(64))  # every input costs two more forwards


def test_drafts_are_scored_by_the_longest_path_the_emitted_tokens_follow():
    tree = Branches((5, 6, 7, 8), (-1, 0, 0, 2))  # 5 -> {6, 7 -> 8}
    assert node_depths(tree) == [1, 2, 2, 3]
    assert accepted_depth(tree, [5, 7, 8, 1]) == 3
    assert accepted_depth(tree, [5, 6, 9]) == 2
    assert accepted_depth(tree, [4, 5]) == 0
    cut = cut_to_depth(tree, node_depths(tree), 2)
    assert cut.tokens == (5, 6, 7) and cut.parents == (-1, 0, 0)
    assert cut_to_depth(tree, node_depths(tree), 3) is tree


def test_the_gate_learns_from_cut_drafts_and_opens_where_drafts_are_accepted():
    gate = DraftPricing((1.0, 1.4, 1.8, 2.2, 2.3, 2.4)).start()
    chain = Branches.chain([11, 12, 13, 14, 15])
    assert gate.cut(chain) == Branches()  # the prior does not pay for five inputs' worth of a 2.2x forward
    # the sequence goes on emitting exactly the draft: cut drafts are scored all the same
    gate.observe([10, 11])  # the root, then the next step's root...
    for token in (12, 13, 14, 15):
        assert gate.cut(Branches()) == Branches()
        gate.observe([token])
    assert gate.scored == 1 and gate.rates()[0] > 0.5
    for step in range(6):  # every later draft is accepted whole too
        gate.cut(Branches.chain([20 + step, 21 + step]))
        gate.observe([19 + step, 20 + step, 21 + step])
    assert gate.sent > 0 and gate.cut(chain) == chain  # now the whole chain pays
    # a sequence whose drafts miss closes again
    for step in range(12):
        gate.cut(Branches.chain([90, 91]))
        gate.observe([40 + step])
    assert gate.cut(chain) == Branches()
    rates = gate.rates()
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # never rising with depth


def test_the_cost_curve_decides_the_depth():
    rates_one = [1.0] + [0.5] * 31
    for costs, expected in ((FLAT_COSTS, 5), (STEEP_COSTS, 0), ((1.0, 1.9, 1.95, 1.97, 1.99, 2.0), 5)):
        gate = DraftPricing(costs).start()
        gate.shown, gate.hits = [1.0] * 32, rates_one
        assert gate.best_depth([1, 2, 3, 4, 5]) == expected, costs
    with pytest.raises(PPDError):
        DraftPricing((2.0, 3.0))


class Copying:
    """A source that proposes the reference continuation, right on some stretches and wrong on others."""

    def __init__(self, full, right):
        self.full, self.right = full, right

    def propose(self, seq, context):
        chain = list(self.full[len(context): len(context) + 6])
        return chain if self.right(len(context)) else [(t + 1) % 97 for t in chain]

    def accepted(self, seq, tokens):
        pass

    def finished(self, seq):
        pass


@pytest.mark.parametrize("costs", [FLAT_COSTS, STEEP_COSTS])
def test_priced_drafts_keep_greedy_output_and_send_drafts_only_where_they_pay(costs):
    model = tiny_llama(2)
    ids = torch.randint(3, 97, (1, 7), generator=torch.Generator().manual_seed(2))
    expected = reference(model, ids, 60)
    full = ids[0].tolist() + expected
    right = lambda length: length < 7 + 30  # noqa: E731 - right for the first 30 tokens, then wrong
    decoder = Decoder(model, DecodingChoice(None, 0, input_costs=costs), sources=[Copying(full, right)])
    result = decoder.generate(ids, 60)
    assert result.token_ids == expected
    assert "each draft cut to the depth that pays" in decoder.describe()
    steps_with_drafts = sum(1 for t in result.step_tokens if t > 1)
    if costs is STEEP_COSTS:
        assert result.forward_inputs == len(result.step_tokens)  # every step plain: nothing pays
    else:
        assert result.chain_wins > 3 and steps_with_drafts > 3 and result.accept_length > 1.5
    unpriced = Decoder(model, sources=[Copying(full, right)]).generate(ids, 60)
    assert unpriced.token_ids == expected
    if costs is FLAT_COSTS:  # the gate closes once the drafts go wrong: fewer inputs than verifying every draft
        assert result.forward_inputs < unpriced.forward_inputs


def test_repetitive_text_opens_the_gate_on_a_steep_machine():
    model, _, prompt, expected = repeating_reply(tiny_llama(4))
    costs = (1.0, 1.4, 1.8, 2.2) + tuple(2.2 + 0.05 * i for i in range(1, 60))  # an AVX2-like curve
    result = Decoder(model, DecodingChoice(None, 8, input_costs=costs)).generate(prompt, 60)
    assert result.token_ids == expected and result.accept_length > 2


def test_the_choice_prices_drafts_only_where_it_chose_them_for_this_machine(tmp_path, monkeypatch):
    entry = {"tree_length": 0, "prompt_lookup_num_tokens": 5, "suffix_nodes": 16, "machine": "Other CPU"}
    ppd = checkpoint(tmp_path, monkeypatch, STEEP, decoding={"float32": {**entry, "fingerprint": "elsewhere"}})
    (tmp_path / ch.ACCEPTANCE_NAME).unlink()
    choice = ch.resolve_decoding(ppd)
    assert (choice.prompt_lookup_num_tokens, choice.suffix_nodes) == (5, 16)
    assert choice.input_costs[:4] == pytest.approx((1.0, 11.333 / 10, 12.667 / 10, 1.4), abs=1e-3)  # STEEP, relative
    assert "each draft cut to the depth that pays on the shipped profile" in choice.reason
    assert Decoder(ppd).decoding.pricing is not None
    # the caller's own lookup length, or a tuned entry of this machine: every draft verified whole
    assert ch.resolve_decoding(ppd, prompt_lookup_num_tokens=5).input_costs == ()
    here = ch.fingerprint_key(ch.fingerprint("cpu"))
    (tmp_path / ch.DECODING_NAME).write_text(json.dumps({"float32": {**entry, "fingerprint": here}}))
    assert ch.resolve_decoding(ppd).input_costs == ()
    # priced_drafts itself: the profile's costs, never falling as inputs grow
    priced = priced_drafts(ppd, DecodingChoice(None, 10))
    assert priced.input_costs[0] == 1.0 and all(a <= b for a, b in zip(priced.input_costs, priced.input_costs[1:]))
