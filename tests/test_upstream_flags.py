"""Upstream's flags on the answer scripts, their meaning, upstream's accept length, and FastChat's judge reading our
answer files (its own loader and match builder, the API call replaced)."""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from conftest import tiny_llama

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parser():
    from prompt.cli import ArgumentParser
    from prompt.evaluation.answer_flags import add_common_flags

    return add_common_flags(ArgumentParser(), "", "tiny")


@pytest.fixture
def tiny_chat():
    from webui_helpers import tiny_chat_tokenizer

    return tiny_llama(0), tiny_chat_tokenizer()


def write_questions(path, questions):
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return path


def rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def assert_clear_error(proc, text):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], proc.stderr


def run(script, *args, cwd=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, env=env, timeout=timeout)


# --------------------------------------------------------------------------------------------------
# parsing
def test_posterior_flags_take_upstreams_spelling_and_ours():
    for spelling in ("--posterior_threshold", "--posterior-threshold"):
        assert parser().parse_args([spelling, "0.2"]).posterior_threshold == 0.2
    for spelling in ("--posterior_alpha", "--posterior-alpha"):
        assert parser().parse_args([spelling, "0.5"]).posterior_alpha == 0.5
    args = parser().parse_args(["--num-gpus-per-model", "1", "--num-gpus-total", "2", "--max-gpu-memory", "20GiB",
                                "--revision", "v1", "--gpu-power"])
    assert (args.num_gpus_per_model, args.num_gpus_total, args.max_gpu_memory, args.revision, args.gpu_power) == (
        1, 2, "20GiB", "v1", True)
    defaults = parser().parse_args([])
    assert defaults.temperature is None and defaults.revision == "main" and defaults.num_gpus_total == 1


def test_default_answer_file_is_upstreams_name():
    from prompt.evaluation.answer_flags import default_answer_file

    args = parser().parse_args(["--bench-name", "alpaca_eval", "--model-id", "vicuna_faster"])
    assert default_answer_file(args) == os.path.join(
        "data", "alpaca_eval", "model_answer",
        "vicuna_faster-temperature-None-posterior_threshold-0.09-posterior_alpha-0.3-sampling-greedy.jsonl")
    args = parser().parse_args(["--model-id", "m", "--temperature", "0.7", "--sampling", "typical"])
    assert default_answer_file(args).endswith("m-temperature-0.7-posterior_threshold-0.09-posterior_alpha-0.3-"
                                              "sampling-typical.jsonl")


def test_category_temperatures_are_fastchats():
    from prompt.evaluation.temperatures import fastchat_temperatures, question_temperature

    temperatures = fastchat_temperatures()
    assert temperatures["writing"] == 0.7 and temperatures["stem"] == 0.1 and temperatures["math"] == 0.0
    assert question_temperature({"category": "roleplay"}, None) == 0.7
    assert question_temperature({"category": "humanities"}, None) == 0.1
    assert question_temperature({"category": "unknown"}, None) == 0.0  # as upstream
    assert question_temperature({"category": "writing"}, 0.0) == 0.0  # --temperature wins


def test_per_category_temperatures_are_named_and_sampling_is_said(tmp_path, capsys):
    """Without --temperature, MT-Bench's writing questions are sampled (FastChat's 0.7): the run says so, so that no
    one takes its answers for greedy ones (a server at temperature 0 answers those questions differently)."""
    from prompt.evaluation.answer_flags import check_args
    from prompt.evaluation.temperatures import temperatures_in_use

    questions = [{"question_id": 1, "category": "writing", "turns": ["a"]},
                 {"question_id": 2, "category": "math", "turns": ["b"]},
                 {"question_id": 3, "category": "roleplay", "turns": ["c"]}]
    assert temperatures_in_use(questions, None) == {0.0: ["math"], 0.7: ["roleplay", "writing"]}
    assert temperatures_in_use(questions, 0.0) == {0.0: ["math", "roleplay", "writing"]}
    path = write_questions(tmp_path / "q.jsonl", questions)
    for flags, said in (([], True), (["--temperature", "0"], False)):
        args = parser().parse_args(["--question-file", str(path), "--answer-file", str(tmp_path / "a.jsonl"), *flags])
        check_args(args)
        out = capsys.readouterr().out
        assert ("0.7 for roleplay, writing" in out and "sampled, not greedy" in out) == said, out
        assert args.question_temperatures == temperatures_in_use(questions, args.temperature)


