"""The answer scripts' flags (upstream's spellings and defaults) and their checks before any model loads."""
from __future__ import annotations

import argparse
import os
import sys

from prompt.cli import add_model_flags, apply_threads
from prompt.errors import PPDError
from prompt.evaluation.answers import AnswerFile
from prompt.evaluation.gpus import check_gpu_flags
from prompt.evaluation.questions import BENCH_NAMES, load_questions
from prompt.evaluation.temperatures import fastchat_temperatures, temperatures_in_use
from prompt.inference.acceptance import (
    ACCEPTANCE_RULES,
    POSTERIOR_ALPHA,
    POSTERIOR_THRESHOLD,
    UPSTREAM_SAMPLING,
)
from prompt.model.devices import add_device_flags
from prompt.model.loading import is_default_model


# --sampling (upstream's flag): upstream's two values with upstream's meaning, then our own rules' names
SAMPLING_CHOICES = ("greedy", "typical", "exact", "typical_sampling")


def sampling_rule(args) -> str | None:
    """The acceptance rule of questions above temperature 0: --acceptance's, else --sampling's in upstream's meaning
    (greedy: upstream_greedy, typical: upstream_typical), else None (exact sampling)."""
    if getattr(args, "acceptance", None):
        return args.acceptance
    return UPSTREAM_SAMPLING.get(args.sampling, args.sampling)


def add_common_flags(parser: argparse.ArgumentParser, model_help: str, default_model_id: str):
    add_model_flags(parser, model_help + " Default: the embedded default model.", threads=None)
    parser.add_argument("--model-id", default=default_model_id,
                        help="Name written into the answers; a FastChat template name (e.g. vicuna) selects that chat format.")
    parser.add_argument("--answer-file", default=None,
                        help="Output jsonl (appended to; questions it already answers for --model-id are skipped; "
                             "de-duplicated and sorted by question id at the end). Default, as upstream: data/<bench>/"
                             "model_answer/<model-id>-temperature-<T>-posterior_threshold-<P>-posterior_alpha-<A>-"
                             "sampling-<S>.jsonl")
    parser.add_argument("--bench-name", default="mt_bench", choices=BENCH_NAMES)
    parser.add_argument("--question-file", default=None, help="Questions (MT-Bench jsonl, AlpacaEval json, GSM8K jsonl); HumanEval needs none.")
    parser.add_argument("--question-begin", type=int, default=None)
    parser.add_argument("--question-end", type=int, default=None)
    parser.add_argument("--max-new-token", type=int, default=512)
    parser.add_argument("--num-choices", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=None,
                        help="Sampling temperature for every question (0: greedy). Default, as FastChat and upstream: "
                             "each MT-Bench category's temperature from FastChat's temperature_config (writing and "
                             "roleplay 0.7, stem and humanities 0.1, the others 0), 0 for questions of other categories.")
    parser.add_argument("--posterior_threshold", "--posterior-threshold", dest="posterior_threshold", type=float,
                        default=POSTERIOR_THRESHOLD, help="Typical acceptance's threshold (--sampling typical).")
    parser.add_argument("--posterior_alpha", "--posterior-alpha", dest="posterior_alpha", type=float,
                        default=POSTERIOR_ALPHA,
                        help="Typical acceptance's alpha (--sampling typical).")
    parser.add_argument("--sampling", default=None, choices=SAMPLING_CHOICES,
                        help="Upstream's flag, with upstream's meanings above temperature 0: greedy, typical "
                             "acceptance with an argmax next token (rule upstream_greedy); typical, upstream's "
                             "sample-and-compare (upstream_typical); exact and typical_sampling are ours. Default "
                             "(neither this nor --acceptance): greedy at temperature 0, exact sampling above.")
    parser.add_argument("--acceptance", default=None, choices=tuple(r for r in ACCEPTANCE_RULES if r != "greedy"),
                        help="Ours: the acceptance rule above temperature 0, by its name in prompt.inference.acceptance "
                             "(default exact, lossless; typical is Medusa's typical acceptance with a sampled next "
                             "token). Questions at temperature 0 are greedy.")
    parser.add_argument("--top-p", type=float, default=None, help="Nucleus sampling for --sampling exact (transformers' top_p).")
    parser.add_argument("--top-k", type=int, default=None, help="Top-k sampling for --sampling exact (transformers' top_k).")
    parser.add_argument("--warmup", type=int, default=1, help="Unrecorded warm-up generations before timing.")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="Conversations decoded together (continuous batching: a finished turn's row is refilled "
                             "by the next turn or question). 1 (default): one at a time, as upstream. The answers are "
                             "the same; the answer file's wall_time is then each turn's latency within the batch.")
    parser.add_argument("--num-gpus-per-model", type=int, default=1,
                        help="GPUs per model: above 1, each model is spread over that many GPUs (device_map auto).")
    parser.add_argument("--num-gpus-total", type=int, default=1,
                        help="Total GPUs: with more than --num-gpus-per-model, the questions are split among "
                             "total/per-model workers run through ray (on CPU: that many CPU workers).")
    parser.add_argument("--max-gpu-memory", default=None,
                        help="Most GPU memory for the model's weights on each GPU, e.g. 20GiB (device_map auto).")
    parser.add_argument("--revision", default="main", help="The model revision (Hub branch, tag or commit) to load.")
    parser.add_argument("--gpu-power", action="store_true",
                        help="Measure GPU power and energy per answer (zeus-ml), written as 'power' and 'energy'.")
    add_device_flags(parser, dtype="float32")
    add_model_flags(parser, model_path=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-profile", action="store_true",
                        help="Do not measure this machine's forward costs on first use (about a minute, once per "
                             "model, dtype and machine); the decoding is then priced on the profile shipped with the "
                             "checkpoint.")
    return parser

