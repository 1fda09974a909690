"""Chat web UI for Parallel Prompt Decoding: answers stream as the decoder accepts tokens.

    python application/webui.py [--ppd-path PATH_OR_HUB_ID] [--host 127.0.0.1] [--port 7860]
                                [--device cuda] [--dtype float16|bfloat16|float32] [--load-in-4bit|--load-in-8bit]
                                [--max-new-token 256] [--temperature 0.5] [--no-highlight]

`build_demo(model, tokenizer)` builds the gradio app for any PromptDecoder (or plain causal LM);
`main()` parses the command line, loads the model and serves the app. Each request decodes with its own `Decoder`
and KV cache, so several browser sessions can chat at the same time.

Why the answers go through transformers' `generate` and not `Decoder.stream`: the web UI is where the transformers
path (PPD as `generate`'s decoding, `prompt.inference.hf_generate`) runs end to end, the way a transformers user
streams: `generate` in a thread, a streamer (`StepStreamer`, a `TextIteratorStreamer` handing on token ids per
step) and a stopping criterion (`UntilStopped`, for Stop, Clear and a closed page). `generate` blocks until it
returns, so it needs the thread, and the thread needs the streamer's queue and the stopping criterion to end early;
`Decoder.stream`, a generator, would need none of them, and would leave the `generate` path unexercised by a user.
"""
from __future__ import annotations

import contextlib
import copy
import html
import logging
import os
import queue
import sys
import threading
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the UI must work offline
try:
    import prompt  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from transformers import GenerationConfig, StoppingCriteria, TextIteratorStreamer  # noqa: E402

from prompt.cli import ArgumentParser  # noqa: E402
from prompt.data.chat import chat_template_ids  # noqa: E402
from prompt.errors import PPDError, cli_entry  # noqa: E402
from prompt.evaluation.chat import ChatFormatter  # noqa: E402
from prompt.inference import Decoder, GenerationResult  # noqa: E402
from prompt.inference.choice import resolve_decoding  # noqa: E402
from prompt.inference.cost_profile import machine_profile  # noqa: E402
from prompt.inference.dtype_choice import fastest_decoding_dtype  # noqa: E402
from prompt.inference.hf_generate import generate as ppd_generate, ppd_decoder  # noqa: E402
from prompt.model.devices import DTYPE_CHOICES, add_device_flags, device_kwargs  # noqa: E402
from prompt.model.loading import is_default_model, looks_like_path  # noqa: E402
from prompt.model.prompt_decoder import PromptDecoder  # noqa: E402
from prompt.model.stops import stop_token_ids_for  # noqa: E402

TITLE = "Parallel Prompt Decoding chat"
HIGHLIGHT_STYLE = "background-color: rgba(250, 204, 21, 0.45); border-radius: 3px;"
# Used only when the tokenizer has no chat template of its own.
FALLBACK_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}Assistant:{% endif %}")
# upstream's web UI defaults: a temperature of 0.5, highlighting on
DEFAULT_TEMPERATURE = 0.5
DEFAULT_HIGHLIGHT = True
GENERATING = "generating…"
STOPPED = "stopped"
STOP_REASONS = {"eos": "end of answer", "length": "token limit reached", "context": "context window full"}
BUSY = "Still answering your previous message: wait for it (or press Stop), then send again."

log = logging.getLogger("ppd.webui")


# --------------------------------------------------------------------------------------------------
# Answer text: incremental detokenisation, split by where the tokens came from
# --------------------------------------------------------------------------------------------------
class AnswerText:
    """The text of an answer being streamed, as pieces `[text, from_prompt_tokens]`.

    Each step decodes the whole answer so far (correct for tokens that split multi-byte characters);
    an incomplete character at the end waits for the tokens that complete it.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list = []
        self.text = ""
        self.pieces: list = []

    def add(self, token_ids, from_prompt_tokens: bool, final: bool = False) -> None:
        """Append tokens; `from_prompt_tokens` marks the guesses that the base model accepted."""
        self.ids.extend(token_ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final:
            text = text.rstrip("\ufffd")
        keep = len(os.path.commonprefix([self.text, text]))
        if keep < len(self.text):  # decoding changed earlier text (rare): cut the pieces back
            self._truncate(keep)
        if len(text) > keep:
            if self.pieces and self.pieces[-1][1] == from_prompt_tokens:
                self.pieces[-1][0] += text[keep:]
            else:
                self.pieces.append([text[keep:], from_prompt_tokens])
        self.text = text

    def add_step(self, step_tokens) -> None:
        """One decoding step: the base model's own token, then the accepted prompt-token guesses."""
        self.add(step_tokens[:1], False)
        if len(step_tokens) > 1:
            self.add(step_tokens[1:], True)

    def finish(self) -> None:
        """Decode the end without holding back an incomplete character."""
        self.add([], False, final=True)

    def _truncate(self, length: int) -> None:
        kept, total = [], 0
        for text, flag in self.pieces:
            if total >= length:
                break
            kept.append([text[: length - total], flag])
            total += len(kept[-1][0])
        self.pieces = kept


