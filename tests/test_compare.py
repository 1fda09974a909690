"""The comparison harness's logic on tiny models: the peers' rows, warm-ups, the busy-machine check, headlines."""
import json

import torch

from conftest import tiny_llama
from prompt.evaluation.compare import busy_warning, compare, headline
from prompt.evaluation.totals import MethodTotals
from prompt.evaluation.transformers_baseline import TransformersBaseline
from prompt.inference.decoding import GenerationResult


def repeating_prompt():
    return torch.tensor([[5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8, 9, 10, 11, 5, 6, 7]])


def test_transformers_rows_are_greedy_and_pass_their_settings():
    model = tiny_llama()
    plain = TransformersBaseline(model, [2]).generate(repeating_prompt(), 12)
    for decoder in (TransformersBaseline(model, [2], static_cache=True),
                    TransformersBaseline(model, [2], prompt_lookup_num_tokens=5, max_matching_ngram_size=3),
                    TransformersBaseline(model, [2], prompt_lookup_num_tokens=5, max_matching_ngram_size=2)):
        assert decoder.generate(repeating_prompt(), 12).token_ids == plain.token_ids
    eager = TransformersBaseline(model, [2], static_cache=True)._static_cache_kwargs()
    assert eager == {"cache_implementation": "static", "disable_compile": True}
    compiled = TransformersBaseline(model, [2], compiled=True)
    kwargs = compiled._static_cache_kwargs()
    assert compiled.static_cache and kwargs["cache_implementation"] == "static"
    assert kwargs["compile_config"]._compile_all_devices  # compiles on a CPU too


class Tokenizer:
    def decode(self, token_ids, skip_special_tokens=True):
        return "answer"


class Formatter:
    tokenizer = Tokenizer()

    def input_ids(self, conversation):
        return torch.tensor([[1] + [3 + len(turn) % 50 for turn in conversation]])


class CountingDecoder:
    def __init__(self, compiled=False, speed=100.0):
        self.calls, self.compiled, self.speed = [], compiled, speed

    def generate(self, input_ids, max_new_tokens, seed=None):
        self.calls.append((input_ids.shape[1], max_new_tokens))
        return GenerationResult(token_ids=[4] * max_new_tokens, forward_passes=max_new_tokens,
                                wall_time=max_new_tokens / self.speed)


def test_every_method_is_warmed_up_a_compiled_one_on_every_prompt_and_probes_bracket_the_questions():
    plain, compiled = CountingDecoder(), CountingDecoder(compiled=True)
    prompts = ["one", "three", ["a", "bb"]]
    probes = []
    totals = compare({"generate": plain, "generate_compiled": compiled}, Formatter(), prompts, 20, warmup=1,
                     progress=False, probes=probes)
    assert plain.calls[0] == (2, 16) and compiled.calls[0] == (2, 16)  # the warm-up answer
    # the compiled method answered every turn of every prompt before the timed runs
    assert compiled.calls[1:5] == [(2, 20), (2, 20), (2, 20), (4, 20)]  # 2nd turn: 3 messages
    assert len(probes) == len(prompts) + 1 and all(p == 100.0 for p in probes)
    assert totals["generate"].answers == 4 and totals["generate_compiled"].identical == 4
    assert busy_warning(probes, totals) is None


def test_busy_warning_reads_the_repeated_measure_and_the_reference_spread():
    assert busy_warning([50.0, 52.0, 49.0]) is None
    assert "busy" in busy_warning([50.0, 30.0, 49.0])
    steady = MethodTotals(per_question=[(100, 1.0), (100, 1.1)])
    erratic = MethodTotals(per_question=[(100, 1.0), (100, 4.0)])
    assert busy_warning([50.0, 50.0], {"generate": steady}) is None
    assert "generate ran at 25.0 to 100.0" in busy_warning([50.0, 50.0], {"generate": erratic})


def totals_at(speed):
    return MethodTotals(tokens=int(speed * 10), seconds=10.0)


