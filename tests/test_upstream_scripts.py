"""Upstream's recipes in script/train/, script/latency/ and script/eval/, run end to end on the default model
(their environment variables keep each run small)."""
import json
import os
import re
import subprocess

import pytest

from test_cli import REPO, SHARED_DATA

ALPACA = os.path.join(SHARED_DATA, "alpaca_eval", "alpaca_eval.json")
needs_data = pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data is not beside the repository")


def recipe(path, **env):
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}}
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run(["bash", os.path.join(REPO, "script", path), SHARED_DATA], capture_output=True, text=True,
                          env=run_env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


@needs_data
def test_optimal_sparse_tree_search_runs_upstreams_sequence(tmp_path):
    work = tmp_path / "search"
    proc = recipe("latency/optimal-sparse-tree.sh", WORK=work, QUESTIONS=1, MAX_NEW_TOKEN=6)
    names = sorted(os.listdir(work))
    assert names == ["baseline_0.jsonl", "dynamic_sparse_tree10_0.jsonl", "dynamic_sparse_tree16_0.jsonl",
                     "tree_latency.jsonl", "tree_latency.png"]
    for name in names[:3]:
        (row,) = rows(work / name)
        assert row["question_id"] == 0 and row["choices"][0]["new_tokens"][0] > 0
    assert rows(work / "baseline_0.jsonl")[0]["choices"][0]["idxs"][0] + 1 == 6  # plain: one token per step
    latency = rows(work / "tree_latency.jsonl")
    # upstream's tree lengths, each measured at its forward's inputs: the root and 3 special tokens added
    assert [(r["tree_length"], r["inputs"]) for r in latency] == [(10, 14), (13, 17), (16, 20)]
    assert all(r["choices"][0]["wall_time"][0] > 0 for r in latency)
    out = proc.stdout
    assert "Throughput for baseline:" in out and "Throughput for sparse tree 16:" in out
    assert f">>> {work}/baseline_0.jsonl" in out and "Average accept length" in out  # get_throughput_results DIR
    ranked = out[out.index(f">>> {work}/dynamic_sparse_tree10_0.jsonl\nRatio"):]  # ... LATENCY_FILE DIR
    assert re.search(r"Best sparse tree: (10|16), ratio", ranked) and "baseline" not in ranked
    # a rerun resumes: nothing is replaced, nothing measured again
    before = {name: (work / name).read_text() for name in names if name.endswith(".jsonl")}
    recipe("latency/optimal-sparse-tree.sh", WORK=work, QUESTIONS=1, MAX_NEW_TOKEN=6)
    assert {name: (work / name).read_text() for name in before} == before


@needs_data
def test_latency_gen_recipe_answers_each_set_with_both_scripts(tmp_path):
    proc = recipe("latency/smollm2-gen.sh", WORK=tmp_path, BASELINE_RUNS=1, RUNS=2, QUESTIONS=1, MAX_NEW_TOKEN=6,
                  BENCHES="mt_bench_greedy gsm8k")
    greedy = tmp_path / "mt_bench" / "experiments"
    assert sorted(os.listdir(greedy)) == ["smollm2-baseline1-greedy.jsonl", "smollm2-faster1-greedy.jsonl",
                                          "smollm2-faster2-greedy.jsonl"]
    assert sorted(os.listdir(tmp_path / "gsm8k" / "experiments")) == [
        "smollm2-baseline1.jsonl", "smollm2-faster1.jsonl", "smollm2-faster2.jsonl"]
    baseline = rows(greedy / "smollm2-baseline1-greedy.jsonl")[0]
    faster = rows(greedy / "smollm2-faster1-greedy.jsonl")[0]
    assert baseline["model_id"] == "smollm2-baseline1" and len(baseline["choices"][0]["turns"]) == 2  # both turns
    assert faster["choices"][0]["turns"] == baseline["choices"][0]["turns"]  # greedy PPD: the base model's answers
    assert "is a PPD checkpoint: the baseline decodes its base model" in proc.stderr
    assert proc.stdout.count("Macro-average throughput") == 4  # baseline and PPD of each set
    assert f">>> {greedy}/smollm2-faster1-greedy.jsonl, {greedy}/smollm2-faster2-greedy.jsonl" in proc.stdout


@needs_data
def test_training_and_eval_recipes_train_tokens_and_measure_them(tmp_path):
    work = tmp_path / "train"
    recipe("train/train-ensemble-attention-kd.sh", WORK=work, SIZE=3, MODEL_MAX_LENGTH=96)
    assert (work / "ShareGPT_training_dataset_3_distillation_96.pt").is_file()
    saved = [root for root, _, files in os.walk(work / "test") if "adapter_model.safetensors" in files
             and "checkpoint-" not in os.path.basename(root)]
    assert len(saved) == 1, saved
    config = json.loads(open(os.path.join(saved[0], "adapter_config.json")).read())
    assert config["num_special_tokens"] == 3 and config["vt_attention_type"] == "ensemble"
    logs = tmp_path / "log"
    proc = recipe("eval/eval-accuracy.sh", MODEL_PATH=saved[0], MODEL_NAME="kd", SAVE_DIR=logs, SIZE=2, STEPS=12,
                  MAX_TREE_LENGTH=8)
    accuracy = json.loads((logs / "kd_accuracy.json").read_text())
    assert len(accuracy["top_k_accuracy"]) == 3 and all(len(row) == 10 for row in accuracy["top_k_accuracy"])
    assert all(0.0 <= a <= 1.0 for row in accuracy["top_k_accuracy"] for a in row)
    assert (logs / "kd_accuracy.png").stat().st_size > 1000
    trees = json.loads((logs / "kd_trees.json").read_text())
    assert trees and "trees:" in proc.stdout
