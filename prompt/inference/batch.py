"""Many sequences per forward: a running batch that sequences join and leave between steps (continuous batching).

Each row is one sequence's `SequenceState` (its own tree, context candidates, acceptance rule, stop tokens and
token limit) and runs the same steps as a sequence decoded alone (`prompt.inference.decoding`): `propose`, one
verification forward for the whole batch, the row's own acceptance rule, `advance`, `emit`. Only the forward and
the cache are shared:

- The cache holds B rows. Row b's entries fill slots [0, P + past_b): the prefix slots (P, prefix tuning; zeros for
  a row without them), then its sequence. The cache is as long as its longest row; a shorter row's later slots are
  stale and its mask hides them.
- A step appends every row's tree inputs after the last slot (rows whose trees are smaller are padded with inputs
  that see only themselves); each row's mask shows its own valid slots and its own tree. After verification each
  row's accepted entries move to the slots after its sequence, and the cache is cut to the longest row.
- A sequence joins with its own prefill (its cache is appended as a new row) and leaves when it is done (its row
  is dropped), so finished rows stop costing compute.

In float32 a row's tokens equal those of the same prompt decoded alone (and plain greedy decoding's).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.nn.utils.rnn import pad_sequence

from prompt.errors import PPDError
from prompt.inference.acceptance import greedy_best
from prompt.model import backbone
from prompt.model.cache import append_rows, cache_capacity, cache_slots, move_row_entries, pad_cache, select_rows

__all__ = ["DecodeBatch"]


class DecodeBatch:
    """A running batch of sequences decoded by one `Decoder`.

    `add()` prefills a sequence and makes it a row; `step()` runs one step for every row and returns
    [(state, tokens emitted)]; rows that finish leave the batch. `setting`: a callable rows -> StepSetting (the
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
    def add(self, input_ids, max_new_tokens: int, seed=None, rule=None, stop_token_ids=None, result=None):
        """Prefill one sequence and add it as a row; returns its state (`.result`, `.done`)."""
        decoder = self.decoder
        input_ids = decoder._check_inputs(input_ids, max_new_tokens)
        generator = torch.Generator(device=decoder.device).manual_seed(seed) if seed is not None else None
        setting = self._setting(max(len(self.rows) + 1, self.expected_rows))
        prompt_tokens = None if setting is None else setting.tree is not None  # None: the decoder's own choice
        with torch.inference_mode():
            state = decoder.prefill(input_ids, max_new_tokens, generator, result, rule=rule,
                                    stop_token_ids=stop_token_ids, prompt_tokens=prompt_tokens)
            self._join(state)
        return state

    def _setting(self, rows: int):
        return (self.setting_for_rows or self.decoder.batch_setting)(rows)

    def _join(self, state) -> None:
        cache, state.cache = state.cache, None
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

    def _keep(self, keep: list) -> None:
        """Keep the rows at `keep` (indices), cutting the cache to the longest of them."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.prefix_slots = None, 0
            return
        select_rows(self.cache, keep, max(self.prefix_slots + row.past for row in self.rows))

    # ----------------------------------------------------------------------------------------------
    def step(self) -> list:
        """One step for every row: [(state, tokens it emitted)] for the rows that emitted; finished rows leave."""
        decoder = self.decoder
        emitted = []
        with torch.inference_mode():
            for state in self.rows:  # rows that end without a forward
                tokens = decoder.closing_step(state)
                if tokens is not None and tokens:
                    emitted.append((state, tokens))
            self._keep([i for i, state in enumerate(self.rows) if not state.done])
            if self.rows:
                emitted.extend(self._verify_step())
                self._keep([i for i, state in enumerate(self.rows) if not state.done])
        return emitted

    def _verify_step(self) -> list:
        decoder, rows = self.decoder, self.rows
        setting = self._setting(len(rows))
        steps = [decoder.propose(state, setting) for state in rows]
        output, node_logits, all_logits = self._forward(steps)
        slots = cache_slots(self.cache) - output.last_hidden_state.shape[1]  # the cache before this step
        hidden = output.last_hidden_state
        width = node_logits.shape[1]
        rules = [state.rule or decoder.rule for state in rows]
        greedy = [rule.name == "greedy" for rule in rules]
        # greedy rows are verified on the host from one argmax over the batch; other rules run per row
        parts = [step.node_tokens for step in steps]
        parts.append(torch.isfinite(hidden[:, :width]).all(-1).reshape(-1).long())
        if any(greedy):
            parts.append(node_logits.argmax(-1).reshape(-1))
        for b, (rule, step) in enumerate(zip(rules, steps)):
            if not greedy[b]:
                nodes = step.tree.num_nodes
                best, next_token = rule.verify(step.tree, step.node_tokens, node_logits[b, :nodes], rows[b].generator)
                parts.append(torch.stack([best, next_token]))
        host = torch.cat(parts).tolist()  # the step's one transfer to the host
        tokens_of, offset = [], 0
        for step in steps:
            tokens_of.append(host[offset: offset + step.tree.num_nodes])
            offset += step.tree.num_nodes
        finite_of = [host[offset + b * width: offset + (b + 1) * width] for b in range(len(rows))]
        offset += len(rows) * width
        targets_of = [None] * len(rows)
        if any(greedy):
            targets_of = [host[offset + b * width: offset + (b + 1) * width] for b in range(len(rows))]
            offset += len(rows) * width
        decided = []
        for b, step in enumerate(steps):
            nodes = step.tree.num_nodes
            finite = all(finite_of[b][:nodes])
            if greedy[b]:
                best = greedy_best(step.tree, tokens_of[b], targets_of[b])
                decided.append((best, targets_of[b][best], finite))
            else:
                decided.append((host[offset], host[offset + 1], finite))
                offset += 2

        # keep each row's accepted entries after its sequence
        paths, redo, moves = [], [], ([], [], [])
        for b, (state, step, (best, _, finite)) in enumerate(zip(rows, steps, decided)):
            if not finite and state.prompt_tokens:
                paths.append(None)
                redo.append(b)
                continue
            path = step.tree.accepted_path[best]
            paths.append(path)
            start = self.prefix_slots + state.past
            for target, source in zip(range(start, start + len(path)), path):
                if target != slots + source:  # entries already in place stay
                    moves[0].append(b)
                    moves[1].append(target)
                    moves[2].append(slots + source)
        kept = max([self.prefix_slots + state.past + len(path)
                    for state, path in zip(rows, paths) if path is not None] or [self.prefix_slots])
        move_row_entries(self.cache, *(torch.tensor(m, dtype=torch.long) for m in moves), kept)
        self.peak_slots = max(self.peak_slots, len(rows) * cache_capacity(self.cache))

        emitted = []
        for b, (state, step, path, (_, next_token, _)) in enumerate(zip(rows, steps, paths, decided)):
            if path is None:
                continue
            row_output = None  # what advance reads: only the special tokens' hidden states
            if state.prompt_tokens and step.tree.special_rows[path[-1]]:
                row_output = SimpleNamespace(
                    last_hidden_state=hidden[b: b + 1],
                    hidden_states=tuple(h[b: b + 1] for h in output.hidden_states) if output.hidden_states else None)
            decoder.advance(state, step, path, row_output, all_logits[b] if all_logits is not None else None)
            tokens = decoder.accepted(state, [tokens_of[b][i] for i in path], next_token)
            if tokens:
                emitted.append((state, tokens))
        if redo:
            self._redo_without_prompt_tokens(redo, steps)
        return emitted

    def _redo_without_prompt_tokens(self, redo: list, steps: list) -> None:
        """Rows whose prompt tokens gave non-finite values leave the batch, rebuild their cache plainly and rejoin."""
        states = [self.rows[b] for b in redo]
        self._keep([i for i in range(len(self.rows)) if i not in set(redo)])
        for b, state in zip(redo, states):
            self.decoder._drop_prompt_tokens(state, steps[b].tree.num_inputs)
            self._join(state)

    def _forward(self, steps: list):
        """One forward over every row's tree (padded to the largest) on top of the batch cache."""
        decoder, model, rows, device = self.decoder, self.decoder.model, self.rows, self.decoder.device
        trees = [step.tree for step in steps]
        inputs = max(tree.num_inputs for tree in trees)
        count, slots, prefix = len(rows), cache_slots(self.cache), self.prefix_slots
        embed = decoder.base.get_input_embeddings()
        node_embeds = embed(torch.cat([step.node_tokens for step in steps]))
        same = all(tree is trees[0] for tree in trees)  # one tree for every row (plain steps): no per-row work
        if same and not trees[0].num_special_inputs:
            embeds = node_embeds.reshape(count, inputs, -1)
        else:
            per_row = []
            for tree, nodes in zip(trees, node_embeds.split([tree.num_nodes for tree in trees])):
                if tree.num_special_inputs:
                    nodes = torch.cat([nodes, model.prompt_embeds()[tree.special_prompt_index]])
                per_row.append(nodes)
            embeds = pad_sequence(per_row, batch_first=True)
            if embeds.shape[1] < inputs:
                embeds = torch.nn.functional.pad(embeds, (0, 0, 0, inputs - embeds.shape[1]))
        past = torch.tensor([state.past for state in rows], device=device)
        if same:
            positions = trees[0].positions[None] + past[:, None]
        else:
            positions = pad_sequence([tree.positions for tree in trees], batch_first=True) + past[:, None]

        # each row sees its own valid slots, then its own tree; padding inputs see only themselves
        columns = torch.arange(slots, device=device)
        history = (columns[None] >= prefix) & (columns[None] < prefix + past[:, None])  # [B, slots]
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
            allowed[:, :, :prefix] = model.layout.prefix_attention(specials.reshape(-1)).reshape(count, inputs, prefix)
        mask = backbone.additive_mask(allowed[:, None], embeds.dtype)
        needs_hidden = decoder.ppd and model.needs_hidden_states() and any(state.prompt_tokens for state in rows)
        output = backbone.run_body(decoder.base, embeds, mask, positions, self.cache,
                                   output_hidden_states=needs_hidden)
        for state in rows:
            state.result.forward_passes += 1
        hidden = output.last_hidden_state
        nodes = max(tree.num_nodes for tree in trees)
        if any(tree.num_special_inputs for tree in trees) and model.reads_base_head():
            all_logits = backbone.head_logits(decoder.base, hidden)
            return output, all_logits[:, :nodes], all_logits
        return output, backbone.head_logits(decoder.base, hidden[:, :nodes]), None


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
