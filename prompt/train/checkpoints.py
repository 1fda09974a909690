"""Checkpoints and the output folder. transformers' Trainer writes `output_dir/checkpoint-STEP` (the prompt tokens in
the PPD layout, loadable like any PPD checkpoint, beside its trainer_state.json, optimizer.pt, scheduler.pt and RNG
states) and resumes from it; the final `output_dir` holds the prompt tokens, trainer_state.json and
training_args.json. Here: which checkpoint a run resumes from, the refusal to replace another run's output, and the
atomic final save."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys

import torch

from prompt.errors import PPDError
from prompt.jsonio import write_json
from prompt.model.config import CONFIG_NAME, PromptConfig
from prompt.model.prompt_decoder import (CUSTOM_LM_HEAD_NAME, PREFIX_DIR, PREFIX_NAME, WEIGHTING_LAYERS_NAME,
                                         WEIGHTS_NAME)

STATE_JSON = "trainer_state.json"  # transformers' TrainerState in a checkpoint; our final state in output_dir
OLD_STATE_NAME = "trainer_state.pt"  # a checkpoint of the training loop before transformers' Trainer
ARGS_NAME = "training_args.json"
TREES_NAME, DECODING_NAME = "trees.json", "decoding.json"  # what the tree builder and the tuner add for a run's tokens
FINAL_STAGING = ".final.partial"  # the final save is written here, then moved into output_dir file by file
# adapter_config.json fields that make two runs different runs
IDENTITY_FIELDS = ("base_model_name_or_path", "num_special_tokens", "virtual_tokens_per_special_token",
                   "vt_attention_type", "aggregation_type", "use_custom_lm_head", "num_exits", "use_prefix_tuning",
                   "prefix_virtual_tokens")
# flags that change what is trained: a run resumes only with the same ones (the others, such as logging, saving,
# loggers, threads or data-loader workers, may change between resumes)
TRAINING_FLAGS = {"model_name_or_path", "num_special_tokens", "virtual_tokens_per_special_token", "vt_attention_type",
                  "aggregation_type", "use_custom_lm_head", "use_prefix_tuning", "prefix_virtual_tokens",
                  "prefix_positions", "num_exits", "prompt_tuning_init", "stage1_model_path", "load_in_4bit",
                  "load_in_8bit", "dtype", "dataset_path", "size", "use_chunked", "model_max_length", "many_cuts",
                  "cuts_per_sequence", "trainer_type", "num_train_epochs", "max_steps", "max_train_minutes",
                  "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                  "lm_head_lr_multiplier", "weight_decay", "warmup_ratio", "warmup_steps", "max_grad_norm",
                  "lr_scheduler_type", "lr_scheduler_kwargs", "optim", "optim_args", "adam_beta1", "adam_beta2",
                  "adam_epsilon", "seed", "data_seed"}
# files tied to the prompt tokens of a run: replaced or removed with them
RUN_FILES = (CONFIG_NAME, WEIGHTS_NAME, WEIGHTING_LAYERS_NAME, CUSTOM_LM_HEAD_NAME, PREFIX_NAME, OLD_STATE_NAME, STATE_JSON,
             ARGS_NAME, TREES_NAME, DECODING_NAME, os.path.join(PREFIX_DIR, WEIGHTS_NAME),
             os.path.join(PREFIX_DIR, CONFIG_NAME))


def checkpoint_folders(output_dir: str) -> list[str]:
    """`checkpoint-STEP` folders of a run, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        folder = os.path.join(output_dir, name)
        if match and any(os.path.isfile(os.path.join(folder, f)) for f in (STATE_JSON, OLD_STATE_NAME)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found)]


def _saved_object(path: str):
    """The JSON object in `path`: None if there is no file, a string saying what is wrong if it is not one."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return f"{os.path.basename(path)} (unreadable)"
    return saved if isinstance(saved, dict) else f"{os.path.basename(path)} (not an object)"


def config_differences(folder: str, config: PromptConfig) -> list[str]:
    """Identity fields where the adapter_config.json in `folder` differs from `config` ([] if none or no file)."""
    saved = _saved_object(os.path.join(folder, CONFIG_NAME))
    if not isinstance(saved, dict):
        return [saved] if saved else []
    ours = config.to_dict()
    defaults = {f.name: f.default for f in dataclasses.fields(PromptConfig)}
    return [f"{key}: {saved.get(key, defaults.get(key))!r} there, {ours.get(key)!r} here" for key in IDENTITY_FIELDS
            if saved.get(key, defaults.get(key)) != ours.get(key)]


def args_differences(output_dir: str, args: dict) -> list[str]:
    """TRAINING_FLAGS where the run recorded in output_dir/training_args.json differs from `args`."""
    saved = _saved_object(os.path.join(output_dir, ARGS_NAME))
    if not isinstance(saved, dict):
        return [saved] if saved else []
    ours = json.loads(json.dumps(args, default=str))
    return [f"--{key} {saved.get(key)!r} there, {ours.get(key)!r} here" for key in sorted(set(saved) | set(ours))
            if key in TRAINING_FLAGS and saved.get(key) != ours.get(key)]


def check_output_dir(output_dir: str, config: PromptConfig, overwrite: bool, args: dict | None = None,
                     resume: str | None = None) -> None:
    """Refuse to train into an output_dir whose trained output the run would replace, unless told to replace it:
    another run (a different adapter_config.json or different flags in training_args.json), or trained prompt
    tokens without a checkpoint of this run to resume from (`resume`: the checkpoint this run resumes from)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise PPDError(f"--output_dir {output_dir!r} is a file")
    if overwrite:
        return
    advice = "choose another folder, or pass --overwrite_output_dir to replace it"
    for folder in [output_dir] + checkpoint_folders(output_dir):
        differences = config_differences(folder, config)
        if differences:
            raise PPDError(f"--output_dir {output_dir!r} holds a different run ({'; '.join(differences)}); {advice}")
    differences = args_differences(output_dir, args or {})
    if differences:
        raise PPDError(f"--output_dir {output_dir!r} holds a run trained with other flags ({'; '.join(differences)}); "
                       f"pass the same flags to resume it, or {advice}")
    inside = resume is not None and os.path.abspath(os.path.dirname(resume.rstrip("/"))) == os.path.abspath(output_dir)
    trained = [name for name in (WEIGHTS_NAME, PREFIX_NAME, os.path.join(PREFIX_DIR, WEIGHTS_NAME))
               if os.path.isfile(os.path.join(output_dir, name))]
    if (trained or checkpoint_folders(output_dir)) and not inside:
        what = f"trained prompt tokens ({', '.join(trained)})" if trained else "checkpoint-* folders"
        raise PPDError(f"--output_dir {output_dir!r} holds {what} and this run would not resume from its checkpoints, "
                       f"so training would replace them; {advice}")


