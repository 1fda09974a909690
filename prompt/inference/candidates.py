"""Candidate sources from the context, beside the prompt tokens.

A context source looks at one sequence's token context (prompt and every token so far, the step's root last) and
proposes tokens to follow the root: one chain (a list of ids), or a small tree (`Branches`). The decode loop
merges every source's proposal into one tree of context nodes (`merge_proposals`: shared prefixes once) and
hangs it from the root, so one forward verifies the prompt tokens' guesses and every source's guesses together.

A source sees each sequence's lifecycle, as transformers' `update_candidate_strategy` and vLLM's proposers'
`start_request`/`stop_request` do: `propose(seq, context)` at every step (the first call starts the sequence),
`accepted(seq, tokens)` with the tokens each step emitted, `finished(seq)` once when the sequence ends (done,
cancelled or abandoned). `seq` is the decode loop's `SequenceState`, the same object for the sequence's life; its
`stop_token_ids` are that request's stop tokens (None for a call outside the loop: the source's own).

    class CandidateSource(Protocol):
        def propose(self, seq, context: list[int]) -> list[int] | Branches: ...
        def accepted(self, seq, tokens: list[int]) -> None: ...
        def finished(self, seq) -> None: ...

Sources: `PromptLookup` (prompt lookup decoding's one chain) and `SuffixCandidates` (every earlier match of the
context's longest repeated suffix, in the context and in earlier answers of the process, as a scored tree).
"""
from __future__ import annotations

import heapq
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from prompt.errors import PPDError
from prompt.model.stops import truncate_at_stop


@dataclass(frozen=True)
class Branches:
    """A tree of candidate tokens after the root: node i is `tokens[i]`, its parent `parents[i]` (-1: the root),
    every parent listed before its children."""

    tokens: tuple = ()
    parents: tuple = ()

    @classmethod
    def chain(cls, tokens) -> "Branches":
        return cls(tuple(tokens), tuple(range(-1, len(tokens) - 1)))

    def __len__(self) -> int:
        return len(self.tokens)


class CandidateSource(Protocol):
    def propose(self, seq, context: list[int]) -> "list[int] | Branches":
        """A chain of tokens, or a tree, guessed to follow `context`, the context of `seq` (empty: no guess)."""

    def accepted(self, seq, tokens: list[int]) -> None:
        """`seq` emitted `tokens` (root first)."""

    def finished(self, seq) -> None:
        """`seq` ended: nothing more is proposed for it."""


def request_stops(seq, own: frozenset) -> frozenset:
    """The stop tokens a proposal for `seq` ends at: the request's own (`seq.stop_token_ids`), else `own`."""
    stops = getattr(seq, "stop_token_ids", None)
    return own if stops is None else stops


class StatelessSource:
    """A source that keeps nothing per sequence: its lifecycle calls do nothing."""

    stop_token_ids: frozenset = frozenset()

    def accepted(self, seq, tokens) -> None:
        pass

    def finished(self, seq) -> None:
        pass


def merge_proposals(proposals, max_nodes: int | None = None) -> Branches:
    """The sources' chains and trees as one tree of distinct paths (a path two sources propose is one branch),
    in the sources' order, at most `max_nodes` nodes (the first proposals' nodes first)."""
    tokens, parents, index = [], [], {}  # index: (parent node, token) -> node
    for proposal in proposals:
        if not isinstance(proposal, Branches):
            proposal = Branches.chain(proposal)
        mapped = []
        for token, parent in zip(proposal.tokens, proposal.parents):
            at = -1 if parent == -1 else mapped[parent]
            if at is None:  # its parent was cut by the budget
                mapped.append(None)
                continue
            node = index.get((at, token))
            if node is None and (max_nodes is None or len(tokens) < max_nodes):
                node = index[(at, token)] = len(tokens)
                tokens.append(int(token))
                parents.append(at)
            mapped.append(node)
    return Branches(tuple(tokens), tuple(parents))


class PromptLookup(StatelessSource):
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
        self.stop_token_ids = frozenset(stop_token_ids)

    def propose(self, seq, context: list[int]) -> list[int]:
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
                chain = context[best + n: best + n + self.num_tokens]
                return truncate_at_stop(chain, request_stops(seq, self.stop_token_ids))
        return []


