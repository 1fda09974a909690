"""Train PPD prompt tokens on a frozen causal LM (only the prompt embeddings, and optional weighting layers or
custom head, learn). Runs as one process or several:

    python prompt/train/train.py --dataset_path D.pt --output_dir OUT [upstream flags ...]
    accelerate launch --num_processes 4 prompt/train/train.py ...                 # GPUs
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 prompt/train/train.py ... # several CPU processes (gloo)

Losses as upstream: KL to the base model's distributions (distillation_trainer) or cross-entropy on the
data's tokens (param_efficient_fine_tuner), special token k weighted by 0.8^(k-1). Self-distilled sequences
train with many cuts per forward (prompt/train/many_cuts.py). Checkpoints go to OUT/checkpoint-STEP and a
run resumes from the latest one; OUT itself ends up loadable with AutoPromptDecoder.from_pretrained(OUT).
"""
from __future__ import annotations

import os
import sys


def _make_importable() -> None:
    """Drop this file's folder from sys.path (its names must not shadow packages) and find `prompt` if not installed."""
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == here:
        sys.path.pop(0)
    try:
        import prompt  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.dirname(here)))


_make_importable()

import json  # noqa: E402
import shutil  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

import torch  # noqa: E402

from prompt.data.files import canonical_model_name, load_dataset  # noqa: E402
from prompt.data.upstream import is_saved_hf_dataset  # noqa: E402
from prompt.errors import PPDError, cli_entry  # noqa: E402
from prompt.train import checkpoints  # noqa: E402
from prompt.train.arguments import check_args, parse_args, prompt_config  # noqa: E402
from prompt.train.objectives import DISTILLATION, many_cuts_loss, one_cut_loss  # noqa: E402

ARGS_NAME = checkpoints.ARGS_NAME


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    elapsed: float = 0.0  # training seconds, summed over resumes
    cuts: int = 0  # supervised cuts (positions), all processes together
    log_history: list = field(default_factory=list)


@dataclass
class Plan:
    """How the data is walked: each optimizer step takes `per_step` records, spread over processes and micro-batches."""

    records: int
    per_step: int
    steps_per_epoch: int
    total_steps: int
    max_seconds: float | None


