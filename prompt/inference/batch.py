"""The verification step over rows: one sequence is a batch of one row, a running batch is many.

Each row is one sequence's `SequenceState` (its own tree, context candidates, acceptance rule, stop tokens and
token limit). A step, in the paper's order, for every row at once:

1. `Decoder.propose`: each row's own tree (dynamic depth) and context candidates;
2. `tree_inputs`: every row's tree inputs after the cache, padded to the largest tree, with a 4D mask that shows
   each row its own valid cache slots and its own tree (None where plain causal attention is the same: the
   model's own mask, the kernels of transformers' `generate`);
3. one forward, the base model's logits at every node, and `read_back`: each row's node tokens, finiteness and
   acceptance-rule verdict in one host transfer, shaped [rows, 3 * nodes]; each rule's `decide` reads its row;
4. `_keep_accepted_entries`: each row's accepted entries move to the slots after its sequence, and the cache is
   cut to the longest row;
5. `_finish_row`: the next special-token guesses from the special tokens after the last accepted node, then
   `Decoder.emit_step` (the accepted tokens, cut at a stop token or the token limit).

The cache holds B rows. Row b's entries fill slots [0, P + past_b): the prefix slots (P, prefix tuning; zeros for a
row without them), then its sequence. The cache is as long as its longest row; a shorter row's later slots are
stale and its mask hides them. A sequence joins with its own prefill (its cache is appended as a new row) and
leaves when it is done (its row is dropped), so finished rows stop costing compute.

In float32 a row's tokens equal those of the same prompt decoded alone (and plain greedy decoding's).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from prompt.errors import PPDError
from prompt.model import backbone
from prompt.model.cache import append_rows, cache_capacity, cache_slots, move_row_entries, pad_cache, select_rows

__all__ = ["DecodeBatch", "TreeInputs", "Verdict", "generate_batch"]


@dataclass
class TreeInputs:
    """What one verification forward takes: every row's tree inputs, padded to the largest tree."""

    embeds: torch.Tensor  # [rows, inputs, hidden]
    positions: torch.Tensor  # [rows, inputs]
    mask: torch.Tensor | None  # additive [rows, 1, inputs, slots + inputs]; None: plainly causal


@dataclass
class VerifyOutput:
    """One verification forward's output and the base model's logits at every row's nodes."""

    output: object
    node_logits: torch.Tensor  # [rows, max nodes, vocab]
    all_logits: torch.Tensor | None  # [rows, inputs, vocab] where the special tokens read the base model's head


@dataclass
class Verdict:
    """What one row's verification decided, on the host."""

    tokens: list  # the token of every node of the row's tree
    best: int  # the deepest accepted node
    next_token: int  # the base model's token after it
    finite: bool  # the forward's hidden states at the row's nodes were finite


