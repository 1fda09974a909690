"""Lossless tree decoding on tiny random Llamas: PPD greedy output must equal transformers' greedy output."""
import random
import threading

import pytest
import torch

from conftest import tiny_llama
from prompt import Decoder, PPDError, PromptConfig, PromptDecoder
from prompt.inference.tree import chain_tree_spec, select_tree_spec


def reference(model, ids, n):
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


class OracleDecoder(Decoder):
    """Puts the true next tokens (from a reference run) at random ranks of the tree, so long paths get accepted.

    The verification, cache compaction and dynamic tree choice then run on real multi-token acceptances.
    """

    def __init__(self, model, full_sequence, seed, **kwargs):
        super().__init__(model, **kwargs)
        self.full_sequence = full_sequence
        self.rng = random.Random(seed)

    def prompt_token_candidates(self, state, tree):
        root, context = state.root, state.context
        vocab = self.base.config.vocab_size
        ranks = [self.rng.randrange(tree.top_k + 1) for _ in range(tree.depth + 1)]  # top_k means "not in the tree"
        tokens = [root]
        for path in tree.node_paths[1:tree.num_prompt_nodes]:
            depth = len(path)
            position = len(context) + depth - 1
            true = self.full_sequence[position] if position < len(self.full_sequence) else 0
            tokens.append(true if path[-1] == ranks[depth] else (true + 1 + path[-1]) % vocab)
        return torch.tensor(tokens)


RANDOM_TREE = {"1": [[[0], 0.5, 2], [[1], 0.2, 1]],
               "2": [[[0], 0.5, 2], [[1], 0.2, 1], [[2], 0.1, 2], [[0, 0], 0.3, 1], [[0, 1], 0.1, 2], [[2, 0], 0.1, 1]]}


@pytest.mark.parametrize("vt_attention,virtual,aggregation,prefix", [
    ("decoder", 1, "mean", 0), ("ensemble", 3, "mean", 0), ("encoder", 2, "weighted", 0),
    ("ensemble", 2, "adaptive_weighted", 0), ("decoder", 1, "mean", 3)])
@pytest.mark.parametrize("seed", range(4))
def test_ppd_greedy_equals_generate(seed, vt_attention, virtual, aggregation, prefix):
    model = tiny_llama(seed)
    n_special = 2 + seed % 2
    config = PromptConfig(num_special_tokens=n_special, virtual_tokens_per_special_token=virtual,
                          vt_attention_type=vt_attention, aggregation_type=aggregation, prompt_tuning_init="RANDOM",
                          use_prefix_tuning=bool(prefix), prefix_virtual_tokens=prefix or None)
    ppd = PromptDecoder(model, config)
    torch.manual_seed(100 + seed)
    specs = [select_tree_spec(None, n_special), chain_tree_spec(n_special, width=3)]
    if n_special == 2:
        specs.append(RANDOM_TREE)
    for length in (1, 5, 23):
        ids = torch.randint(3, model.config.vocab_size, (1, length))
        expected = reference(model, ids, 30)
        for spec in specs:
            plain = Decoder(ppd, tree_spec=spec).generate(ids, 30)
            assert plain.token_ids == expected
            oracle = OracleDecoder(ppd, ids[0].tolist() + expected, seed, tree_spec=spec).generate(ids, 30)
            assert oracle.token_ids == expected
            assert oracle.accept_length > 1.3, "the oracle should make multi-token steps"
            assert sum(oracle.step_tokens) + 1 >= len(expected) - 1


def test_plain_loop_equals_generate_and_counts_passes():
    model = tiny_llama(3)
    ids = torch.randint(3, 97, (1, 9))
    result = Decoder(model).generate(ids, 25)
    assert result.token_ids == reference(model, ids, 25)
    assert result.forward_passes == 25 and result.accept_length == 1.0


