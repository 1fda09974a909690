"""Command-line flags of prompt/train/train.py, parsed by transformers' HfArgumentParser as upstream's are: every
`TrainingArguments` flag (training runs on transformers' `Trainer`), plus the model and data flags of upstream and
a few of ours (--device, --dtype, --threads, --max_train_minutes, --many_cuts, ...).

`parse_args(argv)` returns (args, training_args): `args` is one flat namespace of every flag as given (what
training_args.json records), `training_args` the `TrainingArguments` the Trainer runs with.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Literal

import torch

from prompt.errors import PPDError
from prompt.model.config import PromptConfig
from prompt.model.devices import DTYPE_CHOICES, resolve_device
from prompt.data.files import canonical_model_name

TRAINER_TYPES = ("distillation_trainer", "param_efficient_fine_tuner")
# the schedules that can follow a time budget (--max_train_minutes): the fraction of steps or time, whichever is larger
TIME_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
BNB_OPTIMIZERS = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit", "lion_32bit",
                  "paged_lion_8bit", "paged_lion_32bit", "ademamix_8bit", "paged_ademamix_8bit", "paged_ademamix_32bit",
                  "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Base model, a folder or Hub repo id; default: the embedded default model."})
    num_special_tokens: int = 3
    virtual_tokens_per_special_token: int = 1
    vt_attention_type: str = field(default="decoder", metadata={"help": "decoder, encoder or ensemble"})
    aggregation_type: str = field(default="mean", metadata={"help": "mean, weighted or adaptive_weighted"})
    use_custom_lm_head: bool = field(default=False, metadata={
        "help": "Train a copy of the output head too (lr x --lm_head_lr_multiplier)."})
    use_prefix_tuning: bool = field(default=False, metadata={
        "help": "Also train prefix keys and values in every layer, seen only by the special tokens "
                "(--prefix_virtual_tokens per special token)."})
    prefix_virtual_tokens: int = 10
    prefix_positions: Literal["after_prefix", "next"] | None = field(default=None, metadata={
        "help": "With prefix tuning: the special tokens' positions, after the prefix positions (upstream's; saved as the "
                "prefix/ adapter) or the anchor's next positions (the shipped tokens'; saved as prefix_tuning.pt). "
                "Default: after_prefix, or with --stage1_model_path its tokens' own."})
    num_exits: int = 1
    prompt_tuning_init: Literal["RANDOM", "TEXT"] = field(default="RANDOM", metadata={
        "help": "Initial prompt embeddings: random (scaled to the embedding table) or from text."})
    stage1_model_path: str | None = field(default=None, metadata={"help": "Start from these trained prompt tokens."})
    load_in_4bit: bool = field(default=False, metadata={"help": "The base model's linear layers in 4 bits (bitsandbytes NF4)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "The base model's linear layers in 8 bits (bitsandbytes)."})
    device: str | None = field(default=None, metadata={
        "help": "cpu, cuda, cuda:N, or auto (device_map='auto', one process). Default: cuda when available, else cpu."})
    dtype: Literal[DTYPE_CHOICES] = field(default="bfloat16", metadata={
        "help": "dtype of the frozen base model (the prompt embeddings train in float32)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Hugging Face cache folder for a Hub --model_name_or_path."})


@dataclass
class DataArguments:
    dataset_path: str = field(metadata={"help": "A dataset file from generate_dataset.py (a folder with --use_chunked)."})
    size: int | None = field(default=None, metadata={"help": "Use only the first SIZE records."})
    use_chunked: bool = field(default=False, metadata={"help": "--dataset_path is a folder of dataset chunk files."})
    model_max_length: int = field(default=1024, metadata={"help": "Sequences are cut to this many tokens."})
    many_cuts: bool | None = field(default=None, metadata={
        "help": "Supervise many cuts of a sequence in one forward (default: on for self_distillation data, the only "
                "data it applies to)."})
    cuts_per_sequence: int = field(default=0, metadata={
        "help": "With many cuts: random cuts per sequence and visit (0 = every position of the reply)."})


def _transformers_training_arguments():
    from transformers import TrainingArguments

    return TrainingArguments


@dataclass
class PPDTrainingArguments(_transformers_training_arguments()):
    """transformers' TrainingArguments with our defaults (upstream's recipe's) and our training flags."""

    output_dir: str = field(metadata={"help": "Where the prompt tokens and the checkpoint-N folders go."})
    per_device_train_batch_size: int = 1
    num_train_epochs: float = 1.0
    learning_rate: float = 1e-2
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Any of transformers' schedulers (linear, cosine, "
                                   "constant, constant_with_warmup, polynomial, ...)."})
    logging_steps: float = 10
    report_to: list[str] = field(default_factory=lambda: ["none"], metadata={
        "help": "Loggers (transformers' integrations: tensorboard, wandb, mlflow, ...; all; none)."})
    eval_strategy: str = field(default="no", metadata={"aliases": ["--evaluation_strategy"],
                                                       "help": "Only 'no': there is no evaluation during training."})
    warmup_ratio: float = field(default=0.0, metadata={
        "help": "Warmup as a fraction of training (upstream's flag; transformers 5 spells it --warmup_steps < 1)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow replacing a different run in --output_dir."})
    trainer_type: Literal[TRAINER_TYPES] = "distillation_trainer"
    lm_head_lr_multiplier: float = 0.1
    max_train_minutes: float | None = field(default=None, metadata={
        "help": "Stop after this much training time (summed over resumes) and save; the LR schedule follows whichever "
                "budget, steps or time, is nearer its end."})
    threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads per process (default: torch's choice); keep threads x processes within the free "
                "cores, oversubscribed threads slow training many times over."})
    run_subfolder: bool = field(default=False, metadata={
        "help": "As upstream: write into OUTPUT_DIR/prompt_<model>_<N>_<V>_cl<L>_<ATTENTION>_<aggregation>"
                "[_custom_lm_head][_prefix<P>]_exits<E> instead of OUTPUT_DIR itself."})


