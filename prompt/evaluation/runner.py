"""The one benchmark runner behind gen_model_answer_baseline.py and gen_model_answer_prompt_decoding.py.

Both scripts take the upstream flags (`answer_flags`) and write FastChat answer rows; they differ only in the decoder.
Here: the answering of the questions, one at a time or through one running batch (`batched_answers`), in this
process or among ray workers (`ray_workers`); each question at its temperature (`temperatures`), its GPU power
measured on request (`gpus`); the totals (`totals`).
"""
from __future__ import annotations

import sys
import time

from prompt.errors import PPDError
from prompt.evaluation.answer_flags import sampling_rule
from prompt.evaluation.answer_rows import ChoiceInProgress, answer_row
from prompt.evaluation.answers import AnswerFile
from prompt.evaluation.batched_answers import answer_batched
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.gpus import end_power_window, gpu_power_monitor
from prompt.evaluation.ray_workers import answer_in_workers
from prompt.evaluation.temperatures import question_temperature
from prompt.evaluation.totals import MethodTotals
from prompt.inference.decoding import Decoder


class PerTemperature:
    """Decoders by temperature, built on first use by `build(temperature)` (questions' temperatures differ by category)."""

    def __init__(self, build):
        self.build = build
        self.decoders = {}

    def __call__(self, temperature: float):
        if temperature not in self.decoders:
            self.decoders[temperature] = self.build(temperature)
        return self.decoders[temperature]


def run_answers(args, questions, setup) -> str:
    """Answer `questions` with what `setup(args)` returns, `(decoder_for, formatter, label)` (`decoder_for`: a
    decoder, or a function of the temperature giving one): in this process, or split among `args.workers` ray
    workers (`setup` runs in each); then de-duplicate and sort the answer file, and report."""
    if getattr(args, "workers", 1) <= 1:
        decoder_for, formatter, label = setup(args)
        return run_benchmark(args, questions, decoder_for, formatter, label)
    totals, failed, elapsed, label = answer_in_workers(args, questions, setup, _answer_with_setup)
    return finish(args, questions, totals, failed, label, elapsed)


def _answer_with_setup(args, questions, setup):
    """A worker's answering: its own model from `setup`; returns (totals, failed, seconds, label)."""
    decoder_for, formatter, label = setup(args)
    totals, failed, elapsed = answer_questions(args, questions, decoder_for, formatter, label)
    return totals, failed, elapsed, label


def run_benchmark(args, questions, decoder, formatter: ChatFormatter, label: str):
    """Answer every question with `decoder` (or `decoder(temperature)`, the decoder for a question's temperature) and
    append FastChat rows to the answer file, one row per question as it is answered; at the end the file is
    de-duplicated and sorted by question id. A question that cannot be answered (a prompt longer than the context)
    is reported by id and the run goes on; the run then fails naming them."""
    totals, failed, elapsed = answer_questions(args, questions, decoder, formatter, label)
    return finish(args, questions, totals, failed, label, elapsed)


def answer_questions(args, questions, decoder, formatter: ChatFormatter, label: str):
    """The answering of `run_benchmark`; returns (totals, {question id: why it was not answered}, seconds)."""
    from tqdm import tqdm

    answers = getattr(args, "answers", None) or AnswerFile.open(args.answer_file)
    decoder_for = decoder if not hasattr(decoder, "generate") else (lambda temperature: decoder)
    monitor = gpu_power_monitor(args)

    for question in questions if args.warmup > 0 else []:  # warm up on the first question whose prompt fits
        try:
            for _ in range(args.warmup):
                decoder_for(0.0).generate(formatter.input_ids(question["turns"][:1]), min(args.max_new_token, 32))
            break
        except PPDError:
            continue

    totals = MethodTotals()
    failed = {}
    batch_size = getattr(args, "batch_size", 1)
    start = time.perf_counter()
    if batch_size > 1:
        for row in answer_batched(args, questions, decoder_for, formatter, totals, failed, batch_size):
            answers.append(row)
    else:
        for q_index, question in enumerate(tqdm(questions, desc=label, unit="question")):
            question_decoder = decoder_for(question_temperature(question, args.temperature))
            try:
                choices = [answer_choice(args, question_decoder, formatter, question, choice,
                                         args.seed + 1000 * q_index + choice, totals, monitor)
                           for choice in range(args.num_choices)]
            except PPDError as exc:
                failed[question["question_id"]] = str(exc)
                print(f"question {question['question_id']!r} not answered: {exc}", file=sys.stderr)
                continue
            answers.append(answer_row(args, question, choices))
    return totals, failed, time.perf_counter() - start

def finish(args, questions, totals: MethodTotals, failed: dict, label: str, elapsed: float) -> str:
    """De-duplicate and sort the answer file, print the totals, and fail naming the questions not answered."""
    answer_file = args.answer_file
    rows = AnswerFile(answer_file).tidy()
    print(totals.summary(label))
    batch_size = getattr(args, "batch_size", 1)
    if batch_size > 1:
        print(f"batch of {batch_size}: {totals.tokens} new tokens in {elapsed:.1f} s of wall time = "
              f"{totals.tokens / max(elapsed, 1e-9):.2f} tokens/s in all")
    print(f"answers of {len(questions) - len(failed)} question(s) appended to {answer_file}"
          + (f" ({rows} rows, sorted by question id)" if rows is not None else ""))
    if failed:
        listed = "; ".join(f"{qid!r}: {reason}" for qid, reason in list(failed.items())[:5])
        raise PPDError(f"{len(failed)} of {len(questions)} question(s) not answered ({listed}"
                       f"{'; ...' if len(failed) > 5 else ''})")
    return answer_file

def answer_choice(args, decoder, formatter, question, index: int, seed: int, totals: MethodTotals,
                  monitor=None) -> dict:
    """One choice of one question, turn after turn, decoded alone (with `monitor`, its GPU power measured)."""
    choice = ChoiceInProgress(question, index, seed)
    done = False
    while not done:
        prompt = choice.next_prompt(formatter)
        if monitor:
            monitor.begin_window("answer")
        result = decoder.generate(prompt, args.max_new_token, seed=seed)
        if monitor:
            joules, watts = end_power_window(monitor, "answer")
            choice.energy.append(joules)
            choice.power.append(watts)
        done = choice.record(formatter.tokenizer, result, totals)
    return choice.row()

def make_decoder(model, formatter: ChatFormatter, args, temperature: float | None = None, **kwargs):
    """The decoder of the flags at `temperature` (default: --temperature, else 0)."""
    if temperature is None:
        temperature = args.temperature or 0.0
    sampled = temperature > 0  # at 0 greedy whatever --sampling names (as upstream): a category at 0 among sampled ones
    return Decoder(model, temperature=temperature, posterior_threshold=args.posterior_threshold,
                   posterior_alpha=args.posterior_alpha, sampling=sampling_rule(args) if sampled else None,
                   top_p=args.top_p if sampled else None, top_k=args.top_k if sampled else None,
                   stop_token_ids=formatter.stops(model), **kwargs)