def test_headline_sets_our_fastest_row_against_each_peer_at_its_best():
    totals = {"generate": totals_at(20), "generate_static": totals_at(25), "generate_lookup": totals_at(30),
              "generate_lookup3": totals_at(40), "baseline": totals_at(21), "tuned": totals_at(50),
              "generate_sample": totals_at(99)}
    lines = headline(totals)
    assert lines == ["tuned is 2.00x transformers generate at its best (generate_static, 25.0 tokens/s)",
                     "tuned is 1.25x transformers prompt lookup at its best (generate_lookup3, 40.0 tokens/s)"]
    assert headline({"generate": totals_at(20)}) == []


def test_input_grounded_selection_keeps_requests_about_pasted_text(tmp_path):
    from prompt.data.grounded import grounded_records, is_grounded, main

    pasted = "Summarize the following text:\n" + "line of a pasted document\n" * 30
    assert is_grounded(pasted)
    assert not is_grounded("Summarize the history of Rome in one paragraph.")  # nothing pasted
    assert not is_grounded("Tell me about this:\n" + "text\n" * 200)  # no request about the text
    records = [{"id": "a", "conversations": [{"from": "human", "value": pasted}]},
               {"id": "b", "conversations": [{"from": "human", "value": "hi"}]},
               {"id": "c", "conversations": [{"from": "gpt", "value": pasted}]}]
    assert [r["id"] for r in grounded_records(records)] == ["a"]
    assert grounded_records(records, begin=1) == []
    source, out = tmp_path / "s.json", tmp_path / "g.json"
    source.write_text(json.dumps(records))
    main(["--sharegpt", str(source), "--output", str(out)])
    assert [r["id"] for r in json.loads(out.read_text())] == ["a"]


def test_benchmark_headline_takes_each_side_at_its_fastest_in_any_dtype():
    from prompt.evaluation.benchmark import cross_dtype_headline

    def row(speed):
        return {"tokens_per_second": speed}

    results = {"bfloat16": {"gsm8k": {"generate": row(20), "generate_lookup": row(30), "tuned": row(45),
                                      "tuned_typical": row(90)}},
               "float32": {"gsm8k": {"generate": row(25), "generate_lookup3": row(36), "baseline": row(26)}}}
    assert cross_dtype_headline(results) == [
        "- gsm8k: ours at its fastest (tuned, bfloat16, 45.0 tokens/s) is 1.80x transformers generate at its "
        "fastest (generate, float32, 25.0 tokens/s)",
        "- gsm8k: ours at its fastest (tuned, bfloat16, 45.0 tokens/s) is 1.25x transformers prompt lookup at its "
        "fastest (generate_lookup3, float32, 36.0 tokens/s)"]


class SlowingDecoder(CountingDecoder):
    """Each answer slower or faster as scripted, and a source that remembers the answers it has seen."""

    def __init__(self, times):
        super().__init__()
        self.times = list(times)
        self.sources = [RememberingSource()]

    def generate(self, input_ids, max_new_tokens, seed=None):
        self.calls.append((input_ids.shape[1], max_new_tokens))
        self.sources[0].seen.append(input_ids.shape[1])
        return GenerationResult(token_ids=[4] * max_new_tokens, forward_passes=max_new_tokens,
                                wall_time=self.times.pop(0))


class RememberingSource:
    def __init__(self):
        self.seen = []

    def forget(self):
        self.seen = []


def test_rounds_keep_each_methods_fastest_answer_and_replay_the_sources_state():
    """--rounds: the fastest round of each question counts, and every round of a question starts from the state the
    context sources had before its first round (a repeat never sees the answer it repeats)."""
    # warm-up, then 2 questions x 3 rounds: 2.0/0.5/1.0 s, then 3.0/4.0/2.5 s
    decoder = SlowingDecoder([0.1, 2.0, 0.5, 1.0, 3.0, 4.0, 2.5])
    totals = compare({"generate": decoder}, Formatter(), ["one", "three"], 20, warmup=1, progress=False, rounds=3)
    assert totals["generate"].per_question == [(20, 0.5), (20, 2.5)]
    # the source was emptied after the warm-up; each round of a question saw only the earlier questions' answers
    assert decoder.sources[0].seen == [2, 2]  # question 1's last round, then question 2's last round
