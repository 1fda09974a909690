"""Batches: every row of a batch is token-identical (float32) to its prompt decoded alone and to transformers' greedy
`generate`, with prompts of different lengths, long acceptances, rows finishing at different steps and rows joining
mid-run."""
import random

import pytest
import torch

from conftest import tiny_llama
from prompt import Decoder, PPDError, PromptConfig, PromptDecoder
from prompt.inference.acceptance import acceptance_rule
from prompt.inference.tree import chain_tree_spec, select_tree_spec
from test_decoding import reference


class BatchOracle(Decoder):
    """Puts each row's true next tokens (from reference runs, looked up by the row's prompt) at random ranks of its
    tree, so that long paths get accepted in some rows and not in others."""

    def __init__(self, model, full_sequences, seed, **kwargs):
        super().__init__(model, **kwargs)
        self.full_sequences = full_sequences  # list of prompt + expected continuation
        self.rng = random.Random(seed)

    def prompt_token_candidates(self, state, tree):
        full = next(seq for seq in self.full_sequences if seq[: len(state.context) - 1] == state.context[:-1])
        vocab = self.base.config.vocab_size
        ranks = [self.rng.randrange(tree.top_k + 1) for _ in range(tree.depth + 1)]
        tokens = [state.root]
        for path in tree.node_paths[1: tree.num_prompt_nodes]:
            position = len(state.context) + len(path) - 1
            true = full[position] if position < len(full) else 0
            tokens.append(true if path[-1] == ranks[len(path)] else (true + 1 + path[-1]) % vocab)
        return torch.tensor(tokens)


def ppd_model(seed, prefix=0, virtual=1, vt_attention="decoder", special=3):
    model = tiny_llama(seed)
    config = PromptConfig(num_special_tokens=special, virtual_tokens_per_special_token=virtual,
                          vt_attention_type=vt_attention, prompt_tuning_init="RANDOM",
                          use_prefix_tuning=bool(prefix), prefix_virtual_tokens=prefix or None)
    return model, PromptDecoder(model, config)


def distinct_prompts(seed, lengths):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 97, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("seed,prefix,virtual,vt_attention", [
    (0, 0, 1, "decoder"), (1, 0, 2, "ensemble"), (2, 3, 1, "decoder"), (3, 2, 2, "encoder")])
def test_batch_rows_equal_generate_alone_with_long_acceptances(seed, prefix, virtual, vt_attention):
    model, ppd = ppd_model(seed, prefix, virtual, vt_attention)
    prompts = distinct_prompts(seed, (1, 5, 23, 12, 7))
    expected = [reference(model, torch.tensor([p]), 30) for p in prompts]
    full = [p + e for p, e in zip(prompts, expected)]
    for spec in (select_tree_spec(None, 3), chain_tree_spec(3, width=2)):
        oracle = BatchOracle(ppd, full, seed, tree_spec=spec)
        results = oracle.generate_batch(prompts, 30)
        assert [r.token_ids for r in results] == expected
        lengths = [r.accept_length for r in results]
        assert max(lengths) > 1.5, "the oracle should make multi-token steps"
        assert len({round(x, 3) for x in lengths}) > 1, "rows should accept different lengths"
        plain = Decoder(ppd, tree_spec=spec).generate_batch(prompts, 30)
        assert [r.token_ids for r in plain] == expected


def test_rows_finish_at_different_steps_and_join_mid_run():
    model, ppd = ppd_model(5, prefix=2)
    prompts = distinct_prompts(5, (4, 19, 9, 2, 14, 6))
    expected = [reference(model, torch.tensor([p]), 24) for p in prompts]
    limits = [24, 7, 16, 1, 24, 11]
    full = [p + e for p, e in zip(prompts, expected)]
    decoder = BatchOracle(ppd, full, 5, tree_spec=select_tree_spec(None, 3), prompt_lookup_num_tokens=3)
    batch = decoder.batch()
    states = {}
    streamed = {i: [] for i in range(len(prompts))}
    pending = list(range(len(prompts)))
    sizes, steps = [], 0
    while pending or len(batch):
        if pending and steps % 2 == 0:  # two rows join every other step
            for i in pending[:2]:
                states[id(batch.add(prompts[i], limits[i]))] = i
            pending = pending[2:]
        sizes.append(len(batch))
        for state, tokens in batch.step():
            streamed[states[id(state)]].extend(tokens)
        steps += 1
        assert steps < 200
    for i, limit in enumerate(limits):
        assert streamed[i] == expected[i][:limit]
    assert max(sizes) >= 3 and sizes[-1] == 1, "rows should overlap, and leave when done"