def clear_run(output_dir: str) -> list[str]:
    """Remove a previous run's files (only those this trainer and the tuner write for it) before replacing it;
    returns the names removed."""
    removed = []
    for path in checkpoint_folders(output_dir):
        shutil.rmtree(path)
        removed.append(os.path.basename(path))
    for name in RUN_FILES:
        if os.path.isfile(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
            removed.append(name)
    prefix = os.path.join(output_dir, PREFIX_DIR)
    if os.path.isdir(prefix) and not os.listdir(prefix):
        os.rmdir(prefix)
    if removed:
        print(f"--overwrite_output_dir: removed {', '.join(removed)} from {output_dir}", file=sys.stderr)
    return removed


def resolve_resume(value, output_dir: str) -> str | None:
    """The checkpoint to resume from: an explicit folder, 'true' = the latest, or (unset) the latest if any."""
    if value is not None and str(value).lower() in ("false", "no", "0"):
        return None
    latest = (checkpoint_folders(output_dir) or [None])[-1]
    if value is None:
        chosen = latest
    elif str(value).lower() in ("true", "yes", "1", "latest"):
        if latest is None:
            raise PPDError(f"--resume_from_checkpoint: no checkpoint-* folder in {output_dir!r}")
        chosen = latest
    elif not any(os.path.isfile(os.path.join(value, f)) for f in (STATE_JSON, OLD_STATE_NAME)):
        raise PPDError(f"--resume_from_checkpoint {value!r} is not a checkpoint folder (no {STATE_JSON})")
    else:
        chosen = value
    if chosen is not None and not os.path.isfile(os.path.join(chosen, STATE_JSON)):
        raise PPDError(f"checkpoint {chosen!r} was written by the training loop before transformers' Trainer "
                       f"({OLD_STATE_NAME}) and cannot be resumed: start from its prompt tokens with "
                       "--stage1_model_path, or pass --overwrite_output_dir to train afresh")
    return chosen


def write_state_json(folder: str, state: dict) -> None:
    write_json(os.path.join(folder, STATE_JSON), state)


def write_args_json(folder: str, args: dict) -> None:
    write_json(os.path.join(folder, ARGS_NAME), args, default=str)


def save_final(output_dir: str, model, state: dict, args: dict) -> None:
    """The prompt tokens, progress and flags in output_dir. Every file is first written completely into a staging
    folder, then moved over its old version (an atomic rename): a kill or a full disk leaves each file old or new,
    never empty or cut short."""
    staging = os.path.join(output_dir, FINAL_STAGING)
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    write_state_json(staging, state)
    write_args_json(staging, args)
    names = sorted(os.listdir(staging), key=lambda name: name == CONFIG_NAME)  # the config last: it marks the folder
    for name in names:
        if os.path.isdir(os.path.join(staging, name)):  # the prefix adapter's folder: its files, one by one
            os.makedirs(os.path.join(output_dir, name), exist_ok=True)
            for inner in sorted(os.listdir(os.path.join(staging, name)), key=lambda n: n == CONFIG_NAME):
                os.replace(os.path.join(staging, name, inner), os.path.join(output_dir, name, inner))
            continue
        os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    shutil.rmtree(staging, ignore_errors=True)


def load_weights(folder: str, model) -> None:
    """Load the trainable weights of a checkpoint (prompt tokens, weighting layers, custom head, prefix) into `model`."""
    from safetensors.torch import load_file

    weights = load_file(os.path.join(folder, WEIGHTS_NAME))["prompt_embeddings"]
    if weights.shape != model.prompt_embeddings.shape:
        raise PPDError(f"checkpoint {folder!r} has prompt embeddings of shape {tuple(weights.shape)}, "
                       f"this run trains {tuple(model.prompt_embeddings.shape)}")
    with torch.no_grad():
        model.prompt_embeddings.copy_(weights)
    for module, name in ((model.weighting_layers, WEIGHTING_LAYERS_NAME), (model.custom_lm_head, CUSTOM_LM_HEAD_NAME)):
        if module is not None:
            module.load_state_dict(torch.load(os.path.join(folder, name), map_location=model.device, weights_only=True))
    if model.prefix is not None:
        model.load_prefix(folder)