# --------------------------------------------------------------------------------------------------
# behaviour
def test_per_category_temperature_picks_each_questions_decoder(tmp_path, tiny_chat):
    from prompt.evaluation.chat import ChatFormatter
    from prompt.evaluation.answer_flags import check_args
    from prompt.evaluation.runner import PerTemperature, make_decoder, run_benchmark

    model, tokenizer = tiny_chat
    questions = write_questions(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "writing", "turns": ["hello there"]},
        {"question_id": 2, "category": "math", "turns": ["what is it"]},
        {"question_id": 3, "category": "stem", "turns": ["say more"]}])
    answers = tmp_path / "a.jsonl"
    args = parser().parse_args(["--question-file", str(questions), "--answer-file", str(answers),
                                "--max-new-token", "6", "--warmup", "0"])
    formatter = ChatFormatter(tokenizer, "tiny")
    used = []

    def build(temperature):
        used.append(temperature)
        return make_decoder(model, formatter, args, temperature)

    decoders = PerTemperature(build)
    run_benchmark(args, check_args(args), decoders, formatter, "test")
    assert used == [0.7, 0.0, 0.1]
    assert [decoders(t).describe() for t in used] and decoders(0.0).rule.__class__.__name__ != decoders(0.7).rule.__class__.__name__
    greedy = make_decoder(model, formatter, args, 0.0).generate(formatter.input_ids(["what is it"]), 6)
    row = {r["question_id"]: r for r in rows(answers)}[2]
    assert row["choices"][0]["new_tokens"] == [greedy.new_tokens]  # math: greedy


def test_upstreams_sampling_values_mean_upstreams_rules_and_ours_stay(tmp_path, tiny_chat):
    """--sampling greedy / typical above temperature 0 are upstream's two modes; without a flag, exact; --acceptance
    names our rules; at temperature 0 every flag is greedy."""
    from prompt.errors import PPDError
    from prompt.evaluation.chat import ChatFormatter
    from prompt.evaluation.answer_flags import check_args, default_answer_file
    from prompt.evaluation.runner import make_decoder
    from prompt.model import PromptConfig, PromptDecoder

    model, tokenizer = tiny_chat
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM")).eval()
    formatter = ChatFormatter(tokenizer, "tiny")
    for flags, rule in (([], "exact"), (["--sampling", "greedy"], "upstream_greedy"),
                        (["--sampling", "typical"], "upstream_typical"), (["--sampling", "exact"], "exact"),
                        (["--sampling", "typical_sampling"], "typical_sampling"),
                        (["--acceptance", "typical"], "typical"), (["--acceptance", "upstream_typical"],
                                                                   "upstream_typical")):
        args = parser().parse_args(flags)
        assert make_decoder(ppd, formatter, args, 0.7).rule.name == rule, flags
        assert make_decoder(ppd, formatter, args, 0.0).rule.name == "greedy", flags
    args = parser().parse_args(["--model-id", "m", "--acceptance", "typical"])
    assert default_answer_file(args).endswith("-posterior_alpha-0.3-acceptance-typical.jsonl")  # not sampling-typical
    questions = write_questions(tmp_path / "q.jsonl", [{"question_id": 1, "turns": ["hi"]}])
    args = parser().parse_args(["--question-file", str(questions), "--answer-file", str(tmp_path / "a.jsonl"),
                                "--sampling", "typical", "--acceptance", "typical"])
    with pytest.raises(PPDError, match="not both.*--acceptance upstream_typical"):
        check_args(args)