class DecodeBatch:
    """Rows decoded by one `Decoder`, one verification forward per step for all of them.

    `add()` prefills a sequence and makes it a row; `step()` runs one step for every row and returns
    [(state, tokens emitted)]; rows that finish leave the batch. `setting`: a callable rows -> DecodingChoice (the
    tree and context sources for a batch of that many rows; None: the decoder's own); default: the decodings tuned
    per batch size (`Decoder.batch_setting`). `expected_rows`: how many rows the caller is about to add at once (a
    batch filled before its first step); a row prefills with the prompt tokens only when the decoding for the batch
    size it joins (at least `expected_rows`) has a tree, and decodes plainly for the rest of its life otherwise.
    """

    def __init__(self, decoder, setting=None, expected_rows: int = 0):
        self.decoder = decoder
        self.setting_for_rows = setting
        self.expected_rows = expected_rows
        self.peak_slots = 0  # the most cache slots allocated between steps, all rows together
        self.rows: list = []  # SequenceState per row, in cache row order
        self.cache = None
        self.prefix_slots = 0  # prefix slots before every row's sequence: the prefix's length once a row has it

    def __len__(self) -> int:
        return len(self.rows)

    # ----------------------------------------------------------------------------------------------
    # rows join and leave
    def add(self, input_ids, max_new_tokens: int, seed=None, rule=None, stop_token_ids=None, result=None):
        """Prefill one sequence and add it as a row; returns its state (`.result`, `.done`)."""
        decoder = self.decoder
        input_ids = decoder.check_inputs(input_ids, max_new_tokens)
        generator = torch.Generator(device=decoder.device).manual_seed(seed) if seed is not None else None
        setting = self._setting(max(len(self.rows) + 1, self.expected_rows))
        prompt_tokens = None if setting is None else setting.tree is not None  # None: the decoder's own choice
        with torch.inference_mode():
            state, cache = decoder.prefill(input_ids, max_new_tokens, generator, result, rule=rule,
                                           stop_token_ids=stop_token_ids, prompt_tokens=prompt_tokens)
            self._join(state, cache)
        return state

    def _setting(self, rows: int):
        return (self.setting_for_rows or self.decoder.batch_setting)(rows)

    def _join(self, state, cache) -> None:
        if state.prefix_slots > self.prefix_slots and self.cache is not None:  # the first row with the prefix
            pad_cache(self.cache, front=state.prefix_slots - self.prefix_slots)
            for row in self.rows:
                row.prefix_slots = state.prefix_slots
        self.prefix_slots = max(self.prefix_slots, state.prefix_slots)
        if state.prefix_slots < self.prefix_slots:  # a row without the prefix: zeros that its mask never shows
            pad_cache(cache, front=self.prefix_slots - state.prefix_slots)
            state.prefix_slots = self.prefix_slots
        if self.cache is None:
            self.cache = cache
        else:
            append_rows(self.cache, cache)
        self.cache.prefix_length = self.prefix_slots
        self.rows.append(state)

    def remove(self, state) -> None:
        """Take a row out of the batch between steps (a cancelled request); its result keeps what it emitted."""
        self._keep([i for i, row in enumerate(self.rows) if row is not state])
        self.decoder.finish(state)

    def _keep(self, keep: list) -> None:
        """Keep the rows at `keep` (indices), cutting the cache to the longest of them."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.prefix_slots = None, 0
            return
        select_rows(self.cache, keep, max(self.prefix_slots + row.past for row in self.rows))

    def _drop_finished(self) -> None:
        self._keep([i for i, state in enumerate(self.rows) if not state.done])

    # ----------------------------------------------------------------------------------------------
    # the step
    def step(self) -> list:
        """One step for every row: [(state, tokens it emitted)] for the rows that emitted; finished rows leave."""
        with torch.inference_mode():
            closing = [(state, self.decoder.closing_step(state)) for state in self.rows]  # rows without a forward
            emitted = [(state, tokens) for state, tokens in closing if tokens]
            self._drop_finished()
            if self.rows:
                emitted.extend(self._verify_step())
                self._drop_finished()
        return emitted

    def _verify_step(self) -> list:
        """Propose, verify every row's tree in one forward, keep the accepted entries and emit."""
        setting = self._setting(len(self.rows))
        steps = [self.decoder.propose(state, setting) for state in self.rows]
        slots = cache_slots(self.cache)  # the cache before this step
        verified = self._forward(steps)
        verdicts = self._read_back(steps, verified)
        # the prompt tokens made a row's values non-finite: that row is redone without them
        redo = [b for b, (state, verdict) in enumerate(zip(self.rows, verdicts))
                if not verdict.finite and state.prompt_tokens]
        paths = [None if b in redo else step.tree.accepted_path[verdict.best]
                 for b, (step, verdict) in enumerate(zip(steps, verdicts))]
        self._keep_accepted_entries(paths, slots)
        emitted = []
        for b, (state, step, path, verdict) in enumerate(zip(self.rows, steps, paths, verdicts)):
            tokens = self._finish_row(b, step, path, verdict, verified) if path is not None else None
            if tokens:
                emitted.append((state, tokens))
        if redo:
            self._redo_without_prompt_tokens(redo)
        return emitted

    def _forward(self, steps: list) -> VerifyOutput:
        """One forward over every row's tree on top of the cache, and the base model's logits at the nodes."""
        decoder, model = self.decoder, self.decoder.model
        trees = [step.tree for step in steps]
        inputs = tree_inputs(decoder, steps, [state.past for state in self.rows], cache_slots(self.cache),
                             self.prefix_slots)
        needs_hidden = decoder.ppd and model.needs_hidden_states() and any(state.prompt_tokens for state in self.rows)
        output = backbone.run_body(decoder.base, inputs.embeds, inputs.mask, inputs.positions, self.cache,
                                   output_hidden_states=needs_hidden)
        for state, tree in zip(self.rows, trees):
            state.result.forward_passes += 1
            state.result.forward_inputs += tree.num_inputs
        hidden = output.last_hidden_state
        nodes = max(tree.num_nodes for tree in trees)
        if any(tree.num_special_inputs for tree in trees) and model.reads_base_head():
            all_logits = backbone.head_logits(decoder.base, hidden)  # one head call: its weights read once a step
            return VerifyOutput(output, all_logits[:, :nodes], all_logits)
        return VerifyOutput(output, backbone.head_logits(decoder.base, hidden[:, :nodes]), None)

    def _read_back(self, steps: list, verified: VerifyOutput) -> list:
        """Every row's node tokens, finiteness and rule verdict in the step's one transfer to the host: a
        [rows, 3 * nodes] table (nodes: the largest tree's), read back row by row by each rule's `decide`."""
        node_logits = verified.node_logits
        width = node_logits.shape[1]
        tokens = pad_sequence([step.node_tokens for step in steps], batch_first=True)
        # finite hidden states give finite logits: the check reads [nodes, hidden], not [nodes, vocab]
        finite = torch.isfinite(verified.output.last_hidden_state[:, :width]).all(-1).long()
        verdicts = pad_sequence(self._device_verdicts(steps, node_logits), batch_first=True)
        host = torch.cat([tokens.to(finite.device), finite, verdicts], 1).tolist()
        read = []
        for state, step, row in zip(self.rows, steps, host):
            nodes = step.tree.num_nodes
            node_tokens = row[:nodes]
            best, next_token = state.rule.decide(step.tree, node_tokens, row[2 * width:])
            read.append(Verdict(node_tokens, best, next_token, all(row[width: width + nodes])))
        return read

    def _device_verdicts(self, steps: list, node_logits: torch.Tensor) -> list:
        """Each row's rule verdict as a device vector; greedy rows share one argmax over the batch."""
        greedy = [state.rule.batched_targets for state in self.rows]
        targets = node_logits.argmax(-1) if any(greedy) else None
        return [targets[b] if greedy[b] else
                state.rule.device_verdict(step.tree, step.node_tokens, node_logits[b, : step.tree.num_nodes],
                                          state.generator)
                for b, (state, step) in enumerate(zip(self.rows, steps))]

    def _keep_accepted_entries(self, paths: list, slots: int) -> None:
        """Move each row's accepted entries to the slots after its sequence; cut the cache to the longest row."""
        moves = ([], [], [])  # rows, target slots, source slots
        for b, (state, path) in enumerate(zip(self.rows, paths)):
            start = self.prefix_slots + state.past
            for target, source in zip(range(start, start + len(path or ())), path or ()):
                if target != slots + source:  # entries already in place stay
                    moves[0].append(b)
                    moves[1].append(target)
                    moves[2].append(slots + source)
        kept = max([self.prefix_slots + state.past + len(path)
                    for state, path in zip(self.rows, paths) if path is not None] or [self.prefix_slots])
        move_row_entries(self.cache, *(torch.tensor(m, dtype=torch.long) for m in moves), kept)
        self.peak_slots = max(self.peak_slots, len(self.rows) * cache_capacity(self.cache))

    def _finish_row(self, b: int, step, path: list, verdict: Verdict, verified: VerifyOutput) -> list:
        """Count row b's accepted path, read its next guesses and emit its tokens."""
        state, tree = self.rows[b], step.tree
        state.past += len(path)
        if state.prompt_tokens:
            state.special_logits = self._next_guesses(b, tree.special_rows[path[-1]], state, verified)
        state.result.chain_wins += int(path[-1] >= tree.num_prompt_nodes)
        return self.decoder.emit_step(state, [verdict.tokens[i] for i in path], verdict.next_token)

    def _next_guesses(self, b: int, special_rows: list, state, verified: VerifyOutput) -> torch.Tensor:
        """Row b's special-token logits from the special tokens at `special_rows` (those after its last accepted
        node; none after a chain node or in a plain step: the next step recovers from the root)."""
        if not special_rows:
            return state.special_logits[:0]
        model = self.decoder.model
        head = verified.all_logits[b, special_rows][None] if verified.all_logits is not None else None
        return model.special_token_logits(model.special_hidden(verified.output, special_rows, slice(b, b + 1)),
                                          head)[0]

    def _redo_without_prompt_tokens(self, redo: list) -> None:
        """Rows whose prompt tokens gave non-finite values leave the batch, rebuild their cache plainly and rejoin."""
        states = [self.rows[b] for b in redo]
        self._keep([i for i in range(len(self.rows)) if i not in set(redo)])
        for state in states:
            self._join(state, self.decoder.prefill_plainly(state))


