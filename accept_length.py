"""Mean accept length and tokens/s of PPD for each tree length, on validation prompts, and the best.

    python accept_length.py --question-file ../shared/data/sharegpt/ShareGPT_V3_filtered_1000.json \
        --choices "[10, 16, 24, 32]" --dtype bfloat16 [--prompt-lookup-num-tokens 10] [--dir-path out --file-name sizes]

Runs the same decode loop as gen_model_answer_prompt_decoding.py with each tree (from the checkpoint's tree
file), interleaved prompt by prompt with plain greedy decoding as the reference. Without --choices, the tree
lengths from --min-length to --max-length in steps of --length-interval that the tree file has.
Use validation prompts (ShareGPT beyond the training slice), never an evaluation set.
"""
import os
import sys

import torch

from prompt.cli import ArgumentParser
from prompt.errors import PPDError, cli_entry
from prompt.jsonio import write_json
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.questions import BENCH_NAMES, load_questions
from prompt.evaluation.runner import UPSTREAM_QUESTION_FILES
from prompt.evaluation.tune import (PLAIN, available_tree_lengths, check_tree_lengths, choose, config_name,
                                   measure_configs, parse_lengths, results_table)
from prompt.inference.choice import tree_file
from prompt.model.defaults import load_prompt_decoder
from prompt.model.devices import add_device_flags, device_kwargs


@cli_entry
def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model-name", "--model-path", dest="model_path", default=None,
                        help="Prompt-token folder or Hub repo id (default: the default model's).")
    parser.add_argument("--base-model-path", default=None, help="Base model folder or Hub repo id (default: the checkpoint's).")
    add_device_flags(parser, dtype="bfloat16")
    parser.add_argument("--bench-name", default=None, choices=BENCH_NAMES,
                        help="Format of --question-file (default sharegpt); without --question-file: mt_bench.")
    parser.add_argument("--question-file", default=None,
                        help="Validation prompts (e.g. ShareGPT beyond the training slice). Default, as upstream: "
                             "data/mt_bench/question.jsonl under the working folder (an evaluation set: the tree "
                             "choice is then tuned on it, as upstream does).")
    parser.add_argument("--question-begin", type=int, default=None,
                        help="Default 940 with --question-file (ShareGPT beyond the training slice), else 0.")
    parser.add_argument("--question-end", type=int, default=None,
                        help="Default 946 with --question-file, else the file's end.")
    parser.add_argument("--max-new-token", type=int, default=128)
    parser.add_argument("--choices", default=None, help='Tree lengths, e.g. "[10, 16, 24]".')
    parser.add_argument("--min-length", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--length-interval", type=int, default=8)
    parser.add_argument("--prompt-lookup-num-tokens", type=int, default=0, help="Add a lookup chain to every tree (0: off).")
    parser.add_argument("--n", type=int, default=1, help="Passes over the prompts.")
    parser.add_argument("--run-baseline", action="store_true",
                        help="Measure plain decoding too (as upstream's flag; always done here: it is the reference).")
    parser.add_argument("--eval-file-name", default="gen_model_answer_prompt_decoding.py",
                        help="Upstream runs this script per tree; here the same decode loop runs in this process "
                             "(only gen_model_answer_prompt_decoding.py is accepted).")
    parser.add_argument("--dir-path", default=None, help="Folder for the results JSON (default: print only).")
    parser.add_argument("--file-name", default="accept_length", help="Results file name (without .json).")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if os.path.basename(args.eval_file_name) != "gen_model_answer_prompt_decoding.py":
        raise PPDError(f"--eval-file-name {args.eval_file_name}: only gen_model_answer_prompt_decoding.py's decode "
                       "loop is measured here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 1 or args.max_new_token < 1 or args.length_interval < 1 or args.prompt_lookup_num_tokens < 0:
        raise PPDError("--n, --max-new-token and --length-interval must be >= 1, --prompt-lookup-num-tokens >= 0")
    out_file = os.path.join(args.dir_path, args.file_name + ".json") if args.dir_path else None
    if out_file and os.path.exists(out_file):
        raise PPDError(f"{out_file!r} exists; choose another --file-name or remove it")
    if args.question_file is None:  # upstream measures on its MT-Bench question file
        args.bench_name = args.bench_name or "mt_bench"
        args.question_file = UPSTREAM_QUESTION_FILES.get(args.bench_name)
        if args.question_file is None or not os.path.isfile(args.question_file):
            raise PPDError(f"no --question-file, and upstream's default "
                           f"{args.question_file or 'question file for ' + args.bench_name} is not under the working "
                           "folder: pass --question-file (validation prompts, e.g. ShareGPT)")
        print(f"warning: measuring on {args.question_file}, an evaluation set, as upstream does", file=sys.stderr)
    elif args.question_begin is None and args.question_end is None:
        args.question_begin, args.question_end = 940, 946
    args.bench_name = args.bench_name or "sharegpt"
    questions = load_questions(args.bench_name, args.question_file, args.question_begin, args.question_end)
    model = load_prompt_decoder(args.model_path, base_model_path=args.base_model_path, **device_kwargs(args))
    if args.choices:
        lengths = parse_lengths(args.choices, "--choices")
        check_tree_lengths(model, lengths)
    else:
        lengths = [n for n in available_tree_lengths(model)
                   if args.min_length <= n <= args.max_length and (n - args.min_length) % args.length_interval == 0]
        if not lengths:
            raise PPDError(f"no tree in {tree_file(model)!r} has a length in {args.min_length}..{args.max_length} "
                           f"at interval {args.length_interval}; available: "
                           f"{', '.join(map(str, available_tree_lengths(model))) or 'none'}")
    lookup = args.prompt_lookup_num_tokens
    configs = [PLAIN] + [(n, lookup, 0) for n in lengths if n]
    prompts = [q["turns"][0] for q in questions] * args.n
    totals = measure_configs(model, ChatFormatter(model.tokenizer), prompts, configs, args.max_new_token)
    print(f"{args.dtype}, {len(prompts)} prompts, {args.max_new_token} new tokens")
    print(results_table(totals))
    best = choose(totals)
    print(f"best: {config_name(best)}")
    if out_file:
        os.makedirs(args.dir_path, exist_ok=True)
        write_json(out_file, {"dtype": args.dtype, "results": [{"tree_length": c[0], "prompt_lookup_num_tokens": c[1], **t.row()}
                                                              for c, t in totals.items()], "best": list(best)})
        print(f"saved {out_file}")


if __name__ == "__main__":
    main()
