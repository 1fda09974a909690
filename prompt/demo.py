"""The main job on the default model: PPD answers a few questions with the decoding tuned for this dtype
(prompt tokens and prompt lookup in one tree); tokens/s, accept length and the speed-up over plain greedy
decoding, transformers `generate` greedy and transformers prompt lookup (at its better n-gram size) are measured
in the same run, every method warmed up; a run on a visibly busy machine says so instead of giving a clean headline.

    python -m prompt.demo [--dtype float32] [--device cuda] [--question-file ../shared/data/mt_bench/question.jsonl]

The dtype defaults to the one in which the checkpoint's tuned decoding is fastest on this kind of device.
"""
from __future__ import annotations

from prompt.cli import ArgumentParser
from prompt.errors import cli_entry
from prompt.evaluation.compare import add_compare_flags, run
from prompt.evaluation.questions import load_questions
from prompt.inference.dtype_choice import fastest_decoding_dtype

DEMO_QUESTIONS = [
    "Explain in a short paragraph why the sky is blue.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Give three tips for staying focused while studying.",
]


@cli_entry
def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("--question-file", default=None, help="MT-Bench style jsonl; default: three built-in questions")
    parser.add_argument("--num-questions", type=int, default=3)
    add_compare_flags(parser)
    parser.set_defaults(max_new_token=96, dtype=None, methods="generate,generate_lookup,generate_lookup3,baseline,tuned")
    args = parser.parse_args(argv)
    if args.dtype is None:  # where the tuned decoding is fastest (bfloat16 on this project's CPU)
        args.dtype = fastest_decoding_dtype(args.model_path, args.device)
    if args.question_file:
        prompts = [q["turns"][0] for q in load_questions("mt_bench", args.question_file, 0, args.num_questions)]
    else:
        prompts = DEMO_QUESTIONS[: args.num_questions]
    totals, tokenizer = run(args, prompts)
    for name in ("tuned", "ppd", "baseline"):
        if name in totals:
            print(f"\nFirst answer ({name}):")
            print(tokenizer.decode(totals[name].outputs[0], skip_special_tokens=True))
            break


if __name__ == "__main__":
    main()