# --------------------------------------------------------------------------------------------------
def main_body(args) -> str:
    """Train and save; returns the output folder."""
    from accelerate import Accelerator

    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = prompt_config(args)
    resume = None if args.overwrite_output_dir else checkpoints.resolve_resume(args.resume_from_checkpoint, args.output_dir)
    checkpoints.check_output_dir(args.output_dir, config, args.overwrite_output_dir, vars(args), resume)
    dataset = load_training_data(args)
    many_cuts = choose_many_cuts(args, dataset.dataset_type)

    trackers = [name for name in args.report_to if name != "none"]
    accelerator = Accelerator(cpu=args.device == "cpu", log_with=trackers or None,
                              project_dir=args.output_dir if trackers else None)
    model = load_model(args, config, "auto" if args.device == "auto" else accelerator.device)
    optimizer = build_optimizer(model, args)
    progress = Progress()
    if resume:
        progress = Progress(**checkpoints.load_checkpoint(resume, model, optimizer))
        accelerator.print(f"resuming from {resume} (step {progress.step})")
    elif args.overwrite_output_dir and accelerator.is_main_process:
        checkpoints.clear_run(args.output_dir)
    if accelerator.is_main_process:  # the flags of this run, so that a resume with other flags is refused
        os.makedirs(args.output_dir, exist_ok=True)
        checkpoints.write_args_json(args.output_dir, vars(args))
    accelerator.wait_for_everyone()
    if trackers:
        accelerator.init_trackers(os.path.basename(os.path.abspath(args.output_dir)) or "ppd",
                                  config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    plan = make_plan(args, len(dataset.records), accelerator.num_processes)
    accelerator.print(f"{len(dataset.records)} {dataset.dataset_type} records, {plan.steps_per_epoch} steps per epoch, "
                      f"at most {plan.total_steps} steps" + (f" or {args.max_train_minutes:g} minutes" if plan.max_seconds else "")
                      + f"; {'many cuts per forward' if many_cuts else 'one cut per record'}, {accelerator.num_processes} process(es)")
    train_loop(args, model, optimizer, dataset, plan, progress, many_cuts, accelerator)
    if trackers:
        accelerator.end_training()

    if accelerator.is_main_process:
        save_final(args, model, progress)
    accelerator.wait_for_everyone()
    accelerator.print(f"saved prompt tokens to {args.output_dir} ({progress.step} steps, {progress.cuts} cuts, "
                      f"{progress.elapsed / 60:.1f} minutes)")
    return args.output_dir


def train_loop(args, model, optimizer, dataset, plan: Plan, progress: Progress, many_cuts: bool, accelerator) -> None:
    """Optimizer steps until the step or time budget is spent, logging and checkpointing on the way."""
    started = time.perf_counter()
    last_saved = progress.step
    window_loss, window_steps, window_cuts, window_start = 0.0, 0, 0, progress.elapsed
    while True:
        elapsed = synced(progress.elapsed + time.perf_counter() - started, accelerator, "max")
        if progress.step >= plan.total_steps or (plan.max_seconds and elapsed >= plan.max_seconds):
            progress.elapsed = elapsed
            break
        set_learning_rate(optimizer, schedule_factor(args, training_fraction(progress.step, elapsed, plan)))
        loss, cuts = train_step(args, model, optimizer, dataset, plan, progress.step, many_cuts, accelerator)
        progress.step += 1
        progress.cuts += cuts
        window_loss, window_steps, window_cuts = window_loss + loss, window_steps + 1, window_cuts + cuts
        if progress.step % args.logging_steps == 0:
            now = progress.elapsed + time.perf_counter() - started
            entry = {"step": progress.step, "loss": round(window_loss / window_steps, 6),
                     "learning_rate": optimizer.param_groups[0]["lr"], "cuts": progress.cuts,
                     "cuts_per_second": round(window_cuts / max(now - window_start, 1e-9), 2),
                     "minutes": round(now / 60, 3)}
            progress.log_history.append(entry)
            accelerator.print(json.dumps(entry), flush=True)
            if args.report_to != ["none"]:
                accelerator.log({k: v for k, v in entry.items() if k != "step"}, step=progress.step)
            window_loss, window_steps, window_cuts, window_start = 0.0, 0, 0, now
        if checkpoint_due(args, progress.step, plan):
            save_checkpoint(args, model, optimizer, progress, started, accelerator)
            last_saved = progress.step
    if progress.step != last_saved and args.save_strategy != "no":
        save_checkpoint(args, model, optimizer, progress, None, accelerator)


def checkpoint_due(args, step: int, plan: Plan) -> bool:
    """--save_strategy: every --save_steps steps, at each epoch's end, or no checkpoint before the end ("no")."""
    if args.save_strategy == "no":
        return False
    if args.save_strategy == "epoch":
        return step % plan.steps_per_epoch == 0
    return step % args.save_steps == 0


def train_step(args, model, optimizer, dataset, plan: Plan, step: int, many_cuts: bool, accelerator) -> tuple[float, int]:
    """One optimizer step: this process's micro-batches, gradients averaged over processes. Returns (mean loss, cuts)."""
    epoch, step_in_epoch = divmod(step, plan.steps_per_epoch)
    order = epoch_order(plan.records, epoch, args.seed)
    optimizer.zero_grad(set_to_none=True)
    loss_sum, cuts = 0.0, 0
    for batch in micro_batches(order, step_in_epoch, args, accelerator):
        records = [dataset.records[i] for i in batch]
        generators = [visit_generator(args.seed, epoch, i) for i in batch]
        value, count = accumulate_gradients(args, model, records, generators, dataset.dataset_type, many_cuts)
        loss_sum += value
        cuts += count
    average_gradients(model, accelerator)
    if args.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable_parameters(model), args.max_grad_norm)
    optimizer.step()
    totals = synced(torch.tensor([loss_sum, float(cuts)]), accelerator, "sum")
    return float(totals[0]) / accelerator.num_processes, int(totals[1])


def accumulate_gradients(args, model, records, generators, dataset_type, many_cuts) -> tuple[float, int]:
    """Backward of one micro-batch's loss, scaled so that a step's gradient is the mean over its micro-batches."""
    scale = 1.0 / args.gradient_accumulation_steps
    if not many_cuts:
        loss, cuts = one_cut_loss(model, records, dataset_type, args.trainer_type, args.model_max_length, generators)
        if loss is None:
            return 0.0, 0
        (loss * scale).backward()
        return loss.item() * scale, cuts
    total, cuts = 0.0, 0
    for record, generator in zip(records, generators):  # one sequence at a time: its graph is freed at once
        loss, count = many_cuts_loss(model, record, args.trainer_type, args.cuts_per_sequence, args.model_max_length,
                                     generator)
        if loss is not None:
            (loss * scale / len(records)).backward()
            total += loss.item() * scale / len(records)
            cuts += count
    return total, cuts


