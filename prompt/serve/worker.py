"""A FastChat model worker that decodes with PPD (or plainly, `--no-ppd`).

FastChat's controller routes requests to registered workers and FastChat's OpenAI API server
(`python -m prompt.serve.api_server`, FastChat's with stricter checks) turns the OpenAI API into worker
calls: `/worker_generate_stream` streams NUL-separated JSON chunks `{"text", "error_code", "usage",
"finish_reason"}` with the text so far. Registration, heart beats, the conversation template and token
counting come from FastChat's `BaseModelWorker`; this module adds the decoding and the admission control:

- `concurrency` requests decode at once, as rows of one running batch (`prompt.inference.batch.DecodeBatch`,
  stepped by one scheduler thread: a request joins between two steps and leaves when done, each with its own
  token limit, stop tokens and sampling); up to `max_queue` more wait, and beyond that a request is refused at
  once (HTTP 429, error code ENGINE_OVERLOADED).
- A client that goes away mid-stream leaves the batch at the next step and frees its slot.
- `token_stream()` is the one place that turns a request into a stream of token ids.

    python -m prompt.serve.worker --controller-address http://127.0.0.1:21001 --port 21002 [--no-ppd]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import queue
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from prompt.errors import PPDError, cli_entry
from prompt.serve.params import check_sampling

SYSTEM_HEAD, TURN_END = "<|im_start|>system\n", "<|im_end|>"


@dataclass
class TextRequest:
    """One generation request, parsed and checked."""

    input_ids: list
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    stop: list = field(default_factory=list)  # stop strings (not included in the answer)
    stop_token_ids: list = field(default_factory=list)
    echo: str = ""  # text to put before the answer (the prompt, for `echo`)
    seed: int | None = None


def chatml_conversation(tokenizer):
    """A FastChat Conversation that writes exactly what `tokenizer`'s ChatML chat template writes, or None.

    FastChat's API server formats chat messages with the template the worker reports; SmolLM2 (and other
    ChatML models) have none of their own in FastChat, so it is built here from the tokenizer's own template
    (its default system message included) and checked against it on sample conversations.
    """
    from fastchat.conversation import Conversation, SeparatorStyle

    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or "<|im_start|>" not in template:
        return None
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    head = probe.split("<|im_start|>user")[0]
    if not (head.startswith(SYSTEM_HEAD) and head.endswith(TURN_END + "\n")):
        return None
    conv = Conversation(name="chatml", system_template=SYSTEM_HEAD + "{system_message}",
                        system_message=head[len(SYSTEM_HEAD): -len(TURN_END) - 1],
                        roles=("<|im_start|>user", "<|im_start|>assistant"), sep_style=SeparatorStyle.CHATML,
                        sep=TURN_END, stop_str=TURN_END)
    return conv if formats_like_chat_template(conv, tokenizer) else None


SAMPLE_CONVERSATIONS = [[{"role": "user", "content": "Hi"}],
                        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why?"}]]


def formats_like_chat_template(conv, tokenizer) -> bool:
    """Whether FastChat's API server, formatting with `conv`, writes what `tokenizer`'s chat template writes (which
    the answer scripts use) on sample conversations; one the template refuses (a system message) is not compared."""
    compared = 0
    for messages in SAMPLE_CONVERSATIONS:
        try:
            expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 (jinja's TemplateError and the like: a template that refuses a role)
            continue
        if format_messages(conv, messages) != expected:
            return False
        compared += 1
    return compared > 0


def conversation_for(tokenizer, model_path, conv_template=None):
    """(the FastChat Conversation the worker reports, a warning or None): a named template, else one built from
    the tokenizer's ChatML template, else FastChat's choice for `model_path`. The warning says when its prompts
    differ from the tokenizer's chat template, so that the server's answers differ from the answer scripts'."""
    if conv_template:
        from fastchat.conversation import get_conv_template

        conv = get_conv_template(conv_template)
    else:
        conv = chatml_conversation(tokenizer)
        if conv is None:
            from fastchat.model.model_adapter import get_conversation_template

            conv = get_conversation_template(model_path)
            if conv.name == "one_shot" and getattr(tokenizer, "chat_template", None):
                raise PPDError("FastChat has no conversation template matching this model's chat template: "
                               "name one with --conv-template")
    warning = None
    if getattr(tokenizer, "chat_template", None) and not formats_like_chat_template(conv, tokenizer):
        warning = (f"FastChat's conversation template {conv.name!r} writes other prompts than the tokenizer's chat "
                   f"template: chat answers will differ from the answer scripts' unless they use the same template "
                   f"(--model-id naming it)")
    return conv, warning


