"""Accept length and tokens/s of PPD for each tree length, and the best tree.

Upstream's workflow (with --dir-path): for each tree length L and run j < --n, gen_model_answer_prompt_decoding.py
answers the questions into DIR/<file-name><L>_<j>.jsonl (and, with --run-baseline, gen_model_answer_baseline.py
into DIR/baseline_<j>.jsonl), then each tree's throughput is printed; `get_throughput_results.py DIR` reads the
folder, `get_throughput_results.py TREE_LATENCY_FILE DIR` ranks the trees by accept length per forward latency:

    python accept_length.py --dir-path out/search --file-name dynamic_sparse_tree --run-baseline --n 1 \
        --choices "[10, 16, 24, 32]" --bench-name alpaca_eval --question-file ../shared/data/alpaca_eval/alpaca_eval.json

A file already there is resumed (only the questions it lacks are answered), never replaced.

Ours, faster and less noisy (--interleaved, or no --dir-path): one process, one model load, every tree run on
each prompt in turn interleaved with plain greedy decoding as the reference; a table is printed and, with
--dir-path, saved as DIR/<file-name>.json:

    python accept_length.py --interleaved --question-file ../shared/data/sharegpt/ShareGPT_V3_filtered_1000.json \
        --choices "[10, 16, 24, 32]" --dtype bfloat16 [--prompt-lookup-num-tokens 10] [--dir-path out --file-name sizes]

Without --choices: the tree lengths from --min-length to --max-length in steps of --length-interval (in the
interleaved run, those the tree file has). Use validation prompts (ShareGPT beyond the training slice), never an
evaluation set.
"""
import os
import statistics
import subprocess
import sys

from prompt.cli import ArgumentParser, add_model_flags, apply_threads
from prompt.errors import PPDError, cli_entry
from prompt.jsonio import write_json
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.questions import BENCH_NAMES, load_questions
from prompt.evaluation.answer_flags import UPSTREAM_QUESTION_FILES
from prompt.evaluation.throughput import file_throughput
from prompt.evaluation.tune import (PLAIN, available_tree_lengths, check_tree_lengths, choose, config_name,
                                   measure_configs, parse_lengths, results_table)
from prompt.inference.choice import tree_file
from prompt.model.defaults import load_prompt_decoder
from prompt.model.devices import add_device_flags, device_kwargs