def tree_inputs(decoder, steps: list, pasts: list, slots: int, prefix: int) -> TreeInputs:
    """The inputs of one verification forward over rows whose sequences hold `pasts` tokens after `prefix` prefix
    slots, in a cache of `slots` slots: every row's tree (root, candidates, special tokens), padded to the largest."""
    trees = [step.tree for step in steps]
    same = all(tree is trees[0] for tree in trees)  # one tree for every row (plain steps): no per-row work
    past = torch.tensor(pasts, device=decoder.device)
    if same:
        positions = trees[0].positions[None] + past[:, None]
    else:
        positions = pad_sequence([tree.positions for tree in trees], batch_first=True) + past[:, None]
    embeds = _tree_embeds(decoder, steps, same)
    plain = same and trees[0].num_inputs == 1 and not prefix and all(p == slots for p in pasts)
    mask = None if plain else _tree_mask(decoder.layout, trees, past, slots, prefix, same, embeds.dtype)
    return TreeInputs(embeds, positions, mask)


def _tree_embeds(decoder, steps: list, same: bool) -> torch.Tensor:
    """[rows, inputs, hidden]: each row's node tokens' embeddings, then its special tokens' prompt embeddings."""
    trees = [step.tree for step in steps]
    inputs = max(tree.num_inputs for tree in trees)
    node_embeds = decoder.base.get_input_embeddings()(torch.cat([step.node_tokens for step in steps]))
    if same and not trees[0].num_special_inputs:
        return node_embeds.reshape(len(trees), inputs, -1)
    per_row = []
    for tree, nodes in zip(trees, node_embeds.split([tree.num_nodes for tree in trees])):
        if tree.num_special_inputs:
            nodes = torch.cat([nodes, decoder.model.prompt_embeds()[tree.special_prompt_index]])
        per_row.append(nodes)
    embeds = pad_sequence(per_row, batch_first=True)
    return torch.nn.functional.pad(embeds, (0, 0, 0, inputs - embeds.shape[1])) if embeds.shape[1] < inputs else embeds


