"""Nothing lost, nothing silently wrong: atomic files, corrupt checkpoints, answer files kept whole, clear refusals."""
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import tiny_llama
from training_helpers import repo_root
from prompt import AutoPromptDecoder, PPDError, PromptConfig, PromptDecoder

REPO = repo_root()


def tiny_prefix_ppd(seed=0):
    return PromptDecoder(tiny_llama(seed), PromptConfig(num_special_tokens=2, use_prefix_tuning=True,
                                                        prefix_virtual_tokens=2, base_model_name_or_path="unused",
                                                        prompt_tuning_init="RANDOM"))


def load(folder):
    return AutoPromptDecoder.from_pretrained(str(folder), base_model=tiny_llama(0))


# --------------------------------------------------------------------------------------------------
# atomic files
KILL_MID_WRITE = textwrap.dedent("""
    import builtins, os, signal, sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from conftest import tiny_llama
    from prompt import PromptConfig, PromptDecoder
    from prompt.train import checkpoints

    real_open = builtins.open

    class Dying:  # writes a third of what it is given, then the process dies as under kill -9
        def __init__(self, file):
            self.file = file
        def write(self, data):
            self.file.write(data[: max(len(data) // 3, 1)])
            self.file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.file.close()
        def __getattr__(self, name):
            return getattr(self.file, name)

    def dying_open(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return Dying(file) if "w" in mode and {which!r} in str(path) else file

    model = PromptDecoder(tiny_llama(1), PromptConfig(num_special_tokens=2, use_prefix_tuning=True,
                          prefix_virtual_tokens=2, base_model_name_or_path="unused", prompt_tuning_init="RANDOM"))
    builtins.open = dying_open
    if {final!r}:
        checkpoints.save_final({out!r}, model, {{"step": 9}}, {{"learning_rate": 1.0}})
    else:
        model.save_pretrained({out!r})
""")