class NgramIndex:
    """Where every n-gram (n up to `max_ngram`) of a growing token sequence ends: `ends[ngram]` lists the
    positions just after each occurrence, oldest first. Sequences appended with `add` are kept apart by a
    separator, so no n-gram spans two of them."""

    SEPARATOR = -1

    def __init__(self, max_ngram: int):
        self.max_ngram = max_ngram
        self.tokens: list = []
        self.ends = defaultdict(list)

    def extend(self, tokens) -> None:
        seq, ends, top = self.tokens, self.ends, self.max_ngram
        for token in tokens:
            seq.append(token)
            end = len(seq)
            if token == self.SEPARATOR:
                continue
            for n in range(1, min(top, end) + 1):
                gram = tuple(seq[end - n: end])
                if gram[0] == self.SEPARATOR:
                    break
                ends[gram].append(end)

    def add(self, tokens) -> None:
        """Append a separate sequence (an earlier answer)."""
        if self.tokens:
            self.extend([self.SEPARATOR])
        self.extend(tokens)


class SuffixHistory:
    """Earlier answers (of one SuffixCandidates, or of several that share it), indexed for lookups;
    at most `max_tokens` tokens are kept, the oldest answers dropped first."""

    def __init__(self, max_ngram: int = 16, max_tokens: int = 100_000):
        self.max_ngram, self.max_tokens = max_ngram, max_tokens
        self.answers: list = []
        self.index = NgramIndex(max_ngram)

    def add(self, answer) -> None:
        answer = [int(t) for t in answer]
        if len(answer) < 2:
            return
        self.answers.append(answer)
        self.index.add(answer)
        if len(self.index.tokens) > self.max_tokens:  # keep the newer half
            kept, total = [], 0
            for old in reversed(self.answers):
                total += len(old) + 1
                if total > self.max_tokens // 2:
                    break
                kept.append(old)
            self.answers = kept[::-1]
            self.index = NgramIndex(self.max_ngram)
            for old in self.answers:
                self.index.add(old)


class _Sequence:
    """What a SuffixCandidates keeps for one sequence between its first proposal and its end."""

    def __init__(self, seq, max_ngram: int):
        self.seq = seq  # held, so that its id cannot be reused while this entry lives
        self.index = NgramIndex(max_ngram)  # the sequence's context so far
        self.answer: list = []  # the tokens it emitted