def _span(text: str) -> str:
    return f'<span class="ppd-guess" style="{HIGHLIGHT_STYLE}">{html.escape(text, quote=False)}</span>'


def render_pieces(pieces, highlight: bool) -> str:
    """Chat markdown for an answer; with `highlight`, prompt-token text is wrapped in coloured spans."""
    if not highlight:
        return "".join(text for text, _ in pieces)
    out = []
    for text, from_prompt in pieces:
        if not from_prompt:
            out.append(text)
            continue
        # one span per line, so that the markdown around (paragraphs, lists) stays intact
        out.append("\n".join(_span(line) if line else "" for line in text.split("\n")))
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Conversation: turns {"role", "content", "pieces", "error"} in a per-session ChatSession
# --------------------------------------------------------------------------------------------------
class ChatSession:
    """One browser session's conversation, and a run counter that lets Stop, Clear or Regenerate end the
    answer being generated (the answer checks `is_current` after every decoding step). `answering` is held
    while an answer is generated: one answer at a time per session, so turns never interleave."""

    def __init__(self):
        self.turns: list = []
        self.run = 0
        self.stopped_run = 0  # the last run that the Stop button ended
        self.answering = threading.Lock()

    def __deepcopy__(self, memo):  # gradio copies the initial state for each session; a lock cannot be copied
        fresh = ChatSession()
        fresh.turns = copy.deepcopy(self.turns, memo)
        fresh.run, fresh.stopped_run = self.run, self.stopped_run
        return fresh

    def begin(self) -> int:
        """Start a new answer, superseding any running one; returns its run number."""
        self.run += 1
        return self.run

    def supersede(self) -> None:
        """End the running answer silently (Clear, Regenerate)."""
        self.run += 1

    def stop(self) -> None:
        """End the running answer; it reports itself as stopped."""
        self.stopped_run = self.run
        self.run += 1

    def is_current(self, run: int) -> bool:
        return self.run == run


def model_messages(turns) -> list:
    """The turns that the model sees: errors and the messages that caused them are left out."""
    return [{"role": t["role"], "content": t["content"]} for t in turns if not t.get("error")]


def chat_messages(turns, highlight: bool) -> list:
    """The Chatbot's value for a conversation."""
    messages = []
    for turn in turns:
        content = turn["content"]
        if turn["role"] == "assistant" and turn.get("pieces") and not turn.get("error"):
            content = render_pieces(turn["pieces"], highlight)
        messages.append({"role": turn["role"], "content": content})
    return messages


def mark_error(turns, message: str) -> None:
    """Turn the last (assistant) turn into an error and keep the user message that caused it out of the prompt."""
    turns[-1].update(content=message, pieces=None, error=True)
    if len(turns) > 1 and turns[-2]["role"] == "user":
        turns[-2]["error"] = True


def format_stats(result: GenerationResult, decoding: str, state: str = GENERATING) -> str:
    """One line of markdown: speed, compression ratio, what the answer cost, the decoding used, and `state`."""
    return (f"**Speed:** {result.tokens_per_second:.1f} tokens/s · "
            f"**Compression:** {result.accept_length:.2f} tokens per forward pass · "
            f"{result.new_tokens} tokens in {result.forward_passes} forward passes · "
            f"{decoding} · {state}")


