"""Context candidates as a tree: merging the sources, the buffers of a context tree, the suffix rule, and lossless
greedy decoding with branches that win."""
import random

import pytest
import torch

from conftest import tiny_llama, with_chains
from prompt import Decoder, PPDError, PromptConfig, PromptDecoder
from prompt.inference.candidates import Branches, PromptLookup, StatelessSource, SuffixCandidates, merge_proposals
from prompt.inference.tree import build_tree_buffers, with_branches
from prompt.model.layout import SpecialTokenLayout


def reference(model, ids, n):
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def repeating_reply(model, new_tokens=60):
    """(model, random prompt tokens on it, a prompt holding the model's own earlier reply, its greedy reply):
    fed its continuation back, the model's reply repeats text it has seen."""
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    ids = torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(3))
    prompt = torch.cat([ids, torch.tensor([reference(model, ids, new_tokens)]), ids], 1)
    return model, ppd, prompt, reference(model, prompt, new_tokens)


def test_merge_shares_common_prefixes_keeps_source_order_and_budget():
    tree = Branches((3, 4, 5, 8), (-1, 0, 0, -1))  # 3 -> {4, 5}, 8
    merged = merge_proposals([[3, 4, 7], tree, [], [3, 9]])
    assert merged.tokens == (3, 4, 7, 5, 8, 9) and merged.parents == (-1, 0, 1, 0, -1, 0)
    cut = merge_proposals([[3, 4, 7], tree], max_nodes=4)
    assert cut.tokens == (3, 4, 7, 5)
    # a node whose parent the budget cut is dropped with its whole subtree
    assert merge_proposals([Branches((1, 2, 3), (-1, 0, 1)), [6]], max_nodes=1).tokens == (1,)
    assert not merge_proposals([[], Branches()])


def test_context_tree_buffers():
    layout = SpecialTokenLayout(2)
    tree = build_tree_buffers([([0], 2)], layout, depth=1)  # root, one prompt-token node
    merged = with_branches(tree, (-1, 0, 0, -1), 0, layout)  # a -> {b, c}, d
    assert merged.num_prompt_nodes == 2 and merged.num_nodes == 6
    assert merged.node_parent == [-1, 0, 0, 2, 2, 0]
    assert merged.depths.tolist() == [0, 1, 1, 2, 2, 1]
    assert merged.accepted_path[4] == [0, 2, 4]
    assert merged.allowed[4, :6].int().tolist() == [1, 0, 1, 0, 1, 0]  # c sees root, a and itself only
    assert merged.earlier_siblings[4, 3] and not merged.earlier_siblings[3, 4]
    # a chain is the tree whose parents run [-1, 0, 1, ...]
    chain = with_chains(tree, (3,), 0, layout)
    assert chain.node_parent == with_branches(tree, (-1, 0, 1), 0, layout).node_parent
    with pytest.raises(PPDError):
        with_branches(tree, (0,), 0, layout)


def test_suffix_rule_branches_every_match_scored_by_counts():
    source = SuffixCandidates(max_nodes=8, spec_factor=4, min_probability=0.2)
    # "1 2" was followed by 3 4, 3 5 and 3 4: one tree 3 -> {4 (2 of 3), 5 (1 of 3)}
    context = [1, 2, 3, 4, 9, 1, 2, 3, 5, 9, 1, 2, 3, 4, 7, 1, 2]
    proposal = source.propose(None, context)
    assert proposal.tokens[:2] == (3, 4) and proposal.parents[:2] == (-1, 0)
    assert 5 in proposal.tokens and proposal.parents[proposal.tokens.index(5)] == 0  # the rarer match: a branch
    assert proposal.tokens == (3, 4, 5, 7, 9, 9, 1, 1)  # equal estimates: the shallower node first
    assert proposal.parents == (-1, 0, 0, 1, 1, 2, 3, 4)
    # the budget follows the match length: a 1-token match earns spec_factor nodes, a longer one more
    short = SuffixCandidates(max_nodes=16, spec_factor=2, min_probability=0.0).propose(None, [5, 6, 7, 8, 9, 5])
    assert short.tokens == (6, 7)
    long = SuffixCandidates(max_nodes=16, spec_factor=2, min_probability=0.0).propose(None, 
        [5, 6, 7, 8, 9, 10, 11, 12, 5, 6, 7])
    assert long.tokens == (8, 9, 10, 11, 12, 5)
    assert not SuffixCandidates().propose(None, [1, 2, 3])  # nothing repeats
    stopped = SuffixCandidates(spec_factor=8, stop_token_ids=[9]).propose(None, [4, 7, 8, 9, 1, 2, 4, 7])
    assert stopped.tokens == (8, 9)  # paths end at a stop token
    with pytest.raises(PPDError):
        SuffixCandidates(max_nodes=0)


class Sequence:
    """A sequence as the decode loop passes it to a source: one object for its life, with its stop tokens."""

    stop_token_ids = None


