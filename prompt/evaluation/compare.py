"""Side-by-side comparison, in one process: transformers `generate` greedy, our plain loop, and PPD.

Methods run interleaved question by question, so machine noise hits them alike; speeds are
reported as ratios to `generate` greedy, and every greedy output is checked against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prompt.errors import PPDError, cli_entry
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.questions import BENCH_NAMES, load_questions
from prompt.evaluation.runner import ArgumentParser, HFGenerate
from prompt.inference.decoding import Decoder, stop_token_ids_for
from prompt.model.config import PromptConfig
from prompt.model.defaults import load_prompt_decoder
from prompt.model.prompt_decoder import PromptDecoder

METHODS = ("generate", "baseline", "ppd", "ppd_untrained")


@dataclass
class MethodTotals:
    tokens: int = 0
    seconds: float = 0.0
    passes: int = 0
    identical: int = 0
    answers: int = 0
    outputs: list = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def accept_length(self) -> float | None:
        return self.tokens / self.passes if self.passes else None


def build_decoders(model, formatter: ChatFormatter, methods, tree_length=None, tree_file=None):
    stops = stop_token_ids_for(formatter.tokenizer, formatter.stop_token_ids)
    decoders = {}
    for method in methods:
        if method == "generate":
            decoders[method] = HFGenerate(model.base_model, stops)
        elif method == "baseline":
            decoders[method] = Decoder(model.base_model, stop_token_ids=stops)
        elif method == "ppd":
            decoders[method] = Decoder(model, stop_token_ids=stops, tree_length=tree_length, tree_file=tree_file)
        elif method == "ppd_untrained":  # text-initialised prompt tokens of the same shape: the untrained baseline
            untrained = PromptDecoder(model.base_model, PromptConfig(
                num_special_tokens=model.config.num_special_tokens,
                virtual_tokens_per_special_token=model.config.virtual_tokens_per_special_token,
                vt_attention_type=model.config.vt_attention_type), tokenizer=formatter.tokenizer).eval()
            decoders[method] = Decoder(untrained, stop_token_ids=stops, tree_length=tree_length, tree_file=tree_file)
        else:
            raise PPDError(f"unknown method {method!r}; use {', '.join(METHODS)}")
    return decoders


def compare(decoders: dict, formatter: ChatFormatter, prompts: list[str], max_new_tokens: int, warmup: int = 1,
            progress: bool = True) -> dict:
    """Run every decoder on every prompt (interleaved); return MethodTotals per method."""
    from tqdm import tqdm

    inputs = [formatter.input_ids([p]) for p in prompts]
    for _ in range(warmup):
        for decoder in decoders.values():
            decoder.generate(inputs[0], min(max_new_tokens, 16))
    totals = {name: MethodTotals() for name in decoders}
    reference = "generate" if "generate" in decoders else next(iter(decoders))
    for i, input_ids in enumerate(tqdm(inputs, desc="questions", disable=not progress)):
        names = list(decoders)
        names = names[i % len(names):] + names[: i % len(names)]  # rotate the order against drift
        results = {name: decoders[name].generate(input_ids, max_new_tokens) for name in names}
        for name, result in results.items():
            t = totals[name]
            t.tokens += result.new_tokens
            t.seconds += result.wall_time
            t.passes += result.forward_passes
            t.answers += 1
            t.identical += int(result.token_ids == results[reference].token_ids)
            t.outputs.append(result.token_ids)
    return totals


def format_table(totals: dict, reference: str = "generate") -> str:
    base = totals.get(reference)
    lines = ["| method | tokens/s | speedup vs generate | accept length | identical to generate |",
             "|---|---|---|---|---|"]
    for name, t in totals.items():
        speed = f"{t.tokens_per_second / base.tokens_per_second:.2f}x" if base and base.tokens_per_second else "-"
        accept = f"{t.accept_length:.3f}" if t.accept_length else "-"
        lines.append(f"| {name} | {t.tokens_per_second:.2f} | {speed} | {accept} | {t.identical}/{t.answers} |")
    return "\n".join(lines)


def add_model_flags(parser):
    parser.add_argument("--model-path", default=None, help="Prompt-token folder (default: the default model's).")
    parser.add_argument("--base-model-path", default=None)
    parser.add_argument("--model-id", default=None, help="FastChat template name, if the model needs one (e.g. vicuna).")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--tree-length", type=int, default=None)
    parser.add_argument("--tree-file", default=None)
    parser.add_argument("--max-new-token", type=int, default=128)
    parser.add_argument("--methods", default="generate,baseline,ppd", help="Comma-separated subset of " + ", ".join(METHODS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)


def run(args, prompts):
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.max_new_token < 1:
        raise PPDError("--max-new-token must be >= 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    model = load_prompt_decoder(args.model_path, base_model_path=args.base_model_path, dtype=args.dtype)
    formatter = ChatFormatter(model.tokenizer, args.model_id)
    decoders = build_decoders(model, formatter, methods, args.tree_length, args.tree_file)
    totals = compare(decoders, formatter, prompts, args.max_new_token, args.warmup)
    print(f"\n{len(prompts)} prompts, {args.max_new_token} new tokens at most, {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    print(format_table(totals))
    if args.dtype != "float32":
        print(f"({args.dtype}: a tree forward and a one-token step round differently, so greedy outputs can part "
              "at near-ties; exactness is checked in float32)")
    return totals, formatter.tokenizer


@cli_entry
def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--bench-name", default="mt_bench", choices=BENCH_NAMES)
    parser.add_argument("--question-file", default=None)
    parser.add_argument("--question-begin", type=int, default=None)
    parser.add_argument("--question-end", type=int, default=10)
    add_model_flags(parser)
    args = parser.parse_args(argv)
    questions = load_questions(args.bench_name, args.question_file, args.question_begin, args.question_end)
    run(args, [q["turns"][0] for q in questions])


if __name__ == "__main__":
    main()
