"""Upstream's training flags that are transformers TrainingArguments (upstream trains with HF Trainer): what each does
in this loop, and one clear error where one needs a GPU or is not supported."""
from __future__ import annotations

import json
import os

import pytest
import torch

from training_helpers import save_tiny_model, write_sharegpt
from test_training import assert_one_error, embeddings, one_thread, train  # noqa: F401  (one_thread: autouse)
from prompt.data import cli as dataset_cli

N = 3


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    model = save_tiny_model(root / "model")
    chats = write_sharegpt(root / "chats.json", 6)
    save = str(root / "ds")
    common = ["--model_name_or_path", model, "--save_path", save, "--num_special_tokens", str(N), "--model_max_length",
              "256", "--dtype", "float32"]
    finetune = dataset_cli.main(["--dataset_type", "finetune", "--data_path", chats, *common])
    distillation = dataset_cli.main(["--dataset_type", "distillation", "--data_path", finetune, *common,
                                     "--batch_size", "4", "--top_k", "8"])
    selfd = dataset_cli.main(["--dataset_type", "self_distillation", "--data_path", chats + ":0:4", *common,
                              "--batch_size", "4", "--max_new_tokens", "12"])
    return {"root": root, "model": model, "distillation": distillation, "self_distillation": selfd}


@pytest.mark.parametrize("kind", ["distillation", "self_distillation"])
def test_gradient_checkpointing_gives_the_same_training(work, tmp_path, kind, capsys):
    flags = ["--max_steps", "3", "--per_device_train_batch_size", "2"]
    if kind == "self_distillation":
        flags += ["--many_cuts", "false"]
        assert_one_error(capsys, lambda: train(work["model"], work[kind], str(tmp_path / "x"), "--gradient_checkpointing"),
                         "--many_cuts false")
    plain, checkpointed = str(tmp_path / "plain"), str(tmp_path / "checkpointed")
    train(work["model"], work[kind], plain, *flags)
    train(work["model"], work[kind], checkpointed, *flags, "--gradient_checkpointing")
    assert torch.allclose(embeddings(plain), embeddings(checkpointed), atol=1e-5)


def test_optim_and_save_strategy(work, tmp_path):
    flags = ["--max_steps", "4", "--per_device_train_batch_size", "2"]
    adamw, sgd, fused = (str(tmp_path / name) for name in ("adamw", "sgd", "fused"))
    train(work["model"], work["distillation"], adamw, *flags, "--save_strategy", "no")
    train(work["model"], work["distillation"], sgd, *flags, "--optim", "sgd", "--save_strategy", "epoch")
    train(work["model"], work["distillation"], fused, *flags, "--optim", "adamw_torch_fused", "--save_steps", "1",
          "--save_total_limit", "2")
    assert not torch.allclose(embeddings(adamw), embeddings(sgd))
    assert torch.allclose(embeddings(adamw), embeddings(fused), atol=1e-5)
    assert not [n for n in os.listdir(adamw) if n.startswith("checkpoint-")]  # --save_strategy no
    records = 6  # conversations; each distillation record holds one cut
    assert sorted(n for n in os.listdir(sgd) if n.startswith("checkpoint-"))[-1] == "checkpoint-4"
    assert sorted(n for n in os.listdir(fused) if n.startswith("checkpoint-")) == ["checkpoint-3", "checkpoint-4"]
    assert records


def test_bf16_is_the_base_models_dtype_and_gpu_flags_are_refused_on_cpu(work, tmp_path, capsys):
    out = str(tmp_path / "bf16")
    train(work["model"], work["distillation"], out, "--max_steps", "1", "--bf16")
    assert json.load(open(os.path.join(out, "training_args.json")))["dtype"] == "bfloat16"
    if not torch.cuda.is_available():
        for flags, text in ((["--fp16"], "--fp16 needs CUDA"), (["--deepspeed", "ds.json"], "--deepspeed needs CUDA"),
                            (["--tf32", "True"], "--tf32 needs CUDA")):
            assert_one_error(capsys, lambda: train(work["model"], work["distillation"], str(tmp_path / "x"), *flags), text)
    assert_one_error(capsys, lambda: train(work["model"], work["distillation"], str(tmp_path / "x"), "--report_to",
                                           "nonsense"), "unknown tracker")
    assert_one_error(capsys, lambda: train(work["model"], work["distillation"], str(tmp_path / "x"), "--optim",
                                           "lion"), "invalid choice")
    assert_one_error(capsys, lambda: train(work["model"], work["distillation"], str(tmp_path / "x"), "--torch_compile"),
                     "--torch_compile is a transformers TrainingArguments flag that this training loop does not implement")
    assert_one_error(capsys, lambda: train(work["model"], work["distillation"], str(tmp_path / "x"), "--bogus", "1"),
                     "unrecognized arguments: --bogus 1")
    out = str(tmp_path / "none")
    train(work["model"], work["distillation"], out, "--max_steps", "1", "--report_to", "none")
    assert os.path.isfile(os.path.join(out, "adapter_model.safetensors"))


def test_cache_dir_holds_a_hub_model(work, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    cache = tmp_path / "cache"
    snapshot = cache / "models--tiny-org--tiny" / "snapshots" / ("c" * 40)
    shutil.copytree(work["model"], snapshot)
    (cache / "models--tiny-org--tiny" / "refs").mkdir()
    (cache / "models--tiny-org--tiny" / "refs" / "main").write_text("c" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = str(tmp_path / "hub")
    train("tiny-org/tiny", work["distillation"], out, "--max_steps", "1", "--cache_dir", str(cache))
    assert json.load(open(os.path.join(out, "adapter_config.json")))["base_model_name_or_path"] == "tiny-org/tiny"
