"""Candidate sources from the context, beside the prompt tokens.

A context source looks at the token context (prompt and every token so far, the step's root last) and
proposes one chain of tokens to follow the root. The decode loop puts each chain into the step's tree as
a branch from the root, so one forward verifies the prompt tokens' guesses and every chain together.

    class CandidateSource(Protocol):
        def propose(self, context: list[int]) -> list[int]: ...
"""
from __future__ import annotations

from typing import Protocol

from prompt.errors import PPDError
from prompt.model.stops import truncate_at_stop


class CandidateSource(Protocol):
    def propose(self, context: list[int]) -> list[int]:
        """A chain of tokens guessed to follow `context` (empty: no guess this step)."""


class PromptLookup:
    """Prompt lookup decoding's rule: find the latest n-gram of the context earlier in the context (n from
    `max_ngram` down to 1) and propose up to `num_tokens` tokens that followed it there.

    transformers takes the first match in the text; the most recent one with a full chain (the default here)
    is a little better on chat, where most copied tokens come from earlier in the reply itself.
    """

    def __init__(self, num_tokens: int = 10, max_ngram: int = 3, most_recent: bool = True, stop_token_ids=()):
        if num_tokens < 1:
            raise PPDError(f"the prompt lookup length must be >= 1, got {num_tokens}")
        if max_ngram < 1:
            raise PPDError(f"the prompt lookup n-gram size must be >= 1, got {max_ngram}")
        self.num_tokens = num_tokens
        self.max_ngram = max_ngram
        self.most_recent = most_recent
        self.stop_token_ids = set(stop_token_ids)

    def propose(self, context: list[int]) -> list[int]:
        length = len(context)
        for n in range(min(self.max_ngram, length - 1), 0, -1):
            tail = context[length - n:]
            first = tail[0]
            # windows context[i:i+n] that end before the tail itself, so a continuation exists
            starts = range(length - n - 1, -1, -1) if self.most_recent else range(0, length - n)
            best = None
            for i in starts:
                if context[i] == first and context[i: i + n] == tail:
                    # a very recent match runs into the end of the context (in a repeating loop the latest
                    # match leaves one token): take the most recent match with a full chain, else the longest
                    if best is None or length - i > length - best:
                        best = i
                    if length - (i + n) >= self.num_tokens:
                        break
            if best is not None:
                return truncate_at_stop(context[best + n: best + n + self.num_tokens], self.stop_token_ids)
        return []