class StepStreamer(TextIteratorStreamer):
    """transformers' TextIteratorStreamer, handing on each decoding step's token ids (a list: the base model's own
    token, then the accepted prompt-token guesses) instead of text, so that `AnswerText` can mark where the text
    came from. Iterating it yields the steps; `timeout` as in TextIteratorStreamer."""

    def __init__(self, tokenizer, timeout: float | None = None):
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout)
        self.text_queue = queue.Queue(maxsize=1)  # generation keeps at most a step ahead of the page
        self.ended = False

    def put(self, value) -> None:
        if self.next_tokens_are_prompt:  # generate hands the prompt first
            self.next_tokens_are_prompt = False
            return
        self.text_queue.put(value.reshape(-1).tolist(), timeout=self.timeout)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def drain(self) -> None:
        """Drop the steps not taken yet (so that a generation that is being stopped is not kept waiting)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.text_queue.get_nowait()


class UntilStopped(StoppingCriteria):
    """A stopping criterion that ends generation once `event` is set (Stop, Clear, a closed page)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class ChatEngine:
    """Turns a conversation into a streamed answer with a PromptDecoder (or a plain causal LM), through
    transformers' `generate` interface decoded by PPD (`prompt.inference.hf_generate`) and a streamer."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 256, decoder_class=Decoder):
        self.decoder_class = decoder_class
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.has_prompt_tokens = isinstance(model, PromptDecoder)
        # a Vicuna checkpoint is prompted with FastChat's vicuna template, as upstream's web UI prompts every model
        self.conversation = ChatFormatter(tokenizer, "vicuna") if is_vicuna(model) else None
        self.stop_token_ids = (set(self.conversation.stops(model)) if self.conversation is not None else
                               stop_token_ids_for(tokenizer, model=model))
        self.chat_template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE

    def generation_options(self, use_ppd: bool, temperature: float) -> dict:
        """generate()'s options for these settings. With PPD on, the checkpoint's tuned decoding for the dtype (tree
        size, prompt lookup); off, plain decoding. Above temperature 0, sampling from the whole distribution (no top-k
        or top-p), which PPD does exactly."""
        ppd = use_ppd and self.has_prompt_tokens
        sample = temperature > 0
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=sample,
                                  temperature=temperature if sample else None, top_k=0 if sample else None,
                                  top_p=1.0 if sample else None, eos_token_id=sorted(self.stop_token_ids),
                                  prompt_lookup_num_tokens=None if ppd else 0)
        return {"generation_config": config, "tree_length": None if ppd else 0, "decoder_class": self.decoder_class}

    def describe(self, use_ppd: bool, temperature: float) -> str:
        """The decoding generate() runs for these settings, in words."""
        options = self.generation_options(use_ppd, temperature)
        return ppd_decoder(self.model, options["generation_config"], options["tree_length"],
                           self.decoder_class).describe()

    def encode(self, messages) -> torch.Tensor:
        """Token ids of the conversation, ending with the assistant's generation prompt."""
        if self.conversation is not None:
            return self.conversation.input_ids([m["content"] for m in messages])
        return chat_template_ids(self.tokenizer, messages, chat_template=self.chat_template)

    def stream_answer(self, turns, use_ppd: bool, temperature: float, keep_going=lambda: True):
        """Append an assistant turn to `turns` and fill it as tokens arrive; yields the stats line each step.

        `generate` runs in a thread and hands each step to a StepStreamer (the module docstring says why not
        `Decoder.stream`). Once `keep_going()` is false, yields a
        last line that says "stopped" and ends; generation stops after its current step (also when the consumer
        goes away). Input errors (an over-long prompt) turn the answer into an "Error: ..." message.
        """
        use_ppd = bool(use_ppd) and self.has_prompt_tokens
        result = GenerationResult()
        answer = AnswerText(self.tokenizer)
        turn = {"role": "assistant", "content": "", "pieces": answer.pieces}
        turns.append(turn)
        stop, errors, worker = threading.Event(), [], None
        try:
            input_ids = self.encode(model_messages(turns[:-1]))
            temperature = float(temperature)
            options = self.generation_options(use_ppd, temperature)
            # with PPD on, the tuned decoding (which may be plain greedy where no tree pays, e.g. float32 on a CPU)
            decoding = self.describe(use_ppd, temperature) if use_ppd else "plain decoding"
            streamer = StepStreamer(self.tokenizer)

            def run():
                try:
                    ppd_generate(self.model, input_ids, streamer=streamer, result=result,
                                 stopping_criteria=[UntilStopped(stop)], **options)
                except BaseException as exc:  # handed to the consumer
                    errors.append(exc)
                finally:
                    streamer.end()

            worker = threading.Thread(target=run, name="ppd-webui-generate", daemon=True)
            worker.start()
            for step_tokens in streamer:
                if not keep_going():  # the step is dropped: the answer stays as last shown
                    self._end(worker, streamer, stop)
                    del result.token_ids[len(answer.ids):]
                    yield format_stats(result, decoding, STOPPED)
                    return
                answer.add_step(step_tokens)
                turn["content"], turn["pieces"] = answer.text, answer.pieces
                yield format_stats(result, decoding)
            self._end(worker, streamer, stop)
            if errors:
                raise errors[0]
            if result.stop_reason == "eos":  # cut by a token or context limit, an incomplete last character is left out
                answer.finish()
            turn["content"], turn["pieces"] = answer.text, answer.pieces
            yield format_stats(result, decoding, STOP_REASONS.get(result.stop_reason, "done"))
        except PPDError as exc:
            mark_error(turns, f"Error: {exc}")
            yield f"Error: {exc}"
        except Exception as exc:  # keep the server and the session usable whatever happens
            log.exception("generation failed")
            mark_error(turns, f"Error: generation failed ({type(exc).__name__}: {exc})")
            yield "Error: generation failed"
        finally:  # also when the consumer goes away (a cancelled request): the model stops after its current step
            if worker is not None:
                self._end(worker, streamer, stop)

    @staticmethod
    def _end(worker: threading.Thread, streamer: StepStreamer, stop: threading.Event) -> None:
        """Stop the generate thread after its current step and wait for it."""
        stop.set()
        while worker.is_alive():
            streamer.drain()
            worker.join(0.01)