# --------------------------------------------------------------------------------------------------
# data
def load_training_data(args):
    """The dataset, checked against the flags, cut to --size."""
    if os.path.isdir(args.dataset_path) and not args.use_chunked and not is_saved_hf_dataset(args.dataset_path):
        raise PPDError(f"--dataset_path {args.dataset_path!r} is a folder; pass --use_chunked to read its chunk files")
    if args.use_chunked and not os.path.isdir(args.dataset_path):
        raise PPDError(f"--use_chunked needs --dataset_path to be a folder of chunk files, got {args.dataset_path!r}")
    dataset = load_dataset(args.dataset_path, num_special_tokens=args.num_special_tokens)
    if dataset.model_name_or_path != canonical_model_name(args.model_name_or_path):
        print(f"note: {args.dataset_path} was built with {dataset.model_name_or_path}; training "
              f"{canonical_model_name(args.model_name_or_path)}", file=sys.stderr)
    if args.size is not None:
        dataset.records = dataset.records[: args.size]
    return dataset


def choose_many_cuts(args, dataset_type: str) -> bool:
    """Whether to train with many cuts per forward; rejects trainer/data combinations that cannot work."""
    if dataset_type == "finetune" and args.trainer_type == DISTILLATION:
        raise PPDError("distillation_trainer needs a distillation or self_distillation dataset; a finetune dataset "
                       "trains with --trainer_type param_efficient_fine_tuner (or build its distillation dataset first)")
    if args.many_cuts and dataset_type != "self_distillation":
        raise PPDError(f"--many_cuts needs a self_distillation dataset; {dataset_type} records hold one cut each")
    many_cuts = dataset_type == "self_distillation" if args.many_cuts is None else args.many_cuts
    if args.cuts_per_sequence and not many_cuts:
        raise PPDError("--cuts_per_sequence applies only with many cuts per forward")
    if args.gradient_checkpointing and many_cuts:
        raise PPDError("--gradient_checkpointing needs one cut per forward (--many_cuts false): many cuts extend a KV "
                       "cache, which transformers' checkpointing turns off")
    return many_cuts


def make_plan(args, records: int, processes: int) -> Plan:
    per_step = processes * args.per_device_train_batch_size * args.gradient_accumulation_steps
    steps_per_epoch = math.ceil(records / per_step)
    total = args.max_steps if args.max_steps > 0 else max(1, math.ceil(args.num_train_epochs * steps_per_epoch))
    seconds = args.max_train_minutes * 60 if args.max_train_minutes else None
    return Plan(records, per_step, steps_per_epoch, total, seconds)


def epoch_order(records: int, epoch: int, seed: int) -> list[int]:
    """A fixed shuffle of the records for each epoch (the same on every process and after a resume)."""
    return torch.randperm(records, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def micro_batches(order: list[int], step_in_epoch: int, args, accelerator) -> list[list[int]]:
    """This process's micro-batches of a step. Records wrap around so that every process does the same work."""
    per_step = accelerator.num_processes * args.per_device_train_batch_size * args.gradient_accumulation_steps
    block = [order[(step_in_epoch * per_step + j) % len(order)] for j in range(per_step)]
    size, rank, world = args.per_device_train_batch_size, accelerator.process_index, accelerator.num_processes
    return [block[(m * world + rank) * size: (m * world + rank + 1) * size] for m in range(args.gradient_accumulation_steps)]


def visit_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random source of one visit of one record (its cuts): independent of process count and resumes."""
    return torch.Generator().manual_seed(hash((seed, epoch, index)) & (2**62 - 1))


# --------------------------------------------------------------------------------------------------
# model and optimizer
def load_model(args, config, device):
    """The frozen base model (bf16 by default, 4-bit or 8-bit through bitsandbytes if asked) with this run's prompt
    tokens. `device`: the accelerator's device, or "auto" (device_map="auto", one process)."""
    from prompt.model.loading import load_base_model
    from prompt.model.prompt_decoder import AutoPromptDecoder, PromptDecoder

    base, tokenizer = load_base_model(model_location(args), dtype=args.dtype, device=str(device),
                                      load_in_4bit=args.load_in_4bit, load_in_8bit=args.load_in_8bit)
    if args.gradient_checkpointing:  # transformers checkpoints a layer only in training mode: dropout stays off
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(args.seed)
    if args.stage1_model_path:
        model = AutoPromptDecoder.from_pretrained(args.stage1_model_path, base_model=base, tokenizer=tokenizer, config=config)
        own = "next" if model.prefix_at_next_positions else "after_prefix"
        if model.prefix is not None and args.prefix_positions not in (None, own):
            raise PPDError(f"--prefix_positions {args.prefix_positions}: the prompt tokens of --stage1_model_path "
                           f"{args.stage1_model_path!r} were trained with {own}")
    else:
        model = PromptDecoder(base, config, tokenizer=tokenizer)
        if args.prefix_positions == "next":
            model.use_next_positions_for_prefix()
    model.eval()  # no dropout; gradients still reach the trainable parameters
    if args.gradient_checkpointing:
        set_layers_training_without_dropout(base)
    return model


def set_layers_training_without_dropout(base) -> None:
    """Training mode (where transformers applies gradient checkpointing) with every dropout kept off."""
    base.train()
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def model_location(args) -> str | None:
    """--model_name_or_path, or with --cache_dir and a Hub id, its snapshot in that cache (huggingface_hub)."""
    from prompt.model.loading import is_default_model

    name = args.model_name_or_path
    if not args.cache_dir or name is None or is_default_model(name) or os.path.isdir(os.path.expanduser(name)):
        return name
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, cache_dir=args.cache_dir)
    except Exception as exc:  # unknown id, offline and not cached, network failure
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PPDError(f"cannot fetch {name!r} into --cache_dir {args.cache_dir!r} ({type(exc).__name__}: {reason})") from None


