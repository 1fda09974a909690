"""Dataset building, training (one process and two), checkpoints, accuracy, and bad input, on a tiny random Llama."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_llama
from training_helpers import repo_root, save_tiny_model, write_questions, write_sharegpt
from prompt import AutoPromptDecoder, Decoder, PromptConfig, PromptDecoder
from prompt.data import load_dataset
from prompt.data import cli as dataset_cli
from prompt.data.chat import chat_ids
from prompt.data.files import IGNORE_INDEX
from prompt.data.finetune import tokenize_conversation
from prompt.evaluation import accuracy
from prompt.train import train as trainer
from prompt.train.many_cuts import many_cuts_special_logits, teacher_logits, teacher_pass

N = 3
MAX_LEN = 256
SHARED_DATA = os.environ.get("PPD_SHARED_DATA", os.path.join(repo_root(), "..", "shared", "data"))


def build(kind, model, data, save_path, *extra):
    argv = ["--dataset_type", kind, "--model_name_or_path", model, "--data_path", *data, "--save_path", save_path,
            "--num_special_tokens", str(N), "--model_max_length", str(MAX_LEN), "--dtype", "float32", *extra]
    return dataset_cli.main(argv)


def train(model, dataset, output_dir, *extra):
    argv = ["--model_name_or_path", model, "--dataset_path", dataset, "--output_dir", output_dir,
            "--num_special_tokens", str(N), "--dtype", "float32", "--logging_steps", "1", "--save_steps", "1000", *extra]
    return trainer.main(argv)


def embeddings(folder):
    return load_file(os.path.join(folder, "adapter_model.safetensors"))["prompt_embeddings"]


def assert_one_error(capsys, call, text):
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], errors


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are overhead-bound: one thread is as fast, and far faster when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny model folder and one dataset of each type, built once."""
    root = tmp_path_factory.mktemp("training")
    model = save_tiny_model(root / "model")
    chats = write_sharegpt(root / "chats.json", 10)
    prompts = write_sharegpt(root / "prompts.json", 12, with_replies=False, seed=3)
    questions = write_questions(root / "questions.jsonl", 6)
    save = str(root / "ds")
    paths = {"root": root, "model": model, "chats": chats, "prompts": prompts, "questions": questions}
    paths["finetune"] = build("finetune", model, [chats], save)
    paths["distillation"] = build("distillation", model, [paths["finetune"]], save, "--batch_size", "4", "--top_k", "8")
    paths["self_distillation"] = build("self_distillation", model, [prompts + ":0:8", questions], save,
                                       "--batch_size", "4", "--max_new_tokens", "24")
    paths["heldout"] = build("self_distillation", model, [prompts + ":8:"], str(root / "heldout"),
                             "--batch_size", "4", "--max_new_tokens", "24")
    return paths


# --------------------------------------------------------------------------------------------------
# datasets
def test_finetune_records_cut_inside_assistant_text(work):
    dataset = load_dataset(work["finetune"], expected_types=("finetune",), num_special_tokens=N)
    assert dataset.model_name_or_path == os.path.abspath(work["model"]) and dataset.num_special_tokens == N
    tokenizer = dataset_cli.load_tokenizer(work["model"])
    conversations = json.load(open(work["chats"]))
    assert len(dataset.records) == len(conversations)
    for record, conversation in zip(dataset.records, conversations):
        messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                    for t in conversation["conversations"]]
        ids, labels = tokenize_conversation(tokenizer, messages)
        c = len(record["input_ids"]) - 1
        assert record["input_ids"].tolist() == ids[: c + 1]
        assert record["continuation"].tolist() == ids[c + 1: c + N + 2]
        assert record["labels"].tolist() == labels[c + 1: c + N + 2]
        assert labels[c + 1] != IGNORE_INDEX  # the next token is assistant text
    # user turns are masked: the first user message's tokens never appear as labels
    user_span = chat_ids(tokenizer, messages[:1], add_generation_prompt=False)
    assert all(label == IGNORE_INDEX for label in labels[: len(user_span)])


