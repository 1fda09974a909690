"""Measuring the hardware and recording the tuned decoding: tree_latency.py, accept_length.py, prompt.evaluation.tune."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from test_cli import REPO, SHARED_DATA, assert_clear_error, run

SHAREGPT = os.path.join(SHARED_DATA, "sharegpt", "ShareGPT_V3_filtered_1000.json")


def run_module(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=900)


needs_sharegpt = pytest.mark.skipif(not os.path.isfile(SHAREGPT), reason="../shared/data is not beside the repository")


def test_tree_latency_saves_the_curve_and_plot(tmp_path):
    out = tmp_path / "latency.json"
    proc = run("tree_latency.py", "--min-tree-length", 1, "--max-tree-length", 9, "--length-interval", 4,
               "--repeats", 1, "--prefix-length", 16, "--output-file", out, "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    curve = json.loads(out.read_text())
    assert sorted(int(n) for n in curve["latency_ms"]) == [1, 5, 9]
    assert all(ms > 0 for ms in curve["latency_ms"].values())
    assert (tmp_path / "latency.png").stat().st_size > 1000
    assert_clear_error(run("tree_latency.py", "--output-file", out), "exists")
    assert_clear_error(run("tree_latency.py", "--output-file", tmp_path / "x.json", "--min-tree-length", 9,
                           "--max-tree-length", 2), "--min-tree-length")


@needs_sharegpt
def test_accept_length_reports_each_tree_and_the_best(tmp_path):
    proc = run("accept_length.py", "--question-file", SHAREGPT, "--question-begin", 940, "--question-end", 941,
               "--choices", "[10, 16]", "--max-new-token", 16, "--dtype", "float32", "--dir-path", tmp_path,
               "--file-name", "sizes", "--interleaved")
    assert proc.returncode == 0, proc.stderr
    assert "| tree 10 |" in proc.stdout and "| tree 16 |" in proc.stdout and "best:" in proc.stdout
    saved = json.loads((tmp_path / "sizes.json").read_text())
    lengths = {r["tree_length"] for r in saved["results"]}
    assert lengths == {0, 10, 16}
    for r in saved["results"]:
        assert r["tokens"] > 0 and r["accept_length"] >= 1.0
    # lengths the tree file lacks are built from accuracies.json; 1 fits no tree
    assert_clear_error(run("accept_length.py", "--question-file", SHAREGPT, "--choices", "[1]"), "no tree of length 1")
    assert_clear_error(run("accept_length.py", "--question-file", SHAREGPT, "--choices", "[10]", "--dir-path", tmp_path,
                           "--file-name", "sizes", "--interleaved"), "exists")
    assert sorted(os.listdir(tmp_path)) == ["sizes.json"]  # the interleaved run writes no answer files


def test_accept_length_runs_upstreams_command_on_its_default_question_file(tmp_path):
    """Upstream's README command names no question file: upstream's tree search reads data/alpaca_eval/alpaca_eval.json
    under the working folder and writes one answer file per tree length and run, which a rerun resumes."""
    flags = ["--dir-path", tmp_path / "out", "--file-name", "sizes", "--eval-file-name",
             "gen_model_answer_prompt_decoding.py", "--n", "1", "--choices", "[10]", "--max-new-token", 8,
             "--question-end", 1, "--dtype", "float32"]
    assert_clear_error(run("accept_length.py", *flags, cwd=tmp_path), "--question-file")
    (tmp_path / "data" / "alpaca_eval").mkdir(parents=True)
    (tmp_path / "data" / "alpaca_eval" / "alpaca_eval.json").write_text(json.dumps(
        [{"instruction": "Say hello.", "dataset": "x"}, {"instruction": "Name a colour.", "dataset": "x"}]))
    proc = run("accept_length.py", *flags, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "evaluation set" in proc.stderr and "Best sparse tree: 10" in proc.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["sizes10_0.jsonl"]  # no baseline without --run-baseline
    answers = (tmp_path / "out" / "sizes10_0.jsonl").read_text()
    rows = [json.loads(line) for line in answers.splitlines()]
    assert [row["question_id"] for row in rows] == [0] and rows[0]["choices"][0]["new_tokens"][0] > 0
    # a rerun over two questions keeps the answered one and adds the other; a failing answer script is one error
    proc = run("accept_length.py", *flags[:-4], "--question-end", 2, "--dtype", "float32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rerun = (tmp_path / "out" / "sizes10_0.jsonl").read_text().splitlines()
    assert rerun[0] == answers.splitlines()[0] and json.loads(rerun[1])["question_id"] == 1
    failing = [*flags[:8], "--choices", "[1]", *flags[10:]]
    assert_clear_error(run("accept_length.py", *failing, cwd=tmp_path), "smaller than the smallest tree")
    (tmp_path / "file").write_text("")
    assert_clear_error(run("accept_length.py", "--dir-path", tmp_path / "file", *flags[2:], cwd=tmp_path), "is a file")


@needs_sharegpt
def test_tune_records_a_choice_per_dtype_and_decoders_use_it(tmp_path):
    from prompt.inference.decoding import Decoder
    from prompt.model.loading import SHIPPED_PROMPT_TOKENS
    from prompt.model.prompt_decoder import AutoPromptDecoder

    folder = tmp_path / "tokens"
    shutil.copytree(SHIPPED_PROMPT_TOKENS, folder)
    (folder / "decoding.json").unlink(missing_ok=True)
    args = ["prompt.evaluation.tune", "--model-path", folder, "--dtype", "float32", "--question-file", SHAREGPT,
            "--question-begin", 940, "--question-end", 941, "--max-new-token", 8, "--tree-lengths", 10,
            "--lookup-lengths", "0,4", "--suffix-nodes", "0,6", "--latency-lengths", "1,8", "--rounds", 2]
    proc = run_module(*args)
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads((folder / "decoding.json").read_text())["float32"]
    report = json.loads((folder / "tuning_float32.json").read_text())
    assert {(r["tree_length"], r["prompt_lookup_num_tokens"], r["suffix_nodes"]) for r in report["results"]} == {
        (t, k, s) for t in (0, 10) for k in (0, 4) for s in (0, 6)}
    # the fastest measured configuration is the one recorded, and the message names it
    fastest = max(report["results"], key=lambda r: r["tokens_per_second"])
    plain = next(r for r in report["results"]
                 if r["tree_length"] == 0 and r["prompt_lookup_num_tokens"] == 0 and r["suffix_nodes"] == 0)
    keys = ("tree_length", "prompt_lookup_num_tokens", "suffix_nodes")
    assert [recorded[k] for k in keys] == [fastest[k] for k in keys]
    assert recorded["speed_vs_plain_greedy"] == round(fastest["tokens_per_second"] / plain["tokens_per_second"], 3)
    assert report["chosen"] == recorded
    if fastest is plain:
        assert "plain greedy is recorded" in proc.stdout and "chosen:" not in proc.stdout
    else:
        name = " + ".join(([f"tree {fastest['tree_length']}"] if fastest["tree_length"] else [])
                          + ([f"lookup {fastest['prompt_lookup_num_tokens']}"] if fastest["prompt_lookup_num_tokens"] else [])
                          + ([f"suffix {fastest['suffix_nodes']}"] if fastest["suffix_nodes"] else []))
        assert f"chosen: {name}, " in proc.stdout and "plain greedy is recorded" not in proc.stdout
    assert (folder / "tuning_float32_trees.png").is_file() and (folder / "tuning_float32_latency.png").is_file()
    assert_clear_error(run_module(*args), "already records a float32 decoding")
    assert_clear_error(run_module(*args[:-4], "--tree-lengths", 1), "no tree of length 1")
    assert_clear_error(run_module(*args[:-2], "--rounds", 0), "--rounds must be >= 1")

    # tuned at a temperature: recorded as the exact-sampling entry inside float32's, which stays as it was
    proc = run_module(*args[:-6], "--tree-lengths", 10, "--lookup-lengths", 0, "--temperature", 0.7)
    assert proc.returncode == 0, proc.stderr
    tuned = json.loads((folder / "decoding.json").read_text())["float32"]
    exact = tuned.pop("exact")
    assert tuned == recorded and exact["temperature"] == 0.7 and "speed_vs_plain_sampling" in exact
    assert (exact["tree_length"], exact["prompt_lookup_num_tokens"]) in {(0, 0), (10, 0)}
    assert "plain sampling" in proc.stdout and (folder / "tuning_float32_exact_t0.7.json").is_file()
    from prompt.errors import PPDError
    from prompt.evaluation.tune import record_choice
    with pytest.raises(PPDError, match="already records a float32 decoding for exact sampling"):
        record_choice(str(folder / "decoding.json"), "float32", exact, overwrite=False, rule="exact")
    record_choice(str(folder / "decoding.json"), "float32", recorded, overwrite=True)  # greedy again: exact stays
    assert json.loads((folder / "decoding.json").read_text())["float32"]["exact"] == exact

    # the recorded entry is what a decoder uses by default; explicit arguments override it
    (folder / "decoding.json").write_text(json.dumps({
        "float32": {"tree_length": 16, "prompt_lookup_num_tokens": 5, "suffix_nodes": 12,
                    "exact": {"tree_length": 10, "prompt_lookup_num_tokens": 0}},
        "bfloat16": {"tree_length": 0, "prompt_lookup_num_tokens": 0}}))
    model = AutoPromptDecoder.from_pretrained(str(folder), dtype="float32")
    decoder = Decoder(model)
    # tree lengths as upstream's: nodes plus their special tokens (a forward of that plus the root and its 3)
    assert decoder.ppd and decoder.tree.tree_length == 16 and decoder.prompt_lookup_num_tokens == 5
    assert decoder.describe() == "PPD tree of 20 inputs + prompt lookup 5 + suffix tree 12, greedy"
    assert [type(s).__name__ for s in decoder.sources] == ["PromptLookup", "SuffixCandidates"]
    # sampling exactly: the rule's own entry; a rule without one: the greedy entry
    assert Decoder(model, temperature=1.0).describe() == "PPD tree of 14 inputs, exact sampling, temperature 1"
    assert Decoder(model, temperature=0.7, sampling="typical").describe() == \
        "PPD tree of 20 inputs + prompt lookup 5 + suffix tree 12, typical acceptance, temperature 0.7"
    assert Decoder(model, temperature=0.7, prompt_lookup_num_tokens=3).describe() == \
        "PPD tree of 14 inputs + prompt lookup 3, exact sampling, temperature 0.7"
    override = Decoder(model, tree_length=10, prompt_lookup_num_tokens=0)
    assert override.tree.tree_length == 10 and override.tree.input_length == 14 and not override.sources
    # the tree fixed by the caller, the sources from another machine's entry: their drafts priced on this machine
    assert Decoder(model, tree_length=0).describe() == \
        "prompt lookup 5 + suffix tree 12 (each draft cut to the depth that pays), greedy"
    model = AutoPromptDecoder.from_pretrained(str(folder), dtype="bfloat16")
    assert Decoder(model).describe() == "plain decoding, greedy"


def test_demo_runs_the_tuned_decoding_beside_generate():
    proc = run_module("prompt.demo", "--num-questions", 1, "--max-new-token", 8, "--warmup", 0)
    assert proc.returncode == 0, proc.stderr
    assert "| tuned |" in proc.stdout and "| generate |" in proc.stdout and "tuned: " in proc.stdout
