"""Chat formatting: the tokenizer's chat template, or a FastChat conversation template (vicuna...)."""
from __future__ import annotations

import torch

from prompt.data.chat import chat_template_ids
from prompt.errors import PPDError
from prompt.model.stops import stop_token_ids_for


def decode_answer(tokenizer, token_ids, stop_reason: str = "length") -> str:
    """The text of generated tokens. An answer cut off by a token or context limit can end in the middle of a
    multi-byte character (an emoji): its incomplete bytes are left out instead of becoming U+FFFD."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    if stop_reason == "eos" or not text.endswith("\ufffd"):
        return text
    for cut in range(1, min(4, len(token_ids)) + 1):  # a character spans at most 4 bytes, so at most 4 tokens
        shorter = tokenizer.decode(token_ids[:-cut], skip_special_tokens=True)
        if not shorter.endswith("\ufffd"):
            return shorter
    return text


class RawPrompt(str):
    """A prompt that is the model's whole input, given to it as it is: no chat template (a HumanEval problem's code,
    which upstream's answer scripts tokenize as it is)."""


class ChatFormatter:
    """Turns a conversation (alternating user/assistant texts) into input ids ending with the assistant's turn."""

    def __init__(self, tokenizer, model_id: str | None = None):
        if tokenizer is None:
            raise PPDError("the model folder has no tokenizer")
        self.tokenizer = tokenizer
        self.template = None
        if model_id:
            from fastchat.model.model_adapter import get_conversation_template

            template = get_conversation_template(model_id)
            if template.name != "one_shot":  # FastChat's fallback when it does not know the model
                self.template = template
        if self.template is None and not getattr(tokenizer, "chat_template", None):
            raise PPDError("the tokenizer has no chat template and --model-id names no FastChat template")

    @property
    def stop_token_ids(self) -> list:
        ids = set()
        if self.template is not None and self.template.stop_token_ids:
            ids.update(self.template.stop_token_ids)
        return sorted(ids)

    def stops(self, model=None) -> list:
        """Every id that ends a reply: the template's, the tokenizer's EOS and `model`'s generation-config EOS."""
        return stop_token_ids_for(self.tokenizer, self.stop_token_ids, model=model)

    def input_ids(self, turns: list[str]) -> torch.Tensor:
        """turns = [user, assistant, user, ...] ending with a user message; returns [1, L] ids. A single turn that is a
        `RawPrompt` is the model's input as it is, tokenized with no template (upstream's HumanEval prompts)."""
        if len(turns) == 1 and isinstance(turns[0], RawPrompt):
            return self.tokenizer(str(turns[0]), return_tensors="pt").input_ids
        if self.template is not None:
            conv = self.template.copy()
            for i, text in enumerate(turns):
                conv.append_message(conv.roles[i % 2], text)
            conv.append_message(conv.roles[1], None)
            return self.tokenizer(conv.get_prompt(), return_tensors="pt").input_ids
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        return chat_template_ids(self.tokenizer, messages)
