"""How deep a step's context candidates are worth verifying: each draft cut to the depth that pays on this machine.

A draft of n context nodes makes a plain step's forward cost `relative_cost(1 + n)` times a one-input forward (the
machine's cost profile; on a CPU whose one-row products run a faster kernel, a second input costs up to half a
forward more). A draft pays only where the tokens it is expected to add make up for that, and what a draft is
expected to add depends on the request: chat answers repeat little of their context, a summary or a rewrite much.

Per sequence, a `DraftGate` keeps, for each depth d, how often earlier drafts were accepted at least d deep. Every
draft is scored against the tokens the sequence went on to emit, whether it was verified or cut: a greedy
verification accepts exactly the draft's longest path that those tokens follow, so a cut draft teaches as much as a
verified one. Each step's draft is cut to the depth D that maximises the predicted tokens per unit of cost,
(1 + sum over d <= D of P(accepted >= d)) / relative_cost(inputs up to depth D), and sent only where that beats a
plain step by `MIN_GAIN`; otherwise the step runs plainly (one input, the model's own causal mask). The rates decay
(`DECAY` per scored draft), so a sequence that starts copying opens the gate within a few steps. A sequence starts
from what the decoder's earlier sequences accepted (`DraftPricing.prior`).

Greedy output is unchanged: cutting a draft changes what a step verifies, never what the base model would emit.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

from prompt.errors import PPDError
from prompt.inference.candidates import Branches

MAX_DEPTH = 32  # deepest draft node priced; deeper nodes are cut
DECAY = 0.8  # each scored draft weighs the earlier ones of its sequence by this: they follow its last few drafts
PRIOR_WEIGHT = 2.0  # pseudo-drafts of the prior at a sequence's start
PRIOR_LEARNING = 0.5  # weight of a finished sequence's rates in the prior of the next ones
# P(accepted >= d | drafted to depth d) before any sequence ended: a guess (each depth 0.7 times as likely as the one
# above it), replaced as the decoder's sequences end
FIRST_PRIOR = tuple(0.3 * 0.7 ** d for d in range(MAX_DEPTH))
MIN_GAIN = 1.03  # a draft must be predicted this much faster than a plain step (its mask and tree cost host time)


class DraftPricing:
    """What a draft costs on this machine, and what drafts of earlier sequences were accepted (shared by every
    sequence of one decoding; thread-safe).

    `costs[i]`: the cost of a verify forward of i + 1 inputs relative to one input (`costs[0]` is 1);
    `special_per_node`: special tokens appended to each context node (each is one more input)."""

    def __init__(self, costs: Sequence[float], special_per_node: int = 0):
        costs = tuple(float(c) for c in costs)
        if not costs or abs(costs[0] - 1.0) > 1e-9 or any(c <= 0 for c in costs):
            raise PPDError("draft pricing needs positive relative costs starting at 1.0 for one input")
        self.costs, self.special_per_node = costs, special_per_node
        self.prior = list(FIRST_PRIOR)
        self._lock = threading.Lock()

    def relative_cost(self, inputs: int) -> float:
        """The cost of a forward of `inputs` inputs over one input's (linear past the last priced count)."""
        if inputs <= len(self.costs):
            return self.costs[inputs - 1]
        last = len(self.costs)
        slope = (self.costs[-1] - self.costs[-2]) if last > 1 else self.costs[-1]
        return self.costs[-1] + max(slope, 0.0) * (inputs - last)

    def start(self) -> "DraftGate":
        """The gate of a new sequence."""
        with self._lock:
            return DraftGate(self, list(self.prior))

    def learn(self, rates: list) -> None:
        """Blend a finished sequence's rates into the prior of the next sequences."""
        with self._lock:
            self.prior = [(1 - PRIOR_LEARNING) * p + PRIOR_LEARNING * r for p, r in zip(self.prior, rates)]


def node_depths(draft: Branches) -> list:
    """Depth of every node of `draft` (a child of the root has depth 1)."""
    depths = []
    for parent in draft.parents:
        depths.append(1 if parent == -1 else depths[parent] + 1)
    return depths


def accepted_depth(draft: Branches, future: list) -> int:
    """How deep greedy verification accepts `draft` when the tokens after its root are `future`: the length of its
    longest path that `future` follows."""
    at, depth = -1, 0
    for token in future:
        child = next((i for i, (t, p) in enumerate(zip(draft.tokens, draft.parents)) if p == at and t == token), None)
        if child is None:
            break
        at, depth = child, depth + 1
    return depth