# upstream's question files when --question-file is not given (relative to the working folder)
UPSTREAM_QUESTION_FILES = {"mt_bench": os.path.join("data", "mt_bench", "question.jsonl"),
                           "alpaca_eval": os.path.join("data", "alpaca_eval", "alpaca_eval.json")}


def default_answer_file(args) -> str:
    """Upstream's answer file name: the model id and the sampling flags as given (temperature None: per category)."""
    rule = (f"acceptance-{args.acceptance}" if getattr(args, "acceptance", None) else
            f"sampling-{args.sampling or 'greedy'}")
    name = (f"{args.model_id}-temperature-{args.temperature}-posterior_threshold-{args.posterior_threshold}"
            f"-posterior_alpha-{args.posterior_alpha}-{rule}")
    return os.path.join("data", args.bench_name, "model_answer", name + ".jsonl")

def resolve_revision(args) -> None:
    """--revision other than main: a Hub id in --model-path becomes the local snapshot of that revision."""
    if args.revision in (None, "", "main") or args.model_path is None:
        return
    if os.path.isdir(os.path.expanduser(str(args.model_path))) or is_default_model(args.model_path):
        print(f"note: --revision {args.revision} does not apply to the local folder {args.model_path}", file=sys.stderr)
        return
    from huggingface_hub import snapshot_download

    try:
        args.model_path = snapshot_download(str(args.model_path), revision=args.revision)
    except Exception as exc:  # unknown id or revision, offline and not cached, network failure
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PPDError(f"cannot fetch revision {args.revision!r} of {args.model_path!r} ({type(exc).__name__}: "
                       f"{reason})") from None


def check_args(args) -> list[dict]:
    """Validate the flags, check that the answer file can be written and read the questions, before any model is
    loaded; returns the questions the answer file does not answer yet ([]: nothing left to do, said on stdout)."""
    if args.max_new_token < 1:
        raise PPDError("--max-new-token must be >= 1")
    if args.num_choices < 1:
        raise PPDError("--num-choices must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise PPDError("--threads must be >= 1")
    if args.temperature is not None and args.temperature < 0:
        raise PPDError("--temperature must be >= 0")
    if getattr(args, "batch_size", 1) < 1:
        raise PPDError("--batch-size must be >= 1")
    if args.sampling and getattr(args, "acceptance", None):
        raise PPDError(f"give --sampling (upstream's names) or --acceptance (ours), not both (--sampling "
                       f"{args.sampling} is --acceptance {sampling_rule(argparse.Namespace(sampling=args.sampling))})")
    if getattr(args, "batch_size", 1) > 1 and getattr(args, "hf_generate", False):
        raise PPDError("--batch-size > 1 needs our decode loop, not --hf-generate")
    args.workers = check_gpu_flags(args)
    upstream_questions = UPSTREAM_QUESTION_FILES.get(args.bench_name)
    if args.question_file is None and upstream_questions and os.path.isfile(upstream_questions):
        args.question_file = upstream_questions  # where upstream reads them
    args.answer_file = args.answer_file or default_answer_file(args)
    print(f"Output to {args.answer_file}")
    questions = load_questions(args.bench_name, args.question_file, args.question_begin, args.question_end)
    args.question_temperatures = temperatures_in_use(questions, args.temperature)
    if args.temperature is None and any(q.get("category") in fastchat_temperatures() for q in questions):
        used = "; ".join(f"{t:g} for {', '.join(c or '(none)' for c in cats)}"
                         for t, cats in args.question_temperatures.items())
        greedy_anyway = getattr(args, "greedy_at_every_temperature", False)  # the baseline, as upstream's
        note = ("" if not any(t > 0 for t in args.question_temperatures) else
                "; the baseline decodes greedily at every one all the same, as upstream's (--sampling exact samples)"
                if greedy_anyway else "; answers above 0 are sampled, not greedy (--temperature 0: greedy for all)")
        print(f"temperature: FastChat's for each question's category (--temperature sets one for all): {used}{note}")
    args.answers = AnswerFile.open(args.answer_file)
    todo = [q for q in questions if not args.answers.is_answered(q["question_id"], args.model_id)]
    if len(todo) < len(questions):
        print(f"{len(questions) - len(todo)} of the {len(questions)} selected questions are already answered for "
              f"{args.model_id} in {args.answer_file}: " + (f"answering the other {len(todo)}" if todo else "nothing to do"))
    if not todo:
        args.answers.tidy()
    resolve_revision(args)
    apply_threads(args.threads)
    return todo
