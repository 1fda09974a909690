"""Training runs on transformers' Trainer, so upstream's command lines and every TrainingArguments flag work: what the
flags do, checkpoints and resume as transformers writes them, and one clear error where a flag needs a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from training_helpers import repo_root, save_tiny_model, write_sharegpt
from test_training import assert_one_error, embeddings, one_thread, train  # noqa: F401  (one_thread: autouse)
from prompt.data import cli as dataset_cli
from prompt import AutoPromptDecoder
from prompt.train import train as trainer
from prompt.train.arguments import parse_args

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
    assert_one_error(capsys, lambda: train(work["model"], work["distillation"], str(tmp_path / "x"), "--eval_strategy",
                                           "steps"), "there is no evaluation during training")
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


# transformers' own flags, as upstream's command lines and the TrainingArguments documentation spell them
DONE_WHEN = ["--do_train", "--warmup_steps", "1", "--lr_scheduler_type", "constant_with_warmup", "--adam_beta1", "0.9",
             "--adam_beta2", "0.98", "--adam_epsilon", "1e-6", "--logging_strategy", "steps", "--logging_steps", "1",
             "--run_name", "x", "--dataloader_num_workers", "0", "--report_to", "none", "--save_strategy", "no"]
# the rest of upstream's README / script/train command line (its --load_in_4bit is tested in test_quantized.py)
UPSTREAM = ["--num_train_epochs", "1", "--save_steps", "500", "--model_max_length", "256",
            "--virtual_tokens_per_special_token", "1", "--per_device_train_batch_size", "1",
            "--per_device_eval_batch_size", "1", "--gradient_accumulation_steps", "4", "--evaluation_strategy", "no",
            "--learning_rate", "1e-2", "--weight_decay", "0.0", "--warmup_ratio", "0.0", "--vt_attention_type", "ensemble",
            "--trainer_type", "distillation_trainer"]


def argv(work, out, *extra):
    return ["--model_name_or_path", work["model"], "--dataset_path", work["distillation"], "--output_dir", out,
            "--num_special_tokens", str(N), "--dtype", "float32", *extra]


def test_transformers_flags_of_upstreams_command_lines_train(work, tmp_path):
    out = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, os.path.join(repo_root(), "prompt", "train", "train.py"),
                           *argv(work, out, *DONE_WHEN)], capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "saved prompt tokens" in proc.stdout
    loaded = AutoPromptDecoder.from_pretrained(out)
    assert loaded.config.num_special_tokens == N and not torch.equal(loaded.prompt_embeddings, torch.zeros_like(
        loaded.prompt_embeddings))
    state = json.load(open(os.path.join(out, "trainer_state.json")))
    logged = [e for e in state["log_history"] if "loss" in e]
    assert state["step"] == 6 and len(logged) == 6  # 6 records, batch 1, --logging_steps 1
    assert logged[0]["learning_rate"] == 0.0 and all(e["learning_rate"] == 1e-2 for e in logged[1:])  # warmup: 1 step
    assert all(e["cuts"] == 1 + i for i, e in enumerate(logged)) and all(e["cuts_per_second"] > 0 for e in logged)
    assert not [n for n in os.listdir(out) if n.startswith("checkpoint-")]  # --save_strategy no
    assert json.load(open(os.path.join(out, "training_args.json")))["adam_beta2"] == 0.98
    upstream = str(tmp_path / "upstream")
    trainer.main(argv(work, upstream, *UPSTREAM, "--logging_steps", "1"))
    state = json.load(open(os.path.join(upstream, "trainer_state.json")))
    assert state["step"] == 2 and AutoPromptDecoder.from_pretrained(upstream).config.vt_attention_type == "ensemble"


def test_the_trainer_gets_the_flags_and_only_prompt_tokens_train(work, tmp_path):
    args, training_args = parse_args(argv(work, str(tmp_path / "t"), *DONE_WHEN, "--use_custom_lm_head",
                                          "--lm_head_lr_multiplier", "0.5", "--optim", "adamw_torch"))
    assert training_args.warmup_steps == 1 and training_args.run_name == "x" and training_args.report_to == []
    built, resume = trainer.build_trainer(args, training_args)
    assert resume is None
    trainable = {name for name, p in built.model.named_parameters() if p.requires_grad}
    assert trainable == {"decoder.prompt_embeddings"} | {f"decoder.custom_lm_head.{n}" for n, _ in
                                                         built.decoder.custom_lm_head.named_parameters()}
    assert sum(p.numel() for p in built.model.parameters() if not p.requires_grad) > 0  # the frozen base model
    built.create_optimizer_and_scheduler(num_training_steps=10)
    groups = built.optimizer.param_groups
    assert [g["betas"] for g in groups] == [(0.9, 0.98)] * 2 and [g["eps"] for g in groups] == [1e-6] * 2
    assert [g["lr"] for g in groups] == [0.0, 0.0]  # step 0 of the warmup
    built.lr_scheduler.step()
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 5e-3])  # the head at lr x --lm_head_lr_multiplier
    plain, _ = trainer.build_trainer(*parse_args(argv(work, str(tmp_path / "p"))))
    assert {n for n, p in plain.model.named_parameters() if p.requires_grad} == {"decoder.prompt_embeddings"}


def test_checkpoints_resume_with_the_step_count_continuing(work, tmp_path, capsys):
    flags = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1",
             "--per_device_train_batch_size", "2"]
    full = str(tmp_path / "full")
    trainer.main(argv(work, full, *flags))
    assert sorted(n for n in os.listdir(full) if n.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-4"]
    checkpoint = os.path.join(full, "checkpoint-2")
    for name in ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json", "optimizer.pt",
                 "scheduler.pt"):
        assert os.path.isfile(os.path.join(checkpoint, name)), name
    assert json.load(open(os.path.join(checkpoint, "trainer_state.json")))["global_step"] == 2
    assert AutoPromptDecoder.from_pretrained(checkpoint).config.num_special_tokens == N  # a PPD checkpoint too
    resumed = str(tmp_path / "resumed")
    trainer.main(argv(work, resumed, *flags, "--resume_from_checkpoint", checkpoint))
    assert "resuming from" in capsys.readouterr().out
    state = json.load(open(os.path.join(resumed, "trainer_state.json")))
    assert state["step"] == 4 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    assert sorted(n for n in os.listdir(resumed) if n.startswith("checkpoint")) == ["checkpoint-4"]  # 3 and 4 here
    assert torch.allclose(embeddings(full), embeddings(resumed), atol=1e-6)
    assert state["cuts"] == json.load(open(os.path.join(full, "trainer_state.json")))["cuts"]
    assert_one_error(capsys, lambda: trainer.main(argv(work, str(tmp_path / "x"), "--resume_from_checkpoint",
                                                       str(tmp_path))), "is not a checkpoint folder")


def test_run_subfolder_is_named_from_the_settings_as_upstream(work, tmp_path):
    out = tmp_path / "runs"
    trainer.main(argv(work, str(out), "--max_steps", "1", "--run_subfolder", "--model_max_length", "256",
                      "--use_prefix_tuning", "--prefix_virtual_tokens", "2"))
    assert os.listdir(out) == ["prompt_model_3_1_cl256_DECODER_mean_prefix2_exits1"]
    assert AutoPromptDecoder.from_pretrained(str(out / os.listdir(out)[0])).prefix_length == 2 * N


def test_a_time_budget_stops_training_and_the_schedule_follows_it(work, tmp_path):
    out = str(tmp_path / "timed")
    trainer.main(argv(work, out, "--num_train_epochs", "100000", "--max_train_minutes", "0.03", "--logging_steps", "1",
                      "--save_strategy", "steps", "--save_steps", "100000"))
    state = json.load(open(os.path.join(out, "trainer_state.json")))
    logged = [e for e in state["log_history"] if "loss" in e]
    assert state["elapsed"] >= 1.8 and 1 <= state["step"] < 600000 and len(logged) == state["step"]
    rates = [e["learning_rate"] for e in logged]
    assert rates[0] == 1e-2 and rates[-1] < 0.5e-2  # cosine over the time budget, not over 600,000 steps
    assert os.listdir(out).count(f"checkpoint-{state['step']}") == 1  # the state where time ran out, resumable


def test_a_checkpoint_of_the_loop_before_the_trainer_is_refused_in_one_line(work, tmp_path, capsys):
    out = tmp_path / "old"
    (out / "checkpoint-5").mkdir(parents=True)
    (out / "checkpoint-5" / "trainer_state.pt").write_bytes(b"old")
    assert_one_error(capsys, lambda: trainer.main(argv(work, str(out))), "before transformers' Trainer")
