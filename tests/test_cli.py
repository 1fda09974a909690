"""Command-line scripts: real runs on the default model, and bad input -> one error line, exit 2, no traceback."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_llama

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("PPD_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
MT_BENCH = os.path.join(SHARED_DATA, "mt_bench", "question.jsonl")


def run(script, *args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, timeout=900)


def assert_clear_error(proc, text):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], proc.stderr


@pytest.mark.parametrize("script", ["gen_model_answer_baseline.py", "gen_model_answer_prompt_decoding.py"])
def test_missing_and_malformed_question_files(tmp_path, script):
    assert_clear_error(run(script, "--question-file", tmp_path / "none.jsonl"), "does not exist")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["hi"]}\n{oops\n')
    assert_clear_error(run(script, "--question-file", bad), "line 2")
    notturns = tmp_path / "noturns.jsonl"
    notturns.write_text('{"question_id": 1}\n')
    assert_clear_error(run(script, "--question-file", notturns), "turns")
    assert_clear_error(run(script, "--bench-name", "squad"), "invalid choice")
    assert_clear_error(run(script, "--bench-name", "alpaca_eval", "--question-file", bad), "malformed")
    assert_clear_error(run(script, "--bench-name", "gsm8k"), "--question-file is required")


def test_missing_model_path(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "turns": ["hi"]}\n')
    proc = run("gen_model_answer_baseline.py", "--question-file", questions, "--model-path", tmp_path / "nomodel")
    assert_clear_error(proc, "is not a folder")
    proc = run("gen_model_answer_prompt_decoding.py", "--question-file", questions, "--model-path", tmp_path / "nockpt")
    assert_clear_error(proc, "not a folder")


def test_checkpoint_hidden_size_mismatch(tmp_path):
    base = tmp_path / "base"
    tiny_llama(0).save_pretrained(base)  # hidden size 32
    ckpt = tmp_path / "ppd"
    ckpt.mkdir()
    (ckpt / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(base), "num_special_tokens": 3, "virtual_tokens_per_special_token": 1}))
    save_file({"prompt_embeddings": torch.zeros(3, 64)}, str(ckpt / "adapter_model.safetensors"))
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "turns": ["hi"]}\n')
    proc = run("gen_model_answer_prompt_decoding.py", "--question-file", questions, "--model-path", ckpt)
    assert_clear_error(proc, "hidden size")


def test_malformed_tree_and_unknown_tree_length(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "turns": ["hi"]}\n')
    tree = tmp_path / "tree.json"
    tree.write_text('{"1": [[[0, 0], 0.5, 1]]}')
    proc = run("gen_model_answer_prompt_decoding.py", "--question-file", questions, "--tree-file", tree)
    assert_clear_error(proc, "malformed tree spec")
    # a length no tree file holds is built from the checkpoint's accuracies; one too small for any tree is refused
    proc = run("gen_model_answer_prompt_decoding.py", "--question-file", questions, "--tree-length", 1)
    assert_clear_error(proc, "smaller than the smallest tree")
    tree.write_text('{"6": {"1": [[[0], 0.5, 3], [[1], 0.2, 1]]}}')  # a user's tree file: its lengths only
    proc = run("gen_model_answer_prompt_decoding.py", "--question-file", questions, "--tree-file", tree,
               "--tree-length", 7)
    assert_clear_error(proc, "no tree of length 7")


def test_prompt_longer_than_context(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "turns": ["word " * 9000]}) + "\n")
    proc = run("gen_model_answer_prompt_decoding.py", "--question-file", questions, "--warmup", 0,
               "--answer-file", tmp_path / "a.jsonl")
    assert_clear_error(proc, "context")


def test_answer_scripts_write_fastchat_rows_and_throughput_reads_them(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 7, "category": "x", "turns": ["Say hello.", "Say bye."]}) + "\n")
    answers = tmp_path / "answers.jsonl"
    answers.write_text("")  # appended to, never truncated
    for script, model_id in (("gen_model_answer_baseline.py", "baseline-run"), ("gen_model_answer_prompt_decoding.py", "ppd-run")):
        proc = run(script, "--question-file", questions, "--answer-file", answers, "--max-new-token", 12,
                   "--warmup", 0, "--model-id", model_id)
        assert proc.returncode == 0, proc.stderr
        assert "tokens/s" in proc.stdout
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert set(row) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        choice = row["choices"][0]
        assert set(choice) == {"index", "turns", "idxs", "new_tokens", "wall_time"}
        assert len(choice["turns"]) == 2 and all(0 < n <= 12 for n in choice["new_tokens"])
    assert rows[0]["choices"][0]["turns"] == rows[1]["choices"][0]["turns"]  # greedy PPD == greedy baseline
    proc = run("get_throughput_results.py", answers)
    assert proc.returncode == 0 and "Average accept length" in proc.stdout
    assert_clear_error(run("get_throughput_results.py", tmp_path / "none.jsonl"), "does not exist")


def test_batch_size_gives_the_same_answers(tmp_path):
    questions = tmp_path / "q.jsonl"
    rows = [{"question_id": i, "category": "x", "turns": [text, "Now say it in two words."]}
            for i, text in enumerate(["Say hello.", "Name a colour.", "Count to three.", "What is 2+2?"])]
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows))
    answers = {}
    for batch in (1, 3):
        path = tmp_path / f"answers{batch}.jsonl"
        proc = run("gen_model_answer_prompt_decoding.py", "--question-file", questions, "--answer-file", path,
                   "--max-new-token", 12, "--warmup", 0, "--batch-size", batch, "--num-choices", 2)
        assert proc.returncode == 0, proc.stderr
        answers[batch] = [(row["question_id"], [c["turns"] for c in row["choices"]])
                          for row in map(json.loads, path.read_text().splitlines())]
    assert "tokens/s in all" in proc.stdout
    assert len(answers[3]) == 4 and answers[3] == answers[1]
    assert_clear_error(run("gen_model_answer_prompt_decoding.py", "--question-file", questions, "--batch-size", 0,
                           "--answer-file", tmp_path / "x.jsonl"), "--batch-size")


def test_humaneval_questions_come_from_the_package():
    from prompt.evaluation.questions import load_questions

    questions = load_questions("humaneval", begin=0, end=3)
    assert questions[0]["question_id"] == "HumanEval/0" and "def " in questions[0]["turns"][0]


@pytest.mark.skipif(not os.path.isfile(MT_BENCH), reason="../shared/data is not beside the repository")
def test_real_question_files_parse():
    from prompt.evaluation.questions import load_questions

    assert len(load_questions("mt_bench", MT_BENCH)) == 80
    assert len(load_questions("gsm8k", os.path.join(SHARED_DATA, "gsm8k", "test.jsonl"), 0, 5)) == 5
    assert len(load_questions("alpaca_eval", os.path.join(SHARED_DATA, "alpaca_eval", "alpaca_eval.json"))) == 805


def test_chat_formatting_uses_fastchat_templates_when_model_id_names_one():
    from prompt.evaluation.chat import ChatFormatter
    from prompt.model.loading import load_base_model

    _, tokenizer = load_base_model(None)
    vicuna = ChatFormatter(tokenizer, "vicuna-7b-v1.3")
    text = tokenizer.decode(vicuna.input_ids(["Hi there", "Hello!", "How are you?"])[0])
    assert "USER: Hi there ASSISTANT: Hello!" in text and text.rstrip().endswith("ASSISTANT:")
    native = ChatFormatter(tokenizer, "smollm2-135m-ppd")  # unknown to FastChat: the tokenizer's template
    assert native.template is None
    assert "<|im_start|>assistant" in tokenizer.decode(native.input_ids(["Hi there"])[0])