def cut_to_depth(draft: Branches, depths: list, depth: int) -> Branches:
    """The nodes of `draft` at most `depth` deep (parents come before children, so they form a smaller tree)."""
    if depth >= max(depths, default=0):
        return draft
    index, tokens, parents = {}, [], []
    for i, (token, parent, d) in enumerate(zip(draft.tokens, draft.parents, depths)):
        if d <= depth:
            index[i] = len(tokens)
            tokens.append(token)
            parents.append(-1 if parent == -1 else index[parent])
    return Branches(tuple(tokens), tuple(parents))


class DraftGate:
    """One sequence's draft depths: `cut` each step's draft, `observe` each step's emitted tokens, `finish` at its
    end (its rates join the prior)."""

    def __init__(self, pricing: DraftPricing, prior: list):
        self.pricing = pricing
        self.shown = [PRIOR_WEIGHT] * MAX_DEPTH  # decayed count of scored drafts that reached depth d + 1
        self.hits = [PRIOR_WEIGHT * p for p in prior]  # ... of which were accepted at least d + 1 deep
        self.emitted: list = []  # the sequence's tokens so far
        self.pending: list = []  # (draft, its depths, where in `emitted` its future begins) not yet scored
        self._proposed = None  # this step's draft, until the step's tokens say where its future begins
        self.drafts = self.sent = 0  # drafts seen, and verified (cut to a depth > 0)
        self.scored = 0

    def rates(self) -> list:
        """P(accepted >= d | drafted to depth d) for d = 1, 2, ...: never rising with depth (a depth that few drafts
        reached keeps no more than the one above it)."""
        rates, top = [], 1.0
        for hits, shown in zip(self.hits, self.shown):
            top = min(top, hits / shown if shown > 0 else 0.0)
            rates.append(top)
        return rates

    def best_depth(self, depths: list, base_inputs: int = 1) -> int:
        """The depth to cut a draft whose nodes lie at `depths` (0: send nothing), for a step of `base_inputs`
        inputs without it."""
        pricing, rates = self.pricing, self.rates()
        per_node = 1 + pricing.special_per_node
        base_cost = pricing.relative_cost(base_inputs)
        counts = [0] * (min(max(depths, default=0), MAX_DEPTH) + 1)
        for d in depths:
            if d < len(counts):
                counts[d] += 1
        best, best_gain, expected, nodes = 0, MIN_GAIN, 1.0, 0
        for d in range(1, len(counts)):
            expected += rates[d - 1]
            nodes += counts[d]
            gain = expected / (pricing.relative_cost(base_inputs + nodes * per_node) / base_cost)
            if gain > best_gain:
                best, best_gain = d, gain
        return best

    def cut(self, draft: Branches, base_inputs: int = 1) -> Branches:
        """This step's `draft` cut to the depth that pays (empty: a plain step); the whole draft is scored later."""
        if not draft:
            self._proposed = None
            return draft
        depths = node_depths(draft)
        self._proposed = (draft, depths)
        self.drafts += 1
        depth = self.best_depth(depths, base_inputs)
        self.sent += depth > 0
        return cut_to_depth(draft, depths, depth) if depth else Branches()

    def observe(self, tokens: list) -> None:
        """The step emitted `tokens` (its root first): score every draft whose future is now known."""
        if self._proposed is not None:  # this step's draft followed its root
            self.pending.append(self._proposed + (len(self.emitted) + 1,))
            self._proposed = None
        self.emitted.extend(tokens)
        waiting = []
        for draft, depths, start in self.pending:
            deepest = min(max(depths), MAX_DEPTH)
            if len(self.emitted) - start >= deepest:
                self._score(accepted_depth(draft, self.emitted[start: start + deepest]), deepest)
            else:
                waiting.append((draft, depths, start))
        self.pending = waiting

    def _score(self, accepted: int, deepest: int) -> None:
        self.scored += 1
        for d in range(deepest):
            self.shown[d] = self.shown[d] * DECAY + 1
            self.hits[d] = self.hits[d] * DECAY + (accepted > d)

    def finish(self) -> None:
        """The sequence ended: its rates (where it scored drafts) join the prior of the next sequences."""
        if self.scored:
            self.pricing.learn(self.rates())
        self.scored = 0
