"""The OpenAI-compatible server (script/serve.sh: FastChat's controller and API server, our PPD worker), through the
official `openai` client on loopback; and the worker's pieces on their own."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from prompt.errors import PPDError
from prompt.serve.params import check_messages, check_sampling
from prompt.serve.worker import chatml_conversation, format_messages, held_back

openai = pytest.importorskip("openai")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "smollm2-135m-instruct"
START_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body: bytes):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def group_alive(pgid) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(process, sig, timeout=30) -> bool:
    """Send `sig` to serve.sh alone; True when it and every process it started are gone within `timeout`."""
    process.send_signal(sig)
    deadline = time.monotonic() + timeout
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    clean = not group_alive(process.pid)
    if not clean:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    return clean


def start_serve(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, LOGDIR=str(tmp_path))
    return subprocess.Popen(["bash", os.path.join(ROOT, "script", "serve.sh"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The whole stack once per module (float32, one decoding at a time, one more queued); Ctrl-C stops it."""
    logs = tmp_path_factory.mktemp("serve-logs")
    port, worker_port = free_port(), free_port()
    process = start_serve(logs, "--port", str(port), "--worker-port", str(worker_port), "--dtype", "float32",
                          "--threads", "1", "--concurrency", "1", "--max-queue", "1")
    try:
        line, deadline = "", time.monotonic() + START_TIMEOUT
        while "ready:" not in line:
            line = process.stderr.readline()
            if not line and process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve.sh did not start: {line!r}; logs in {logs}")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        yield {"client": client, "port": port, "worker": f"http://127.0.0.1:{worker_port}"}
    finally:
        assert stop_group(process, signal.SIGINT), "serve.sh left processes running after SIGINT"


@pytest.fixture(scope="module")
def offline():
    """The offline answer script's decoding: the default model in float32, PPD greedy, the tokenizer's chat template."""
    from prompt.evaluation.chat import chat_template_ids
    from prompt.inference.decoding import Decoder
    from prompt.model.stops import stop_token_ids_for
    from prompt.model.defaults import load_prompt_decoder

    torch.set_num_threads(1)
    model = load_prompt_decoder(None, dtype="float32", device="cpu")
    tokenizer = model.tokenizer
    decoder = Decoder(model, stop_token_ids=stop_token_ids_for(tokenizer))

    def chat(messages, max_new_tokens):
        ids = chat_template_ids(tokenizer, messages)
        return tokenizer.decode(decoder.generate(ids, max_new_tokens).token_ids, skip_special_tokens=True)

    def complete(prompt, max_new_tokens):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        return tokenizer.decode(decoder.generate(ids, max_new_tokens).token_ids, skip_special_tokens=True)

    return {"chat": chat, "complete": complete, "tokenizer": tokenizer, "model": model, "decoder": decoder,
            "ids": lambda messages: chat_template_ids(tokenizer, messages)}


# Questions as a user would send them; the writing one is sampled at 0.7 by the answer script unless --temperature 0
# (FastChat's category temperature), which is how the script's and the server's answers once seemed to disagree.
SCRIPT_QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": [
        "Compose a short travel blog post about a recent trip to Hawaii.",
        "Rewrite your previous response. Start every sentence with the letter A."]},
    {"question_id": 2, "category": "reasoning", "turns": [
        "If a train leaves at 3 pm and travels for 2 hours, when does it arrive? Explain briefly."]},
]
SCRIPT_TOKENS = 40