def test_distillation_records_hold_the_greedy_continuation_and_its_distributions(work):
    dataset = load_dataset(work["distillation"], expected_types=("distillation",), num_special_tokens=N)
    model = tiny_llama(0)
    for record in dataset.records[:4]:
        prefix = record["input_ids"][None]
        out = model.generate(prefix, max_new_tokens=N + 1, do_sample=False, eos_token_id=None, pad_token_id=0)
        greedy = out[0, prefix.shape[1]:]
        assert record["continuation"].tolist() == greedy.tolist()
        with torch.no_grad():
            probs = model(torch.cat([prefix[0], greedy[:N]])[None]).logits[0, -N - 1:].softmax(-1)
        assert record["teacher_ids"].shape == (N + 1, 8)
        expected = probs.gather(-1, record["teacher_ids"].long())
        assert torch.allclose(record["teacher_probs"], expected, atol=1e-5)
        assert torch.equal(record["teacher_ids"][:, 0].long(), probs.argmax(-1))


def test_self_distillation_records_are_the_greedy_replies(work):
    dataset = load_dataset(work["self_distillation"], expected_types=("self_distillation",), num_special_tokens=N)
    assert len(dataset.records) == 8 + 6  # a slice of the ShareGPT prompts plus every question
    tokenizer = dataset_cli.load_tokenizer(work["model"])
    model = tiny_llama(0)
    first_prompt = json.load(open(work["prompts"]))[0]["conversations"][0]["value"]
    prompt_ids = chat_ids(tokenizer, [{"role": "user", "content": first_prompt}], add_generation_prompt=True)
    record = dataset.records[0]
    assert record["input_ids"][: record["reply_start"]].tolist() == prompt_ids
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=24, do_sample=False, eos_token_id=2, pad_token_id=0)
    assert record["input_ids"][record["reply_start"]:].tolist() == out[0, len(prompt_ids):].tolist()


def test_chunked_dataset_is_the_same_data_in_chunk_files_and_resumes(work, tmp_path, capsys):
    """--use_chunked writes a folder of chunk files (read back by load_dataset and train.py --use_chunked) holding the
    same records as one file; a run resumes at the first missing chunk, and a folder of another build is refused."""
    save = str(tmp_path / "ds")
    extra = ("--batch_size", "4", "--max_new_tokens", "24", "--use_chunked", "--chunk_size", "5")
    folder = build("self_distillation", work["model"], [work["prompts"] + ":0:8", work["questions"]], save, *extra)
    assert folder == save + f"_{N}_self_distillation_{MAX_LEN}" and os.path.isdir(folder)
    assert sorted(name for name in os.listdir(folder) if name.endswith(".pt")) == [
        "chunk_00000.pt", "chunk_00001.pt", "chunk_00002.pt"]  # 14 prompts in chunks of 5
    whole = load_dataset(work["self_distillation"]).records
    chunked = load_dataset(folder, num_special_tokens=N).records
    assert [r["input_ids"].tolist() for r in chunked] == [r["input_ids"].tolist() for r in whole]

    # an interrupted run: the last chunk is missing; the rerun builds only that one
    os.remove(os.path.join(folder, "chunk_00002.pt"))
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    manifest["done"] = [0, 1]
    json.dump(manifest, open(os.path.join(folder, "manifest.json"), "w"))
    before = os.path.getmtime(os.path.join(folder, "chunk_00000.pt"))
    build("self_distillation", work["model"], [work["prompts"] + ":0:8", work["questions"]], save, *extra)
    assert os.path.getmtime(os.path.join(folder, "chunk_00000.pt")) == before
    assert len(load_dataset(folder).records) == len(whole)

    assert_one_error(capsys, lambda: build("self_distillation", work["model"], [work["prompts"] + ":0:6"], save, *extra),
                     "different build")
    out = str(tmp_path / "run")
    train(work["model"], folder, out, "--use_chunked", "--max_steps", "2")
    assert AutoPromptDecoder.from_pretrained(out).config.num_special_tokens == N