@pytest.mark.parametrize("which,final", [("/prefix/", False), ("adapter_model", True)])
def test_a_kill_mid_save_leaves_whole_files(tmp_path, which, final):
    """A process killed while it saves prompt tokens leaves every file whole, never empty or cut short: with
    save_pretrained each file is the old or the new one; training's final save leaves the old run entirely."""
    out = tmp_path / "tokens"
    old = tiny_prefix_ppd(0)
    old.save_pretrained(out)
    new = tiny_prefix_ppd(1)
    script = KILL_MID_WRITE.format(repo=REPO, tests=os.path.join(REPO, "tests"), which=which, final=final, out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    loaded = load(out)  # every file reads
    assert torch.equal(loaded.prefix.keys, old.prefix.keys)  # the file being written when the kill came: the old one
    if final:
        assert torch.equal(loaded.prompt_embeddings, old.prompt_embeddings)
        assert not os.path.exists(out / "training_args.json")
    else:
        assert torch.equal(loaded.prompt_embeddings, new.prompt_embeddings)


def test_saved_files_get_ordinary_permissions(tmp_path):
    from prompt.jsonio import current_umask

    tiny_prefix_ppd().save_pretrained(tmp_path / "out")
    expected = 0o666 & ~current_umask()
    files = [os.path.join(root, name) for root, _, names in os.walk(tmp_path / "out") for name in names]
    assert any(os.sep + "prefix" + os.sep in path for path in files)
    for path in files:
        assert os.stat(path).st_mode & 0o777 == expected, path


def test_a_full_disk_leaves_the_old_file_and_says_so(tmp_path):
    from prompt.jsonio import atomic_write, write_json

    path = tmp_path / "data.json"
    write_json(str(path), {"old": True})

    def full_disk(tmp):
        with open(tmp, "w") as f:
            f.write('{"new": [1, 2')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(PPDError, match="No space left"):
        atomic_write(str(path), full_disk)
    assert json.load(open(path)) == {"old": True} and os.listdir(tmp_path) == ["data.json"]


# --------------------------------------------------------------------------------------------------
# corrupt checkpoints: one clear error, and non-finite weights refused at load time
@pytest.mark.parametrize("part", ["prompt_embeddings", "prefix", "custom_lm_head"])
def test_non_finite_weights_are_refused_when_loading(tmp_path, part):
    config = PromptConfig(num_special_tokens=2, base_model_name_or_path="unused", prompt_tuning_init="RANDOM",
                          use_prefix_tuning=part == "prefix", prefix_virtual_tokens=2 if part == "prefix" else None,
                          use_custom_lm_head=part == "custom_lm_head")
    model = PromptDecoder(tiny_llama(0), config)
    with torch.no_grad():
        target = {"prompt_embeddings": model.prompt_embeddings, "prefix": model.prefix and model.prefix.values,
                  "custom_lm_head": model.custom_lm_head and model.custom_lm_head.weight}[part]
        target.view(-1)[5] = float("nan")
    model.save_pretrained(tmp_path / "out")
    with pytest.raises(PPDError, match="non-finite"):
        load(tmp_path / "out")


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
@pytest.mark.parametrize("name", ["prefix/adapter_model.safetensors", "adapter_model.safetensors"])
def test_corrupt_files_are_reported_as_corrupt(tmp_path, damage, name):
    tiny_prefix_ppd().save_pretrained(tmp_path / "out")
    path = tmp_path / "out" / name
    content = path.read_bytes()
    path.write_bytes({"empty": b"", "garbage": b"\x00\x17garbage" * 50, "truncated": content[: len(content) // 2]}[damage])
    with pytest.raises(PPDError, match="corrupt or unreadable") as error:
        load(tmp_path / "out")
    assert "does not fit" not in str(error.value) and name in str(error.value)


def test_prefix_of_another_shape_still_says_it_does_not_fit(tmp_path):
    tiny_prefix_ppd().save_pretrained(tmp_path / "out")
    PromptDecoder(tiny_llama(0, layers=3), tiny_prefix_ppd().config).save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "prefix" / "adapter_model.safetensors",
                tmp_path / "out" / "prefix" / "adapter_model.safetensors")
    with pytest.raises(PPDError, match="does not fit"):
        load(tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# answer files
@pytest.fixture
def tiny_chat():
    from webui_helpers import tiny_chat_tokenizer

    return tiny_llama(0), tiny_chat_tokenizer()


def answer_args(tmp_path, questions, answer_file, *extra):
    from prompt.cli import ArgumentParser
    from prompt.evaluation.answer_flags import add_common_flags

    qfile = tmp_path / "questions.jsonl"
    qfile.write_text("".join(json.dumps({"question_id": qid, "turns": [text]}) + "\n" for qid, text in questions))
    parser = add_common_flags(ArgumentParser(), "", "tiny")
    return parser.parse_args(["--question-file", str(qfile), "--answer-file", str(answer_file), "--max-new-token", "8",
                              "--warmup", "0", *map(str, extra)])


def answer(args, model, tokenizer):
    """What gen_model_answer_baseline.py does after loading the model."""
    from prompt.evaluation.chat import ChatFormatter
    from prompt.evaluation.answer_flags import check_args
    from prompt.evaluation.runner import make_decoder, run_benchmark

    questions = check_args(args)
    if questions:
        formatter = ChatFormatter(tokenizer, args.model_id)
        run_benchmark(args, questions, make_decoder(model, formatter, args), formatter, "test")
    return questions


def rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


QUESTIONS = [(1, "hello there"), (2, "what is it"), (3, "say more")]


def test_unwritable_answer_file_is_refused_before_the_model_loads(tmp_path):
    from prompt.evaluation.answer_flags import check_args

    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file" / "answers.jsonl", tmp_path / "file" / "sub" / "answers.jsonl", tmp_path):
        with pytest.raises(PPDError, match="answer file"):
            check_args(answer_args(tmp_path, QUESTIONS, target))
    locked = tmp_path / "locked.jsonl"
    locked.write_text("")
    os.chmod(locked, 0o444)
    immutable = False
    if os.access(locked, os.W_OK):  # root ignores permissions: make the file immutable instead
        immutable = subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("running as root without chattr: cannot make a file unwritable")
    try:
        with pytest.raises(PPDError, match="cannot write answer file"):
            check_args(answer_args(tmp_path, QUESTIONS, locked))
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)])


def test_full_disk_while_answering_is_one_clear_error(tmp_path, tiny_chat, monkeypatch):
    path = tmp_path / "answers.jsonl"

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)  # the disk fills up once the model is loaded
    with pytest.raises(PPDError, match="cannot write answer file.*No space left"):
        answer(answer_args(tmp_path, QUESTIONS, path), *tiny_chat)
    monkeypatch.undo()
    assert not path.exists() or path.read_text() == ""