def test_stop_tokens_and_rules_per_row():
    model, ppd = ppd_model(6)
    prompts = distinct_prompts(6, (8, 3, 15))
    expected = [reference(model, torch.tensor([p]), 20) for p in prompts]
    stop = expected[0][5]  # stops the first row at its sixth token
    decoder = Decoder(ppd, tree_spec=select_tree_spec(None, 3))
    batch = decoder.batch()
    first = batch.add(prompts[0], 20, stop_token_ids=[stop])
    second = batch.add(prompts[1], 20)
    sampled = batch.add(prompts[2], 20, seed=11, rule=acceptance_rule("exact", 0.8, 0.09, 0.3, None, None))
    while len(batch):
        batch.step()
    assert first.result.token_ids == expected[0][: expected[0].index(stop) + 1]
    assert first.result.stop_reason == "eos"
    assert second.result.token_ids == expected[1]
    alone = Decoder(ppd, tree_spec=select_tree_spec(None, 3), temperature=0.8, sampling="exact")
    assert sampled.result.token_ids == alone.generate(torch.tensor([prompts[2]]), 20, seed=11).token_ids


def test_plain_model_batch_and_lookup_equal_generate():
    model = tiny_llama(7)
    base = distinct_prompts(7, (6, 3))
    prompts = [base[0] * 4, base[1] * 3 + [5], base[0][:2]]  # repeated text: lookup chains get accepted
    expected = [reference(model, torch.tensor([p]), 25) for p in prompts]
    for lookup in (0, 4):
        results = Decoder(model, prompt_lookup_num_tokens=lookup).generate_batch(prompts, 25)
        assert [r.token_ids for r in results] == expected
    assert max(r.accept_length for r in results) > 1.0


def test_batch_with_suffix_candidate_trees_equals_generate():
    from prompt.inference.candidates import SuffixCandidates

    model, ppd = ppd_model(12)
    base = distinct_prompts(12, (5, 4, 6))
    prompts = [base[0] * 5, base[1] * 4 + base[0], base[2] * 3, base[0] * 2]  # repeats: suffix trees get accepted
    expected = [reference(model, torch.tensor([p]), 24) for p in prompts]
    decoder = Decoder(ppd, tree_spec=select_tree_spec(None, 3), sources=[SuffixCandidates(max_nodes=8)])
    results = decoder.generate_batch(prompts, 24)
    assert [r.token_ids for r in results] == expected
    assert sum(r.chain_wins for r in results) > 0


def test_batch_near_the_context_end():
    model = tiny_llama(8, max_positions=40)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    prompts = distinct_prompts(8, (30, 10, 36))
    results = Decoder(ppd, tree_spec=select_tree_spec(None, 3)).generate_batch(prompts, 50)
    alone = [Decoder(ppd, tree_spec=select_tree_spec(None, 3)).generate(torch.tensor([p]), 50) for p in prompts]
    assert [r.token_ids for r in results] == [a.token_ids for a in alone]
    assert [r.stop_reason for r in results] == [a.stop_reason for a in alone]
    assert results[0].stop_reason == "context"


def test_non_finite_prompt_tokens_rejoin_plainly():
    model, ppd = ppd_model(9, prefix=2)
    with torch.no_grad():
        ppd.prompt_embeddings[0, 0] = float("nan")
    prompts = distinct_prompts(9, (5, 11))
    expected = [reference(model, torch.tensor([p]), 12) for p in prompts]
    with pytest.warns(RuntimeWarning, match="non-finite"):
        results = Decoder(ppd, tree_spec=select_tree_spec(None, 3)).generate_batch(prompts, 12)
    assert [r.token_ids for r in results] == expected


def test_generate_batch_refuses_bad_input():
    model = tiny_llama(0)
    decoder = Decoder(model)
    for bad in ([], "text", [[5, 6], []], [[5, 1000]]):
        with pytest.raises(PPDError):
            decoder.generate_batch(bad, 5)


def test_decoding_tuned_per_batch_size_is_used_by_running_batches(tmp_path):
    import json

    model, ppd = ppd_model(10)
    (tmp_path / "decoding.json").write_text(json.dumps({"float32": {"batch_sizes": {"3": {"tree_length": 0}}}}))
    ppd.checkpoint_dir = str(tmp_path)
    prompts = distinct_prompts(10, (6, 9, 4))
    expected = [reference(model, torch.tensor([p]), 16) for p in prompts]
    full = [p + e for p, e in zip(prompts, expected)]
    # three rows: the recorded plain decoding (one token a step); one row: the decoder's own tree
    results = BatchOracle(ppd, full, 10).generate_batch(prompts, 16)
    assert [r.token_ids for r in results] == expected
    assert all(r.step_tokens == [1] * len(r.step_tokens) for r in results)
    alone = BatchOracle(ppd, full, 10).generate_batch(prompts[:2], 16)
    assert [r.token_ids for r in alone] == expected[:2] and max(r.accept_length for r in alone) > 1.3
    explicit = BatchOracle(ppd, full, 10, tree_spec=select_tree_spec(None, 3)).generate_batch(prompts, 16)
    assert max(r.accept_length for r in explicit) > 1.3, "an explicit tree is not overridden"
    # a size-1 entry (earlier versions recorded one) is ignored: one row keeps the decoder's own tree
    (tmp_path / "decoding.json").write_text(json.dumps({"float32": {"batch_sizes": {"1": {"tree_length": 0}}}}))
    assert Decoder(ppd).batch_setting(1) is None
    one = BatchOracle(ppd, full, 10).generate_batch(prompts[:1], 16)
    assert one[0].token_ids == expected[0] and one[0].accept_length > 1.3
    (tmp_path / "decoding.json").write_text(json.dumps({"float32": {"batch_sizes": {"x": {}}}}))
    with pytest.raises(PPDError, match="batch size"):
        Decoder(ppd)