ARGUMENT_TYPES = (ModelArguments, DataArguments, PPDTrainingArguments)


def build_parser():
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        """HfArgumentParser that reports bad flags on one line (`error: ...`) and exits 2."""

        def error(self, message):
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    return Parser(ARGUMENT_TYPES, description="Train PPD prompt tokens on a frozen causal LM (transformers' Trainer).")


def check_args(args) -> None:
    """Reject impossible or unsupported settings before anything is loaded."""
    positive = ("num_special_tokens", "virtual_tokens_per_special_token", "num_exits", "per_device_train_batch_size",
                "gradient_accumulation_steps", "model_max_length")
    for name in positive:
        if getattr(args, name) < 1:
            raise PPDError(f"--{name} must be >= 1")
    for name in ("logging_steps", "save_steps"):
        if getattr(args, name) <= 0:
            raise PPDError(f"--{name} must be > 0")
    if args.num_train_epochs <= 0:
        raise PPDError("--num_train_epochs must be > 0")
    if args.learning_rate <= 0:
        raise PPDError("--learning_rate must be > 0")
    if not 0 <= args.warmup_ratio < 1:
        raise PPDError("--warmup_ratio must be in [0, 1)")
    if args.warmup_ratio and args.warmup_steps:
        raise PPDError("give one of --warmup_ratio and --warmup_steps")
    if args.max_train_minutes is not None and args.max_train_minutes <= 0:
        raise PPDError("--max_train_minutes must be > 0")
    if args.max_train_minutes and args.lr_scheduler_type not in TIME_SCHEDULES:
        raise PPDError(f"--lr_scheduler_type {args.lr_scheduler_type} cannot follow a time budget; with "
                       f"--max_train_minutes use one of {', '.join(TIME_SCHEDULES)}")
    if args.size is not None and args.size < 1:
        raise PPDError("--size must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise PPDError("--threads must be >= 1")
    if args.cuts_per_sequence < 0:
        raise PPDError("--cuts_per_sequence must be >= 0 (0 = all)")
    if args.prefix_positions is not None and not args.use_prefix_tuning:
        raise PPDError("--prefix_positions needs --use_prefix_tuning")
    if args.use_prefix_tuning and args.prefix_virtual_tokens < 1:
        raise PPDError("--prefix_virtual_tokens must be >= 1 with --use_prefix_tuning")
    evaluation = [flag for flag, used in (("--eval_strategy " + str(args.eval_strategy), args.eval_strategy != "no"),
                                          ("--do_eval", args.do_eval), ("--do_predict", args.do_predict),
                                          ("--eval_on_start", args.eval_on_start)) if used]
    if evaluation:
        raise PPDError(f"{evaluation[0]}: there is no evaluation during training (no evaluation set); train with "
                       "--eval_strategy no and measure afterwards with python -m prompt.evaluation.accuracy")
    if args.load_in_4bit and args.load_in_8bit:
        raise PPDError("choose one of --load_in_4bit and --load_in_8bit")
    args.device = resolve_device(args.device)
    check_trainer_flags(args)


def on_cpu(args) -> bool:
    return args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())