def is_vicuna(model) -> bool:
    """Whether `model` is a Vicuna checkpoint: "vicuna" in its folder's, its base model's or its own name."""
    config = getattr(model, "config", None)
    names = (getattr(model, "checkpoint_dir", None), getattr(config, "base_model_name_or_path", None),
             getattr(getattr(model, "base_model", None), "name_or_path", None), getattr(model, "name_or_path", None))
    return any("vicuna" in str(name).lower() for name in names if name)


# --------------------------------------------------------------------------------------------------
# The gradio app
# --------------------------------------------------------------------------------------------------
def decoding_label(engine) -> str:
    """The decoding "Use PPD" switches on, in words: the checkpoint's tuned decoding for the model's dtype."""
    dtype = str(engine.model.dtype).replace("torch.", "")
    if not engine.has_prompt_tokens:
        return f"Decoding: plain greedy ({dtype}; no prompt tokens loaded)"
    return f"With PPD: {engine.describe(True, 0.0)} ({dtype}); without: plain decoding"


def build_demo(model, tokenizer, max_new_tokens: int = 256, title: str = TITLE, concurrency: int = 4,
               decoder_class=Decoder, temperature: float = DEFAULT_TEMPERATURE,
               highlight: bool = DEFAULT_HIGHLIGHT) -> gr.Blocks:
    """The chat app for `model` (a PromptDecoder, or a plain causal LM with PPD switched off).

    `temperature` and `highlight` are the controls' initial values (upstream's: 0.5, on).

    `concurrency` answers are generated at once (across sessions); `decoder_class` (a Decoder
    subclass) lets tests and experiments change how tokens are produced.

    API endpoints (for gradio_client): /send (message, use_ppd, highlight, temperature),
    /regenerate (use_ppd, highlight, temperature) and /clear return (message box, chat, stats);
    /render (highlight) returns the chat. Each client is its own session.
    """
    engine = ChatEngine(model, tokenizer, max_new_tokens, decoder_class)
    with gr.Blocks(title=title) as demo:
        controls = lay_out_controls(title, engine, temperature, highlight)
        connect_controls(controls, ChatHandlers(engine))
    demo.queue(default_concurrency_limit=concurrency)
    return demo


@dataclass
class Controls:
    """The app's components: the session state, the chat, the message box, the buttons and the settings."""

    session: gr.State
    chatbot: gr.Chatbot
    message: gr.Textbox
    send_button: gr.Button
    stop_button: gr.Button
    regenerate_button: gr.Button
    clear_button: gr.Button
    use_ppd: gr.Checkbox
    highlight: gr.Checkbox
    temperature: gr.Slider
    stats: gr.Markdown

    @property
    def settings(self) -> list:
        return [self.use_ppd, self.highlight, self.temperature]

    @property
    def outputs(self) -> list:
        return [self.message, self.chatbot, self.session, self.stats]