def _tree_mask(layout, trees: list, past: torch.Tensor, slots: int, prefix: int, same: bool, dtype) -> torch.Tensor:
    """Each row sees its own valid slots, then its own tree; padding inputs see only themselves."""
    count, inputs, device = len(trees), max(tree.num_inputs for tree in trees), past.device
    columns = torch.arange(slots, device=device)
    history = (columns[None] >= prefix) & (columns[None] < prefix + past[:, None])  # [rows, slots]
    allowed = torch.empty(count, inputs, slots + inputs, dtype=torch.bool, device=device)
    allowed[:, :, :slots] = history[:, None]
    if same:
        allowed[:, :, slots:] = trees[0].allowed
        specials = trees[0].special_of_inputs[None].expand(count, inputs)
    else:
        allowed[:, :, slots:] = torch.eye(inputs, dtype=torch.bool, device=device)
        specials = torch.full((count, inputs), -1, device=device)
        for b, tree in enumerate(trees):
            n = tree.num_inputs
            allowed[b, :n, slots: slots + n] = tree.allowed
            specials[b, :n] = tree.special_of_inputs
    if prefix and any(tree.num_special_inputs for tree in trees):  # special token j sees its own prefix slots
        allowed[:, :, :prefix] = layout.prefix_attention(specials.reshape(-1)).reshape(count, inputs, prefix)
    return backbone.additive_mask(allowed[:, None], dtype)


def generate_batch(decoder, prompts, max_new_tokens: int = 512, seed=None, setting=None) -> list:
    """Decode every prompt (token-id sequences of any lengths) in one running batch; one GenerationResult per
    prompt, in order. Each row samples with its own generator seeded with `seed`, as if decoded alone."""
    if isinstance(prompts, torch.Tensor) and prompts.dim() == 2:
        prompts = list(prompts)
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise PPDError("generate_batch takes a non-empty list of prompts (token-id sequences)")
    batch = DecodeBatch(decoder, setting, expected_rows=len(prompts))
    states = [batch.add(prompt, max_new_tokens, seed=seed) for prompt in prompts]
    while len(batch):
        batch.step()
    return [state.result for state in states]