def test_dataset_bad_input(work, tmp_path, capsys):
    model, root = work["model"], work["root"]
    cases = {"empty.json": "", "list.json": "[]", "broken.json": '[{"id": 1, "conversations": [}', "noconv.json": '[{"id": 1}]',
             "badturn.json": '[{"id": 1, "conversations": [{"from": "human"}]}]'}
    messages = {"empty.json": "is empty", "list.json": "holds no conversations", "broken.json": "malformed JSON",
                "noconv.json": "no 'conversations'", "badturn.json": "turn 0"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert_one_error(capsys, lambda: build("finetune", model, [str(tmp_path / name)], str(tmp_path / "x")), messages[name])
    assert_one_error(capsys, lambda: build("finetune", model, [work["prompts"]], str(tmp_path / "x")),
                     "self_distillation")
    # an existing output is never replaced silently
    before = os.path.getmtime(work["finetune"])
    assert_one_error(capsys, lambda: build("finetune", model, [work["chats"]], str(root / "ds")), "--overwrite")
    assert os.path.getmtime(work["finetune"]) == before
    # distillation reads a finetune file built for the same number of special tokens
    assert_one_error(capsys, lambda: dataset_cli.main(["--dataset_type", "distillation", "--model_name_or_path", model,
                                                       "--data_path", work["finetune"], "--num_special_tokens", "2",
                                                       "--model_max_length", str(MAX_LEN), "--save_path", str(tmp_path / "d")]),
                     "num_special_tokens=3")
    # the script itself: one error line, exit status 2
    proc = subprocess.run([sys.executable, os.path.join(repo_root(), "generate_dataset.py"), "--dataset_type", "finetune",
                           "--model_name_or_path", model, "--data_path", str(tmp_path / "list.json"),
                           "--save_path", str(tmp_path / "y")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: ShareGPT file {str(tmp_path / 'list.json')!r} holds no conversations"]


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_DATA, "mt_bench", "question.jsonl")),
                    reason="../shared/data is not beside the repository")
def test_evaluation_sets_are_refused(work, tmp_path, capsys):
    for name in ("mt_bench/question.jsonl", "gsm8k/test.jsonl"):
        copy = tmp_path / os.path.basename(name)
        shutil.copy(os.path.join(SHARED_DATA, name), copy)  # refused by content, whatever its name
        assert_one_error(capsys, lambda: build("self_distillation", work["model"], [str(copy)], str(tmp_path / "z")),
                         "evaluation set")


# --------------------------------------------------------------------------------------------------
# the many-cuts forward
@pytest.mark.parametrize("kind,virtual,aggregation,prefix", [
    ("decoder", 1, "mean", 0), ("ensemble", 1, "mean", 0), ("ensemble", 3, "mean", 0), ("decoder", 3, "adaptive_weighted", 0),
    ("encoder", 2, "weighted", 0), ("decoder", 1, "mean", 2), ("ensemble", 2, "mean", 3)])
def test_many_cuts_equal_one_cut_forwards(kind, virtual, aggregation, prefix):
    base = tiny_llama(1)
    model = PromptDecoder(base, PromptConfig(num_special_tokens=N, virtual_tokens_per_special_token=virtual,
                                             vt_attention_type=kind, aggregation_type=aggregation,
                                             prompt_tuning_init="RANDOM", use_prefix_tuning=bool(prefix),
                                             prefix_virtual_tokens=prefix or None))
    x = torch.randint(3, 97, (1, 24))
    cuts = torch.tensor([0, 4, 9, 13, 20])
    hidden, cache = teacher_pass(base, x)
    got = many_cuts_special_logits(model, cache, x.shape[1], cuts)
    with torch.no_grad():
        full = base(x).logits[0]
        for i, c in enumerate(cuts.tolist()):
            expected, _ = model(x[:, : c + 1])
            assert torch.allclose(got[i], expected[0], atol=1e-4), (kind, virtual, c)
    assert torch.allclose(teacher_logits(base, hidden, cuts, N), full[cuts[:, None] + torch.arange(1, N + 1)], atol=1e-5)
    got.sum().backward()  # the gradient reaches the prompt embeddings (and prefix) only
    assert model.prompt_embeddings.grad is not None and model.prompt_embeddings.grad.abs().sum() > 0
    if prefix:
        assert model.prefix.keys.grad.abs().sum() > 0 and model.prefix.values.grad.abs().sum() > 0
    assert all(p.grad is None for p in base.parameters())


# --------------------------------------------------------------------------------------------------
# training
def logged_losses(folder):
    return [entry["loss"] for entry in json.load(open(os.path.join(folder, "trainer_state.json")))["log_history"]
            if "loss" in entry]