def lay_out_controls(title: str, engine, temperature: float, highlight: bool) -> Controls:
    """The page, top to bottom: the title, the chat, the message row, the buttons, the settings, the stats line."""
    gr.Markdown(f"# {title}")
    session = gr.State(ChatSession())
    chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chat", buttons=["copy", "copy_all"])
    with gr.Row():
        message = gr.Textbox(label="Message", placeholder="Type a message, then press Enter or Send",
                             show_label=False, scale=6, elem_id="message", autofocus=True)
        send_button = gr.Button("Send", variant="primary", scale=1, elem_id="send")
    with gr.Row():
        stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
        regenerate_button = gr.Button("Regenerate", elem_id="regenerate")
        clear_button = gr.Button("Clear", elem_id="clear")
    with gr.Row():
        use_ppd = gr.Checkbox(value=engine.has_prompt_tokens, interactive=engine.has_prompt_tokens,
                              label="Use PPD", elem_id="use-ppd")
        gr.Markdown(decoding_label(engine), elem_id="decoding")
        highlight_box = gr.Checkbox(value=highlight, label="Highlight tokens that came from the prompt tokens",
                                    elem_id="highlight")
        temperature_slider = gr.Slider(0.0, 2.0, value=temperature, step=0.01, elem_id="temperature",
                                       label="Temperature (0 = greedy; above 0: exact sampling)")
    stats = gr.Markdown("Speed and compression (tokens per forward pass) of the last answer appear here.",
                        label="Stats", elem_id="stats")
    return Controls(session, chatbot, message, send_button, stop_button, regenerate_button, clear_button, use_ppd,
                    highlight_box, temperature_slider, stats)


def connect_controls(controls: Controls, handlers: "ChatHandlers") -> None:
    """What each control does, and the API names gradio_client calls."""
    c = controls
    generating = [
        c.send_button.click(handlers.send, [c.message, c.session, *c.settings], c.outputs, api_name="send",
                            concurrency_id="generate"),
        c.message.submit(handlers.send, [c.message, c.session, *c.settings], c.outputs, api_visibility="private",
                         concurrency_id="generate"),
        c.regenerate_button.click(handlers.regenerate, [c.session, *c.settings], c.outputs, api_name="regenerate",
                                  concurrency_id="generate"),
    ]
    # Stop flags the session; the answer sees the flag after its current step and ends itself
    # with a last "stopped" update (a gradio `cancels` could race with that update).
    c.stop_button.click(ChatSession.stop, c.session, None, queue=False, api_visibility="private")
    c.clear_button.click(handlers.clear, c.session, c.outputs, api_name="clear", cancels=generating)
    c.chatbot.clear(handlers.clear, c.session, c.outputs, cancels=generating, api_visibility="private")
    c.highlight.change(handlers.render, [c.session, c.highlight], c.chatbot, api_name="render")