@pytest.fixture(scope="module")
def script_answers(tmp_path_factory):
    """The answer script's rows for SCRIPT_QUESTIONS: the default model in float32, greedy (--temperature 0)."""
    folder = tmp_path_factory.mktemp("answer-script")
    questions, answers = folder / "question.jsonl", folder / "answers.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in SCRIPT_QUESTIONS))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "gen_model_answer_prompt_decoding.py"), "--dtype",
                           "float32", "--temperature", "0", "--question-file", str(questions), "--answer-file",
                           str(answers), "--max-new-token", str(SCRIPT_TOKENS), "--warmup", "0", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    assert "greedy" in proc.stdout and "sampl" not in proc.stdout.split("decoding", 1)[1], proc.stdout
    rows = {row["question_id"]: row for row in map(json.loads, answers.read_text().splitlines())}
    return [(q, rows[q["question_id"]]["choices"][0]["turns"]) for q in SCRIPT_QUESTIONS]


def test_server_answers_as_the_answer_script_at_temperature_0(stack, script_answers, offline):
    """Through the openai client, chat completions (streamed and not, multi-turn with the script's own earlier answer)
    and completions on the chat-formatted text give the answer file's answers (the script strips them, as FastChat)."""
    client, tokenizer = stack["client"], offline["tokenizer"]
    for question, expected_turns in script_answers:
        messages = []
        for turn, expected in zip(question["turns"], expected_turns):
            messages.append({"role": "user", "content": turn})
            assert expected, "the script wrote an empty answer"
            response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=SCRIPT_TOKENS,
                                                      temperature=0)
            assert response.choices[0].message.content.strip() == expected, (question["question_id"], turn)
            if len(messages) == 1:
                stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=SCRIPT_TOKENS,
                                                        temperature=0, stream=True)
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip() == expected
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                completion = client.completions.create(model=MODEL, prompt=text, max_tokens=SCRIPT_TOKENS,
                                                       temperature=0)
                assert completion.choices[0].text.strip() == expected
            messages.append({"role": "assistant", "content": expected})


def test_decoding_paths_agree_with_transformers_generate_on_the_chat_template(offline):
    """Decoder.generate (PPD and plain), generate_batch and transformers' greedy generate on the base model give the
    same tokens for one conversation under the tokenizer's chat template (float32, temperature 0)."""
    from prompt.inference.decoding import Decoder

    model, tokenizer, decoder = offline["model"], offline["tokenizer"], offline["decoder"]
    messages = [{"role": "system", "content": "You are concise."},
                {"role": "user", "content": "Name three uses of copper and say why it is chosen for each."}]
    ids = offline["ids"](messages)
    assert ids[0].tolist() == tokenizer(tokenizer.apply_chat_template(messages, tokenize=False,
                                                                      add_generation_prompt=True)).input_ids
    n = 48
    ppd = decoder.generate(ids, n).token_ids  # the tuned decoding for float32 (the worker's and the script's)
    tree = Decoder(model, tree_length=16, stop_token_ids=[tokenizer.eos_token_id])  # the prompt tokens' tree
    assert tree.ppd
    other = offline["ids"]([{"role": "user", "content": "Hi!"}])
    batch = decoder.generate_batch([ids[0], other[0]], n)
    plain = Decoder(model, tree_length=0, prompt_lookup_num_tokens=0,
                    stop_token_ids=[tokenizer.eos_token_id]).generate(ids, n).token_ids
    with torch.inference_mode():
        out = model.base_model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.eos_token_id, attention_mask=torch.ones_like(ids))
    reference = out[0, ids.shape[1]:].tolist()
    assert len(reference) > 8
    assert ppd == reference and plain == reference and batch[0].token_ids == reference
    assert tree.generate(ids, n).token_ids == reference
    assert batch[1].token_ids == decoder.generate(other, n).token_ids


QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_models_lists_the_worker(stack):
    assert [m.id for m in stack["client"].models.list().data] == [MODEL]


def test_chat_greedy_equals_offline_decoding_and_stream_joins_to_it(stack, offline):
    expected = offline["chat"](QUESTION, 24)
    response = stack["client"].chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    assert response.choices[0].message.content == expected
    assert response.usage.completion_tokens > 0
    prompt_tokens = offline["ids"](QUESTION).shape[1]
    assert response.usage.prompt_tokens == prompt_tokens
    assert response.usage.total_tokens == prompt_tokens + response.usage.completion_tokens
    stream = stack["client"].chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0,
                                                     stream=True)
    deltas = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([d for d in deltas if d]) > 1 and "".join(deltas) == expected