def test_sampling_greedy_answers_mt_bench_at_fastchats_temperatures_as_upstream(tmp_path, tiny_chat,
                                                                                tiny_model_folder):
    """Upstream's command line (--sampling greedy, no --temperature) on a PPD checkpoint: the writing question is
    answered by upstream's greedy at 0.7, token for token as that rule decodes it with the run's seed; math greedily."""
    from prompt.evaluation.chat import ChatFormatter
    from prompt.inference.decoding import Decoder
    from prompt.model import PromptConfig, PromptDecoder
    from prompt.model.defaults import load_prompt_decoder

    model, tokenizer = tiny_chat
    checkpoint = tmp_path / "ppd"
    PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM",
                                      base_model_name_or_path=str(tiny_model_folder))).save_pretrained(checkpoint)
    questions = write_questions(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "writing", "turns": ["hello there"]},
        {"question_id": 2, "category": "math", "turns": ["what is it"]}])
    answers = tmp_path / "a.jsonl"
    n = 12
    proc = run("gen_model_answer_prompt_decoding.py", "--model-path", checkpoint, "--question-file", questions,
               "--answer-file", answers, "--max-new-token", n, "--warmup", 0, "--threads", 1, "--no-profile",
               "--sampling", "greedy")
    assert proc.returncode == 0, proc.stderr
    assert "at temperature 0.7 (writing): " in proc.stdout and "upstream's greedy" in proc.stdout, proc.stdout
    ppd = load_prompt_decoder(str(checkpoint))
    formatter = ChatFormatter(tokenizer, "tiny")
    decoded = {}
    for turn, temperature, sampling in (("hello there", 0.7, "upstream_greedy"), ("what is it", 0.0, None)):
        decoder = Decoder(ppd, temperature=temperature, sampling=sampling, stop_token_ids=formatter.stops(ppd))
        seed = 0 if temperature else 1000
        result = decoder.generate(formatter.input_ids([turn]), n, seed=seed)
        decoded[turn] = tokenizer.decode(result.token_ids, skip_special_tokens=True).strip()
    assert [row["choices"][0]["turns"][0] for row in rows(answers)] == [decoded["hello there"], decoded["what is it"]]


def test_answer_file_is_deduplicated_and_sorted_at_the_end(tmp_path, tiny_chat):
    from prompt.evaluation.chat import ChatFormatter
    from prompt.evaluation.answer_flags import check_args
    from prompt.evaluation.runner import make_decoder, run_benchmark

    model, tokenizer = tiny_chat
    questions = write_questions(tmp_path / "q.jsonl", [{"question_id": i, "turns": ["hello"]} for i in (3, 1, 2)])
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"question_id": 2, "model_id": "tiny", "answer_id": "old", "choices": [],
                                   "tstamp": 0}) + "\n" + json.dumps({"question_id": 2, "model_id": "tiny",
                                                                      "answer_id": "new", "choices": [], "tstamp": 1}) + "\n")
    args = parser().parse_args(["--question-file", str(questions), "--answer-file", str(answers), "--max-new-token",
                                "4", "--warmup", "0", "--model-id", "tiny"])
    formatter = ChatFormatter(tokenizer, "tiny")
    run_benchmark(args, check_args(args), make_decoder(model, formatter, args), formatter, "test")
    written = rows(answers)
    assert [r["question_id"] for r in written] == [1, 2, 3]
    assert [r["answer_id"] for r in written if r["question_id"] == 2] == ["new"]


