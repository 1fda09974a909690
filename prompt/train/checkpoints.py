"""Checkpoints: `output_dir/checkpoint-STEP` holds the prompt tokens (loadable like any PPD checkpoint) and
`trainer_state.pt` (optimizer state and progress) to resume from; the final `output_dir` holds the same files."""
from __future__ import annotations

import json
import os
import re
import shutil

import torch

from prompt.errors import PPDError
from prompt.model.config import CONFIG_NAME, PromptConfig
from prompt.model.prompt_decoder import CUSTOM_LM_HEAD_NAME, PREFIX_NAME, WEIGHTING_LAYERS_NAME, WEIGHTS_NAME

STATE_NAME = "trainer_state.pt"
STATE_JSON = "trainer_state.json"
# adapter_config.json fields that make two runs different runs
IDENTITY_FIELDS = ("base_model_name_or_path", "num_special_tokens", "virtual_tokens_per_special_token",
                   "vt_attention_type", "aggregation_type", "use_custom_lm_head", "num_exits")


def checkpoint_folders(output_dir: str) -> list[str]:
    """`checkpoint-STEP` folders of a run, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if match and os.path.isfile(os.path.join(output_dir, name, STATE_NAME)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found)]


def config_differences(folder: str, config: PromptConfig) -> list[str]:
    """Identity fields where the adapter_config.json in `folder` differs from `config` ([] if none or no file)."""
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError):
        return ["adapter_config.json (unreadable)"]
    if not isinstance(saved, dict):
        return ["adapter_config.json (not an object)"]
    ours = config.to_dict()
    return [f"{key}: {saved.get(key)!r} there, {ours.get(key)!r} here" for key in IDENTITY_FIELDS
            if saved.get(key) != ours.get(key)]


def check_output_dir(output_dir: str, config: PromptConfig, overwrite: bool) -> None:
    """Refuse an output_dir that holds another run (a different adapter_config.json), unless told to replace it."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise PPDError(f"--output_dir {output_dir!r} is a file")
    for folder in [output_dir] + checkpoint_folders(output_dir):
        differences = config_differences(folder, config)
        if differences and not overwrite:
            raise PPDError(f"--output_dir {output_dir!r} holds a different run ({'; '.join(differences)}); "
                           "choose another folder or pass --overwrite_output_dir")


def clear_run(output_dir: str) -> None:
    """Remove a previous run's files (only those this trainer writes) before replacing it."""
    for path in checkpoint_folders(output_dir):
        shutil.rmtree(path)
    for name in (CONFIG_NAME, WEIGHTS_NAME, WEIGHTING_LAYERS_NAME, CUSTOM_LM_HEAD_NAME, PREFIX_NAME, STATE_NAME,
                 STATE_JSON):
        if os.path.isfile(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))


def resolve_resume(value, output_dir: str) -> str | None:
    """The checkpoint to resume from: an explicit folder, 'true' = the latest, or (unset) the latest if any."""
    if value is not None and str(value).lower() in ("false", "no", "0"):
        return None
    latest = (checkpoint_folders(output_dir) or [None])[-1]
    if value is None:
        return latest
    if str(value).lower() in ("true", "yes", "1", "latest"):
        if latest is None:
            raise PPDError(f"--resume_from_checkpoint: no checkpoint-* folder in {output_dir!r}")
        return latest
    if not os.path.isfile(os.path.join(value, STATE_NAME)):
        raise PPDError(f"--resume_from_checkpoint {value!r} is not a checkpoint folder (no {STATE_NAME})")
    return value


def save_checkpoint(folder: str, model, optimizer, state: dict) -> None:
    """Prompt tokens in the PPD layout plus everything needed to resume; written to a temporary folder first."""
    partial = folder.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    torch.save({"optimizer": optimizer.state_dict(), "state": state}, os.path.join(partial, STATE_NAME))
    write_state_json(partial, state)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


def write_state_json(folder: str, state: dict) -> None:
    with open(os.path.join(folder, STATE_JSON), "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
        f.write("\n")


def load_checkpoint(folder: str, model, optimizer) -> dict:
    """Load the trainable weights and optimizer state of a checkpoint into `model` / `optimizer`; returns its progress."""
    from safetensors.torch import load_file

    weights = load_file(os.path.join(folder, WEIGHTS_NAME))["prompt_embeddings"]
    if weights.shape != model.prompt_embeddings.shape:
        raise PPDError(f"checkpoint {folder!r} has prompt embeddings of shape {tuple(weights.shape)}, "
                       f"this run trains {tuple(model.prompt_embeddings.shape)}")
    with torch.no_grad():
        model.prompt_embeddings.copy_(weights)
    for module, name in ((model.weighting_layers, WEIGHTING_LAYERS_NAME), (model.custom_lm_head, CUSTOM_LM_HEAD_NAME),
                         (model.prefix, PREFIX_NAME)):
        if module is not None:
            module.load_state_dict(torch.load(os.path.join(folder, name), map_location=model.device, weights_only=True))
    saved = torch.load(os.path.join(folder, STATE_NAME), map_location=model.device, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    return saved["state"]