def test_suffix_history_holds_earlier_answers_once_they_finish():
    source = SuffixCandidates(spec_factor=8, min_probability=0.0)
    one, two = Sequence(), Sequence()
    first = [50, 51, 52]  # the prompt and the first token (52)
    source.propose(one, first)
    source.accepted(one, [52, 60, 61, 62, 63])
    first += [60, 61, 62, 63, 64]
    source.propose(one, first)
    source.accepted(one, [64])
    assert not source.history.answers  # still the current sequence
    second = [70, 71, 60, 61]
    assert not source.propose(two, second)  # the first has not finished: its answer is not history yet
    source.finished(one)
    assert source.history.answers == [[52, 60, 61, 62, 63, 64]]
    proposal = source.propose(two, second)
    assert proposal.tokens == (62, 63, 64)
    source.forget()
    assert not source.history.answers and not source.propose(Sequence(), [70, 71, 60, 61])


def test_a_sources_proposals_end_at_the_requests_own_stop_tokens():
    source, lookup = SuffixCandidates(spec_factor=8, stop_token_ids=[9]), PromptLookup(5, stop_token_ids=[9])
    stopping = Sequence()
    stopping.stop_token_ids = frozenset([1])
    context = [4, 7, 8, 9, 1, 2, 4, 7]
    assert source.propose(None, context).tokens == (8, 9)  # outside the loop: the source's own stops
    assert source.propose(stopping, context).tokens == (8, 9, 1)  # the request's stops replace them
    assert lookup.propose(stopping, context) == [8, 9, 1]


def test_a_copied_suffix_source_replays_the_same_state_independently():
    """A deep copy (what a benchmark's rounds restore) proposes what the original would, from its own history."""
    import copy

    source = SuffixCandidates(spec_factor=8, min_probability=0.0)
    one = Sequence()
    first = [50, 51, 52]
    source.propose(one, first)
    first += [60, 61, 62, 63, 64]  # the same list, growing, as the decode loop passes it
    source.propose(one, first)
    source.accepted(one, [52, 60, 61, 62, 63, 64])
    saved = copy.deepcopy(source)
    source.finished(one)
    assert source.propose(Sequence(), [70, 71, 60, 61]).tokens == (62, 63, 64)
    again = copy.deepcopy(saved)
    again.finished(one)
    assert again.propose(Sequence(), [70, 71, 60, 61]).tokens == (62, 63, 64)
    assert not saved.history.answers  # the copies moved on, the saved state did not
    saved.forget()
    assert again.history.answers == [[52, 60, 61, 62, 63, 64]]


class DecoyTree(StatelessSource):
    """A source that knows the reference continuation and proposes it as the second branch of a tree, behind a
    wrong first branch, with random errors deeper down: branches other than the first must win."""

    def __init__(self, full_sequence, seed, length=5):
        self.full_sequence, self.rng, self.length = full_sequence, random.Random(seed), length

    def propose(self, seq, context):
        true = list(self.full_sequence[len(context): len(context) + self.length])
        if not true:
            return []
        if self.rng.random() < 0.4:
            true[self.rng.randrange(len(true))] = (true[0] + 7) % 97
        decoy = (true[0] + 1) % 97
        tokens = [decoy, (decoy + 1) % 97] + true
        parents = [-1, 0, -1] + list(range(2, 2 + len(true) - 1))
        return Branches(tuple(tokens), tuple(parents))


@pytest.mark.parametrize("seed", range(2))
def test_context_trees_keep_greedy_output_lossless(seed):
    model = tiny_llama(seed)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    ids = torch.randint(3, 97, (1, 7), generator=torch.Generator().manual_seed(seed))
    expected = reference(model, ids, 40)
    full = ids[0].tolist() + expected
    for decoder in (Decoder(ppd, sources=[DecoyTree(full, seed), PromptLookup(6)]),
                    Decoder(model, sources=[DecoyTree(full, seed)])):
        result = decoder.generate(ids, 40)
        assert result.token_ids == expected
        assert result.chain_wins > 3 and result.accept_length > 1.5


def test_suffix_candidates_on_repetitive_text_are_lossless_and_learn_from_earlier_answers():
    model, ppd, prompt, expected = repeating_reply(tiny_llama(4))
    for model_or_ppd in (ppd, model):
        suffix = SuffixCandidates(max_nodes=12)
        decoder = Decoder(model_or_ppd, sources=[suffix, PromptLookup(8)])
        result = decoder.generate(prompt, 60)
        assert result.token_ids == expected and result.chain_wins > 0 and result.accept_length > 2
        # a new question whose answer repeats the earlier answer: the history proposes it
        other = torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(11))
        again = decoder.generate(torch.cat([other, prompt[:, -12:]], 1), 60)
        assert again.token_ids == reference(model, torch.cat([other, prompt[:, -12:]], 1), 60)
        assert suffix.history.answers and again.accept_length > 2
