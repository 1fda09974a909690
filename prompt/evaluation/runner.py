"""The one benchmark runner behind gen_model_answer_baseline.py and gen_model_answer_prompt_decoding.py.

Both scripts take the upstream flags and write FastChat answer rows; they differ only in the decoder.
"""
from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch

from prompt.cli import add_model_flags, apply_threads
from prompt.errors import PPDError
from prompt.evaluation.answers import AnswerFile
from prompt.evaluation.chat import ChatFormatter, decode_answer
from prompt.evaluation.questions import BENCH_NAMES, load_questions
from prompt.inference.acceptance import (
    ACCEPTANCE_RULES,
    POSTERIOR_ALPHA,
    POSTERIOR_THRESHOLD,
    UPSTREAM_SAMPLING,
)
from prompt.inference.decoding import Decoder, GenerationResult
from prompt.model.devices import add_device_flags, device_kwargs, synchronize
from prompt.model.loading import is_default_model
from prompt.model.weight_layout import STANDARD, set_weight_layout


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


@dataclass
class MethodTotals:
    """What one decoding method produced over a run: its answers' results summed (`add`)."""

    tokens: int = 0
    seconds: float = 0.0
    passes: int = 0
    inputs: int = 0  # inputs of the verify forwards after each prefill (our loop only)
    chain_wins: int = 0
    identical: int = 0  # answers equal to a reference method's (the caller decides which)
    answers: int = 0
    outputs: list = field(default_factory=list)
    step_tokens: list = field(default_factory=list)  # tokens accepted per forward after the prefill (our loop only)
    steps: int = 0  # decoding steps after the prefill, as upstream counts them (GenerationResult.decoding_steps)
    per_question: list = field(default_factory=list)  # (new tokens, seconds) of each question, all turns

    def add(self, result: GenerationResult, identical: bool = True) -> None:
        self.tokens += result.new_tokens
        self.seconds += result.wall_time
        self.passes += result.forward_passes
        self.inputs += result.forward_inputs
        self.steps += result.decoding_steps if result.forward_passes else 0
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

    @property
    def accept_length_upstream(self) -> float | None:
        """Upstream's accept length: new tokens per decoding step, the prefill not counted; None where uncounted."""
        return self.tokens / self.steps if self.passes and self.steps else None

    @property
    def inputs_per_step(self) -> float | None:
        """Mean inputs of a verify forward after a prefill; None where the forwards were not counted."""
        forwards = self.passes - self.answers
        return self.inputs / forwards if self.passes and forwards > 0 else None

    def merge(self, other: "MethodTotals") -> None:
        """Add another run's totals (a worker's) to these."""
        for name in ("tokens", "seconds", "passes", "inputs", "steps", "chain_wins", "identical", "answers"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("outputs", "step_tokens", "per_question"):
            getattr(self, name).extend(getattr(other, name))

    def row(self) -> dict:
        """The totals as a JSON row (`accept_length` counts the prefill as a forward; `accept_length_upstream` is
        upstream's measure, per decoding step after the prefill)."""
        return {"tokens": self.tokens, "seconds": round(self.seconds, 3), "passes": self.passes, "steps": self.steps,
                "chain_wins": self.chain_wins, "answers": self.answers, "identical": self.identical,
                "tokens_per_second": self.tokens_per_second, "accept_length": self.accept_length,
                "accept_length_upstream": self.accept_length_upstream, "inputs_per_step": self.inputs_per_step}

    def summary(self, label: str) -> str:
        text = (f"{label}: {self.tokens} new tokens in {self.seconds:.1f} s = "
                f"{self.tokens / max(self.seconds, 1e-9):.2f} tokens/s")
        if self.passes:
            text += f", accept length {self.accept_length:.3f} tokens per forward (prefill counted)"
        if self.accept_length_upstream:
            text += f", {self.accept_length_upstream:.3f} per decoding step (upstream's accept length)"
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
        set_weight_layout(self.model, STANDARD)  # transformers as its users run it
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
        steps = [] if self.prompt_lookup_num_tokens else [1] * max(len(tokens) - 1, 0)  # one token per forward
        return GenerationResult(token_ids=tokens, forward_passes=passes, wall_time=wall, step_tokens=steps,
                                stop_reason="eos" if tokens and tokens[-1] in self.stop_token_ids else "length")


# upstream's question files when --question-file is not given (relative to the working folder)
UPSTREAM_QUESTION_FILES = {"mt_bench": os.path.join("data", "mt_bench", "question.jsonl"),
                           "alpaca_eval": os.path.join("data", "alpaca_eval", "alpaca_eval.json")}


@functools.lru_cache(maxsize=1)
def fastchat_temperatures() -> dict:
    """FastChat's sampling temperature of each MT-Bench category (`fastchat.llm_judge.common.temperature_config`).
    That module imports the judges' API clients (openai, anthropic); without them its value is read from its source."""
    try:
        from fastchat.llm_judge.common import temperature_config

        return dict(temperature_config)
    except ImportError:
        pass
    spec = importlib.util.find_spec("fastchat")
    path = os.path.join(os.path.dirname(spec.origin), "llm_judge", "common.py") if spec and spec.origin else ""
    try:
        with open(path, encoding="utf-8") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its regular expressions' escapes
            module = ast.parse(f.read())
        for node in module.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "temperature_config" for t in node.targets):
                return dict(ast.literal_eval(node.value))
    except (OSError, SyntaxError, ValueError):
        pass
    raise PPDError("cannot read FastChat's per-category temperatures (fastchat.llm_judge.common.temperature_config); "
                   "pass --temperature")