class ChatHandlers:
    """The app's event handlers over one engine; each gets the browser session's `ChatSession` and yields
    (message box, chat, session, stats line) updates."""

    def __init__(self, engine: ChatEngine):
        self.engine = engine

    def send(self, message, session, use_ppd, highlight, temperature):
        """One answer at a time per session: a message sent while one is generated is refused, visibly, and stays
        in the message box (never interleaved with the running answer)."""
        if not session.answering.acquire(blocking=False):
            gr.Warning(BUSY)
            yield message, chat_messages(session.turns, highlight), session, BUSY
            return
        try:
            yield from self.answer(message, session, use_ppd, highlight, temperature)
        finally:
            session.answering.release()

    def regenerate(self, session, use_ppd, highlight, temperature):
        """Answer the last user message again (the running answer, if any, ends after its current step)."""
        session.supersede()
        if not session.answering.acquire(timeout=60):
            gr.Warning(BUSY)
            yield "", chat_messages(session.turns, highlight), session, BUSY
            return
        try:
            turns = session.turns
            while turns and turns[-1]["role"] != "user":
                turns.pop()
            if not turns:
                gr.Warning("Nothing to regenerate.")
                yield "", [], session, "Nothing to regenerate."
                return
            yield from self.answer(turns.pop()["content"], session, use_ppd, highlight, temperature)
        finally:
            session.answering.release()

    @staticmethod
    def clear(session):
        session.supersede()
        session.turns = []  # a new list: an answer still finishing its step writes to the old one
        return "", [], session, "Conversation cleared."

    @staticmethod
    def render(session, highlight):
        return chat_messages(session.turns, highlight)

    def answer(self, message, session, use_ppd, highlight, temperature):
        """Add the user's message and stream the answer; the caller holds `session.answering`."""
        message = (message or "").strip()
        if not message:
            gr.Warning("The message is empty.")
            session.turns.append({"role": "assistant", "content": "Error: the message is empty.", "error": True})
            yield "", chat_messages(session.turns, highlight), session, "Error: the message is empty."
            return
        run = session.begin()
        turns = session.turns  # Clear replaces the list: this answer then writes to the old one, out of sight
        turns.append({"role": "user", "content": message})
        yield "", chat_messages(turns, highlight), session, GENERATING
        for stats in self.engine.stream_answer(turns, use_ppd, temperature, lambda: session.is_current(run)):
            if not session.is_current(run) and session.stopped_run != run:
                return  # superseded by Clear or Regenerate: they own the display now
            if stats.startswith("Error:"):
                gr.Warning(stats)
            yield "", chat_messages(turns, highlight), session, stats


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    """The command line, checked before anything is loaded (bad values raise PPDError)."""
    parser = ArgumentParser(description="Chat with a model through Parallel Prompt Decoding in the browser.")
    parser.add_argument("--ppd-path", default=None,
                        help="prompt-token folder or Hub repo id (default: the default model with its default prompt tokens)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    add_device_flags(parser, dtype=None)
    parser.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                        help="model dtype (default: the one in which the checkpoint's tuned decoding is fastest on "
                             "this kind of device)")
    parser.add_argument("--max-new-token", type=int, default=256, help="most tokens per answer (default 256)")
    parser.add_argument("--concurrency", type=int, default=4, help="answers generated at once (default 4)")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                        help=f"the temperature slider's initial value (default {DEFAULT_TEMPERATURE:g}, upstream's; "
                             f"0: greedy)")
    parser.add_argument("--no-highlight", action="store_true",
                        help="start with highlighting of the prompt tokens' accepted guesses off (default: on, as "
                             "upstream)")
    parser.add_argument("--no-profile", action="store_true",
                        help="Do not measure this machine's forward costs on first use (about a minute, once per "
                             "model, dtype and machine); the decoding is then priced on the profile shipped with the "
                             "checkpoint.")
    args = parser.parse_args(argv)
    if args.max_new_token < 1:
        raise PPDError(f"--max-new-token must be >= 1, got {args.max_new_token}")
    if args.concurrency < 1:
        raise PPDError(f"--concurrency must be >= 1, got {args.concurrency}")
    if not 0 <= args.temperature <= 2:
        raise PPDError(f"--temperature must be in 0..2, got {args.temperature:g}")
    if not 0 <= args.port <= 65535:
        raise PPDError(f"--port must be in 0..65535, got {args.port}")
    if (not is_default_model(args.ppd_path) and looks_like_path(args.ppd_path)
            and not os.path.exists(os.path.expanduser(args.ppd_path))):
        raise PPDError(f"--ppd-path {args.ppd_path!r} does not exist")
    return args


@cli_entry
def main(argv=None):
    """Load the model named on the command line and serve the chat UI until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from prompt.model.defaults import load_prompt_decoder

    if args.dtype is None:
        args.dtype = fastest_decoding_dtype(args.ppd_path, args.device)
    model = load_prompt_decoder(args.ppd_path, **device_kwargs(args))
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise PPDError(f"no tokenizer found for {args.ppd_path!r}")
    machine_profile(model, measure=not args.no_profile)  # this machine's costs, measured on first use
    choice = resolve_decoding(model)  # a decoding.json naming a missing tree is refused before the page starts
    if choice.reason:
        print(f"decoding: {choice.reason}")
    demo = build_demo(model, tokenizer, max_new_tokens=args.max_new_token, concurrency=args.concurrency,
                      temperature=args.temperature, highlight=not args.no_highlight)
    try:
        demo.launch(server_name=args.host, server_port=args.port, show_error=True)
    except OSError as exc:  # e.g. the port is taken
        raise PPDError(f"cannot serve on {args.host}:{args.port}: {exc}") from None


if __name__ == "__main__":
    main()