def test_upstream_accept_length_does_not_count_the_prefill(tiny_chat):
    from prompt.evaluation.totals import MethodTotals
    from prompt.evaluation.transformers_baseline import TransformersBaseline
    from prompt.inference.decoding import Decoder, GenerationResult

    model, _ = tiny_chat
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = Decoder(model).generate(ids, 10)
    assert plain.new_tokens == 10 and plain.forward_passes == 10  # the last token is emitted without a forward
    assert plain.decoding_steps == 10 and plain.accept_length_upstream == 1.0  # upstream's baseline: 1.0
    assert plain.accept_length == 1.0
    # a tree step emitting 3 tokens, then 2, then the last root without a forward; 1 prefill
    result = GenerationResult(token_ids=list(range(6)), forward_passes=3, step_tokens=[3, 2])
    assert result.decoding_steps == 3 and result.accept_length_upstream == 2.0 and result.accept_length == 2.0
    result = GenerationResult(token_ids=list(range(5)), forward_passes=3, step_tokens=[3, 2])
    assert result.decoding_steps == 2 and result.accept_length_upstream == 2.5 and result.accept_length == 5 / 3
    hf = TransformersBaseline(model, [2]).generate(ids, 10)
    assert hf.accept_length_upstream == 1.0
    totals = MethodTotals()
    totals.add(result)
    assert totals.row()["accept_length_upstream"] == 2.5 and "upstream's accept length" in totals.summary("x")


def test_idxs_are_upstreams_so_its_throughput_formula_gives_its_accept_length(tmp_path, tiny_chat):
    from prompt.evaluation.chat import ChatFormatter
    from prompt.evaluation.answer_flags import check_args
    from prompt.evaluation.runner import make_decoder, run_benchmark

    model, tokenizer = tiny_chat
    questions = write_questions(tmp_path / "q.jsonl", [{"question_id": 1, "turns": ["hello there"]}])
    answers = tmp_path / "a.jsonl"
    args = parser().parse_args(["--question-file", str(questions), "--answer-file", str(answers), "--max-new-token",
                                "9", "--warmup", "0", "--temperature", "0"])
    formatter = ChatFormatter(tokenizer, "tiny")
    run_benchmark(args, check_args(args), make_decoder(model, formatter, args), formatter, "test")
    choice = rows(answers)[0]["choices"][0]
    # upstream's get_throughput_results: sum(new_tokens) / sum(idx + 1); plain decoding gives 1.0 there too
    assert sum(choice["new_tokens"]) / sum(i + 1 for i in choice["idxs"]) == 1.0


def test_gpu_flags_on_cpu_are_one_clear_error(tmp_path):
    from prompt.errors import PPDError
    from prompt.evaluation.gpus import check_gpu_flags

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for flags, text in ((["--num-gpus-per-model", "2", "--num-gpus-total", "2"], "--num-gpus-per-model needs CUDA"),
                        (["--max-gpu-memory", "10GiB"], "--max-gpu-memory needs CUDA"),
                        (["--gpu-power"], "--gpu-power needs CUDA"),
                        (["--num-gpus-total", "3", "--num-gpus-per-model", "2"], "multiple of")):
        with pytest.raises(PPDError, match=text):
            check_gpu_flags(parser().parse_args(flags))
    assert check_gpu_flags(parser().parse_args(["--num-gpus-total", "2"])) == 2  # two CPU workers
    questions = write_questions(tmp_path / "q.jsonl", [{"question_id": 1, "turns": ["hi"]}])
    proc = run("gen_model_answer_prompt_decoding.py", "--question-file", questions, "--answer-file",
               tmp_path / "a.jsonl", "--max-gpu-memory", "10GiB")
    assert_clear_error(proc, "--max-gpu-memory needs CUDA")


@pytest.fixture
def tiny_model_folder(tmp_path, tiny_chat):
    model, tokenizer = tiny_chat
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_baseline_accepts_tree_length_without_effect(tmp_path, tiny_model_folder):
    questions = write_questions(tmp_path / "q.jsonl", [{"question_id": 1, "turns": ["hello there"]}])
    outputs = []
    for extra in ([], ["--tree-length", "105"]):
        answers = tmp_path / f"a{len(extra)}.jsonl"
        proc = run("gen_model_answer_baseline.py", "--model-path", tiny_model_folder, "--question-file", questions,
                   "--answer-file", answers, "--max-new-token", 6, "--warmup", 0, "--threads", 1, *extra)
        assert proc.returncode == 0, proc.stderr
        outputs.append(rows(answers)[0]["choices"][0]["turns"])
    assert "no effect" in proc.stderr and outputs[0] == outputs[1]


