"""Context candidate sources (prompt lookup) merged into the tree: the rule, the buffers, and lossless decoding."""
import random

import pytest
import torch

from conftest import tiny_llama, with_chains
from prompt import Decoder, PPDError, PromptConfig, PromptDecoder
from prompt.inference.candidates import PromptLookup, StatelessSource
from prompt.inference.tree import build_tree_buffers
from prompt.model.layout import SpecialTokenLayout
from test_suffix import repeating_reply


def reference(model, ids, n):
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_prompt_lookup_rule():
    context = [5, 6, 7, 8, 9, 1, 6, 7, 3, 4, 6, 7]
    # trailing 3-gram [4, 6, 7] never occurred before; 2-gram [6, 7] did, twice
    assert PromptLookup(3, most_recent=True).propose(None, context) == [3, 4, 6]
    assert PromptLookup(3, most_recent=False).propose(None, context) == [8, 9, 1]
    assert PromptLookup(10, most_recent=False).propose(None, context) == [8, 9, 1, 6, 7, 3, 4, 6, 7]
    assert PromptLookup(2, max_ngram=1).propose(None, [1, 2, 3, 2]) == [3, 2]
    # in a loop the latest match leaves one token to copy: the most recent match with a full chain wins
    assert PromptLookup(4).propose(None, [1] + [7] * 8) == [7, 7, 7, 7]
    assert PromptLookup(4).propose(None, [1, 2, 1, 2, 1, 2, 1]) == [2, 1, 2, 1]
    assert PromptLookup(9).propose(None, [1, 2, 1, 2, 1, 2, 1]) == [2, 1, 2, 1]  # none full: the longest
    assert PromptLookup(5).propose(None, [1, 2, 3]) == []  # no earlier occurrence of any n-gram
    assert PromptLookup(5).propose(None, [4]) == []
    assert PromptLookup(5, stop_token_ids=[9]).propose(None, [7, 8, 9, 1, 7]) == [8, 9]  # cut after a stop token
    with pytest.raises(PPDError):
        PromptLookup(0)


def test_chain_buffers():
    layout = SpecialTokenLayout(2)
    tree = build_tree_buffers([([0], 2), ([1], 1)], layout, depth=1)
    merged = with_chains(tree, (3,), 0, layout)
    assert merged.num_prompt_nodes == 3 and merged.num_nodes == 6
    assert merged.node_parent == [-1, 0, 0, 0, 3, 4]
    assert [len(merged.node_paths[i]) for i in range(6)] == [0, 1, 1, 1, 2, 3]
    # special tokens follow all token nodes: root 2, [0] 2, [1] 1, chain nodes none
    assert merged.special_rows == [[6, 7], [8, 9], [10], [], [], []]
    assert merged.positions.tolist() == [0, 1, 1, 1, 2, 3, 1, 2, 2, 3, 2]
    allowed = merged.allowed.int()
    assert allowed[5].tolist() == [1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]  # chain node 3 sees root and its chain
    assert allowed[10].tolist() == [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    with_specials = with_chains(tree, (2,), 1, layout)
    assert with_specials.special_rows[3:] == [[10], [11]]
    assert with_specials.allowed[11].int().tolist() == [1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1]
    assert with_specials.positions.tolist()[10:] == [2, 3]


class TrueChain(StatelessSource):
    """A context source that knows the reference continuation and returns it with random errors, so chains win
    some steps, lose others, and part at random depths."""

    def __init__(self, full_sequence, seed, length=6):
        self.full_sequence = full_sequence
        self.rng = random.Random(seed)
        self.length = length

    def propose(self, seq, context):
        if self.rng.random() < 0.25:
            return []
        chain = list(self.full_sequence[len(context): len(context) + self.length])
        if chain and self.rng.random() < 0.5:
            chain[self.rng.randrange(len(chain))] = (chain[0] + 1) % 97
        return chain


@pytest.mark.parametrize("chain_special", [0, 1, 3])
@pytest.mark.parametrize("seed", range(3))
def test_chains_keep_greedy_output_lossless(seed, chain_special):
    model = tiny_llama(seed)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, virtual_tokens_per_special_token=1 + seed % 2,
                                            vt_attention_type="ensemble", prompt_tuning_init="RANDOM"))
    for length in (1, 9):
        ids = torch.randint(3, 97, (1, length), generator=torch.Generator().manual_seed(seed))
        expected = reference(model, ids, 40)
        source = TrueChain(ids[0].tolist() + expected, seed)
        result = Decoder(ppd, sources=[source], chain_special_tokens=chain_special).generate(ids, 40)
        assert result.token_ids == expected
        assert result.chain_wins > 3
        assert result.accept_length > 1.5
        # the base model alone with a chain: lookup decoding in our loop
        plain = Decoder(model, sources=[TrueChain(ids[0].tolist() + expected, seed)]).generate(ids, 40)
        assert plain.token_ids == expected and plain.accept_length > 1.5


def test_prompt_lookup_on_repetitive_text_is_lossless_and_accepts_copies():
    model, ppd, prompt, expected = repeating_reply(tiny_llama(4))
    for decoder in (Decoder(ppd, prompt_lookup_num_tokens=8), Decoder(model, prompt_lookup_num_tokens=8)):
        result = decoder.generate(prompt, 60)
        assert result.token_ids == expected
        assert result.chain_wins > 0 and result.accept_length > 2


def test_recovery_step_reads_the_same_special_logits_as_a_fresh_forward():
    """After a chain node without special tokens wins, the root-only recovery tree appends all special tokens."""
    model = tiny_llama(5)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    ids = torch.randint(3, 97, (1, 5), generator=torch.Generator().manual_seed(5))
    expected = reference(model, ids, 30)
    seen = []

    class Recording(Decoder):
        def prompt_token_candidates(self, state, tree):
            seen.append((list(state.context), state.special_logits.clone(), tree.depth))
            return super().prompt_token_candidates(state, tree)

    Recording(ppd, sources=[TrueChain(ids[0].tolist() + expected, 1)]).generate(ids, 30)
    assert any(depth == 0 for _, _, depth in seen), "some step should have been a recovery step"
    for context, special_logits, _ in seen:
        if special_logits.shape[0]:
            fresh, _ = ppd(torch.tensor([context[:-1]]))
            assert torch.allclose(special_logits, fresh[0, : special_logits.shape[0]], atol=1e-4)


def test_bad_lookup_arguments():
    model = tiny_llama(0)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    with pytest.raises(PPDError):
        Decoder(ppd, prompt_lookup_num_tokens=-1)
    with pytest.raises(PPDError):
        Decoder(ppd, chain_special_tokens=4)
    with pytest.raises(PPDError):
        Decoder(ppd, tree_length=-2)
    assert not Decoder(ppd, tree_length=0).ppd
