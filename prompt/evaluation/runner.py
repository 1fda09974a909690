"""The one benchmark runner behind gen_model_answer_baseline.py and gen_model_answer_prompt_decoding.py.

Both scripts take the upstream flags and write FastChat answer rows; they differ only in the decoder.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

import torch

from prompt.errors import PPDError
from prompt.evaluation.answers import AnswerFile
from prompt.evaluation.chat import ChatFormatter, decode_answer
from prompt.evaluation.questions import BENCH_NAMES, load_questions
from prompt.inference.acceptance import ACCEPTANCE_RULES
from prompt.inference.decoding import Decoder, GenerationResult
from prompt.model.devices import add_device_flags, synchronize


def add_common_flags(parser: argparse.ArgumentParser, model_help: str, default_model_id: str):
    parser.add_argument("--model-path", default=None, help=model_help + " Default: the embedded default model.")
    parser.add_argument("--model-id", default=default_model_id,
                        help="Name written into the answers; a FastChat template name (e.g. vicuna) selects that chat format.")
    parser.add_argument("--answer-file", default=None,
                        help="Output jsonl (appended to; questions it already answers for --model-id are skipped; "
                             "sorted by question id at the end). Default: data/<bench>/model_answer/<model-id>.jsonl")
    parser.add_argument("--bench-name", default="mt_bench", choices=BENCH_NAMES)
    parser.add_argument("--question-file", default=None, help="Questions (MT-Bench jsonl, AlpacaEval json, GSM8K jsonl); HumanEval needs none.")
    parser.add_argument("--question-begin", type=int, default=None)
    parser.add_argument("--question-end", type=int, default=None)
    parser.add_argument("--max-new-token", type=int, default=512)
    parser.add_argument("--num-choices", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--posterior-threshold", type=float, default=0.09)
    parser.add_argument("--posterior-alpha", type=float, default=0.3)
    parser.add_argument("--sampling", default=None, choices=tuple(ACCEPTANCE_RULES),
                        help="Acceptance rule (default: greedy at temperature 0, exact sampling above; typical is "
                             "upstream's typical acceptance).")
    parser.add_argument("--top-p", type=float, default=None, help="Nucleus sampling for --sampling exact (transformers' top_p).")
    parser.add_argument("--top-k", type=int, default=None, help="Top-k sampling for --sampling exact (transformers' top_k).")
    parser.add_argument("--warmup", type=int, default=1, help="Unrecorded warm-up generations before timing.")
    add_device_flags(parser, dtype="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--seed", type=int, default=0)
    return parser


@dataclass
class MethodTotals:
    """What one decoding method produced over a run: its answers' results summed (`add`)."""

    tokens: int = 0
    seconds: float = 0.0
    passes: int = 0
    chain_wins: int = 0
    identical: int = 0  # answers equal to a reference method's (the caller decides which)
    answers: int = 0
    outputs: list = field(default_factory=list)
    step_tokens: list = field(default_factory=list)  # tokens accepted per forward after the prefill (our loop only)
    per_question: list = field(default_factory=list)  # (new tokens, seconds) of each question, all turns

    def add(self, result: GenerationResult, identical: bool = True) -> None:
        self.tokens += result.new_tokens
        self.seconds += result.wall_time
        self.passes += result.forward_passes
        self.chain_wins += result.chain_wins
        self.identical += int(identical)
        self.answers += 1
        self.outputs.append(result.token_ids)
        self.step_tokens.extend(result.step_tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def accept_length(self) -> float | None:
        """New tokens per forward; None where the forwards were not counted (transformers prompt lookup)."""
        return self.tokens / self.passes if self.passes else None

    def row(self) -> dict:
        """The totals as a JSON row."""
        return {"tokens": self.tokens, "seconds": round(self.seconds, 3), "passes": self.passes,
                "chain_wins": self.chain_wins, "answers": self.answers, "identical": self.identical,
                "tokens_per_second": self.tokens_per_second, "accept_length": self.accept_length}

    def summary(self, label: str) -> str:
        text = (f"{label}: {self.tokens} new tokens in {self.seconds:.1f} s = "
                f"{self.tokens / max(self.seconds, 1e-9):.2f} tokens/s")
        if self.passes:
            text += f", accept length {self.accept_length:.3f} tokens per forward"
        return text


class HFGenerate:
    """transformers `generate` as a decoder with the same interface, for side-by-side comparisons: greedy, or
    plain sampling at `temperature` > 0 (no top-k or top-p truncation, the distribution exact sampling reproduces)."""

    def __init__(self, model, stop_token_ids, prompt_lookup_num_tokens=None, temperature: float = 0.0,
                 max_matching_ngram_size: int | None = None, static_cache: bool = False, compiled: bool = False):
        self.model = model
        self.stop_token_ids = list(stop_token_ids)
        self.prompt_lookup_num_tokens = prompt_lookup_num_tokens
        self.temperature = temperature
        self.max_matching_ngram_size = max_matching_ngram_size  # prompt lookup's n-gram size (None: its default, 2)
        self.static_cache = static_cache or compiled  # a compiled generate needs the static cache
        self.compiled = compiled  # torch.compile the forward on any device (the first call per shape compiles)

    def _static_cache_kwargs(self) -> dict:
        """generate's static cache, compiled or eager (transformers compiles a static cache by itself on a GPU)."""
        if not self.compiled:
            return {"cache_implementation": "static", "disable_compile": True}
        from transformers import CompileConfig

        config = CompileConfig(mode="default")  # reduce-overhead means CUDA graphs
        config._compile_all_devices = True  # transformers' switch to compile on a CPU as well
        return {"cache_implementation": "static", "compile_config": config}

    def generate(self, input_ids, max_new_tokens, seed=None) -> GenerationResult:
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is not None and input_ids.shape[1] >= context:  # as our loop reports it, not a traceback
            raise PPDError(f"the prompt has {input_ids.shape[1]} tokens; the model's context is {context}")
        kwargs = {"do_sample": False}
        if self.prompt_lookup_num_tokens:
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup_num_tokens
            if self.max_matching_ngram_size:
                kwargs["max_matching_ngram_size"] = self.max_matching_ngram_size
        if self.static_cache:
            kwargs.update(self._static_cache_kwargs())
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0)
            if seed is not None:
                torch.manual_seed(seed)
        pad = self.model.generation_config.pad_token_id
        input_ids = torch.as_tensor(input_ids).to(self.model.device)
        synchronize(self.model.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids, max_new_tokens=max_new_tokens,
                                      eos_token_id=self.stop_token_ids or None,
                                      pad_token_id=pad if pad is not None else (self.stop_token_ids or [0])[0],
                                      attention_mask=torch.ones_like(input_ids), **kwargs)
        synchronize(self.model.device)
        wall = time.perf_counter() - start
        tokens = out[0, input_ids.shape[1]:].tolist()
        # greedy generate runs one forward per new token; with prompt lookup the count is not reported
        passes = 0 if self.prompt_lookup_num_tokens else len(tokens)
        return GenerationResult(token_ids=tokens, forward_passes=passes, wall_time=wall,
                                stop_reason="eos" if tokens and tokens[-1] in self.stop_token_ids else "length")