def question_temperature(question: dict, temperature: float | None) -> float:
    """--temperature when given; else FastChat's temperature for the question's category, 0 for other categories
    (as upstream)."""
    if temperature is not None:
        return temperature
    return float(fastchat_temperatures().get(question.get("category"), 0.0))


def temperatures_in_use(questions, temperature: float | None) -> dict:
    """{temperature: sorted categories} over `questions`, each at `question_temperature`, lowest temperature first."""
    used = {}
    for question in questions:
        used.setdefault(question_temperature(question, temperature), set()).add(str(question.get("category") or ""))
    return {t: sorted(used[t]) for t in sorted(used)}


def default_answer_file(args) -> str:
    """Upstream's answer file name: the model id and the sampling flags as given (temperature None: per category)."""
    rule = (f"acceptance-{args.acceptance}" if getattr(args, "acceptance", None) else
            f"sampling-{args.sampling or 'greedy'}")
    name = (f"{args.model_id}-temperature-{args.temperature}-posterior_threshold-{args.posterior_threshold}"
            f"-posterior_alpha-{args.posterior_alpha}-{rule}")
    return os.path.join("data", args.bench_name, "model_answer", name + ".jsonl")


def check_gpu_flags(args) -> int:
    """Check --num-gpus-per-model, --num-gpus-total, --max-gpu-memory and --gpu-power; returns the number of workers
    (total / per model: each answers a share of the questions, through ray when more than one)."""
    if args.num_gpus_per_model < 1 or args.num_gpus_total < 1:
        raise PPDError("--num-gpus-per-model and --num-gpus-total must be >= 1")
    if args.num_gpus_total % args.num_gpus_per_model:
        raise PPDError(f"--num-gpus-total ({args.num_gpus_total}) must be a multiple of --num-gpus-per-model "
                       f"({args.num_gpus_per_model})")
    needs_gpu = [flag for flag, used in (("--num-gpus-per-model", args.num_gpus_per_model > 1),
                                         ("--max-gpu-memory", args.max_gpu_memory is not None),
                                         ("--gpu-power", args.gpu_power)) if used]
    on_cpu = not torch.cuda.is_available() or str(args.device or "").lower() == "cpu"
    if needs_gpu and on_cpu:
        raise PPDError(f"{needs_gpu[0]} needs CUDA GPUs, and this run has none "
                       f"({'--device cpu' if torch.cuda.is_available() else f'torch {torch.__version__} sees no GPU'})")
    if not on_cpu and args.num_gpus_total > torch.cuda.device_count():
        raise PPDError(f"--num-gpus-total {args.num_gpus_total}, but torch sees {torch.cuda.device_count()} GPU(s)")
    if args.gpu_power and importlib.util.find_spec("zeus") is None:
        raise PPDError("--gpu-power measures with zeus-ml: pip install zeus-ml")
    if args.num_gpus_per_model > 1 or args.max_gpu_memory is not None:
        args.device = "auto"  # the model spread over its GPUs (device_map="auto"), as FastChat loads it
    workers = args.num_gpus_total // args.num_gpus_per_model
    if workers > 1 and importlib.util.find_spec("ray") is None:
        raise PPDError(f"--num-gpus-total {args.num_gpus_total} runs {workers} workers through ray: pip install ray")
    return workers