def check_trainer_flags(args) -> None:
    """The TrainingArguments flags that need a GPU refused on CPU, --bf16/--fp16 turned into --dtype, loggers checked."""
    for flag, used in (("--fp16", args.fp16), ("--deepspeed", args.deepspeed), ("--tf32", args.tf32)):
        if used and on_cpu(args):
            raise PPDError(f"{flag} needs CUDA GPUs, and this run has none "
                           f"({'--device cpu' if torch.cuda.is_available() else f'torch {torch.__version__} sees no GPU'})")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        raise PPDError("--save_total_limit must be >= 1")
    if args.bf16 and args.fp16:
        raise PPDError("choose one of --bf16 and --fp16")
    if args.bf16 or args.fp16:
        args.dtype = "bfloat16" if args.bf16 else "float16"
    if args.optim in BNB_OPTIMIZERS:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise PPDError(f"--optim {args.optim} needs bitsandbytes: pip install -e '.[gpu]'")
    loggers = [name for name in args.report_to if name != "none"]
    if loggers:
        from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                                 get_available_reporting_integrations)

        available = set(get_available_reporting_integrations())
        for name in loggers:
            if name != "all" and name not in INTEGRATION_TO_CALLBACK:
                raise PPDError(f"--report_to {name}: unknown tracker; use none, all or one of "
                               f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
            if name != "all" and name not in available:
                raise PPDError(f"--report_to {name}: {name} is not installed")


def prompt_config(args) -> PromptConfig:
    """The PromptConfig this run trains (what its adapter_config.json will say)."""
    name = canonical_model_name(args.model_name_or_path)
    return PromptConfig(base_model_name_or_path=name, tokenizer_name_or_path=name,
                        num_special_tokens=args.num_special_tokens,
                        virtual_tokens_per_special_token=args.virtual_tokens_per_special_token,
                        vt_attention_type=args.vt_attention_type, aggregation_type=args.aggregation_type,
                        use_custom_lm_head=args.use_custom_lm_head, num_exits=args.num_exits,
                        use_prefix_tuning=args.use_prefix_tuning,
                        prefix_virtual_tokens=args.prefix_virtual_tokens if args.use_prefix_tuning else None,
                        prompt_tuning_init=args.prompt_tuning_init)


def run_folder_name(args) -> str:
    """Upstream's name of a run's subfolder, from the run's settings (its train.py, --run_subfolder here)."""
    model = (args.model_name_or_path or canonical_model_name(None)).rstrip("/").split("/")[-1]
    return (f"prompt_{model}_{args.num_special_tokens}_{args.virtual_tokens_per_special_token}_cl{args.model_max_length}_"
            f"{args.vt_attention_type.upper()}_{args.aggregation_type}"
            f"{'_custom_lm_head' if args.use_custom_lm_head else ''}"
            f"{'_prefix' + str(args.prefix_virtual_tokens) if args.use_prefix_tuning else ''}_exits{args.num_exits}")


def parse_args(argv=None):
    """(args, training_args): every flag as one namespace (checked), and the TrainingArguments the Trainer runs with."""
    parser = build_parser()
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args = SimpleNamespace(**vars(namespace))
    check_args(args)
    if args.run_subfolder:
        args.output_dir = os.path.join(args.output_dir, run_folder_name(args))
    return args, training_arguments(args)


def training_arguments(args):
    """The TrainingArguments of the flags. Ours stand in for some: --dtype for --bf16/--fp16 (the frozen base model's
    dtype; the prompt tokens stay float32), the base model's gradient checkpointing set up by train.py, --warmup_ratio
    as transformers 5's fractional --warmup_steps, --device as --use_cpu."""
    own = {f.name for f in dataclasses.fields(PPDTrainingArguments) if f.init}
    values = {name: getattr(args, name) for name in own}
    values.update(bf16=False, fp16=False, gradient_checkpointing=False, activation_checkpointing=False,
                  use_cpu=on_cpu(args) or args.use_cpu, warmup_steps=args.warmup_ratio or args.warmup_steps,
                  resume_from_checkpoint=None)
    try:
        return PPDTrainingArguments(**values)
    except (ValueError, ImportError, TypeError) as exc:
        raise PPDError(f"transformers' TrainingArguments: {str(exc).strip().splitlines()[0]}") from None