def test_bfloat16_runs_and_mostly_matches():
    """In bf16 a tree forward and a one-token step round differently, so greedy outputs may part at near-ties:
    most of the tokens must still match generate's greedy ones. Measured: the whole of every answer here (1.0), and
    at least 0.89 per model over tiny models of seeds 0-5; 0.75 leaves a margin."""
    model = tiny_llama(1, dtype=torch.bfloat16)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    assert ppd.prompt_embeds().dtype == torch.bfloat16
    matched = 0
    for _ in range(8):
        ids = torch.randint(3, 97, (1, 8))
        expected = reference(model, ids, 24)
        result = Decoder(ppd).generate(ids, 24)
        assert len(result.token_ids) == 24
        # tokens up to the first difference (after it, the two continue from different texts)
        matched += next((i for i, (a, b) in enumerate(zip(result.token_ids, expected)) if a != b), 24)
    assert matched / (8 * 24) >= 0.75


def test_stops_exactly_at_max_new_tokens_and_at_eos():
    model = tiny_llama(0)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    ids = torch.randint(3, 97, (1, 6))
    expected = reference(model, ids, 40)
    full = ids[0].tolist() + expected
    for n in (1, 2, 7, 13):
        result = OracleDecoder(ppd, full, 0).generate(ids, n)
        assert result.token_ids == expected[:n] and result.stop_reason == "length"
    stop = expected[10]
    first = expected.index(stop)
    result = OracleDecoder(ppd, full, 1, stop_token_ids=[stop]).generate(ids, 40)
    assert result.token_ids == expected[: first + 1] and result.stop_reason == "eos"


def test_stream_yields_what_generate_returns():
    model = tiny_llama(2)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    ids = torch.randint(3, 97, (1, 6))
    expected = reference(model, ids, 30)
    decoder = OracleDecoder(ppd, ids[0].tolist() + expected, 5)
    chunks = list(decoder.stream(ids, 30))
    assert [t for chunk in chunks for t in chunk] == expected
    assert any(len(chunk) > 1 for chunk in chunks)


def test_concurrent_generations_do_not_interfere():
    model = tiny_llama(4)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    decoder = Decoder(ppd)
    prompts = [torch.randint(3, 97, (1, n)) for n in (4, 11, 17, 25)]
    expected = [decoder.generate(p, 40).token_ids for p in prompts]
    results = [None] * len(prompts)

    def work(i):
        results[i] = decoder.generate(prompts[i], 40).token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


@pytest.mark.parametrize("sampling", ["typical", "typical_sampling"])
def test_sampling_with_temperature(sampling):
    model = tiny_llama(5)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    ids = torch.randint(3, 97, (1, 6))
    decoder = Decoder(ppd, temperature=0.7, sampling=sampling)
    first = decoder.generate(ids, 30, seed=11).token_ids
    assert len(first) == 30 and all(0 <= t < 97 for t in first)
    assert decoder.generate(ids, 30, seed=11).token_ids == first  # seeded: reproducible
    others = {tuple(decoder.generate(ids, 30, seed=s).token_ids) for s in range(4)}
    assert len(others) > 1  # it does sample


@pytest.mark.parametrize("seed", range(3))
def test_typical_acceptance_accepts_only_tokens_above_the_threshold(seed):
    """Typical acceptance (upstream's --sampling typical): each step's first token is a sample of the
    typical-filtered distribution, and every further accepted token has probability above
    min(posterior_threshold, alpha * exp(-entropy))."""
    model = tiny_llama(6)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    ids = torch.randint(3, 97, (1, 6))
    expected = reference(model, ids, 30)
    temperature, threshold, alpha = 0.5, 0.09, 0.3
    decoder = OracleDecoder(ppd, ids[0].tolist() + expected, 2, temperature=temperature, sampling="typical",
                            posterior_threshold=threshold, posterior_alpha=alpha)
    result = decoder.generate(ids, 30, seed=seed)
    sequence = torch.tensor([ids[0].tolist() + result.token_ids])
    with torch.no_grad():
        logits = model(sequence).logits[0].float()
    probs = torch.softmax(logits / temperature, -1)
    entropy = -(probs * torch.log(probs + 1e-5)).sum(-1)
    cut = torch.minimum(torch.full_like(entropy, threshold), torch.exp(-entropy) * alpha)
    position = ids.shape[1]  # index in `sequence` of the first new token
    for count in result.step_tokens:
        assert probs[position - 1, sequence[0, position]] >= cut[position - 1] - 1e-6  # in the filtered support
        for k in range(1, count):
            p = position + k
            assert probs[p - 1, sequence[0, p]] > cut[p - 1] - 1e-6
        position += count
    assert result.accept_length > 1.2