def test_multi_turn_with_system_message(stack, offline):
    messages = [{"role": "system", "content": "You are terse."}, *QUESTION,
                {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
    expected = offline["chat"](messages, 16)
    response = stack["client"].chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    assert response.choices[0].message.content == expected


def test_completions_and_stop_strings(stack, offline):
    prompt = "The three primary colors are"
    expected = offline["complete"](prompt, 16)
    client = stack["client"]
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert response.choices[0].text == expected and response.choices[0].finish_reason == "length"
    stop = expected.split()[2]  # a word in the middle of the answer
    cut = expected[: expected.find(stop)]
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=[stop])
    assert response.choices[0].text == cut and response.choices[0].finish_reason == "stop"
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=stop, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == cut


def test_sampling_answers(stack):
    response = stack["client"].chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0.7)
    assert response.choices[0].message.content and response.usage.completion_tokens <= 8


@pytest.mark.parametrize("body, status", [
    (b'{"model": "smollm2-135m-instruct", "messages": [', 400),
    (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}', 404),
    (b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400),
    (b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9000}', 400),
    (b'{"model": "smollm2-135m-instruct", "messages": []}', 400),
    (b'{"model": "smollm2-135m-instruct", "messages": [{"role": "robot", "content": "hi"}]}', 400),
    (b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}', 400),
    (b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, '
     b'"top_p": 1.5, "stream": true}', 400),
])
def test_bad_requests_get_an_error_and_the_server_keeps_serving(stack, body, status):
    code, answer = post(f"http://127.0.0.1:{stack['port']}/v1/chat/completions", body)
    assert code == status and answer["object"] == "error" and answer["message"]
    response = stack["client"].completions.create(model=MODEL, prompt="Hello", max_tokens=2, temperature=0)
    assert response.usage.completion_tokens == 2


def worker_queue(stack) -> int:
    return post(stack["worker"] + "/worker_get_status", b"{}")[1]["queue_length"]


def wait_for_queue(stack, n, timeout=20):
    deadline = time.monotonic() + timeout
    while worker_queue(stack) != n:
        assert time.monotonic() < deadline, f"the worker's queue did not reach {n}"
        time.sleep(0.05)


def test_overload_is_refused_with_429_and_disconnects_free_their_slots(stack):
    client = stack["client"]
    story = [{"role": "user", "content": "Write a very long story about a dragon."}]
    first = client.chat.completions.create(model=MODEL, messages=story, max_tokens=2000, temperature=0, stream=True)
    assert next(iter(first)) is not None  # decoding: the one slot is taken
    queued = {}

    def second():
        queued["stream"] = client.chat.completions.create(model=MODEL, messages=story, max_tokens=2000,
                                                          temperature=0, stream=True)

    thread = threading.Thread(target=second)
    thread.start()
    wait_for_queue(stack, 2)  # one decoding, one waiting: the queue is full
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0, stream=True)
    first.close()  # the client goes away mid-stream: its slot goes to the waiting request
    thread.join(60)
    assert "stream" in queued
    queued["stream"].close()
    wait_for_queue(stack, 0)
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0)
    assert response.usage.completion_tokens == 4


def test_sigterm_during_start_stops_everything(tmp_path):
    process = start_serve(tmp_path, "--port", str(free_port()), "--threads", "1")
    deadline = time.monotonic() + 60
    while not (tmp_path / "controller.out").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    assert stop_group(process, signal.SIGTERM)
    assert process.returncode == 143


