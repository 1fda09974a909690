"""Training on transformers' `Trainer`: it runs the loop (optimizer and schedule from TrainingArguments, logging
integrations, checkpoint-N folders and resume, accelerate / DeepSpeed / FSDP placement); what is PPD's is here.

- `TrainingModel` is what the Trainer trains: a PromptDecoder whose forward takes a micro-batch of dataset record
  indices and returns their loss (many cuts per forward for self-distilled sequences, one cut per record otherwise,
  prompt/train/objectives.py). Only the prompt tokens (and the optional weighting layers, custom head and prefix)
  require gradients; the base model is frozen and kept out of dropout.
- `PPDTrainer` builds the optimizer over those parameters (a custom head at lr x --lm_head_lr_multiplier), the
  time-aware schedule of --max_train_minutes, saves checkpoints in the PPD layout (written as
  checkpoint-N.partial and renamed), and logs supervised cuts and cuts per second beside the loss.
- `Clock` stops training when --max_train_minutes is spent (summed over resumes) and keeps the cut count; both are
  saved in each checkpoint's trainer_state.json (stateful_callbacks.Clock).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from prompt.train import checkpoints
from prompt.train.objectives import many_cuts_loss, one_cut_loss


def visit_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The random source of one visit of one record (its cuts): the same after a resume and for any process count."""
    return torch.Generator().manual_seed(hash((seed, step, index)) & (2**62 - 1))


class RecordIndices(torch.utils.data.Dataset):
    """The dataset the Trainer samples: record numbers (the records stay with the model, on no device)."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return index


def collate_indices(features: list) -> dict:
    return {"indices": torch.tensor(features, dtype=torch.long)}


class TrainingModel(torch.nn.Module):
    """A PromptDecoder whose forward is the training loss of a micro-batch of records (by index)."""

    def __init__(self, decoder, records: list[dict], dataset_type: str, args, many_cuts: bool):
        super().__init__()
        self.decoder = decoder
        self.records, self.dataset_type, self.many_cuts = records, dataset_type, many_cuts
        self.trainer_type, self.seed = args.trainer_type, args.seed
        self.cuts_per_sequence, self.max_length = args.cuts_per_sequence, args.model_max_length
        base = decoder.base_model
        if getattr(base, "hf_device_map", None) is not None:  # device_map="auto": the Trainer must not move it
            self.hf_device_map = base.hf_device_map
        if getattr(base, "quantization_method", None) is not None:  # bitsandbytes weights cannot be moved
            self.quantization_method = base.quantization_method
        self.layers_in_training_mode = False  # True with gradient checkpointing (transformers checkpoints in train mode)

    def train(self, mode: bool = True):
        """The Trainer calls train() every step: the base model stays without dropout (in eval mode, or with
        gradient checkpointing in training mode with every dropout off)."""
        self.training = mode
        if self.layers_in_training_mode:
            set_layers_training_without_dropout(self.decoder.base_model)
        else:
            self.decoder.eval()
        return self

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **_):
        base = self.decoder.base_model
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.layers_in_training_mode = True
        self.train(self.training)

    def trainable_parameters(self) -> list:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, indices: torch.Tensor, step: int = 0) -> dict:
        records = [self.records[int(i)] for i in indices.tolist()]
        generators = [visit_generator(self.seed, step, int(i)) for i in indices.tolist()]
        loss, cuts = self.batch_loss(records, generators)
        if loss is None:  # nothing to supervise: a zero loss that still reaches every trainable parameter
            loss = sum(p.sum() for p in self.trainable_parameters()) * 0.0
        return {"loss": loss, "cuts": torch.tensor(cuts, device=loss.device)}

    def batch_loss(self, records, generators):
        """Mean loss over the micro-batch's records and the number of cuts supervised."""
        if not self.many_cuts:
            return one_cut_loss(self.decoder, records, self.dataset_type, self.trainer_type, self.max_length, generators)
        total, cuts = None, 0
        for record, generator in zip(records, generators):
            loss, count = many_cuts_loss(self.decoder, record, self.trainer_type, self.cuts_per_sequence,
                                         self.max_length, generator)
            if loss is not None:
                total = loss / len(records) if total is None else total + loss / len(records)
                cuts += count
        return total, cuts


def set_layers_training_without_dropout(base) -> None:
    """Training mode (where transformers applies gradient checkpointing) with every dropout kept off."""
    base.train()
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


