"""One choice of one question answered turn after turn, and the FastChat answer row of a question's choices."""
from __future__ import annotations

import time

from prompt.evaluation.chat import decode_answer
from prompt.evaluation.totals import MethodTotals


def answer_row(args, question, choices) -> dict:
    import shortuuid

    return {"question_id": question["question_id"], "answer_id": shortuuid.uuid(), "model_id": args.model_id,
            "choices": choices, "tstamp": time.time()}


class ChoiceInProgress:
    """One answer (a choice) of one question in progress: its conversation and each answered turn."""

    def __init__(self, question, index: int, seed: int):
        self.question, self.index, self.seed = question, index, seed
        self.conversation, self.turns, self.idxs, self.new_tokens, self.wall_time = [], [], [], [], []
        self.power, self.energy = [], []  # --gpu-power: watts and joules of each turn

    def next_prompt(self, formatter):
        self.conversation.append(self.question["turns"][len(self.turns)])
        return formatter.input_ids(self.conversation)

    def record(self, tokenizer, result, totals: MethodTotals) -> bool:
        """Keep a turn's answer; True when every turn is answered."""
        text = decode_answer(tokenizer, result.token_ids, result.stop_reason).strip()
        self.conversation.append(text)
        self.turns.append(text)
        # upstream's idxs: decoding steps after the prefill, minus one (-1: forwards not counted)
        self.idxs.append(max(result.decoding_steps - 1, 0) if result.forward_passes else -1)
        self.new_tokens.append(result.new_tokens)
        self.wall_time.append(result.wall_time)
        totals.add(result)
        return len(self.turns) == len(self.question["turns"])

    def row(self) -> dict:
        return {"index": self.index, "turns": self.turns, "idxs": self.idxs, "new_tokens": self.new_tokens,
                "wall_time": self.wall_time, **({"power": self.power, "energy": self.energy} if self.power else {})}