def load_kwargs(args) -> dict:
    """The loader keywords of the device flags, with --max-gpu-memory as from_pretrained's max_memory."""
    kwargs = device_kwargs(args)
    if args.max_gpu_memory is not None:
        kwargs["max_memory"] = {i: args.max_gpu_memory for i in range(args.num_gpus_per_model)}
    return kwargs


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


class PerTemperature:
    """Decoders by temperature, built on first use by `build(temperature)` (questions' temperatures differ by category)."""

    def __init__(self, build):
        self.build = build
        self.decoders = {}

    def __call__(self, temperature: float):
        if temperature not in self.decoders:
            self.decoders[temperature] = self.build(temperature)
        return self.decoders[temperature]


def run_answers(args, questions, setup) -> str:
    """Answer `questions` with what `setup(args)` returns, `(decoder_for, formatter, label)` (`decoder_for`: a
    decoder, or a function of the temperature giving one): in this process, or split among `args.workers` ray
    workers (`setup` runs in each); then de-duplicate and sort the answer file, and report."""
    workers = getattr(args, "workers", 1)
    if workers <= 1:
        decoder_for, formatter, label = setup(args)
        return run_benchmark(args, questions, decoder_for, formatter, label)
    import ray

    device = "cpu" if not torch.cuda.is_available() or str(args.device or "").lower() == "cpu" else "cuda"
    ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=True,
             ignore_reinit_error=True)
    try:
        if device == "cpu":  # CPU workers share the cores
            remote = ray.remote(num_cpus=1)(_answer_share)
            threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
        else:
            remote = ray.remote(num_gpus=args.num_gpus_per_model)(_answer_share)
            threads = args.threads
        share = -(-len(questions) // workers)
        handles = [remote.remote(args, questions[i: i + share], setup, threads) for i in range(0, len(questions), share)]
        print(f"{len(handles)} ray workers ({device}), {share} questions each")
        results = ray.get(handles)
    finally:
        ray.shutdown()
    totals, failed, elapsed = MethodTotals(), {}, 0.0
    for worker_totals, worker_failed, worker_elapsed, label in results:
        totals.merge(worker_totals)
        failed.update(worker_failed)
        elapsed = max(elapsed, worker_elapsed)
    return finish(args, questions, totals, failed, label, elapsed)


def _answer_share(args, questions, setup, threads):
    """A ray worker's share: its own model, its rows appended to the shared answer file (one write per row)."""
    apply_threads(threads)
    args.answers = None
    decoder_for, formatter, label = setup(args)
    totals, failed, elapsed = answer_questions(args, questions, decoder_for, formatter, label)
    return totals, failed, elapsed, label


def run_benchmark(args, questions, decoder, formatter: ChatFormatter, label: str):
    """Answer every question with `decoder` (or `decoder(temperature)`, the decoder for a question's temperature) and
    append FastChat rows to the answer file, one row per question as it is answered; at the end the file is
    de-duplicated and sorted by question id. A question that cannot be answered (a prompt longer than the context)
    is reported by id and the run goes on; the run then fails naming them."""
    totals, failed, elapsed = answer_questions(args, questions, decoder, formatter, label)
    return finish(args, questions, totals, failed, label, elapsed)


def answer_questions(args, questions, decoder, formatter: ChatFormatter, label: str):
    """The answering of `run_benchmark`; returns (totals, {question id: why it was not answered}, seconds)."""
    from tqdm import tqdm

    answers = getattr(args, "answers", None) or AnswerFile.open(args.answer_file)
    decoder_for = decoder if not hasattr(decoder, "generate") else (lambda temperature: decoder)
    monitor = gpu_power_monitor(args)

    for question in questions if args.warmup > 0 else []:  # warm up on the first question whose prompt fits
        try:
            for _ in range(args.warmup):
                decoder_for(0.0).generate(formatter.input_ids(question["turns"][:1]), min(args.max_new_token, 32))
            break
        except PPDError:
            continue

    totals = MethodTotals()
    failed = {}
    batch_size = getattr(args, "batch_size", 1)
    start = time.perf_counter()
    if batch_size > 1:
        for row in answer_batched(args, questions, decoder_for, formatter, totals, failed, batch_size):
            answers.append(row)
    else:
        for q_index, question in enumerate(tqdm(questions, desc=label, unit="question")):
            question_decoder = decoder_for(question_temperature(question, args.temperature))
            try:
                choices = [answer_choice(args, question_decoder, formatter, question, choice,
                                         args.seed + 1000 * q_index + choice, totals, monitor)
                           for choice in range(args.num_choices)]
            except PPDError as exc:
                failed[question["question_id"]] = str(exc)
                print(f"question {question['question_id']!r} not answered: {exc}", file=sys.stderr)
                continue
            answers.append(answer_row(args, question, choices))
    return totals, failed, time.perf_counter() - start


def gpu_power_monitor(args):
    """With --gpu-power, a zeus-ml monitor of the GPUs this process sees, else None."""
    if not getattr(args, "gpu_power", False):
        return None
    from zeus.monitor import ZeusMonitor

    return ZeusMonitor(gpu_indices=list(range(torch.cuda.device_count())))


def finish(args, questions, totals: MethodTotals, failed: dict, label: str, elapsed: float) -> str:
    """De-duplicate and sort the answer file, print the totals, and fail naming the questions not answered."""
    answer_file = args.answer_file
    rows = AnswerFile(answer_file).tidy()
    print(totals.summary(label))
    batch_size = getattr(args, "batch_size", 1)
    if batch_size > 1:
        print(f"batch of {batch_size}: {totals.tokens} new tokens in {elapsed:.1f} s of wall time = "
              f"{totals.tokens / max(elapsed, 1e-9):.2f} tokens/s in all")
    print(f"answers of {len(questions) - len(failed)} question(s) appended to {answer_file}"
          + (f" ({rows} rows, sorted by question id)" if rows is not None else ""))
    if failed:
        listed = "; ".join(f"{qid!r}: {reason}" for qid, reason in list(failed.items())[:5])
        raise PPDError(f"{len(failed)} of {len(questions)} question(s) not answered ({listed}"
                       f"{'; ...' if len(failed) > 5 else ''})")
    return answer_file


def answer_row(args, question, choices) -> dict:
    import shortuuid

    return {"question_id": question["question_id"], "answer_id": shortuuid.uuid(), "model_id": args.model_id,
            "choices": choices, "tstamp": time.time()}


class _Choice:
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


def answer_choice(args, decoder, formatter, question, index: int, seed: int, totals: MethodTotals,
                  monitor=None) -> dict:
    """One choice of one question, turn after turn, decoded alone (with `monitor`, its GPU power measured)."""
    choice = _Choice(question, index, seed)
    done = False
    while not done:
        prompt = choice.next_prompt(formatter)
        if monitor:
            monitor.begin_window("answer")
        result = decoder.generate(prompt, args.max_new_token, seed=seed)
        if monitor:
            measured = monitor.end_window("answer")
            joules = getattr(measured, "gpu_energy", None) or getattr(measured, "energy", {})
            choice.energy.append(sum(joules.values()))
            choice.power.append(choice.energy[-1] / max(measured.time, 1e-9))
        done = choice.record(formatter.tokenizer, result, totals)
    return choice.row()


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
    active = {}  # id(row state) -> (state, q_index, _Choice)
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
            start(q_index, _Choice(question, index, args.seed + 1000 * q_index + index))
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


def make_decoder(model, formatter: ChatFormatter, args, temperature: float | None = None, **kwargs):
    """The decoder of the flags at `temperature` (default: --temperature, else 0)."""
    if temperature is None:
        temperature = args.temperature or 0.0
    sampled = temperature > 0  # at 0 greedy whatever --sampling names (as upstream): a category at 0 among sampled ones
    return Decoder(model, temperature=temperature, posterior_threshold=args.posterior_threshold,
                   posterior_alpha=args.posterior_alpha, sampling=sampling_rule(args) if sampled else None,
                   top_p=args.top_p if sampled else None, top_k=args.top_k if sampled else None,
                   stop_token_ids=formatter.stops(model), **kwargs)