def test_training_reduces_the_loss_and_the_result_decodes_losslessly(work, tmp_path):
    out = str(tmp_path / "run")
    train(work["model"], work["self_distillation"], out, "--num_train_epochs", "4", "--per_device_train_batch_size", "2")
    losses = logged_losses(out)
    assert len(losses) == 28 and sum(losses[-4:]) < 0.85 * sum(losses[:4])
    config = json.load(open(os.path.join(out, "adapter_config.json")))
    assert config["base_model_name_or_path"] == os.path.abspath(work["model"]) and config["num_special_tokens"] == N
    model = AutoPromptDecoder.from_pretrained(out)
    assert not torch.equal(model.prompt_embeddings.detach(), PromptDecoder(tiny_llama(0), PromptConfig(
        num_special_tokens=N, prompt_tuning_init="RANDOM")).prompt_embeddings.detach())
    base = tiny_llama(0)
    for record in load_dataset(work["heldout"]).records[:2]:
        prompt_ids = record["input_ids"][: record["reply_start"]][None]
        expected = base.generate(prompt_ids, max_new_tokens=30, do_sample=False, eos_token_id=2, pad_token_id=0)
        result = Decoder(model, stop_token_ids=[2]).generate(prompt_ids, max_new_tokens=30)
        assert result.token_ids == expected[0, prompt_ids.shape[1]:].tolist()


@pytest.mark.parametrize("kind,trainer_type,extra", [
    ("finetune", "param_efficient_fine_tuner", []), ("distillation", "distillation_trainer", []),
    ("self_distillation", "distillation_trainer", ["--many_cuts", "false"]),
    ("self_distillation", "param_efficient_fine_tuner", ["--cuts_per_sequence", "4"]),
    ("self_distillation", "distillation_trainer", ["--use_prefix_tuning", "--prefix_virtual_tokens", "2"])])
def test_every_trainer_and_dataset_type_trains(work, tmp_path, kind, trainer_type, extra):
    out = str(tmp_path / kind)
    train(work["model"], work[kind], out, "--trainer_type", trainer_type, "--num_train_epochs", "3",
          "--per_device_train_batch_size", "4", "--learning_rate", "3e-2", *extra)
    losses = logged_losses(out)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    loaded = AutoPromptDecoder.from_pretrained(out)
    assert loaded.config.num_special_tokens == N
    if "--use_prefix_tuning" in extra:  # the trained prefix is saved and loaded, not re-initialised
        fresh = PromptDecoder(tiny_llama(0), loaded.config)
        assert loaded.prefix_length == 2 * N and not torch.allclose(loaded.prefix.keys, fresh.prefix.keys)


def test_prefix_positions_flag_and_warm_start_keep_the_convention(work, tmp_path, capsys):
    """--prefix_positions next trains the shipped tokens' convention (saved as prefix_tuning.pt); a warm start
    from such tokens (--stage1_model_path) starts from their weights and keeps their convention."""
    flags = ["--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--learning_rate", "3e-2",
             "--use_prefix_tuning", "--prefix_virtual_tokens", "2"]
    first, warm = str(tmp_path / "first"), str(tmp_path / "warm")
    train(work["model"], work["self_distillation"], first, *flags, "--prefix_positions", "next")
    assert os.path.isfile(os.path.join(first, "prefix_tuning.pt")) and not os.path.exists(os.path.join(first, "prefix"))
    loaded = AutoPromptDecoder.from_pretrained(first)
    assert loaded.prefix_at_next_positions
    train(work["model"], work["self_distillation"], warm, *flags, "--stage1_model_path", first, "--max_steps", "1")
    again = AutoPromptDecoder.from_pretrained(warm)
    assert again.prefix_at_next_positions
    assert not torch.equal(embeddings(warm), embeddings(first))
    assert logged_losses(warm)[0] < logged_losses(first)[0]  # started from the trained tokens, not afresh
    assert_one_error(capsys, lambda: train(work["model"], work["self_distillation"], str(tmp_path / "x"), *flags,
                                           "--stage1_model_path", first, "--prefix_positions", "after_prefix"),
                     "were trained with next")
    assert_one_error(capsys, lambda: train(work["model"], work["self_distillation"], str(tmp_path / "y"),
                                           "--prefix_positions", "next"), "needs --use_prefix_tuning")