def test_devices_and_pipes_are_never_replaced_by_files(tmp_path):
    from prompt.evaluation.answer_flags import check_args
    from prompt.jsonio import write_text

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(PPDError, match="not a regular file"):
        write_text(str(fifo), "x")
    with pytest.raises(PPDError, match="not a regular file"):
        check_args(answer_args(tmp_path, QUESTIONS, fifo))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_failed_append_leaves_no_partial_row(tmp_path, monkeypatch):
    from prompt.evaluation.answers import AnswerFile

    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"question_id": 1, "model_id": "m"}) + "\n")
    before = path.read_bytes()
    answers = AnswerFile.open(str(path))
    real_write = os.write

    def full(fd, data):
        real_write(fd, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(PPDError, match="No space left"):
        answers.append({"question_id": 2, "model_id": "m", "choices": []})
    monkeypatch.undo()
    assert path.read_bytes() == before


def test_partial_last_line_is_repaired_and_its_question_answered_again(tmp_path, tiny_chat, capsys):
    path = tmp_path / "answers.jsonl"
    answer(answer_args(tmp_path, QUESTIONS[:1], path), *tiny_chat)
    first = rows(path)[0]
    with open(path, "a") as f:
        f.write('{"question_id": 2, "answer_id": "cut", "model_id": "tiny", "choi')  # a run cut off by a full disk
    answer(answer_args(tmp_path, QUESTIONS, path), *tiny_chat)
    assert "partial line" in capsys.readouterr().err
    saved = rows(path)
    assert [row["question_id"] for row in saved] == [1, 2, 3] and saved[0] == first


def test_rerun_skips_answered_questions_and_the_file_is_sorted_without_duplicates(tmp_path, tiny_chat, capsys):
    path = tmp_path / "answers.jsonl"
    answer(answer_args(tmp_path, QUESTIONS[1:], path), *tiny_chat)
    row = rows(path)[0]
    with open(path, "a") as f:  # an older file with a duplicate row
        f.write(json.dumps({**row, "answer_id": "older"}) + "\n")
    todo = answer(answer_args(tmp_path, QUESTIONS, path), *tiny_chat)
    assert [q["question_id"] for q in todo] == [1]
    saved = rows(path)
    assert [r["question_id"] for r in saved] == [1, 2, 3]
    assert answer(answer_args(tmp_path, QUESTIONS, path), *tiny_chat) == []
    assert "nothing to do" in capsys.readouterr().out


def test_a_question_too_long_for_the_context_is_reported_and_the_run_goes_on(tmp_path, tiny_chat):
    path = tmp_path / "answers.jsonl"
    questions = [(1, "hello"), ("too-long", "word " * 80), (3, "bye")]  # 400 characters: past the 256 positions
    with pytest.raises(PPDError, match="too-long") as error:
        answer(answer_args(tmp_path, questions, path, "--warmup", 1), *tiny_chat)
    assert "1 of 3" in str(error.value) and "context" in str(error.value)
    assert [row["question_id"] for row in rows(path)] == [1, 3]


@pytest.mark.parametrize("flag", ["--question-begin", "--question-end"])
def test_negative_question_range_is_refused(tmp_path, flag):
    from prompt.evaluation.answer_flags import check_args

    with pytest.raises(PPDError, match=flag):
        check_args(answer_args(tmp_path, QUESTIONS, tmp_path / "a.jsonl", flag, -1))


def test_a_token_limit_inside_an_emoji_leaves_no_replacement_character():
    from webui_helpers import byte_level_tokenizer

    from prompt.evaluation.chat import decode_answer

    tokenizer = byte_level_tokenizer()
    ids = tokenizer.encode("ok \U0001F600")
    assert "\ufffd" in tokenizer.decode(ids[:-2])  # precondition: the cut splits the emoji
    assert decode_answer(tokenizer, ids[:-2], "length") == "ok "
    assert decode_answer(tokenizer, ids, "length") == "ok \U0001F600"


# --------------------------------------------------------------------------------------------------
# throughput
def throughput_row(qid, idxs, new_tokens=(119,), wall_time=(1.0,)):
    return json.dumps({"question_id": qid, "model_id": "m", "choices": [
        {"index": 0, "turns": ["x"], "idxs": list(idxs), "new_tokens": list(new_tokens), "wall_time": list(wall_time)}]})


def test_throughput_reports_no_accept_length_for_rows_without_forward_counts(tmp_path, monkeypatch, capsys):
    import get_throughput_results

    path = tmp_path / "lookup.jsonl"
    path.write_text(throughput_row(1, [-1], (119,), (2.0,)) + "\n")  # what --hf-generate with prompt lookup writes
    monkeypatch.setattr(sys, "argv", ["get_throughput_results.py", str(path)])
    get_throughput_results.main()
    out = capsys.readouterr().out
    assert "accept length: n.a." in out and "119" not in out


def test_throughput_counts_a_duplicated_question_once(tmp_path):
    from prompt.evaluation.throughput import file_throughput

    path = tmp_path / "dup.jsonl"
    path.write_text(throughput_row(1, [9], (20,), (1.0,)) + "\n" + throughput_row(1, [9], (20,), (1.0,)) + "\n"
                    + throughput_row(2, [4], (10,), (1.0,)) + "\n")
    assert file_throughput(str(path)).turns == 2


# --------------------------------------------------------------------------------------------------
# decoding.json naming a tree the checkpoint does not have
@pytest.mark.parametrize("with_trees", [False, True])
def test_decoding_json_naming_a_missing_tree_is_reported_against_decoding_json(tmp_path, tiny_chat, with_trees):
    from prompt.evaluation.chat import ChatFormatter
    from prompt.evaluation.runner import make_decoder

    base, tokenizer = tiny_chat
    PromptDecoder(base, PromptConfig(num_special_tokens=3, base_model_name_or_path="unused",
                                     prompt_tuning_init="RANDOM")).save_pretrained(tmp_path / "ckpt")
    write_json_file(tmp_path / "ckpt" / "decoding.json", {"float32": {"tree_length": 99, "prompt_lookup_num_tokens": 0}})
    if with_trees:
        shutil.copy(os.path.join(REPO, "prompt", "inference", "trees", "default_3.json"), tmp_path / "ckpt" / "trees.json")
    model = AutoPromptDecoder.from_pretrained(str(tmp_path / "ckpt"), base_model=base, tokenizer=tokenizer)
    args = answer_args(tmp_path, QUESTIONS, tmp_path / "a.jsonl")
    with pytest.raises(PPDError, match=r"decoding\.json") as error:
        make_decoder(model, ChatFormatter(tokenizer, "tiny"), args, tree_length=None)
    assert "99" in str(error.value) and ("trees.json" in str(error.value))


def write_json_file(path, data):
    with open(path, "w") as f:
        json.dump(data, f)


def test_readme_says_in_which_dtype_greedy_output_is_exact_and_lists_the_guarantees():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    intro = text[: text.index("## Quick start")]
    assert "float32" in intro and "bfloat16" in intro  # the exactness claim carries its dtype where users read it
    guarantees = text[text.index("## Guarantees"):]
    for word in ("Exact", "Atomic", "Resumable", "Refused"):
        assert f"**{word}" in guarantees


def test_transformers_generate_reports_an_over_long_question_too(tmp_path, tiny_chat):
    from prompt.evaluation.chat import ChatFormatter
    from prompt.evaluation.answer_flags import check_args
    from prompt.evaluation.runner import run_benchmark
    from prompt.evaluation.transformers_baseline import TransformersBaseline

    model, tokenizer = tiny_chat
    path = tmp_path / "answers.jsonl"
    args = answer_args(tmp_path, [(1, "hello"), ("too-long", "word " * 80)], path)
    formatter = ChatFormatter(tokenizer, args.model_id)
    with pytest.raises(PPDError, match="too-long"):
        run_benchmark(args, check_args(args), TransformersBaseline(model, [2]), formatter, "hf")
    assert [row["question_id"] for row in rows(path)] == [1]
