"""Every choice of every question through one running batch (continuous batching, --batch-size above 1)."""
from __future__ import annotations

import sys

from prompt.errors import PPDError
from prompt.evaluation.answer_rows import ChoiceInProgress, answer_row
from prompt.evaluation.temperatures import question_temperature
from prompt.evaluation.totals import MethodTotals


def answer_batched(args, questions, decoder_for, formatter, totals: MethodTotals, failed: dict, batch_size: int):
    """Every choice of every question through one running batch of `batch_size` rows (continuous batching): a row
    whose turn is answered is refilled by the conversation's next turn, else by the next choice or question. Yields
    each question's answer row when all its choices are done (in the order they finish). A choice decodes as it
    would alone (same seed, and the acceptance rule of its question's temperature), so the answers equal those of
    --batch-size 1."""
    from tqdm import tqdm

    pending = [(q_index, question, choice) for q_index, question in enumerate(questions)
               for choice in range(args.num_choices)]
    pending.reverse()
    batch = decoder_for(0.0).batch(expected_rows=min(batch_size, len(pending)))
    active = {}  # id(row state) -> (state, q_index, ChoiceInProgress)
    finished = {}  # q_index -> {choice index: row}
    progress = tqdm(total=len(questions), desc="batched", unit="question")

    def start(q_index, choice) -> None:
        question = choice.question
        if question["question_id"] in failed:
            return
        try:
            rule = decoder_for(question_temperature(question, args.temperature)).rule
            state = batch.add(choice.next_prompt(formatter), args.max_new_token, seed=choice.seed, rule=rule)
        except PPDError as exc:
            failed[question["question_id"]] = str(exc)
            print(f"question {question['question_id']!r} not answered: {exc}", file=sys.stderr)
            progress.update(1)
            return
        active[id(state)] = (state, q_index, choice)

    while pending or len(batch):
        while pending and len(batch) < batch_size:
            q_index, question, index = pending.pop()
            start(q_index, ChoiceInProgress(question, index, args.seed + 1000 * q_index + index))
        if not len(batch):
            continue
        batch.step()
        for key, (state, q_index, choice) in list(active.items()):
            if not state.done:
                continue
            del active[key]
            question = choice.question
            if question["question_id"] in failed:
                continue
            if not choice.record(formatter.tokenizer, state.result, totals):
                start(q_index, choice)
                continue
            rows = finished.setdefault(q_index, {})
            rows[choice.index] = choice.row()
            if len(rows) == args.num_choices:
                del finished[q_index]
                progress.update(1)
                yield answer_row(args, question, [rows[i] for i in range(args.num_choices)])
    progress.close()