def test_resume_from_a_checkpoint_gives_the_same_result(work, tmp_path):
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    flags = ["--num_train_epochs", "2", "--per_device_train_batch_size", "2", "--save_steps", "5"]
    train(work["model"], work["self_distillation"], full, *flags)
    assert os.path.isdir(os.path.join(full, "checkpoint-5"))
    os.makedirs(resumed)
    shutil.copytree(os.path.join(full, "checkpoint-5"), os.path.join(resumed, "checkpoint-5"))
    train(work["model"], work["self_distillation"], resumed, *flags)  # picks up checkpoint-5 by itself
    assert torch.allclose(embeddings(full), embeddings(resumed), atol=1e-6)
    state = json.load(open(os.path.join(resumed, "trainer_state.json")))
    assert state["step"] == 14 and [e["step"] for e in state["log_history"]][:5] == [1, 2, 3, 4, 5]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")
def test_two_processes_match_one_process_with_twice_the_batch(work, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    train(work["model"], work["self_distillation"], one, "--num_train_epochs", "2", "--per_device_train_batch_size", "2")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = ["torchrun", "--standalone", "--nproc_per_node", "2", os.path.join(repo_root(), "prompt", "train", "train.py"),
               "--model_name_or_path", work["model"], "--dataset_path", work["self_distillation"], "--output_dir", two,
               "--num_special_tokens", str(N), "--dtype", "float32", "--logging_steps", "1", "--num_train_epochs", "2",
               "--per_device_train_batch_size", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    assert torch.allclose(embeddings(one), embeddings(two), atol=1e-5)
    assert logged_losses(one) == pytest.approx(logged_losses(two), rel=1e-4)


def test_training_bad_input(work, tmp_path, capsys):
    model, data = work["model"], work["self_distillation"]
    assert_one_error(capsys, lambda: trainer.main(["--model_name_or_path", model, "--dataset_path", data, "--output_dir",
                                                   str(tmp_path / "a"), "--num_special_tokens", "2"]),
                     "built for num_special_tokens=3")
    assert_one_error(capsys, lambda: train(model, work["finetune"], str(tmp_path / "b")), "param_efficient_fine_tuner")
    assert_one_error(capsys, lambda: train(model, data, str(tmp_path / "c"), "--use_prefix_tuning",
                                           "--prefix_virtual_tokens", "0"), "--prefix_virtual_tokens must be >= 1")
    assert_one_error(capsys, lambda: train(model, str(tmp_path / "none.pt"), str(tmp_path / "d")), "does not exist")
    # an output_dir holding another run: one error, nothing touched
    other = str(tmp_path / "other")
    train(model, data, other, "--max_steps", "1")
    before = {name: os.path.getmtime(os.path.join(other, name)) for name in os.listdir(other)}
    assert_one_error(capsys, lambda: train(model, data, other, "--max_steps", "1", "--vt_attention_type", "ensemble"),
                     "holds a different run")
    assert {name: os.path.getmtime(os.path.join(other, name)) for name in os.listdir(other)} == before
    # the script itself, run as a file
    proc = subprocess.run([sys.executable, os.path.join(repo_root(), "prompt", "train", "train.py"),
                           "--dataset_path", data, "--output_dir", str(tmp_path / "e"), "--load_in_4bit", "--load_in_8bit"],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "choose one of --load_in_4bit and --load_in_8bit" in errors[0]


# --------------------------------------------------------------------------------------------------
# accuracy
def test_accuracy_file_matches_one_cut_forwards(work, tmp_path):
    out = str(tmp_path / "tokens")
    train(work["model"], work["self_distillation"], out, "--max_steps", "3")
    result = accuracy.main(["--model-path", out, "--data_path", work["heldout"], "--output", str(tmp_path / "acc.json"),
                            "--plot", str(tmp_path / "acc.png")])
    saved = json.load(open(tmp_path / "acc.json"))
    assert saved["num_special_tokens"] == N and len(saved["top_k_accuracy"]) == N
    assert all(len(row) == 10 and row == sorted(row) for row in saved["top_k_accuracy"])
    assert os.path.getsize(tmp_path / "acc.png") > 1000
    # recount with one forward per cut
    model = AutoPromptDecoder.from_pretrained(out)
    hits, positions = torch.zeros(N, 10), 0
    with torch.no_grad():
        for record in load_dataset(work["heldout"]).records:
            ids, start = record["input_ids"], record["reply_start"]
            for c in range(start - 1, len(ids) - N - 1):
                special, _ = model(ids[None, : c + 1])
                ranked = special[0].topk(10, dim=-1).indices
                for k in range(N):
                    rank = (ranked[k] == ids[c + 2 + k]).nonzero()
                    if len(rank):
                        hits[k, int(rank[0]):] += 1
                positions += 1
    assert result["num_positions"] == positions
    assert torch.allclose(torch.tensor(saved["top_k_accuracy"]), hits / positions, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# nothing lost: trained output is never replaced without --overwrite_output_dir, chunk folders must be complete
def test_trained_output_is_not_replaced_without_overwrite(work, tmp_path, capsys):
    model, data = work["model"], work["self_distillation"]
    done = str(tmp_path / "done")
    train(model, data, done, "--max_steps", "2", "--save_steps", "1")
    for name in ("trees.json", "decoding.json"):  # what the tuner adds beside trained tokens
        with open(os.path.join(done, name), "w") as f:
            f.write("{}\n")

    def snapshot(folder):
        return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
                if os.path.isfile(os.path.join(folder, name))}

    before = snapshot(done)
    # a finished run rerun with another learning rate: refused, naming the flag; nothing rewritten
    assert_one_error(capsys, lambda: train(model, data, done, "--max_steps", "2", "--save_steps", "1",
                                           "--learning_rate", "0.5"), "--learning_rate")
    # a changed prefix option on resume: one clear error, not a traceback
    assert_one_error(capsys, lambda: train(model, data, done, "--max_steps", "2", "--save_steps", "1",
                                           "--use_prefix_tuning", "--prefix_virtual_tokens", "2"), "use_prefix_tuning")
    # final weights without checkpoints (pruned, or a copy of shipped tokens): refused
    for name in os.listdir(done):
        if name.startswith("checkpoint-"):
            shutil.rmtree(os.path.join(done, name))
    assert_one_error(capsys, lambda: train(model, data, done, "--max_steps", "2"), "--overwrite_output_dir")
    assert snapshot(done) == before
    # the same command resumes a finished run without changing its tokens
    again = str(tmp_path / "again")
    train(model, data, again, "--max_steps", "2", "--save_steps", "1")
    tokens = embeddings(again)
    train(model, data, again, "--max_steps", "2", "--save_steps", "1")
    assert torch.equal(embeddings(again), tokens)
    # --overwrite_output_dir replaces the run and removes the files tied to the old tokens
    train(model, data, done, "--max_steps", "1", "--overwrite_output_dir")
    assert not os.path.exists(os.path.join(done, "trees.json")) and not os.path.exists(os.path.join(done, "decoding.json"))
    assert json.load(open(os.path.join(done, "trainer_state.json")))["step"] == 1


def test_incomplete_chunk_folder_is_refused(work, tmp_path, capsys):
    save = str(tmp_path / "ds")
    extra = ("--batch_size", "4", "--max_new_tokens", "24", "--use_chunked", "--chunk_size", "5")
    folder = build("self_distillation", work["model"], [work["prompts"] + ":0:8", work["questions"]], save, *extra)
    # a build killed after two of its three chunks
    os.remove(os.path.join(folder, "chunk_00002.pt"))
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    manifest["done"] = [0, 1]
    manifest.get("records", {}).pop("2", None)
    json.dump(manifest, open(os.path.join(folder, "manifest.json"), "w"))
    assert_one_error(capsys, lambda: train(work["model"], folder, str(tmp_path / "run"), "--use_chunked",
                                           "--max_steps", "1"), "2 of 3 chunks")
    assert not os.path.exists(os.path.join(tmp_path, "run", "adapter_model.safetensors"))
    # a chunk file lost after the build finished
    build("self_distillation", work["model"], [work["prompts"] + ":0:8", work["questions"]], save, *extra)
    os.remove(os.path.join(folder, "chunk_00001.pt"))
    assert_one_error(capsys, lambda: train(work["model"], folder, str(tmp_path / "run"), "--use_chunked",
                                           "--max_steps", "1"), "chunk files are missing")