def test_plain_model_path_of_a_ppd_checkpoint_is_its_base_model(tmp_path, tiny_chat, tiny_model_folder):
    from prompt.errors import PPDError
    from prompt.model import PromptConfig, PromptDecoder
    from prompt.model.loading import plain_model_path

    model, _ = tiny_chat
    checkpoint = tmp_path / "ppd"
    PromptDecoder(model, PromptConfig(num_special_tokens=3, base_model_name_or_path=str(tiny_model_folder))
                  ).save_pretrained(checkpoint)
    assert plain_model_path(str(checkpoint)) == str(tiny_model_folder)
    assert plain_model_path(str(tiny_model_folder)) == str(tiny_model_folder)
    assert plain_model_path(None) is None
    orphan = tmp_path / "orphan"
    PromptDecoder(model, PromptConfig(num_special_tokens=3)).save_pretrained(orphan)
    with pytest.raises(PPDError, match="base_model_name_or_path"):
        plain_model_path(str(orphan))


def test_baseline_on_a_ppd_checkpoint_is_its_base_models_greedy_at_every_temperature(tmp_path, tiny_chat,
                                                                                       tiny_model_folder):
    """Upstream's baseline takes the PPD checkpoint as --model-path and decodes its base model by argmax whatever the
    temperature; --sampling exact samples at the question's temperature instead."""
    from prompt.evaluation.chat import ChatFormatter
    from prompt.inference.decoding import Decoder
    from prompt.model import PromptConfig, PromptDecoder

    model, tokenizer = tiny_chat
    checkpoint = tmp_path / "ppd"
    PromptDecoder(model, PromptConfig(num_special_tokens=3, base_model_name_or_path=str(tiny_model_folder))
                  ).save_pretrained(checkpoint)
    questions = write_questions(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "writing", "turns": ["hello there"]},
        {"question_id": 2, "category": "math", "turns": ["what is it"]}])
    formatter = ChatFormatter(tokenizer, "tiny")
    n = 12

    def answer(turn, temperature=0.0, seed=None):
        decoder = Decoder(model, temperature=temperature, stop_token_ids=formatter.stops(model))
        result = decoder.generate(formatter.input_ids([turn]), n, seed=seed)
        return tokenizer.decode(result.token_ids, skip_special_tokens=True).strip()

    greedy = [answer("hello there"), answer("what is it")]
    sampled = answer("hello there", 0.7, seed=0)  # the runner's seed for the first question's first choice
    assert greedy[0] != sampled  # the seeded sample is another answer: the runs below tell which one they gave
    answers = {}
    for name, extra in (("default", []), ("temperature", ["--temperature", "0.7"]), ("exact", ["--sampling", "exact"]),
                        ("typical", ["--sampling", "typical"])):
        path = tmp_path / f"{name}.jsonl"
        proc = run("gen_model_answer_baseline.py", "--model-path", checkpoint, "--question-file", questions,
                   "--answer-file", path, "--max-new-token", n, "--warmup", 0, "--threads", 1, *extra)
        assert proc.returncode == 0, proc.stderr
        assert "is a PPD checkpoint: the baseline decodes its base model" in proc.stderr
        answers[name] = [row["choices"][0]["turns"][0] for row in rows(path)]
    assert answers["default"] == greedy and answers["temperature"] == greedy  # category 0.7, then --temperature 0.7
    assert answers["typical"] == greedy  # upstream's baseline is argmax whatever --sampling names
    assert answers["exact"] == [sampled, greedy[1]]  # writing sampled at its 0.7, math greedy at its 0


