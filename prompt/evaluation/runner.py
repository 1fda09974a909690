"""The one benchmark runner behind gen_model_answer_baseline.py and gen_model_answer_prompt_decoding.py.

Both scripts take the upstream flags and write FastChat answer rows; they differ only in the decoder.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from prompt.errors import PPDError
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.questions import BENCH_NAMES, load_questions
from prompt.inference.decoding import Decoder, GenerationResult, stop_token_ids_for
from prompt.model.devices import add_device_flags, synchronize


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad flags on one line (`error: ...`) and exits 2."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def add_common_flags(parser: argparse.ArgumentParser, model_help: str, default_model_id: str):
    parser.add_argument("--model-path", default=None, help=model_help + " Default: the embedded default model.")
    parser.add_argument("--model-id", default=default_model_id,
                        help="Name written into the answers; a FastChat template name (e.g. vicuna) selects that chat format.")
    parser.add_argument("--answer-file", default=None, help="Output jsonl (appended to). Default: data/<bench>/model_answer/<model-id>.jsonl")
    parser.add_argument("--bench-name", default="mt_bench", choices=BENCH_NAMES)
    parser.add_argument("--question-file", default=None, help="Questions (MT-Bench jsonl, AlpacaEval json, GSM8K jsonl); HumanEval needs none.")
    parser.add_argument("--question-begin", type=int, default=None)
    parser.add_argument("--question-end", type=int, default=None)
    parser.add_argument("--max-new-token", type=int, default=512)
    parser.add_argument("--num-choices", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--posterior-threshold", type=float, default=0.09)
    parser.add_argument("--posterior-alpha", type=float, default=0.3)
    parser.add_argument("--sampling", default="greedy", choices=("greedy", "typical"))
    parser.add_argument("--warmup", type=int, default=1, help="Unrecorded warm-up generations before timing.")
    add_device_flags(parser, dtype="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--seed", type=int, default=0)
    return parser


class HFGenerate:
    """transformers `generate` as a decoder with the same interface, for side-by-side comparisons."""

    def __init__(self, model, stop_token_ids, prompt_lookup_num_tokens=None):
        self.model = model
        self.stop_token_ids = list(stop_token_ids)
        self.prompt_lookup_num_tokens = prompt_lookup_num_tokens

    def generate(self, input_ids, max_new_tokens, seed=None) -> GenerationResult:
        kwargs = {}
        if self.prompt_lookup_num_tokens:
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup_num_tokens
        pad = self.model.generation_config.pad_token_id
        input_ids = torch.as_tensor(input_ids).to(self.model.device)
        synchronize(self.model.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False,
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
    """Validate the flags and read the questions before any model is loaded; returns the questions."""
    if args.max_new_token < 1:
        raise PPDError("--max-new-token must be >= 1")
    if args.num_choices < 1:
        raise PPDError("--num-choices must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise PPDError("--threads must be >= 1")
    args.answer_file = args.answer_file or default_answer_file(args.bench_name, args.model_id)
    if os.path.isdir(args.answer_file):
        raise PPDError(f"--answer-file {args.answer_file!r} is a folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_questions(args.bench_name, args.question_file, args.question_begin, args.question_end)


def run_benchmark(args, questions, decoder, formatter: ChatFormatter, label: str):
    """Answer every question with `decoder` and append FastChat rows to the answer file (never truncated)."""
    from tqdm import tqdm
    import shortuuid

    tokenizer = formatter.tokenizer
    answer_file = args.answer_file
    os.makedirs(os.path.dirname(os.path.abspath(answer_file)), exist_ok=True)

    for _ in range(max(args.warmup, 0)):
        decoder.generate(formatter.input_ids(questions[0]["turns"][:1]), min(args.max_new_token, 32))

    total_tokens, total_time, total_passes = 0, 0.0, 0
    with open(answer_file, "a", encoding="utf-8") as out:
        for q_index, question in enumerate(tqdm(questions, desc=label, unit="question")):
            choices = []
            for choice in range(args.num_choices):
                conversation, turns, idxs, new_tokens, wall_time = [], [], [], [], []
                for user_turn in question["turns"]:
                    conversation.append(user_turn)
                    input_ids = formatter.input_ids(conversation)
                    result = decoder.generate(input_ids, args.max_new_token, seed=args.seed + 1000 * q_index + choice)
                    text = tokenizer.decode(result.token_ids, skip_special_tokens=True).strip()
                    conversation.append(text)
                    turns.append(text)
                    idxs.append(result.forward_passes - 1)
                    new_tokens.append(result.new_tokens)
                    wall_time.append(result.wall_time)
                    total_tokens += result.new_tokens
                    total_time += result.wall_time
                    total_passes += result.forward_passes
                choices.append({"index": choice, "turns": turns, "idxs": idxs, "new_tokens": new_tokens,
                                "wall_time": wall_time})
            row = {"question_id": question["question_id"], "answer_id": shortuuid.uuid(), "model_id": args.model_id,
                   "choices": choices, "tstamp": time.time()}
            out.write(json.dumps(row) + "\n")
            out.flush()
    summary = f"{label}: {total_tokens} new tokens in {total_time:.1f} s = {total_tokens / max(total_time, 1e-9):.2f} tokens/s"
    if total_passes:
        summary += f", accept length {total_tokens / total_passes:.3f} tokens per forward"
    print(summary)
    print(f"answers appended to {answer_file}")
    return answer_file


def make_decoder(model, formatter: ChatFormatter, args, **kwargs):
    stops = stop_token_ids_for(formatter.tokenizer, formatter.stop_token_ids)
    return Decoder(model, temperature=args.temperature, posterior_threshold=args.posterior_threshold,
                   posterior_alpha=args.posterior_alpha, sampling=args.sampling, stop_token_ids=stops, **kwargs)