class SuffixCandidates:
    """Suffix decoding's rule (SuffixDecoding, vLLM's `suffix` method) over the context and earlier answers.

    Each step: the longest suffix of the context (up to `max_match` tokens) that occurred before, in the context
    or in an earlier answer; the continuations of up to `max_occurrences` of its latest occurrences become a tree
    of counts; nodes are taken best first by their estimated probability (the share of occurrences that
    continue that way, multiplied down the path), none below `min_probability`, at most
    `min(max_nodes, spec_factor * match length)` of them: a long match earns a large tree, a 1-token match a
    small one. Paths stop after the request's stop tokens. A sequence's answer (the tokens it emitted) enters the
    history when it finishes; the history is this source's own (a Decoder's, so a served model's process) unless
    `history` is given, and `forget()` empties it (a benchmark does after its warm-up, so that no answer is timed
    against itself).
    """

    def __init__(self, max_nodes: int = 16, max_depth: int = 12, max_match: int = 16, spec_factor: float = 2.0,
                 min_probability: float = 0.1, max_occurrences: int = 32, min_match: int = 1, stop_token_ids=(),
                 history: SuffixHistory | None = None, use_history: bool = True):
        if max_nodes < 1 or max_depth < 1 or max_match < 1 or not 1 <= min_match <= max_match:
            raise PPDError("suffix candidates need max_nodes, max_depth and max_match >= 1 and "
                           "1 <= min_match <= max_match")
        self.max_nodes, self.max_depth, self.max_match, self.min_match = max_nodes, max_depth, max_match, min_match
        self.spec_factor, self.min_probability, self.max_occurrences = spec_factor, min_probability, max_occurrences
        self.stop_token_ids = frozenset(stop_token_ids)
        self.history = (history if history is not None else SuffixHistory(max(16, max_match))) if use_history else None
        if self.history is not None and self.history.max_ngram < max_match:
            raise PPDError(f"the history indexes n-grams up to {self.history.max_ngram}, shorter than max_match")
        self._sequences: dict = {}  # id(seq) -> _Sequence, from its first proposal to its end
        self._lock = threading.Lock()  # one Decoder may serve several threads (a web server's pool)

    def __getstate__(self) -> dict:  # copies (a benchmark's rounds replay a saved state) get a lock of their own
        with self._lock:
            return {key: value for key, value in self.__dict__.items() if key != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Drop the history and every sequence seen so far."""
        with self._lock:
            self._sequences = {}
            if self.history is not None:
                self.history.__init__(self.history.max_ngram, self.history.max_tokens)

    def accepted(self, seq, tokens) -> None:
        with self._lock:
            sequence = self._sequences.get(id(seq))
            if sequence is not None:
                sequence.answer.extend(int(t) for t in tokens)

    def finished(self, seq) -> None:
        """`seq`'s answer joins the history; its own index is dropped."""
        with self._lock:
            sequence = self._sequences.pop(id(seq), None)
            if sequence is not None and self.history is not None:
                self.history.add(sequence.answer)

    def _sequence(self, seq, context) -> _Sequence:
        """`seq`'s entry (new at its first proposal; None: a call outside the loop, indexed afresh), its index
        brought up to `context`."""
        sequence = self._sequences.get(id(seq)) if seq is not None else None
        if sequence is None:
            sequence = _Sequence(seq, self.max_match)
            if seq is not None:
                self._sequences[id(seq)] = sequence
        sequence.index.extend(context[len(sequence.index.tokens):])
        return sequence

    def occurrences(self, context, index: NgramIndex, exclude_end: int | None = None):
        """(match length, continuation start positions in `index`) of the longest suffix of `context` found."""
        best = (0, [])
        for n in range(1, min(self.max_match, len(context)) + 1):
            ends = index.ends.get(tuple(context[-n:]))
            if ends and exclude_end is not None and ends[-1] >= exclude_end:  # the suffix itself, always last
                ends = ends[:-1]
            if not ends:
                break
            best = (n, ends)
        return best

    def propose(self, seq, context: list[int]) -> Branches:
        with self._lock:
            return self._propose(seq, context)

    def _propose(self, seq, context: list[int]) -> Branches:
        sequence = self._sequence(seq, context)
        length = len(context)
        # in the context itself, an occurrence must end before the context does (its continuation exists)
        match, ends = self.occurrences(context, sequence.index, exclude_end=length)
        sources = [(sequence.index.tokens, ends)]
        if self.history is not None:
            h_match, h_ends = self.occurrences(context, self.history.index)
            if h_match > match:
                match, sources = h_match, [(self.history.index.tokens, h_ends)]
            elif h_match == match and h_match:
                sources.append((self.history.index.tokens, h_ends))
        if match < self.min_match:
            return Branches()
        budget = min(self.max_nodes, max(1, int(self.spec_factor * match)))
        return self._best_first(self._count_tree(sources, request_stops(seq, self.stop_token_ids)), budget)

    def _count_tree(self, sources, stops):
        """{path tuple: occurrences continuing along it} over the latest occurrences' continuations."""
        counts = defaultdict(int)
        total = 0
        for tokens, ends in sources:
            for end in ends[-self.max_occurrences:]:
                continuation = []
                for token in tokens[end: end + self.max_depth]:
                    if token == NgramIndex.SEPARATOR:
                        break
                    continuation.append(token)
                continuation = truncate_at_stop(continuation, stops)
                if not continuation:
                    continue
                total += 1
                for d in range(1, len(continuation) + 1):
                    counts[tuple(continuation[:d])] += 1
        counts[()] = total
        return counts

    def _best_first(self, counts, budget: int) -> Branches:
        total = counts[()]
        if not total:
            return Branches()
        children = defaultdict(list)
        for path in counts:
            if path:
                children[path[:-1]].append(path)
        # best first; among equal estimates the shallower node (a wider tree rather than a deeper one)
        heap = [(-counts[p] / total, 1, p) for p in children[()]]
        heapq.heapify(heap)
        tokens, parents, node_of = [], [], {(): -1}
        while heap and len(tokens) < budget:
            negative, depth, path = heapq.heappop(heap)
            probability = -negative
            if probability < self.min_probability:
                break
            node_of[path] = len(tokens)
            tokens.append(path[-1])
            parents.append(node_of[path[:-1]])
            for child in children[path]:
                heapq.heappush(heap, (-probability * counts[child] / counts[path], depth + 1, child))
        return Branches(tuple(tokens), tuple(parents))
