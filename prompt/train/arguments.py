"""Command-line flags of prompt/train/train.py: upstream's (HF TrainingArguments style) plus a few for CPU runs."""
from __future__ import annotations

import argparse

import torch

from prompt.cli import ArgumentParser
from prompt.errors import PPDError
from prompt.model.config import PromptConfig
from prompt.model.devices import add_device_flags, resolve_device
from prompt.data.files import canonical_model_name

TRAINER_TYPES = ("distillation_trainer", "param_efficient_fine_tuner")
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
# TrainingArguments' optimizer names this loop builds: torch's AdamW, SGD and Adagrad, bitsandbytes' 8-bit AdamW
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_hf", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit",
              "paged_adamw_8bit")


def flag_bool(value) -> bool:
    """`--flag`, `--flag true` and `--flag false` (HfArgumentParser accepts all three)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "t"):
        return True
    if text in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_bool(parser, name: str, default, help_text: str) -> None:
    parser.add_argument(name, type=flag_bool, nargs="?", const=True, default=default, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Train PPD prompt tokens on a frozen causal LM.",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", default=None,
                       help="Base model, a folder or Hub repo id; default: the embedded default model.")
    model.add_argument("--num_special_tokens", type=int, default=3)
    model.add_argument("--virtual_tokens_per_special_token", type=int, default=1)
    model.add_argument("--vt_attention_type", default="decoder", help="decoder, encoder or ensemble")
    model.add_argument("--aggregation_type", default="mean", help="mean, weighted or adaptive_weighted")
    add_bool(model, "--use_custom_lm_head", False, "Train a copy of the output head too (lr x --lm_head_lr_multiplier).")
    add_bool(model, "--use_prefix_tuning", False, "Also train prefix keys and values in every layer, seen only by "
                                                  "the special tokens (--prefix_virtual_tokens per special token).")
    model.add_argument("--prefix_virtual_tokens", type=int, default=10)
    model.add_argument("--prefix_positions", choices=("after_prefix", "next"), default=None,
                       help="With prefix tuning: the special tokens' positions, after the prefix positions (upstream's; "
                            "saved as the prefix/ adapter) or the anchor's next positions (the shipped tokens'; saved as "
                            "prefix_tuning.pt). Default: after_prefix, or with --stage1_model_path its tokens' own.")
    model.add_argument("--num_exits", type=int, default=1)
    model.add_argument("--prompt_tuning_init", default="RANDOM", choices=("RANDOM", "TEXT"),
                       help="Initial prompt embeddings: random (scaled to the embedding table) or from text.")
    model.add_argument("--stage1_model_path", default=None, help="Start from these trained prompt tokens.")
    add_bool(model, "--load_in_4bit", False, "Load the base model's linear layers in 4 bits (bitsandbytes NF4).")
    add_bool(model, "--load_in_8bit", False, "Load the base model's linear layers in 8 bits (bitsandbytes).")
    # --device (cpu, cuda, cuda:N, auto; default cuda when available) and --dtype of the frozen base model; the
    # prompt embeddings are trained in float32
    add_device_flags(model, dtype="bfloat16", quantization=False)

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_path", required=True, help="A dataset file from generate_dataset.py (a folder with --use_chunked).")
    data.add_argument("--size", type=int, default=None, help="Use only the first SIZE records.")
    add_bool(data, "--use_chunked", False, "--dataset_path is a folder of dataset chunk files.")
    data.add_argument("--model_max_length", type=int, default=1024, help="Sequences are cut to this many tokens.")
    add_bool(data, "--many_cuts", None, "Supervise many cuts of a sequence in one forward (default: on for "
                                          "self_distillation data, the only data it applies to).")
    data.add_argument("--cuts_per_sequence", type=int, default=0,
                      help="With many cuts: random cuts per sequence and visit (0 = every position of the reply).")

    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", required=True)
    add_bool(train, "--overwrite_output_dir", False, "Allow replacing a different run in --output_dir.")
    train.add_argument("--trainer_type", default="distillation_trainer", choices=TRAINER_TYPES)
    train.add_argument("--num_train_epochs", type=float, default=1.0)
    train.add_argument("--max_steps", type=int, default=-1, help="Stop after this many optimizer steps (-1: epochs decide).")
    train.add_argument("--max_train_minutes", type=float, default=None,
                       help="Stop after this much training time (summed over resumes) and save; the LR schedule "
                            "follows whichever budget, steps or time, is nearer its end.")
    train.add_argument("--per_device_train_batch_size", type=int, default=1)
    train.add_argument("--per_device_eval_batch_size", type=int, default=1, help="Unused (no evaluation during training).")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=1e-2)
    train.add_argument("--lm_head_lr_multiplier", type=float, default=0.1)
    train.add_argument("--weight_decay", type=float, default=0.0)
    train.add_argument("--warmup_ratio", type=float, default=0.0)
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient-norm clipping (0 = off), as HF Trainer.")
    train.add_argument("--lr_scheduler_type", default="cosine", choices=SCHEDULES)
    train.add_argument("--evaluation_strategy", "--eval_strategy", dest="evaluation_strategy", default="no",
                       choices=("no", "steps", "epoch"))
    train.add_argument("--logging_steps", type=int, default=10)
    train.add_argument("--save_steps", type=int, default=500)
    train.add_argument("--resume_from_checkpoint", default=None,
                       help="A checkpoint folder, or 'true' for the latest in --output_dir (which is also the "
                            "default whenever --output_dir holds checkpoints of this run).")
    train.add_argument("--seed", type=int, default=42)
    # transformers TrainingArguments flags of upstream's command lines (upstream trains with HF Trainer)
    train.add_argument("--cache_dir", default=None, help="Hugging Face cache folder for a Hub --model_name_or_path.")
    train.add_argument("--optim", default="adamw_torch", choices=OPTIMIZERS,
                       help="Optimizer, by its TrainingArguments name (the 8-bit ones through bitsandbytes).")
    add_bool(train, "--bf16", False, "The frozen base model in bfloat16 (the same as --dtype bfloat16).")
    add_bool(train, "--fp16", False, "The frozen base model in float16 (needs a CUDA GPU, as HF Trainer's fp16).")
    add_bool(train, "--gradient_checkpointing", False,
             "Recompute the base model's layer activations in the backward instead of keeping them (less memory).")
    train.add_argument("--report_to", nargs="+", default=["none"],
                       help="Also log to these trackers through accelerate (tensorboard, wandb, ...; all; none).")
    train.add_argument("--save_strategy", default="steps", choices=("no", "steps", "epoch"),
                       help="Checkpoints every --save_steps steps, at the end of every epoch, or none before the end.")
    train.add_argument("--deepspeed", default=None, help="A DeepSpeed config (needs CUDA GPUs; not supported by this loop).")
    add_bool(train, "--tf32", None, "Allow TF32 matrix products on Ampere or newer GPUs (needs a CUDA GPU).")
    train.add_argument("--save_total_limit", type=int, default=None, help="Keep only the newest N checkpoints.")
    train.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads per process (default: torch's choice); keep threads x processes "
                            "within the free cores, oversubscribed threads slow training many times over.")
    return parser


def check_args(args) -> None:
    """Reject impossible or unsupported settings before anything is loaded."""
    positive = ("num_special_tokens", "virtual_tokens_per_special_token", "num_exits", "per_device_train_batch_size",
                "gradient_accumulation_steps", "logging_steps", "save_steps", "model_max_length")
    for name in positive:
        if getattr(args, name) < 1:
            raise PPDError(f"--{name} must be >= 1")
    if args.num_train_epochs <= 0:
        raise PPDError("--num_train_epochs must be > 0")
    if args.learning_rate <= 0:
        raise PPDError("--learning_rate must be > 0")
    if not 0 <= args.warmup_ratio < 1:
        raise PPDError("--warmup_ratio must be in [0, 1)")
    if args.max_train_minutes is not None and args.max_train_minutes <= 0:
        raise PPDError("--max_train_minutes must be > 0")
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
    if args.evaluation_strategy != "no":
        raise PPDError(f"--evaluation_strategy {args.evaluation_strategy} is not supported; train with 'no' and "
                       "measure afterwards with python -m prompt.evaluation.accuracy")
    if args.load_in_4bit and args.load_in_8bit:
        raise PPDError("choose one of --load_in_4bit and --load_in_8bit")
    args.device = resolve_device(args.device)
    check_trainer_flags(args)


def check_trainer_flags(args) -> None:
    """The TrainingArguments flags: GPU-only ones refused on CPU, --bf16/--fp16 turned into --dtype, trackers checked."""
    on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    for flag, used in (("--fp16", args.fp16), ("--deepspeed", args.deepspeed), ("--tf32", args.tf32)):
        if used and on_cpu:
            raise PPDError(f"{flag} needs CUDA GPUs, and this run has none "
                           f"({'--device cpu' if torch.cuda.is_available() else f'torch {torch.__version__} sees no GPU'})")
    if args.deepspeed:
        raise PPDError("--deepspeed is not supported: only the prompt tokens train; run several GPUs with "
                       "accelerate launch --num_processes N (data parallel)")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        raise PPDError("--save_total_limit must be >= 1")
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.bf16 and args.fp16:
        raise PPDError("choose one of --bf16 and --fp16")
    if args.bf16 or args.fp16:
        args.dtype = "bfloat16" if args.bf16 else "float16"
    if args.optim in ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit"):
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise PPDError(f"--optim {args.optim} needs bitsandbytes: pip install -e '.[gpu]'")
    trackers = [name for name in args.report_to if name != "none"]
    if trackers:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS
        from accelerate.tracking import get_available_trackers

        available = {str(t) for t in get_available_trackers()}
        for name in trackers:
            if name != "all" and name not in LOGGER_TYPE_TO_CLASS:
                raise PPDError(f"--report_to {name}: unknown tracker; use none, all or one of "
                               f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
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


def parse_args(argv=None):
    """The command line; a transformers TrainingArguments flag this loop does not implement is named as such."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        import dataclasses

        from transformers import TrainingArguments

        known = {f.name for f in dataclasses.fields(TrainingArguments)}
        for token in unknown:
            name = token.split("=", 1)[0].lstrip("-")
            if token.startswith("--") and name in known:
                parser.error(f"--{name} is a transformers TrainingArguments flag that this training loop does not "
                             "implement (see README: Training prompt tokens)")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args