def format_messages(conv, messages: list) -> str:
    """The prompt FastChat's API server writes for `messages` with `conv` (its own steps, for checks)."""
    conv = conv.copy()
    for message in messages:
        if message["role"] == "system":
            conv.set_system_message(message["content"])
        else:
            conv.append_message(conv.roles[0 if message["role"] == "user" else 1], message["content"])
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def held_back(text: str, stops) -> int:
    """How many characters at the end of `text` could begin a stop string (not to be streamed yet)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(text), len(stop) - 1), longest, -1):
            if stop.startswith(text[-n:]):
                longest = n
                break
    return longest


class PPDWorker:
    """Decoding and admission control, independent of HTTP (FastChat's worker class wraps it below)."""

    def __init__(self, model, tokenizer, use_ppd: bool = True, concurrency: int = 1, max_queue: int = 16,
                 context_length: int | None = None):
        from prompt.model.stops import stop_token_ids_for

        if concurrency < 1 or max_queue < 0:
            raise PPDError("concurrency must be >= 1 and max_queue >= 0")
        self.model, self.tokenizer, self.use_ppd = model, tokenizer, use_ppd
        self.concurrency, self.max_queue = concurrency, max_queue
        base = getattr(model, "base_model", model)
        self.context_length = context_length or getattr(base.config, "max_position_embeddings", None) or 2048
        # as the answer scripts stop (ChatFormatter.stops): the tokenizer's EOS and the model's generation-config EOS
        self.eos_ids = stop_token_ids_for(tokenizer, model=model)
        self._slots = threading.Semaphore(concurrency)
        self._lock = threading.Lock()
        self.pending = 0  # admitted requests: decoding or waiting for a slot
        self._decoder = None
        self._scheduler = None

    # --- requests -------------------------------------------------------------------------------
    def encode(self, prompt: str) -> list:
        """Token ids of a prompt string; no second BOS when the (chat-formatted) text starts with one."""
        bos = getattr(self.tokenizer, "bos_token", None)
        add = not (bos and prompt.startswith(bos))
        return self.tokenizer(prompt, add_special_tokens=add).input_ids

    def parse(self, params: dict) -> TextRequest:
        """A checked TextRequest from FastChat's generation parameters; PPDError for what cannot be honoured."""
        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise PPDError("the prompt is empty")
        if params.get("images"):
            raise PPDError("images are not supported")
        temperature, top_p, top_k = check_sampling(params.get("temperature", 1.0), params.get("top_p"), params.get("top_k"),
                                     params.get("presence_penalty"), params.get("frequency_penalty"),
                                     params.get("logprobs"), params.get("best_of"), params.get("use_beam_search"))
        ids = self.encode(prompt)
        max_new = params.get("max_new_tokens", 256)
        if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 1:
            raise PPDError(f"max_tokens must be a positive integer, got {max_new!r}")
        if len(ids) + max_new > self.context_length:
            raise PPDError(f"the prompt ({len(ids)} tokens) plus max_tokens ({max_new}) exceeds the model's context "
                           f"of {self.context_length} tokens")
        stop = params.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        if not all(isinstance(s, str) for s in stop):
            raise PPDError("stop must be a string or a list of strings")
        extra_ids = [int(t) for t in (params.get("stop_token_ids") or []) if t is not None]
        seed = params.get("seed")
        return TextRequest(input_ids=ids, max_new_tokens=max_new, temperature=temperature, top_p=top_p, top_k=top_k,
                           stop=[s for s in stop if s], stop_token_ids=sorted(set(self.eos_ids) | set(extra_ids)),
                           echo=prompt if params.get("echo") else "", seed=int(seed) if seed is not None else None)

    def decoder(self):
        """The worker's one Decoder (each request brings its own acceptance rule and stop tokens)."""
        from prompt.inference.decoding import Decoder, Decoding

        if self._decoder is None:
            # plain: no prompt tokens and no prompt lookup (the tuned decoding would otherwise add its lookup chain)
            decoding = None if self.use_ppd else Decoding.plain(self.model)
            self._decoder = Decoder(self.model, decoding, stop_token_ids=self.eos_ids)
        return self._decoder

    def rule(self, request: TextRequest):
        """The request's acceptance rule: greedy at temperature 0, exact (lossless) sampling above."""
        from prompt.inference.acceptance import POSTERIOR_ALPHA, POSTERIOR_THRESHOLD, acceptance_rule

        return acceptance_rule(None, request.temperature, posterior_threshold=POSTERIOR_THRESHOLD,
                               posterior_alpha=POSTERIOR_ALPHA, top_p=request.top_p, top_k=request.top_k)

    def token_stream(self, request: TextRequest):
        """The new token ids of `request`, a list per decoding step, decoded as a row of the worker's running batch.

        Closing the returned generator takes the row out of the batch (at the next step) and frees its cache.
        """
        with self._lock:
            if self._scheduler is None:
                self._scheduler = BatchScheduler(self.decoder())
        ticket = self._scheduler.submit(request, self.rule(request))
        try:
            while True:
                item = ticket.outbox.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            ticket.cancelled = True
            self._scheduler.wake()

    def chunks(self, params: dict):
        """FastChat's stream of result dicts for `params`: the text so far, usage, and finally a finish reason."""
        try:
            request = self.parse(params)
        except PPDError as exc:
            yield {"text": str(exc), "error_code": 40302}  # ErrorCode.PARAM_OUT_OF_RANGE
            return
        tokens, shown, finish = [], 0, None
        steps = self.token_stream(request)
        try:
            for step in self._guarded(steps):
                if isinstance(step, dict):  # the decoding failed: its error ends the stream
                    yield step
                    return
                tokens.extend(step)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                cut = min((i for i in (text.find(s) for s in request.stop) if i >= 0), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                elif tokens and tokens[-1] in request.stop_token_ids:
                    finish = "stop"
                elif len(tokens) >= request.max_new_tokens:
                    finish = "length"
                if finish is None:
                    if text.endswith("\ufffd"):  # a character cut in the middle of its bytes
                        continue
                    text = text[: len(text) - held_back(text, request.stop)]
                    if len(text) <= shown:
                        continue
                shown = len(text)
                yield self._chunk(request, text, len(tokens), None)
                if finish is not None:
                    break
        finally:
            steps.close()
        if finish is None:
            finish = "length"  # the context ended
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        yield self._chunk(request, text, len(tokens), finish)

    @staticmethod
    def _guarded(steps):
        """`steps`, with an error from the decoding turned into FastChat's error result (a dict) as the last item."""
        try:
            yield from steps
        except PPDError as exc:
            yield {"text": str(exc), "error_code": 40302}
        except Exception as exc:  # reported to the client; the worker keeps serving
            yield {"text": f"internal error: {type(exc).__name__}: {exc}", "error_code": 50001}

    @staticmethod
    def _chunk(request: TextRequest, text: str, new_tokens: int, finish):
        prompt_tokens = len(request.input_ids)
        return {"text": request.echo + text, "error_code": 0, "finish_reason": finish,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens,
                          "total_tokens": prompt_tokens + new_tokens}}

    # --- admission --------------------------------------------------------------------------------
    def admit(self) -> bool:
        """Count a new request in, unless `concurrency + max_queue` are already in."""
        with self._lock:
            if self.pending >= self.concurrency + self.max_queue:
                return False
            self.pending += 1
            return True

    async def run(self, params: dict, is_disconnected=None):
        """Async stream of result dicts for an admitted request: waits for a slot, decodes in a thread, and on
        the end, an error or the client's going away closes the decoding and frees the slot."""
        executor = ThreadPoolExecutor(1, thread_name_prefix="ppd-request")  # steps and the close run in order
        loop = asyncio.get_running_loop()
        state = {"slot": False, "chunks": None}

        def start():
            self._slots.acquire()
            state["slot"] = True
            state["chunks"] = self.chunks(params)

        def finish():
            try:
                if state["chunks"] is not None:
                    state["chunks"].close()
            finally:
                if state["slot"]:
                    self._slots.release()
                with self._lock:
                    self.pending -= 1

        try:
            await loop.run_in_executor(executor, start)
            while True:
                chunk = await loop.run_in_executor(executor, next, state["chunks"], None)
                if chunk is None:
                    return
                yield chunk
                if is_disconnected is not None and await is_disconnected():
                    return
        finally:
            executor.submit(finish)  # after any step still running, even when this task was cancelled
            executor.shutdown(wait=False)


class _Ticket:
    """A request inside the scheduler: its outbox receives lists of token ids, then None (done) or an exception."""

    def __init__(self, request: TextRequest, rule):
        self.request, self.rule = request, rule
        self.outbox = queue.Queue()
        self.cancelled = False
        self.state = None


class BatchScheduler:
    """One thread that steps a running batch: requests join between steps, leave when done or cancelled."""

    def __init__(self, decoder):
        self.batch = decoder.batch()
        self._inbox = queue.Queue()
        self._tickets = []
        self._thread = threading.Thread(target=self._run, daemon=True, name="ppd-batch")
        self._thread.start()

    def submit(self, request: TextRequest, rule) -> _Ticket:
        ticket = _Ticket(request, rule)
        self._inbox.put(ticket)
        return ticket

    def wake(self) -> None:
        self._inbox.put(None)  # an idle scheduler looks at its cancelled tickets

    def _admit(self, ticket) -> None:
        if ticket is None or ticket.cancelled:
            return
        request = ticket.request
        try:
            ticket.state = self.batch.add(request.input_ids, request.max_new_tokens, seed=request.seed,
                                          rule=ticket.rule, stop_token_ids=request.stop_token_ids)
        except Exception as exc:  # noqa: BLE001 (reported to that request's client)
            ticket.outbox.put(exc)
            return
        self._tickets.append(ticket)

    def _run(self) -> None:
        while True:
            self._admit(self._inbox.get())  # wait for work while the batch is empty
            while True:
                while True:
                    try:
                        self._admit(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                for ticket in [t for t in self._tickets if t.cancelled]:
                    self.batch.remove(ticket.state)
                    self._tickets.remove(ticket)
                if not self._tickets:
                    break
                try:
                    emitted = self.batch.step()
                except Exception as exc:  # noqa: BLE001 (every row's client hears of it; the worker goes on)
                    for ticket in self._tickets:
                        self.batch.remove(ticket.state)
                        ticket.outbox.put(exc)
                    self._tickets = []
                    break
                outbox = {id(t.state): t.outbox for t in self._tickets}
                for state, tokens in emitted:
                    outbox[id(state)].put(tokens)
                for ticket in [t for t in self._tickets if t.state.done]:
                    self._tickets.remove(ticket)
                    ticket.outbox.put(None)


OVERLOADED = {"text": "the server is at capacity: retry later", "error_code": 42903}  # ErrorCode.ENGINE_OVERLOADED


def build_app(core: PPDWorker, fastchat_worker):
    """The worker's HTTP endpoints (FastChat's worker protocol)."""
    app = FastAPI()

    async def read_params(request: Request):
        try:
            params = await request.json()
        except ValueError:
            return None
        return params if isinstance(params, dict) else None

    async def admitted(request: Request):
        """(params, None) for an admitted request, else (None, the error response; 429 when overloaded)."""
        params = await read_params(request)
        if params is None:
            return None, JSONResponse({"text": "the body is not a JSON object", "error_code": 40001}, status_code=400)
        if not core.admit():
            return None, JSONResponse(OVERLOADED, status_code=429)
        return params, None

    @app.post("/worker_generate_stream")
    async def generate_stream(request: Request):
        params, refusal = await admitted(request)
        if refusal is not None:  # FastChat's API server reads the body as one stream chunk
            return StreamingResponse(iter([refusal.body + b"\0"]), status_code=refusal.status_code)

        async def body():
            async for chunk in core.run(params, request.is_disconnected):
                yield json.dumps(chunk).encode() + b"\0"

        return StreamingResponse(body())

    @app.post("/worker_generate")
    async def generate(request: Request):
        params, refusal = await admitted(request)
        if refusal is not None:  # FastChat's API server reads a non-200 answer as an internal error:
            return JSONResponse(json.loads(refusal.body))  # 200 with the error code gives the client its status
        last = None
        async for chunk in core.run(params, request.is_disconnected):
            last = chunk
        return JSONResponse(last)

    @app.post("/worker_get_status")
    async def get_status(request: Request):
        return fastchat_worker.get_status()

    @app.post("/count_token")
    async def count_token(request: Request):
        params = await read_params(request) or {}
        return {"count": len(core.encode(str(params.get("prompt", "")))), "error_code": 0}

    @app.post("/worker_get_conv_template")
    async def get_conv(request: Request):
        return fastchat_worker.get_conv_template()

    @app.post("/model_details")
    async def model_details(request: Request):
        return {"context_length": core.context_length}

    return app


def make_fastchat_worker(core: PPDWorker, controller_addr, worker_addr, model_path, model_names, conv_template=None):
    """FastChat's BaseModelWorker for `core`: registration, heart beats, status and conversation template."""
    from fastchat.serve.base_model_worker import BaseModelWorker

    class Worker(BaseModelWorker):
        def make_conv_template(self, conv_template=None, model_path=None):
            conv, warning = conversation_for(core.tokenizer, model_path, conv_template)
            if warning:
                print(f"warning: {warning}", file=sys.__stderr__, flush=True)
            return conv

        def get_queue_length(self):
            return core.pending

    worker = Worker(controller_addr, worker_addr, uuid.uuid4().hex[:8], model_path, model_names,
                    core.concurrency, conv_template)
    worker.tokenizer, worker.context_len = core.tokenizer, core.context_length
    return worker


def register_when_up(worker, url: str, timeout: float = 300.0) -> threading.Thread:
    """Register with the controller (and start heart beats) once this worker answers at `url`: the controller
    asks the worker for its status while registering it, and drops a worker that does not answer."""
    import time

    import requests

    def run():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.post(url + "/worker_get_status", timeout=2).status_code == 200:
                    worker.init_heart_beat()
                    return
            except requests.exceptions.RequestException:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=run, daemon=True, name="ppd-register")
    thread.start()
    return thread


def load_core(args) -> PPDWorker:
    from prompt.cli import apply_threads
    from prompt.model.defaults import load_prompt_decoder
    from prompt.model.devices import device_kwargs

    apply_threads(args.threads)
    model = load_prompt_decoder(args.model_path, **device_kwargs(args))
    if model.tokenizer is None:
        raise PPDError("the model folder has no tokenizer")
    if not args.no_ppd:
        from prompt.inference.cost_profile import machine_profile

        machine_profile(model, measure=not getattr(args, "no_profile", False))  # this machine's costs, on first use
    return PPDWorker(model, model.tokenizer, use_ppd=not args.no_ppd, concurrency=args.concurrency,
                     max_queue=args.max_queue)


def default_model_name(model_path, use_ppd: bool) -> str:
    from prompt.model.loading import is_default_model

    name = "smollm2-135m-instruct" if is_default_model(model_path) else os.path.basename(os.path.normpath(model_path))
    return name if use_ppd else name + "-plain"


@cli_entry
def main(argv=None):
    from prompt.cli import ArgumentParser, add_model_flags
    from prompt.model.devices import add_device_flags

    parser = ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=21002)
    parser.add_argument("--worker-address", default=None, help="How the controller reaches this worker "
                        "(default http://HOST:PORT).")
    parser.add_argument("--controller-address", default="http://127.0.0.1:21001")
    add_model_flags(parser, "A PPD checkpoint folder (default: the default model with its shipped prompt tokens).",
                    threads="torch CPU threads.")
    parser.add_argument("--model-names", type=lambda s: s.split(","), default=None,
                        help="Comma-separated names clients use (default: the model's, with -plain for --no-ppd).")
    parser.add_argument("--no-ppd", action="store_true", help="Decode plainly (no prompt tokens): a baseline worker.")
    add_device_flags(parser, dtype="float32")
    parser.add_argument("--conv-template", default=None, help="A FastChat conversation template name (default: "
                        "one built from the tokenizer's ChatML template, else FastChat's choice for the model).")
    parser.add_argument("--concurrency", type=int, default=8, help="Requests decoded at once, as rows of one batch "
                        "(default 8).")
    parser.add_argument("--max-queue", type=int, default=16, help="Requests waiting beyond those; more are refused "
                        "with 429 (default 16).")
    parser.add_argument("--no-register", action="store_true", help="Do not register with a controller.")
    parser.add_argument("--no-profile", action="store_true", help="Do not measure this machine's forward costs on "
                        "first use (about a minute, once per model, dtype and machine): the decoding is then priced "
                        "on the profile shipped with the checkpoint.")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.max_queue < 0:
        raise PPDError("--concurrency must be >= 1 and --max-queue >= 0")
    import uvicorn

    core = load_core(args)
    names = args.model_names or [default_model_name(args.model_path, not args.no_ppd)]
    address = args.worker_address or f"http://{args.host}:{args.port}"
    worker = make_fastchat_worker(core, args.controller_address, address, args.model_path or "smollm2-135m-instruct",
                                  names, args.conv_template)
    if not args.no_register:
        register_when_up(worker, f"http://{args.host}:{args.port}")
    print(f"worker ready: {', '.join(worker.model_names)} ({'PPD' if core.use_ppd else 'plain'}, {args.dtype}) "
          f"on http://{args.host}:{args.port}", file=sys.__stderr__, flush=True)
    uvicorn.run(build_app(core, worker), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
