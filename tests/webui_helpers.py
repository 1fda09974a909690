"""Helpers for the web UI tests: a tiny character-level chat tokenizer, a free port, a server runner."""
from __future__ import annotations

import contextlib
import os
import socket
import string
import subprocess
import sys
import time

from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
CHARACTERS = string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,!?'-:;()\n"
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_chat_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with a chat template; ids fit `tiny_llama()` (pad 0, bos 1, eos 2, vocab 97)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(CHARACTERS))}
    assert len(vocab) <= 97
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port (or fail if `process` exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        with contextlib.closing(socket.socket()) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f}s")


def webui_command(*args) -> list:
    """The command line that starts application/webui.py with this Python."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [sys.executable, os.path.join(root, "application", "webui.py"), *map(str, args)]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges: every UTF-8 byte is one token (so 'é' takes two)."""
    from tokenizers import pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


class SlowForward:
    """Sleep `delay` seconds in every forward of a causal LM's body, and count the forwards that overlap."""

    def __init__(self, model, delay: float):
        import threading

        self.delay = delay
        self.lock = threading.Lock()
        self.calls = 0
        self.active = 0
        self.max_active = 0
        model.get_decoder().register_forward_pre_hook(self._before_forward)

    def _before_forward(self, module, args):
        with self.lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
        finally:
            with self.lock:
                self.active -= 1