HERE = os.path.dirname(os.path.abspath(__file__))
ANSWER_SCRIPT = "gen_model_answer_prompt_decoding.py"
BASELINE_SCRIPT = "gen_model_answer_baseline.py"


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model-name", "--model-path", dest="model_path", default=None,
                        help="Prompt-token folder or Hub repo id (default: the default model's).")
    parser.add_argument("--base-model-path", default=None, help="Base model folder or Hub repo id (default: the checkpoint's).")
    add_device_flags(parser, dtype="bfloat16")
    parser.add_argument("--bench-name", default=None, choices=BENCH_NAMES,
                        help="Format of --question-file (default sharegpt); without --question-file: alpaca_eval, "
                             "as upstream's tree search.")
    parser.add_argument("--question-file", default=None,
                        help="Validation prompts (e.g. ShareGPT beyond the training slice). Default, as upstream: "
                             "data/<bench>/ under the working folder (alpaca_eval: data/alpaca_eval/alpaca_eval.json; "
                             "an evaluation set: the tree choice is then tuned on it, as upstream does).")
    parser.add_argument("--question-begin", type=int, default=None,
                        help="Default 940 with a ShareGPT --question-file (beyond the training slice), else 0.")
    parser.add_argument("--question-end", type=int, default=None,
                        help="Default 946 with a ShareGPT --question-file, else the file's end.")
    parser.add_argument("--max-new-token", type=int, default=128)
    parser.add_argument("--choices", default=None, help='Tree lengths, e.g. "[10, 16, 24]" (overrides --min-length '
                                                        '.. --max-length, as upstream).')
    parser.add_argument("--min-length", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--length-interval", type=int, default=8)
    parser.add_argument("--prompt-lookup-num-tokens", type=int, default=0, help="Add a lookup chain to every tree (0: off).")
    parser.add_argument("--n", type=int, default=1, help="Runs per tree length (upstream's files <L>_0 .. <L>_<n-1>), "
                                                         "or passes over the prompts with --interleaved.")
    parser.add_argument("--run-baseline", action="store_true",
                        help="Also answer with plain decoding into DIR/baseline_<j>.jsonl (the interleaved run always "
                             "measures it: it is the reference).")
    parser.add_argument("--eval-file-name", default=ANSWER_SCRIPT,
                        help=f"The answer script run per tree (only {ANSWER_SCRIPT} is accepted).")
    parser.add_argument("--dir-path", default=None,
                        help="Folder of upstream's answer files (or, with --interleaved, of the results JSON). "
                             "Without it: the interleaved run, printed only.")
    parser.add_argument("--file-name", default=None,
                        help="Prefix of the answer files (default dynamic_sparse_tree, as upstream), or with "
                             "--interleaved the results file's name without .json (default accept_length).")
    parser.add_argument("--interleaved", action="store_true",
                        help="Our measurement: all trees in one process, interleaved prompt by prompt with plain "
                             "decoding (faster: one model load; less noisy: the same moments for every tree).")
    parser.add_argument("--model-id", default=None,
                        help="Upstream's answer files: the model id written into them (default: the answer scripts' "
                             "own; a FastChat template name such as vicuna selects that chat format).")
    add_model_flags(parser, model_path=None)
    return parser


@cli_entry
def main():
    args = build_parser().parse_args()
    if os.path.basename(args.eval_file_name) != ANSWER_SCRIPT:
        raise PPDError(f"--eval-file-name {args.eval_file_name}: only {ANSWER_SCRIPT}'s decode loop is measured here")
    if args.threads is not None and args.threads < 1:
        raise PPDError("--threads must be >= 1")
    if args.n < 1 or args.max_new_token < 1 or args.length_interval < 1 or args.prompt_lookup_num_tokens < 0:
        raise PPDError("--n, --max-new-token and --length-interval must be >= 1, --prompt-lookup-num-tokens >= 0")
    choose_questions(args)
    if args.dir_path is not None and not args.interleaved:
        lengths = (parse_lengths(args.choices, "--choices") if args.choices else
                   list(range(args.min_length, args.max_length + 1, args.length_interval)))
        if not lengths:
            raise PPDError(f"no tree length from --min-length {args.min_length} to --max-length {args.max_length}")
        upstream_search(args, lengths)
    else:
        interleaved_search(args)


def choose_questions(args) -> None:
    """Upstream's default question file (AlpacaEval under the working folder), or ShareGPT's validation slice."""
    if args.question_file is None:  # upstream measures on its AlpacaEval question file
        args.bench_name = args.bench_name or "alpaca_eval"
        args.question_file = UPSTREAM_QUESTION_FILES.get(args.bench_name)
        if not args.bench_name.startswith("humaneval") and (args.question_file is None or not os.path.isfile(args.question_file)):
            raise PPDError(f"no --question-file, and upstream's default "
                           f"{args.question_file or 'question file for ' + args.bench_name} is not under the working "
                           "folder: pass --question-file (validation prompts, e.g. ShareGPT)")
        print(f"warning: measuring on {args.question_file or args.bench_name}, an evaluation set, as upstream does",
              file=sys.stderr)
    args.bench_name = args.bench_name or "sharegpt"
    if args.bench_name == "sharegpt" and args.question_begin is None and args.question_end is None:
        args.question_begin, args.question_end = 940, 946
    load_questions(args.bench_name, args.question_file, args.question_begin, args.question_end)  # checked up front


# --------------------------------------------------------------------------------------------------
# upstream's workflow: the answer scripts, one file per tree length and run
def answer_flags(args) -> list[str]:
    flags = ["--bench-name", args.bench_name, "--max-new-token", args.max_new_token, "--dtype", args.dtype]
    for flag, value in (("--question-file", args.question_file), ("--question-begin", args.question_begin),
                        ("--question-end", args.question_end), ("--device", args.device),
                        ("--threads", args.threads), ("--model-id", args.model_id)):
        if value is not None:
            flags += [flag, value]
    flags += [flag for flag, on in (("--load-in-4bit", args.load_in_4bit), ("--load-in-8bit", args.load_in_8bit)) if on]
    return [str(f) for f in flags]


def run_answer_script(script: str, answer_file: str, flags: list[str]) -> None:
    """Run one answer script; its one-line error, if any, becomes ours."""
    print(f">>> {script} --answer-file {answer_file} {' '.join(flags)}", flush=True)
    proc = subprocess.run([sys.executable, os.path.join(HERE, script), "--answer-file", answer_file, *flags],
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        reason = errors[-1][len("error:"):].strip() if errors else (lines[-1] if lines else "no message")
        raise PPDError(f"{script} for {answer_file} failed (exit {proc.returncode}): {reason}")
    sys.stderr.write(proc.stderr)


def upstream_search(args, lengths) -> None:
    prefix = args.file_name or "dynamic_sparse_tree"
    if os.path.exists(args.dir_path) and not os.path.isdir(args.dir_path):
        raise PPDError(f"--dir-path {args.dir_path!r} is a file, not a folder")
    try:
        os.makedirs(args.dir_path, exist_ok=True)
    except OSError as exc:
        raise PPDError(f"cannot create --dir-path {args.dir_path!r}: {exc.strerror or exc}") from None
    common = answer_flags(args)
    groups = {}
    if args.run_baseline:  # upstream's baseline takes the PPD checkpoint: the baseline script decodes its base model
        model = args.base_model_path or args.model_path
        flags = common + (["--model-path", model] if model else [])
        groups["baseline"] = [os.path.join(args.dir_path, f"baseline_{j}.jsonl") for j in range(args.n)]
        for path in groups["baseline"]:
            run_answer_script(BASELINE_SCRIPT, path, flags)
    for length in lengths:
        flags = common + ["--tree-length", str(length), "--prompt-lookup-num-tokens", str(args.prompt_lookup_num_tokens)]
        flags += [x for flag, value in (("--model-path", args.model_path), ("--base-model-path", args.base_model_path))
                  if value for x in (flag, value)]
        groups[length] = [os.path.join(args.dir_path, f"{prefix}{length}_{j}.jsonl") for j in range(args.n)]
        for path in groups[length]:
            run_answer_script(ANSWER_SCRIPT, path, flags)
    best, best_throughput = None, 0.0
    for name, paths in groups.items():
        figures = [file_throughput(p) for p in paths]
        rates = [f.macro_tokens_per_s for f in figures]
        std = statistics.stdev(rates) if len(rates) > 1 else 0.0
        accepts = [f.accept_length for f in figures]
        accept = (f", accept length {statistics.mean(accepts):.3f} tokens per decoding step"
                  if None not in accepts else "")
        label = "baseline" if name == "baseline" else f"sparse tree {name}"
        print(f"Throughput for {label}: {statistics.mean(rates):.3f} tokens/s std: {std:.3f}{accept}")
        if name != "baseline" and statistics.mean(rates) > best_throughput:
            best, best_throughput = name, statistics.mean(rates)
    print(f"Best sparse tree: {best}")
    print(f"answer files in {args.dir_path}: python get_throughput_results.py {args.dir_path} --n {args.n}")


# --------------------------------------------------------------------------------------------------
# ours: every tree interleaved in one process
def interleaved_search(args) -> None:
    out_file = os.path.join(args.dir_path, (args.file_name or "accept_length") + ".json") if args.dir_path else None
    if out_file and os.path.exists(out_file):
        raise PPDError(f"{out_file!r} exists; choose another --file-name or remove it")
    apply_threads(args.threads)
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