class Clock(TrainerCallback, ExportableState):
    """Training time (summed over resumes) against --max_train_minutes, and the cuts supervised (all processes)."""

    def __init__(self, max_seconds: float | None, elapsed: float = 0.0, cuts: int = 0):
        self.max_seconds, self.elapsed, self.cuts = max_seconds, elapsed, cuts
        self.started, self.prior, self.local_cuts = None, elapsed, 0  # local_cuts: this process's, since the last sync
        self.window_start, self.window_cuts = elapsed, 0
        self.accelerator = None

    def state(self) -> dict:
        return {"args": {"max_seconds": self.max_seconds}, "attributes": {"elapsed": self.elapsed, "cuts": self.cuts}}

    def now(self) -> float:
        return self.prior + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def synced_now(self) -> float:
        """The elapsed time, the largest over processes (every process then takes the same decisions)."""
        value = self.now()
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
            value = float(self.accelerator.reduce(tensor, reduction="max")[0])
        return value

    def sync_cuts(self) -> int:
        """Add every process's cuts since the last sync to the total; returns how many were added."""
        count = self.local_cuts
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            tensor = torch.tensor([count], dtype=torch.float64, device=self.accelerator.device)
            count = int(self.accelerator.reduce(tensor, reduction="sum")[0])
        self.local_cuts = 0
        self.cuts += count
        return count

    def fraction(self, step: int, total_steps: int) -> float:
        """How far training is: the larger of the step and time fractions (the schedule follows the nearer end)."""
        value = step / max(total_steps, 1)
        if self.max_seconds:
            value = max(value, self.elapsed / self.max_seconds)
        return min(value, 1.0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):  # before the scheduler's step, which reads elapsed
        if self.max_seconds:
            self.elapsed = self.synced_now()

    def on_step_end(self, args, state, control, **kwargs):
        if self.max_seconds and self.elapsed >= self.max_seconds:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"  # the last state as a checkpoint, as at the step budget
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.elapsed = self.synced_now()
        self.sync_cuts()


def time_schedule(kind: str, warmup: float, clock: Clock, total_steps: int):
    """The multiplier of the base learning rate at a step: warmup, then the schedule's shape, over the fraction of
    the step or time budget used (transformers' schedules over steps, followed by time too)."""

    def factor(step: int) -> float:
        fraction = clock.fraction(step, total_steps)
        if warmup and fraction < warmup and kind != "constant":
            return fraction / warmup
        if kind in ("constant", "constant_with_warmup"):
            return 1.0
        rest = (fraction - warmup) / (1 - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - rest)
        return 0.5 * (1.0 + math.cos(math.pi * rest))

    return factor


class PPDTrainer(Trainer):
    """transformers' Trainer for a TrainingModel. `clock` is this run's Clock (also given as a callback)."""

    def __init__(self, *args, clock: Clock, lm_head_lr_multiplier: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock, self.lm_head_lr_multiplier = clock, lm_head_lr_multiplier
        clock.accelerator = self.accelerator

    @property
    def decoder(self):
        return self.model.decoder

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(indices=inputs["indices"], step=self.state.global_step)
        self.clock.local_cuts += int(outputs["cuts"])
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def create_optimizer(self, model=None):
        """transformers' optimizer (--optim, --adam_beta1/2, --adam_epsilon, --optim_args, ...) over the trainable
        parameters; a custom output head learns at lr x --lm_head_lr_multiplier."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        trainable = [p for p in opt_model.parameters() if p.requires_grad]
        head = self.decoder.custom_lm_head
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        groups = [{"params": [p for p in trainable if id(p) not in head_ids], "weight_decay": self.args.weight_decay}]
        if head_ids:
            groups.append({"params": [p for p in trainable if id(p) in head_ids], "weight_decay": self.args.weight_decay,
                           "lr": self.args.learning_rate * self.lm_head_lr_multiplier})
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = dict(optimizer_kwargs)
        groups = optimizer_kwargs.pop("params", groups)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """transformers' scheduler, or with --max_train_minutes the same shape over the step or time budget."""
        if self.lr_scheduler is None and self.clock.max_seconds:
            warmup = self.args.warmup_steps
            warmup = warmup if warmup < 1 else warmup / max(num_training_steps, 1)
            factor = time_schedule(str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)),
                                   warmup, self.clock, num_training_steps)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def log(self, logs: dict, start_time=None) -> None:
        """Each training log entry also says the cuts supervised so far, the cuts per second since the last entry,
        and the training minutes (summed over resumes)."""
        if "loss" in logs:
            added = self.clock.sync_cuts()
            now = self.clock.synced_now()
            self.clock.window_cuts += added
            logs.update(cuts=self.clock.cuts,
                        cuts_per_second=round(self.clock.window_cuts / max(now - self.clock.window_start, 1e-9), 2),
                        minutes=round(now / 60, 3))
            self.clock.window_start, self.clock.window_cuts = now, 0
        super().log(logs, start_time)

    # ---- checkpoints: the PPD layout, written as checkpoint-N.partial and renamed
    def _save(self, output_dir=None, state_dict=None) -> None:
        if self.args.should_save:
            self.decoder.save_pretrained(output_dir or self.args.output_dir)

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_staging_dir", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staging = os.path.join(run_dir, name + ".partial")
        self.clock.elapsed = self.clock.synced_now()
        self.clock.sync_cuts()
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging  # the Trainer writes staging/checkpoint-N (every process its rng state)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            if self.args.save_total_limit:  # only the newest checkpoints stay
                for old in checkpoints.checkpoint_folders(run_dir)[: -self.args.save_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        checkpoints.load_weights(resume_from_checkpoint, self.decoder)


def clock_state(checkpoint: str | None) -> dict:
    """The Clock's attributes saved in a checkpoint's trainer_state.json ({} when none)."""
    if checkpoint is None:
        return {}
    with open(os.path.join(checkpoint, checkpoints.STATE_JSON), encoding="utf-8") as f:
        saved = json.load(f).get("stateful_callbacks", {}).get("Clock", {})
    return dict(saved.get("attributes", {})) if isinstance(saved, dict) else {}