def test_prompt_longer_than_context_is_a_clear_error():
    model = tiny_llama(0, max_positions=64)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    with pytest.raises(PPDError, match="context"):
        Decoder(ppd).generate(torch.randint(3, 97, (1, 64)), 5)
    # near the end of the context it stops instead of overrunning positions, having filled the context: the
    # last token emitted takes the context's last position, as plain greedy decoding does
    ids = torch.randint(3, 97, (1, 50))
    for decoder in (Decoder(ppd), Decoder(model), Decoder(ppd, prompt_lookup_num_tokens=5)):
        result = decoder.generate(ids, 40)
        assert result.stop_reason == "context" and 50 + result.new_tokens == 64
        assert result.token_ids == reference(model, ids, 14)


@pytest.mark.parametrize("where", ["embeddings", "prefix"])
def test_non_finite_prompt_tokens_never_decide_the_output(where):
    """A NaN in the prompt tokens pollutes every logit of a forward they take part in: the loop notices, drops
    them for the rest of the answer, and the output stays plain greedy's."""
    model = tiny_llama(3)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM",
                                            use_prefix_tuning=where == "prefix", prefix_virtual_tokens=2))
    with torch.no_grad():
        (ppd.prompt_embeddings if where == "embeddings" else ppd.prefix.keys)[1, 0] = float("nan")
    ids = torch.randint(3, 97, (1, 7))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = Decoder(ppd).generate(ids, 20)
    assert result.token_ids == reference(model, ids, 20)


def test_bad_generation_inputs_are_refused():
    model = tiny_llama(0)
    decoder = Decoder(model)
    for bad in (torch.rand(1, 5), torch.ones(1, 5, dtype=torch.bool), torch.tensor([[3, 4, 97]]),
                torch.tensor([[3, -1]]), [[1.5, 2.0]], "hello"):
        with pytest.raises(PPDError):
            decoder.generate(bad, 5)
    for bad in (2.5, True, 0, "3"):
        with pytest.raises(PPDError, match="max_new_tokens"):
            decoder.generate(torch.tensor([[3, 4]]), bad)
    assert decoder.generate([3, 4, 5], 3).new_tokens == 3  # a plain list of ids is fine


def test_bad_decoder_arguments():
    model = tiny_llama(0)
    with pytest.raises(PPDError):
        Decoder(model, sampling="beam")
    with pytest.raises(PPDError):
        Decoder(model, temperature=-1)
    with pytest.raises(PPDError):
        Decoder(model).generate(torch.randint(3, 97, (2, 5)), 5)


def test_stream_can_be_resumed_from_other_threads():
    """Web servers resume generators in any worker thread: each step must still run in inference mode."""
    from concurrent.futures import ThreadPoolExecutor

    model = tiny_llama(7)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    ids = torch.randint(3, 97, (1, 6))
    expected = Decoder(ppd).generate(ids, 20).token_ids
    stream = Decoder(ppd).stream(ids, 20)
    tokens = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        while True:
            chunk = pool.submit(next, stream, None).result()
            if chunk is None:
                break
            tokens.extend(chunk)
    assert tokens == expected
    assert not torch.is_inference_mode_enabled()