def test_num_gpus_total_runs_two_ray_workers_on_cpu(tmp_path, tiny_chat, tiny_model_folder):
    """One ray run (about a minute on 2 busy cores: ray's start and two workers importing torch)."""
    from prompt.evaluation.chat import ChatFormatter
    from prompt.inference.decoding import Decoder

    ids = (4, 2, 3, 1)
    questions = write_questions(tmp_path / "q.jsonl", [{"question_id": i, "category": "math", "turns": [f"w{i} hello"]}
                                                       for i in ids])
    split = tmp_path / "split.jsonl"
    proc = run("gen_model_answer_baseline.py", "--model-path", tiny_model_folder, "--question-file", questions,
               "--max-new-token", 6, "--warmup", 0, "--answer-file", split, "--num-gpus-total", 2)
    assert proc.returncode == 0, proc.stderr
    assert "2 ray workers (cpu), 2 questions each" in proc.stdout
    by_ray = rows(split)
    assert [r["question_id"] for r in by_ray] == [1, 2, 3, 4]  # both workers' rows, sorted at the end
    model, tokenizer = tiny_chat
    formatter = ChatFormatter(tokenizer, "tiny")
    decoder = Decoder(model, stop_token_ids=formatter.stops(model))
    for row in by_ray:
        result = decoder.generate(formatter.input_ids([f"w{row['question_id']} hello"]), 6)
        assert row["choices"][0]["new_tokens"] == [result.new_tokens]
        assert row["choices"][0]["turns"][0] == tokenizer.decode(result.token_ids, skip_special_tokens=True).strip()


# --------------------------------------------------------------------------------------------------
# FastChat's judge reads our answer files
def fastchat_common():
    """fastchat.llm_judge.common, unchanged; it imports the judges' API clients at the top, of which only openai is
    installed here: a stand-in anthropic module lets it import (the judging functions used below never call it)."""
    try:
        import anthropic  # noqa: F401
    except ImportError:
        sys.modules["anthropic"] = types.ModuleType("anthropic")
    import fastchat.llm_judge.common as common

    return common


def test_fastchat_judge_loads_and_matches_our_answer_files(tmp_path, tiny_chat, monkeypatch):
    from prompt.evaluation.chat import ChatFormatter
    from prompt.evaluation.answer_flags import check_args
    from prompt.evaluation.runner import make_decoder, run_benchmark

    common = fastchat_common()
    from fastchat.llm_judge import gen_judgment

    model, tokenizer = tiny_chat
    data = tmp_path / "data" / "mt_bench"
    data.mkdir(parents=True)
    questions = write_questions(data / "question.jsonl", [
        {"question_id": 81, "category": "writing", "turns": ["hello there", "say more"]},
        {"question_id": 82, "category": "math", "turns": ["what is it", "and then"]}])
    monkeypatch.chdir(tmp_path)
    # no --question-file: data/mt_bench/question.jsonl, where upstream and FastChat read it
    args = parser().parse_args(["--max-new-token", "5", "--warmup", "0", "--model-id", "ppd-tiny"])
    formatter = ChatFormatter(tokenizer, "tiny")
    run_benchmark(args, check_args(args), make_decoder(model, formatter, args), formatter, "test")
    name = os.path.splitext(os.path.basename(args.answer_file))[0]
    assert os.path.dirname(os.path.abspath(args.answer_file)) == str(data / "model_answer")

    qs = common.load_questions(str(questions), None, None)
    answers = common.load_model_answers(str(data / "model_answer"))
    assert set(answers[name]) == {81, 82}
    judges = gen_judgment.make_judge_single("gpt-4", {"single-v1": {"name": "single-v1", "type": "single", "prompt_template": "{question}|{answer}", "system_prompt": "s", "output_format": "[[rating]]"},
                                                      "single-math-v1": {}, "single-v1-multi-turn": {}, "single-math-v1-multi-turn": {}})
    common.check_data(qs, answers, {}, [name], {"default": judges["default"]})
    matches = gen_judgment.make_match_single(qs[:1], [name], answers, judges["default"])
    prompts = []

    def fake_judge(model_name, conv, temperature, max_tokens, api_dict=None):
        prompts.append(conv.messages[0][1])
        return "Rating: [[7]]"

    monkeypatch.setattr(common, "chat_completion_openai", fake_judge)
    result = common.play_a_match_single(matches[0], output_file=None)
    ours = {r["question_id"]: r for r in rows(args.answer_file)}[81]["choices"][0]["turns"][0]
    assert result["score"] == 7 and prompts == ["hello there|" + ours]