def test_rows_of_a_batch_size_without_a_tree_prefill_plainly_and_rows_with_the_prefix_join_them(tmp_path):
    import json

    model, ppd = ppd_model(12, prefix=2)
    (tmp_path / "decoding.json").write_text(json.dumps({"float32": {"batch_sizes": {"3": {"tree_length": 0}}}}))
    ppd.checkpoint_dir = str(tmp_path)
    prompts = distinct_prompts(12, (6, 9, 4, 11))
    expected = [reference(model, torch.tensor([p]), 20) for p in prompts]
    full = [p + e for p, e in zip(prompts, expected)]
    decoder = BatchOracle(ppd, full, 12)
    # filled at once for the size with no tree: no prompt tokens, no prefix slots
    batch = decoder.batch(expected_rows=3)
    states = [batch.add(p, 20) for p in prompts[:3]]
    assert not any(s.prompt_tokens for s in states) and batch.prefix_slots == 0
    # a row joining a smaller batch (the decoder's own tree): prompt tokens and the prefix; plain rows get zero
    # prefix slots in front of theirs, and every row still decodes as alone
    batch = decoder.batch(expected_rows=3)
    first = batch.add(prompts[0], 20)
    batch.step()
    batch.expected_rows = 0
    second = batch.add(prompts[1], 20)
    assert not first.prompt_tokens and second.prompt_tokens
    assert batch.prefix_slots == ppd.layout.prefix_length == first.prefix_slots > 0
    while len(batch):
        batch.step()
    assert [first.result.token_ids, second.result.token_ids] == expected[:2]
    assert second.result.accept_length > 1.3 and first.result.step_tokens == [1] * len(first.result.step_tokens)


def test_batch_benchmark_measures_every_method_and_records_the_best_per_size(tmp_path):
    import json

    from prompt.evaluation import batching

    model, ppd = ppd_model(11)
    ppd.tokenizer = None
    (tmp_path / "decoding.json").write_text(json.dumps({"float32": {"tree_length": 0}}))
    ppd.checkpoint_dir = str(tmp_path)
    prompts = distinct_prompts(11, (5, 9, 3))
    from prompt.evaluation.tune import available_tree_lengths

    length = available_tree_lengths(ppd)[-1]
    methods = batching.build_methods(ppd, [2], 0, [0, length], [0, 3], batch_tuned=False)
    assert set(methods) == {"generate", "plain", "ppd_tuned", "ppd_0_lookup_3", f"ppd_{length}_lookup_0",
                            f"ppd_{length}_lookup_3", "sequential"}
    results = batching.measure(methods, prompts, [1, 3], 12, 2, log=lambda _: None)
    for size, totals in results.items():
        assert all(t["rows"] == 2 * size for t in totals.values())
        # float32: every method gives generate's greedy rows
        assert all(t["identical"] == t["rows"] for t in totals.values()), totals
        assert all(t["tokens"] == totals["generate"]["tokens"] for t in totals.values())
    text = batching.table(results, batching.kv_bytes_per_slot(model))
    assert text.count("(best)") == 2 and "| 3 | sequential |" in text
    chosen = batching.best_per_size(results)
    assert set(chosen) == {1, 3}
    assert all(config[:2] in {(0, 0), (0, 3), (length, 0), (length, 3)} for config in chosen.values())
    path = batching.record(ppd, "float32", chosen, "python -m prompt.evaluation.batching ...")
    recorded = json.loads(open(path).read())["float32"]
    # one row decodes as one sequence: size 1 is measured but not recorded
    assert recorded["tree_length"] == 0 and set(recorded["batch_sizes"]) == {"3"}
    assert Decoder(ppd).batch_setting(5) is not None  # a batch of 5 uses the size-3 choice
    assert Decoder(ppd).batch_setting(2) is None
    assert batching.new_tokens([4, 2, 7], [2]) == 2 and batching.new_tokens([4, 5], [2]) == 2