def test_serve_sh_refuses_bad_options(tmp_path):
    for args in (["--port", "x"], ["--dtype", "int3"], ["--frobnicate"]):
        result = subprocess.run(["bash", os.path.join(ROOT, "script", "serve.sh"), *args], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    for command in (["-m", "prompt.serve.worker", "--concurrency", "0"], [os.path.join(ROOT, "script", "serve_load_test.py"), "--clients", "0"]):
        result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=60, cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=ROOT))
        assert result.returncode == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


# --- the pieces, without a server -----------------------------------------------------------------------

def test_chatml_conversation_formats_like_the_tokenizer(offline):
    tokenizer = offline["tokenizer"]
    conv = chatml_conversation(tokenizer)
    assert conv is not None
    for messages in (QUESTION, [{"role": "system", "content": ""}, *QUESTION],
                     [*QUESTION, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Why?"}]):
        assert format_messages(conv, messages) == tokenizer.apply_chat_template(messages, tokenize=False,
                                                                                add_generation_prompt=True)


def test_a_conversation_template_unlike_the_chat_template_is_warned_about(offline):
    from webui_helpers import tiny_chat_tokenizer

    from prompt.serve.worker import conversation_for

    conv, warning = conversation_for(offline["tokenizer"], "smollm2-135m-instruct")
    assert conv.name == "chatml" and warning is None  # built from the tokenizer's own template
    conv, warning = conversation_for(offline["tokenizer"], "smollm2-135m-instruct", "vicuna_v1.1")
    assert "vicuna_v1.1" in warning and "answer scripts" in warning
    conv, warning = conversation_for(tiny_chat_tokenizer(), "vicuna-7b")  # FastChat's choice by the model's name
    assert conv.name == "vicuna_v1.1" and warning


def test_held_back_keeps_what_could_begin_a_stop_string():
    assert held_back("Hello wor", ["world"]) == 3
    assert held_back("Hello", ["world"]) == 0
    assert held_back("ab", ["b", "abc"]) == 2


def test_sampling_options_that_cannot_be_honoured_are_refused():
    assert check_sampling(0, top_p=0.1, top_k=5) == (0, None, None)  # greedy: top-p and top-k change nothing
    assert check_sampling(0.7, top_p=1, top_k=-1) == (0.7, None, None)
    assert check_sampling(0.7, top_p=0.9, top_k=40) == (0.7, 0.9, 40)  # exact sampling honours both
    for kwargs in ({"top_p": 0.0}, {"top_p": 1.2}, {"presence_penalty": 0.5}, {"logprobs": 2}, {"best_of": 3}):
        with pytest.raises(PPDError):
            check_sampling(0.7, **kwargs)
    with pytest.raises(PPDError):
        check_sampling(-0.1)
    for messages in ([], [{"role": "system", "content": "x"}], [{"role": "user", "content": ["image"]}]):
        with pytest.raises(PPDError):
            check_messages(messages)


class LetterTokenizer:
    """Enough of a tokenizer for the worker on a tiny Llama: one id per character, id i decodes to one letter."""

    bos_token, eos_token_id = None, 2

    def __call__(self, text, add_special_tokens=True):
        return type("Encoding", (), {"input_ids": [3 + ord(c) % 90 for c in text]})

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i % 26) for i in ids if not (skip_special_tokens and i == self.eos_token_id))


