"""Upstream's dataset files train with train.py: its pickled dataset objects (FineTuningDataset, and the
self-distillation DistillationDataset with full logits as labels) and its chunk files, built here as upstream's
generate_dataset.py and chunk_dataset leave them."""
import json
import os
import sys
import types

import pytest
import torch

from prompt import PPDError
from prompt.data.files import load_dataset
from prompt.train import train as trainer
from prompt.model.prompt_decoder import AutoPromptDecoder
from training_helpers import save_tiny_model

N, L, VOCAB = 3, 12, 97


def upstream_classes():
    """Upstream's two dataset classes as `prompt.utils` defines them (attributes set by their constructors)."""
    module = types.ModuleType("prompt.utils")

    class FineTuningDataset(torch.utils.data.Dataset):
        def __init__(self, input_ids, attention_mask, labels):
            self.input_ids, self.attention_mask, self.labels = input_ids, attention_mask, labels

    class DistillationDataset(torch.utils.data.Dataset):
        def __init__(self, data):
            self.input_ids = [d["input_ids"] for d in data]
            self.labels = [d["labels"] for d in data]
            self.attention_mask = [d["attention_mask"] for d in data]

    for cls in (FineTuningDataset, DistillationDataset):
        cls.__module__, cls.__qualname__ = "prompt.utils", cls.__name__
        setattr(module, cls.__name__, cls)
    return module


def finetune_rows(count=8, seed=0):
    """Left-padded cut rows as upstream's randomly_truncate makes them: labels shifted so the last N+1 are the tokens
    after the cut."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(count, L, dtype=torch.long)
    mask = torch.zeros(count, L, dtype=torch.long)
    labels = torch.full((count, L), -100, dtype=torch.long)
    for i in range(count):
        cut = 4 + i % 5
        tokens = torch.randint(3, VOCAB, (cut + N + 1,), generator=g)
        ids[i, L - cut:], mask[i, L - cut:] = tokens[:cut], 1
        labels[i, L - cut - N - 1:] = tokens[: cut + N + 1]
    return ids, mask, labels


@pytest.fixture
def upstream_files(tmp_path, monkeypatch):
    module = upstream_classes()
    monkeypatch.setitem(sys.modules, "prompt.utils", module)
    ids, mask, labels = finetune_rows()
    torch.save(module.FineTuningDataset(ids, mask, labels), tmp_path / "ShareGPT_training_dataset_3_finetune_2048.pt")
    g = torch.Generator().manual_seed(1)
    distill = module.DistillationDataset([{"input_ids": ids[i], "attention_mask": mask[i].float(),
                                           "labels": torch.randn(N, VOCAB, generator=g) * 4} for i in range(len(ids))])
    torch.save(distill, tmp_path / "ShareGPT_training_dataset_3_vicuna_distillation__2048.pt")
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    for start in range(0, len(ids), 3):  # upstream's chunk_dataset: dataset[i:i+chunk_size], a dict of lists
        part = {"input_ids": distill.input_ids[start:start + 3], "labels": distill.labels[start:start + 3],
                "attention_mask": distill.attention_mask[start:start + 3]}
        torch.save(part, chunks / f"dataset_chunk_{start // 3}.pt")
    monkeypatch.delitem(sys.modules, "prompt.utils")  # loading must not need upstream's code
    return {"finetune": tmp_path / "ShareGPT_training_dataset_3_finetune_2048.pt",
            "distillation": tmp_path / "ShareGPT_training_dataset_3_vicuna_distillation__2048.pt",
            "chunks": chunks, "labels": labels, "ids": ids, "mask": mask, "distill": distill}


def test_upstream_files_read_as_records(upstream_files):
    finetune = load_dataset(str(upstream_files["finetune"]), num_special_tokens=N)
    assert finetune.dataset_type == "finetune" and len(finetune.records) == 8
    ids, mask, labels = upstream_files["ids"], upstream_files["mask"], upstream_files["labels"]
    record = finetune.records[2]
    assert torch.equal(record["input_ids"], ids[2][mask[2].bool()])
    assert torch.equal(record["labels"], labels[2, -(N + 1):])
    distill = load_dataset(str(upstream_files["distillation"]))
    assert distill.dataset_type == "distillation" and distill.num_special_tokens == N
    record = distill.records[1]
    logits = upstream_files["distill"].labels[1]
    # row k (1..N) is special token k's target: upstream's label row k-1, its top tokens in order
    assert torch.equal(record["teacher_ids"][1:, 0], logits.argmax(-1))
    assert torch.allclose(record["teacher_probs"][1:, 0], logits.softmax(-1).max(-1).values)
    chunked = load_dataset(str(upstream_files["chunks"]))
    assert len(chunked.records) == 8 and torch.equal(chunked.records[7]["input_ids"], distill.records[7]["input_ids"])


def test_upstream_files_need_and_check_the_number_of_special_tokens(upstream_files):
    with pytest.raises(PPDError, match="does not record its number of special tokens"):
        load_dataset(str(upstream_files["finetune"]))
    with pytest.raises(PPDError, match="num_special_tokens=3, but --num_special_tokens is 2"):
        load_dataset(str(upstream_files["distillation"]), num_special_tokens=2)


@pytest.mark.parametrize("which,trainer_type,extra", [
    ("finetune", "param_efficient_fine_tuner", []), ("distillation", "distillation_trainer", []),
    ("chunks", "distillation_trainer", ["--use_chunked"])])
def test_upstream_files_train(upstream_files, tmp_path, which, trainer_type, extra):
    model = save_tiny_model(tmp_path / "model")
    out = str(tmp_path / "out")
    trainer.main(["--model_name_or_path", model, "--dataset_path", str(upstream_files[which]), "--output_dir", out,
                  "--num_special_tokens", str(N), "--dtype", "float32", "--logging_steps", "1", "--save_steps", "1000",
                  "--trainer_type", trainer_type, "--num_train_epochs", "3", "--per_device_train_batch_size", "4",
                  "--learning_rate", "3e-2", *extra])
    losses = [e["loss"] for e in json.load(open(os.path.join(out, "trainer_state.json")))["log_history"] if "loss" in e]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert AutoPromptDecoder.from_pretrained(out).config.num_special_tokens == N


def test_a_saved_datasets_object_with_upstreams_columns_trains(upstream_files, tmp_path):
    import datasets

    ids, mask, labels = upstream_files["ids"], upstream_files["mask"], upstream_files["labels"]
    saved = tmp_path / "hf"
    datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(),
                                "labels": labels.tolist()}).save_to_disk(str(saved))
    loaded = load_dataset(str(saved), num_special_tokens=N)
    assert loaded.dataset_type == "finetune" and len(loaded.records) == len(ids)
    assert torch.equal(loaded.records[3]["labels"], labels[3, -(N + 1):])
    model = save_tiny_model(tmp_path / "model")
    trainer.main(["--model_name_or_path", model, "--dataset_path", str(saved), "--output_dir", str(tmp_path / "out"),
                  "--num_special_tokens", str(N), "--dtype", "float32", "--save_steps", "1000",
                  "--trainer_type", "param_efficient_fine_tuner", "--num_train_epochs", "1"])
    assert AutoPromptDecoder.from_pretrained(str(tmp_path / "out")).config.num_special_tokens == N
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(PPDError, match="no column attention_mask, input_ids, labels"):
        load_dataset(str(tmp_path / "other"), num_special_tokens=N)