# --------------------------------------------------------------------------------------------------
# --revision
REVISION_PROBE = """
import json, sys
from prompt.cli import ArgumentParser
from prompt.errors import PPDError
from prompt.evaluation.answer_flags import add_common_flags, resolve_revision
for flags in json.loads(sys.argv[1]):
    args = add_common_flags(ArgumentParser(), "", "tiny").parse_args(flags)
    try:
        resolve_revision(args)
        print("path", args.model_path)
    except PPDError as exc:
        print("error", exc)
"""


def test_revision_picks_that_snapshot_of_a_hub_id(tmp_path):
    cache = tmp_path / "hub"
    root = cache / "models--tiny-org--tiny"
    shas = {"main": "a" * 40, "v1": "b" * 40}
    for ref, sha in shas.items():
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(sha)
        (root / "snapshots" / sha).mkdir(parents=True)
        (root / "snapshots" / sha / "config.json").write_text("{}")
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
    env.pop("HF_HOME", None)

    flags = [["--model-path", "tiny-org/tiny", "--revision", "v1"], ["--model-path", "tiny-org/tiny"],
             ["--model-path", "tiny-org/tiny", "--revision", "v9"]]
    proc = subprocess.run([sys.executable, "-c", REVISION_PROBE, json.dumps(flags)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    v1, main, missing = proc.stdout.strip().splitlines()[-3:]
    assert v1.endswith(os.path.join("snapshots", shas["v1"]))
    assert main == "path tiny-org/tiny"  # main: the loaders' own resolution
    assert missing.startswith("error cannot fetch revision 'v9'")


# --------------------------------------------------------------------------------------------------
# tree_latency.py and get_throughput_results.py: upstream's files and modes
def test_tree_latency_rows_feed_get_throughput_results(tmp_path, tiny_model_folder):
    latency = tmp_path / "x_tree_latency.jsonl"
    proc = run("tree_latency.py", "--model-path", tiny_model_folder, "--model-id", "tiny", "--answer-file", latency,
               "--bench-name", "alpaca_eval", "--min-tree-length", 2, "--max-tree-length", 6, "--length-interval", 2,
               "--max-new-token", 1024, "--repeats", 7, "--prefix-length", 8, "--dtype", "float32", "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    lengths = [row["tree_length"] for row in rows(latency)]
    assert lengths == [1, 2, 4, 6] and all(row["choices"][0]["wall_time"][0] > 0 for row in rows(latency))
    answers = tmp_path / "answers"
    answers.mkdir()
    # tree 2: 20 tokens in 9 steps and 2 s; tree 4: 20 tokens in 4 steps and 1 s
    for n, steps, seconds in ((2, [3, 4], 1.0), (4, [1, 1], 0.5)):
        for run_index in range(2):
            row = {"question_id": 1, "model_id": "m", "choices": [{"index": 0, "turns": ["a", "b"], "idxs": steps,
                                                                    "new_tokens": [10, 10], "wall_time": [seconds] * 2}]}
            (answers / f"tree{n}_{run_index}.jsonl").write_text(json.dumps(row) + "\n")
    proc = run("get_throughput_results.py", latency, answers)
    assert proc.returncode == 0, proc.stderr
    assert "Best sparse tree: 4" in proc.stdout
    proc = run("get_throughput_results.py", answers, "--n", 2)
    assert proc.returncode == 0, proc.stderr
    assert "Average accept length: 5.00000 tokens per decoding step" in proc.stdout  # 20 tokens / (2 + 2) steps
    assert "Best sparse tree: 4" in proc.stdout
    assert_clear_error(run("get_throughput_results.py", answers / "tree2_0.jsonl", "--gpu-power"),
                       "without power measurements")


def test_get_throughput_results_reads_upstreams_tree_latency_file_and_ranks_no_baseline(tmp_path):
    """Upstream's tree_latency.py rows hold tree_length and choices only (no question_id); the last row of a tree
    length counts. The baseline's files are shown, never named the best tree."""
    answers = tmp_path / "search"
    answers.mkdir()
    for name, steps, seconds in (("baseline_0", [19, 19], 0.1), ("dynamic_sparse_tree10_0", [9, 9], 1.0),
                                 ("dynamic_sparse_tree16_0", [4, 4], 1.5)):
        row = {"question_id": 0, "model_id": "m", "choices": [{"index": 0, "turns": ["a", "b"], "idxs": steps,
                                                                "new_tokens": [20, 20], "wall_time": [seconds] * 2}]}
        (answers / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    latency = answers / "tree_latency.jsonl"  # upstream writes it beside the answers: the folder listing skips it

    def latency_row(length, seconds):
        return json.dumps({"tree_length": length, "choices": [{"index": 0, "turns": ["x"], "idxs": [511],
                                                               "new_tokens": [600], "wall_time": [seconds]}],
                           "tstamp": 1.0}) + "\n"

    # tree 16 measured twice: the later row (3 s) counts, so tree 10 (2 per 1 s) beats tree 16 (4 per 3 s)
    latency.write_text(latency_row(10, 1.0) + latency_row(16, 1.0) + latency_row(16, 3.0))
    proc = run("get_throughput_results.py", latency, answers)
    assert proc.returncode == 0, proc.stderr
    assert "accept length 2.00000, latency 1.00000 s" in proc.stdout and "latency 3.00000 s" in proc.stdout
    assert "Best sparse tree: 10, ratio: 2.000" in proc.stdout and "baseline" not in proc.stdout
    proc = run("get_throughput_results.py", answers)
    assert proc.returncode == 0, proc.stderr
    # the baseline has by far the best accept length per forward time (1 per 0.005 s), and is still not a tree
    assert f">>> {answers / 'baseline_0.jsonl'}" in proc.stdout and "Best sparse tree: 10, ratio: 20.000" in proc.stdout
    latency.write_text(latency_row(10, 1.0) + '{"choices": []}\n')
    assert_clear_error(run("get_throughput_results.py", latency, answers), "line 2 is not a tree latency row")


# --------------------------------------------------------------------------------------------------
# the other scripts parse upstream's command lines
def test_webui_dataset_and_accept_length_take_upstreams_flags(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "application"))
    try:
        import webui
    finally:
        sys.path.pop(0)
    for bits in ("8", "4"):
        args = webui.parse_args(["--ppd-path", "hmarkc/ppd-vicuna-7b-v1.3", f"--load-in-{bits}bit", "--max-new-token", "512"])
        assert getattr(args, f"load_in_{bits}bit") and args.max_new_token == 512
    from prompt.data.cli import build_parser

    args = build_parser().parse_args(["--dataset_type", "distillation", "--num_special_tokens", "3", "--data_path",
                                      "d.pt", "--model_max_length", "2048", "--model_name_or_path", "m", "--size", "5",
                                      "--save_path", "out"])
    assert (args.dataset_type, args.size, args.save_path, args.model_name_or_path) == ("distillation", 5, "out", "m")
    proc = run("accept_length.py", "--dir-path", tmp_path, "--file-name", "f", "--model-name", "x", "--n", "1",
               "--eval-file-name", "other.py", "--run-baseline", "--question-file", "q.json")
    assert_clear_error(proc, "--eval-file-name other.py")