def tiny_worker(use_ppd=True, decoding_file=None):
    from conftest import tiny_llama
    from prompt.model import PromptConfig, PromptDecoder
    from prompt.serve.worker import PPDWorker

    ppd = PromptDecoder(tiny_llama(), PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    if decoding_file:  # where the loader records a checkpoint's decoding.json (the file, and since main's rewrite its folder)
        ppd.decoding_file, ppd.checkpoint_dir = decoding_file, os.path.dirname(decoding_file)
    return PPDWorker(ppd, LetterTokenizer(), use_ppd=use_ppd, context_length=200)


def test_plain_worker_decodes_without_prompt_tokens_and_without_the_tuned_lookup(tmp_path):
    tuned = tmp_path / "decoding.json"
    tuned.write_text(json.dumps({"float32": {"prompt_lookup_num_tokens": 5}}))
    ppd = tiny_worker(decoding_file=str(tuned)).decoder()
    assert ppd.ppd and ppd.prompt_lookup_num_tokens == 5  # the tuned decoding
    plain = tiny_worker(use_ppd=False, decoding_file=str(tuned)).decoder()
    assert not plain.ppd and plain.prompt_lookup_num_tokens == 0


def test_concurrent_requests_share_one_batch_and_answer_as_alone():
    from concurrent.futures import ThreadPoolExecutor

    from prompt.inference.batch import DecodeBatch

    worker = tiny_worker()
    prompts = ["hello world", "a b c d e f", "zz", "the quick brown fox jumps", "q"]
    alone = [list(worker.chunks({"prompt": p, "max_new_tokens": 20 + i, "temperature": 0}))[-1]
             for i, p in enumerate(prompts)]
    sizes, original = [], DecodeBatch.step

    def recording_step(batch):
        sizes.append(len(batch))
        return original(batch)

    DecodeBatch.step = recording_step
    try:
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(lambda ip: list(worker.chunks(
                {"prompt": ip[1], "max_new_tokens": 20 + ip[0], "temperature": 0}))[-1], enumerate(prompts)))
        # a client that stops reading leaves the batch; the next requests are unaffected
        stream = worker.chunks({"prompt": "hello world", "max_new_tokens": 40, "temperature": 0})
        next(stream)
        stream.close()
        again = list(worker.chunks({"prompt": prompts[1], "max_new_tokens": 21, "temperature": 0}))[-1]
    finally:
        DecodeBatch.step = original
    assert [c["text"] for c in together] == [c["text"] for c in alone]
    assert [c["usage"] for c in together] == [c["usage"] for c in alone]
    assert max(sizes) > 1, "concurrent requests should decode as rows of one batch"
    assert again["text"] == alone[1]["text"]
    deadline = time.monotonic() + 30  # the scheduler lets the last row go after its client read the answer
    while (worker._scheduler._tickets or len(worker._scheduler.batch)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not worker._scheduler._tickets and len(worker._scheduler.batch) == 0


def test_worker_stream_stops_at_stop_strings_without_showing_them():
    worker = tiny_worker()
    params = {"prompt": "hello world", "max_new_tokens": 30, "temperature": 0}
    full = list(worker.chunks(params))
    assert full[-1]["finish_reason"] in ("length", "stop") and all(c["error_code"] == 0 for c in full)
    text = full[-1]["text"]
    assert full[-1]["usage"]["prompt_tokens"] == 11 and full[-1]["usage"]["completion_tokens"] <= 30
    stop = text[10:12]
    chunks = list(worker.chunks({**params, "stop": [stop, "never"]}))
    assert chunks[-1]["text"] == text[: text.find(stop)] and chunks[-1]["finish_reason"] == "stop"
    assert all(chunks[-1]["text"].startswith(c["text"]) for c in chunks)  # nothing shown is taken back
    echo = list(worker.chunks({**params, "echo": True}))[-1]["text"]
    assert echo == "hello world" + text


@pytest.mark.parametrize("params, words", [
    ({"prompt": "x" * 190, "max_new_tokens": 20}, "context"),
    ({"prompt": "hi", "max_new_tokens": 0}, "max_tokens"),
    ({"prompt": "", "max_new_tokens": 4}, "empty"),
    ({"prompt": "hi", "max_new_tokens": 4, "temperature": 0.5, "top_p": 1.5}, "top_p"),
])
def test_worker_refuses_what_it_cannot_honour_with_one_error_chunk(params, words):
    chunks = list(tiny_worker().chunks(params))
    assert len(chunks) == 1 and chunks[0]["error_code"] == 40302 and words in chunks[0]["text"]