def default_answer_file(bench_name, model_id):
    return os.path.join("data", bench_name, "model_answer", f"{model_id}.jsonl")


def check_args(args) -> list[dict]:
    """Validate the flags, check that the answer file can be written and read the questions, before any model is
    loaded; returns the questions the answer file does not answer yet ([]: nothing left to do, said on stdout)."""
    if args.max_new_token < 1:
        raise PPDError("--max-new-token must be >= 1")
    if args.num_choices < 1:
        raise PPDError("--num-choices must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise PPDError("--threads must be >= 1")
    args.answer_file = args.answer_file or default_answer_file(args.bench_name, args.model_id)
    questions = load_questions(args.bench_name, args.question_file, args.question_begin, args.question_end)
    args.answers = AnswerFile.open(args.answer_file)
    todo = [q for q in questions if not args.answers.is_answered(q["question_id"], args.model_id)]
    if len(todo) < len(questions):
        print(f"{len(questions) - len(todo)} of the {len(questions)} selected questions are already answered for "
              f"{args.model_id} in {args.answer_file}: " + (f"answering the other {len(todo)}" if todo else "nothing to do"))
    if not todo:
        args.answers.tidy()
    if args.threads:
        torch.set_num_threads(args.threads)
    return todo


def run_benchmark(args, questions, decoder, formatter: ChatFormatter, label: str):
    """Answer every question with `decoder` and append FastChat rows to the answer file, one row per question as
    it is answered; at the end the file is de-duplicated and sorted by question id. A question that cannot be
    answered (a prompt longer than the context) is reported by id and the run goes on; the run then fails
    naming them."""
    from tqdm import tqdm
    import shortuuid

    tokenizer = formatter.tokenizer
    answer_file = args.answer_file
    answers = getattr(args, "answers", None) or AnswerFile.open(answer_file)

    for question in questions if args.warmup > 0 else []:  # warm up on the first question whose prompt fits
        try:
            for _ in range(args.warmup):
                decoder.generate(formatter.input_ids(question["turns"][:1]), min(args.max_new_token, 32))
            break
        except PPDError:
            continue

    totals = MethodTotals()
    failed = {}
    for q_index, question in enumerate(tqdm(questions, desc=label, unit="question")):
        choices = []
        try:
            for choice in range(args.num_choices):
                conversation, turns, idxs, new_tokens, wall_time = [], [], [], [], []
                for user_turn in question["turns"]:
                    conversation.append(user_turn)
                    input_ids = formatter.input_ids(conversation)
                    result = decoder.generate(input_ids, args.max_new_token, seed=args.seed + 1000 * q_index + choice)
                    text = decode_answer(tokenizer, result.token_ids, result.stop_reason).strip()
                    conversation.append(text)
                    turns.append(text)
                    idxs.append(result.forward_passes - 1)
                    new_tokens.append(result.new_tokens)
                    wall_time.append(result.wall_time)
                    totals.add(result)
                choices.append({"index": choice, "turns": turns, "idxs": idxs, "new_tokens": new_tokens,
                                "wall_time": wall_time})
        except PPDError as exc:
            failed[question["question_id"]] = str(exc)
            print(f"question {question['question_id']!r} not answered: {exc}", file=sys.stderr)
            continue
        row = {"question_id": question["question_id"], "answer_id": shortuuid.uuid(), "model_id": args.model_id,
               "choices": choices, "tstamp": time.time()}
        answers.append(row)
    rows = answers.tidy()
    print(totals.summary(label))
    print(f"answers of {len(questions) - len(failed)} question(s) appended to {answer_file}"
          + (f" ({rows} rows, sorted by question id)" if rows is not None else ""))
    if failed:
        listed = "; ".join(f"{qid!r}: {reason}" for qid, reason in list(failed.items())[:5])
        raise PPDError(f"{len(failed)} of {len(questions)} question(s) not answered ({listed}"
                       f"{'; ...' if len(failed) > 5 else ''})")
    return answer_file


def make_decoder(model, formatter: ChatFormatter, args, **kwargs):
    return Decoder(model, temperature=args.temperature, posterior_threshold=args.posterior_threshold,
                   posterior_alpha=args.posterior_alpha, sampling=args.sampling, top_p=args.top_p, top_k=args.top_k,
                   stop_token_ids=formatter.stops(model), **kwargs)