def trainable_parameters(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(model, args) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; a custom head learns at lr x --lm_head_lr_multiplier."""
    head = set(id(p) for p in model.custom_lm_head.parameters()) if model.custom_lm_head is not None else set()
    groups = [{"params": [p for p in trainable_parameters(model) if id(p) not in head], "lr": args.learning_rate}]
    if head:
        groups.append({"params": list(model.custom_lm_head.parameters()),
                       "lr": args.learning_rate * args.lm_head_lr_multiplier})
    for group in groups:
        group["initial_lr"] = group["lr"]
    if args.optim == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    if args.optim == "adagrad":
        return torch.optim.Adagrad(groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    if args.optim in ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes as bnb

        kind = bnb.optim.PagedAdamW8bit if args.optim == "paged_adamw_8bit" else bnb.optim.AdamW8bit
        return kind(groups, lr=args.learning_rate, weight_decay=args.weight_decay)
    return torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay,
                             fused=args.optim == "adamw_torch_fused" or None)


def average_gradients(model, accelerator) -> None:
    """Mean of every trainable gradient over the processes (zeros where a process had nothing to supervise)."""
    for p in trainable_parameters(model):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if accelerator.num_processes > 1:
            p.grad = accelerator.reduce(p.grad, reduction="mean")


def synced(value, accelerator, reduction: str):
    """A number or tensor combined over processes ('max' or 'sum'); unchanged for one process."""
    tensor = torch.as_tensor(value, dtype=torch.float64 if not torch.is_tensor(value) else value.dtype)
    if accelerator.num_processes > 1:
        tensor = accelerator.reduce(tensor.to(accelerator.device), reduction=reduction).cpu()
    return float(tensor) if tensor.dim() == 0 else tensor


# --------------------------------------------------------------------------------------------------
# learning-rate schedule (over the fraction of the step or time budget used)
def training_fraction(step: int, elapsed: float, plan: Plan) -> float:
    fraction = step / plan.total_steps
    if plan.max_seconds:
        fraction = max(fraction, elapsed / plan.max_seconds)
    return min(fraction, 1.0)


def schedule_factor(args, fraction: float) -> float:
    """Multiplier of the base learning rate at this point of training (warmup, then the schedule's shape)."""
    if args.warmup_ratio and fraction < args.warmup_ratio:
        return fraction / args.warmup_ratio
    if args.lr_scheduler_type in ("constant", "constant_with_warmup"):
        return 1.0
    rest = (fraction - args.warmup_ratio) / (1 - args.warmup_ratio)
    if args.lr_scheduler_type == "linear":
        return max(0.0, 1.0 - rest)
    return 0.5 * (1.0 + math.cos(math.pi * rest))


def set_learning_rate(optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


# --------------------------------------------------------------------------------------------------
# saving
def save_checkpoint(args, model, optimizer, progress: Progress, started, accelerator) -> None:
    if started is not None:
        progress = Progress(**{**asdict(progress), "elapsed": progress.elapsed + time.perf_counter() - started})
    if accelerator.is_main_process:
        folder = os.path.join(args.output_dir, f"checkpoint-{progress.step}")
        checkpoints.save_checkpoint(folder, model, optimizer, asdict(progress))
        if args.save_total_limit:  # --save_total_limit: only the newest checkpoints stay
            for old in checkpoints.checkpoint_folders(args.output_dir)[: -args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_final(args, model, progress: Progress) -> None:
    """The prompt tokens in output_dir (adapter_config.json + adapter_model.safetensors), plus state and flags."""
    checkpoints.save_final(args.output_dir, model, asdict(progress), vars(args))


@cli_entry
def main(argv=None) -> str:
    return main_body(parse_args(argv))


if __name__ == "__main__":
    main()
