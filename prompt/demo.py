"""The main job on the default model: PPD answers a few questions with the decoding tuned for this dtype
(prompt tokens and prompt lookup in one tree); tokens/s, accept length and the speed-up over plain greedy
decoding are measured in the same run.

    python -m prompt.demo [--dtype float32] [--question-file ../shared/data/mt_bench/question.jsonl]
"""
from __future__ import annotations

from prompt.cli import ArgumentParser
from prompt.errors import cli_entry
from prompt.evaluation.compare import add_model_flags, run
from prompt.evaluation.questions import load_questions

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
    add_model_flags(parser)
    parser.set_defaults(max_new_token=96, dtype="bfloat16", methods="generate,baseline,tuned")  # bf16: where PPD pays on this CPU
    args = parser.parse_args(argv)
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
