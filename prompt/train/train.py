"""Train PPD prompt tokens on a frozen causal LM (only the prompt embeddings, and optional weighting layers or
custom head, learn) with transformers' Trainer, so that every TrainingArguments flag works. Runs as one process or
several:

    python prompt/train/train.py --dataset_path D.pt --output_dir OUT [upstream flags ...]
    accelerate launch --num_processes 4 prompt/train/train.py ...                 # GPUs
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 prompt/train/train.py ... # several CPU processes (gloo)

Losses as upstream: KL to the base model's distributions (distillation_trainer) or cross-entropy on the
data's tokens (param_efficient_fine_tuner), special token k weighted by 0.8^(k-1). Self-distilled sequences
train with many cuts per forward (prompt/train/many_cuts.py), inside the Trainer's compute_loss
(prompt/train/trainer.py). Checkpoints go to OUT/checkpoint-STEP and a run resumes from the latest one; OUT itself
ends up loadable with AutoPromptDecoder.from_pretrained(OUT).
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

import dataclasses  # noqa: E402

import torch  # noqa: E402

from prompt.data.files import canonical_model_name, load_dataset  # noqa: E402
from prompt.data.upstream import is_saved_hf_dataset  # noqa: E402
from prompt.errors import PPDError, cli_entry  # noqa: E402
from prompt.train import checkpoints  # noqa: E402
from prompt.train.arguments import parse_args, prompt_config  # noqa: E402
from prompt.train.objectives import DISTILLATION  # noqa: E402

ARGS_NAME = checkpoints.ARGS_NAME


# --------------------------------------------------------------------------------------------------
def main_body(args, training_args) -> str:
    """Train and save; returns the output folder."""
    trainer, resume = build_trainer(args, training_args)
    is_main = trainer.is_world_process_zero()
    if is_main:
        print(f"{len(trainer.train_dataset)} {trainer.model.dataset_type} records, "
              f"{'many cuts per forward' if trainer.model.many_cuts else 'one cut per record'}, "
              f"{trainer.args.world_size} process(es)" + (f"; resuming from {resume}" if resume else ""), flush=True)
    trainer.train(resume_from_checkpoint=resume)
    clock = trainer.clock
    state = {**dataclasses.asdict(trainer.state), "step": trainer.state.global_step, "elapsed": clock.elapsed, "cuts": clock.cuts}
    if is_main:
        checkpoints.save_final(args.output_dir, trainer.decoder, state, vars(args))
    trainer.accelerator.wait_for_everyone()
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="PPD prompt tokens")
    if is_main:
        print(f"saved prompt tokens to {args.output_dir} ({state['step']} steps, {clock.cuts} cuts, "
              f"{clock.elapsed / 60:.1f} minutes)", flush=True)
    return args.output_dir


def build_trainer(args, training_args):
    """The PPDTrainer of this run, ready to train, and the checkpoint it resumes from (None: from the start)."""
    from prompt.train.trainer import Clock, PPDTrainer, RecordIndices, TrainingModel, clock_state, collate_indices

    if args.threads:
        torch.set_num_threads(args.threads)
    if str(args.device).startswith("cuda:"):
        torch.cuda.set_device(torch.device(args.device))
    config = prompt_config(args)
    resume = None if args.overwrite_output_dir else checkpoints.resolve_resume(args.resume_from_checkpoint, args.output_dir)
    checkpoints.check_output_dir(args.output_dir, config, args.overwrite_output_dir, vars(args), resume)
    dataset = load_training_data(args)
    many_cuts = choose_many_cuts(args, dataset.dataset_type)
    decoder = load_model(args, config, "auto" if args.device == "auto" else training_args.device)
    model = TrainingModel(decoder, dataset.records, dataset.dataset_type, args, many_cuts)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if args.overwrite_output_dir and training_args.process_index == 0:
        checkpoints.clear_run(args.output_dir)
    if training_args.process_index == 0:  # the flags of this run, so that a resume with other flags is refused
        os.makedirs(args.output_dir, exist_ok=True)
        checkpoints.write_args_json(args.output_dir, vars(args))
    saved = clock_state(resume)
    clock = Clock(args.max_train_minutes * 60 if args.max_train_minutes else None,
                  float(saved.get("elapsed", 0.0)), int(saved.get("cuts", 0)))
    try:
        trainer = PPDTrainer(model=model, args=training_args, train_dataset=RecordIndices(len(dataset.records)),
                             data_collator=collate_indices, callbacks=[clock], clock=clock,
                             lm_head_lr_multiplier=args.lm_head_lr_multiplier)
    except (ValueError, ImportError) as exc:  # a TrainingArguments combination the Trainer refuses
        raise PPDError(f"transformers' Trainer: {str(exc).strip().splitlines()[0]}") from None
    return trainer, resume


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


# --------------------------------------------------------------------------------------------------
# model and optimizer
def load_model(args, config, device):
    """The frozen base model (bf16 by default, 4-bit or 8-bit through bitsandbytes if asked) with this run's prompt
    tokens. `device`: the accelerator's device, or "auto" (device_map="auto", one process)."""
    from prompt.model.loading import load_base_model
    from prompt.model.prompt_decoder import AutoPromptDecoder, PromptDecoder

    base, tokenizer = load_base_model(model_location(args), dtype=args.dtype, device=str(device),
                                      load_in_4bit=args.load_in_4bit, load_in_8bit=args.load_in_8bit)
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
    return model


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


@cli_entry
def main(argv=None) -> str:
    return main_body(*parse_args(argv))


if __name__ == "__main__":
    main()
