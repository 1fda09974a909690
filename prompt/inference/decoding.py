"""The PPD decode loop, in the paper's order, as named steps over one sequence's state.

1. `prefill`: run the prompt with the prompt tokens appended; the last input's logits give the next token
   (the tree's root), the prompt tokens' logits give guesses for the tokens after it.
2. `propose`: the top-k of each special token's logits fill the candidate tree (its depth is how many
   special-token logits the last step left: the dynamic tree); context sources (prompt lookup) add one chain
   each, as branches from the root.
3. verify (`prompt.inference.batch.DecodeBatch.step`, one path for one sequence and many): one forward over the
   root, the candidate nodes and the special tokens appended to them, with the tree attention mask; the
   acceptance rule (`prompt.inference.acceptance`) picks the longest path the base model agrees with, and the
   token the base model adds after it; the accepted nodes' cache entries are kept, and the next special-token
   logits are read from the special tokens appended to the last accepted node.
4. `emit_step`: the accepted tokens, cut at a stop token or the token limit.

Plain decoding is the same loop with no prompt tokens: each tree is the root alone. One sequence is a batch of one
row (`SequenceState`); each call of `stream`/`generate` owns its state and cache, so calls may run concurrently on
one model.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch

from prompt.errors import PPDError
from prompt.inference.acceptance import AcceptanceRule, acceptance_rule
from prompt.inference.batch import DecodeBatch, generate_batch
from prompt.inference.candidates import (
    CandidateSource,
    PromptLookup,
    SuffixCandidates,
    merge_proposals,
)
from prompt.inference.choice import (
    DecodingChoice,
    input_device,
    resolve_decoding,
    tuned_batch_decodings,
)
from prompt.inference.draft_depth import DraftGate, DraftPricing
from prompt.inference.tree import (
    DynamicTree,
    TreeBuffers,
    root_only_buffers,
    with_branches,
)
from prompt.model import backbone
from prompt.model.cache import keep_cache_entries, new_cache
from prompt.model.devices import synchronize
from prompt.model.layout import SpecialTokenLayout
from prompt.model.stops import truncate_at_stop
from prompt.model.weight_layout import STANDARD, set_weight_layout


@dataclass
class GenerationResult:
    """What one generation call produced and what it cost."""

    token_ids: list = field(default_factory=list)  # the new tokens only
    forward_passes: int = 0  # prefill included
    forward_inputs: int = 0  # inputs of every verification forward after the prefill (tree nodes, special tokens)
    wall_time: float = 0.0
    step_tokens: list = field(default_factory=list)  # tokens emitted per forward pass after the prefill
    chain_wins: int = 0  # steps whose accepted path ended in a context source's chain
    stop_reason: str = ""  # "eos", "length" or "context" (the model's context is full)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def accept_length(self) -> float:
        """Mean new tokens per forward pass, prefill included (1.0 for plain decoding)."""
        return self.new_tokens / max(self.forward_passes, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def decoding_steps(self) -> int:
        """Steps after the prefill, as upstream counts them: each emits the root and its accepted candidates (the
        last root may be emitted without a forward; upstream runs one for it). 0 when nothing was emitted."""
        emitted = sum(self.step_tokens)
        return len(self.step_tokens) + (1 if self.new_tokens > emitted else 0)

    @property
    def accept_length_upstream(self) -> float:
        """Upstream's accept length: new tokens per decoding step, the prefill not counted (1.0 for plain decoding)."""
        return self.new_tokens / max(self.decoding_steps, 1)


@dataclass(eq=False)
class SequenceState:
    """One sequence between steps (one row of a `DecodeBatch`); its identity is the sequence's, for its sources."""

    # the request's settings
    rule: AcceptanceRule
    stop_token_ids: frozenset
    max_new_tokens: int
    generator: torch.Generator | None
    prompt_tokens: bool  # this sequence appends the prompt tokens
    # where its sequence sits in the batch's cache
    prefix_slots: int  # cache slots before the sequence (the trained prefix; 0 without)
    past: int  # sequence tokens in the cache
    # what the last step left for the next
    context: list  # prompt + emitted tokens + the pending root: what context sources read
    root: int  # the base model's next token, not yet emitted
    special_logits: torch.Tensor | None  # [n, vocab] guesses for the n tokens after the root (n may be 0)
    # what it produced and cost, and who is told when it ends
    result: GenerationResult
    start: float
    sources: list = field(default_factory=list)  # the context sources that proposed for it
    gate: DraftGate | None = None  # how deep its drafts are verified (a decoding with draft pricing)
    done: bool = False


_DECODING_SCALARS = ("tree_spec", "tree_length", "prompt_lookup_num_tokens", "sources", "chain_special_tokens")
_RULE_SCALARS = ("temperature", "sampling", "posterior_threshold", "posterior_alpha", "top_p", "top_k")


@dataclass(frozen=True)
class Decoding(DecodingChoice):
    """A `DecodingChoice` ready to run: what every step proposes from. `tree`: the prompt tokens' dynamic tree on
    the model's device (None: no prompt-token guesses); `sources`: the context sources (the prompt lookup and the
    suffix tree of the choice included); `chain_special_tokens`: special tokens appended to each context node.
    Built by the named constructors `resolve`, `plain` and `of`."""

    tree: DynamicTree | None = field(default=None, compare=False, repr=False)
    sources: list = field(default_factory=list, compare=False)
    chain_special_tokens: int = 0
    pricing: DraftPricing | None = field(default=None, compare=False, repr=False)  # from `input_costs`, no tree

    @classmethod
    def resolve(cls, model, tree_spec=None, tree_length: int | None = None, prompt_lookup_num_tokens: int | None = None,
                sources: Sequence[CandidateSource] = (), chain_special_tokens: int = 0,
                sampling: str | None = None) -> "Decoding":
        """Each choice from the argument, else the checkpoint's tuned decoding for the dtype (the acceptance rule
        `sampling`'s own where it has one), else the largest tree and no lookup (`resolve_decoding`)."""
        choice = resolve_decoding(model, tree_spec, tree_length, prompt_lookup_num_tokens, sampling=sampling)
        return cls.of(model, choice, sources, chain_special_tokens)

    @classmethod
    def plain(cls, model, prompt_lookup_num_tokens: int = 0, sources: Sequence[CandidateSource] = ()) -> "Decoding":
        """No prompt tokens: the root alone, and the context sources' candidates."""
        return cls.of(model, DecodingChoice(None, prompt_lookup_num_tokens), sources)

    @classmethod
    def of(cls, model, choice: DecodingChoice, sources: Sequence[CandidateSource] = (),
           chain_special_tokens: int = 0) -> "Decoding":
        """`choice` for `model`: its tree built for the model's prompt tokens, its lookup and suffix tree as context
        sources after `sources`."""
        tree = None
        if choice.tree_spec is not None:
            if not hasattr(model, "prompt_embeddings"):
                raise PPDError("a tree needs a model with prompt tokens (a PromptDecoder); this is a plain causal LM")
            if not 0 <= chain_special_tokens <= model.config.num_special_tokens:
                raise PPDError(f"chain_special_tokens must lie in 0..{model.config.num_special_tokens}")
            tree = DynamicTree(choice.tree_spec, model.layout, input_device(model))
        sources = list(sources)
        if choice.prompt_lookup_num_tokens:
            sources.append(PromptLookup(choice.prompt_lookup_num_tokens))
        if choice.suffix_nodes:
            sources.append(SuffixCandidates(choice.suffix_nodes))
        values = {f.name: getattr(choice, f.name) for f in fields(DecodingChoice)}
        pricing = DraftPricing(choice.input_costs, chain_special_tokens) if choice.input_costs and tree is None \
            else None
        return cls(**values, tree=tree, sources=sources, chain_special_tokens=chain_special_tokens, pricing=pricing)


@dataclass
class StepTree:
    """One verification forward: the tree's buffers and the token of each of its nodes."""

    tree: TreeBuffers
    node_tokens: torch.Tensor  # [nodes] on the model's device


class Decoder:
    """A decoding and an acceptance rule bound to a model; `stream()` and `generate()` own their state: calls may
    run concurrently.

    `decoding`: a `Decoding` (or a `DecodingChoice`); None: `Decoding.resolve(model)`, the checkpoint's tuned
    decoding (for batches, the one tuned for the batch size). `rule`: an acceptance rule
    (`prompt.inference.acceptance`); None: greedy. `stop_token_ids`: the tokens that end a sequence (a request
    may bring its own, `DecodeBatch.add`).

    The common scalar case may be written directly: `tree_spec`, `tree_length` (0: no prompt tokens),
    `prompt_lookup_num_tokens` (0: off), `sources` and `chain_special_tokens` resolve the decoding
    (`Decoding.resolve`); `temperature`, `sampling` (greedy, exact, typical, typical_sampling; None: greedy at
    temperature 0, exact sampling above), `posterior_threshold`, `posterior_alpha`, `top_p` and `top_k` build the
    rule (`acceptance_rule`).
    """

    def __init__(self, model, decoding: DecodingChoice | None = None, rule: AcceptanceRule | None = None,
                 stop_token_ids=(), **scalars):
        unknown = set(scalars) - set(_DECODING_SCALARS) - set(_RULE_SCALARS)
        if unknown:
            raise TypeError(f"Decoder() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        self.model = model
        self.base = model.base_model if hasattr(model, "prompt_embeddings") else model
        backbone.check_supported(self.base)  # recurrent layers cannot be cut back to an accepted path
        self.rule = self._rule(rule, {k: v for k, v in scalars.items() if k in _RULE_SCALARS})
        self.decoding = self._decoding(decoding, {k: v for k, v in scalars.items() if k in _DECODING_SCALARS})
        self.stop_token_ids = frozenset(int(t) for t in (stop_token_ids or ()))
        self.max_positions = getattr(self.base.config, "max_position_embeddings", None)
        self.vocab_size = self.base.get_input_embeddings().weight.shape[0]
        self.device = input_device(model)
        self.root_only = root_only_buffers(self.device)
        self.layout = model.layout if self.ppd else SpecialTokenLayout(0)
        self._merged = {}  # (tree, context nodes' parents) -> buffers, built once per shape
        # decodings tuned per batch size, used by running batches when nothing was asked for explicitly
        tuned = decoding is None and all(scalars.get(k) is None for k in _DECODING_SCALARS[:3])
        self._batch_choices = tuned_batch_decodings(model) if tuned else {}
        self._batch_decodings = {}

    @staticmethod
    def _rule(rule, scalars: dict):
        if rule is not None and scalars:
            raise PPDError(f"pass either an acceptance rule or its settings ({', '.join(scalars)}), not both")
        return rule if rule is not None else acceptance_rule(**scalars)

    def _decoding(self, decoding, scalars: dict) -> Decoding:
        if decoding is None:
            return Decoding.resolve(self.model, sampling=self.rule.name, **scalars)
        if isinstance(decoding, Decoding) and scalars or set(scalars) - {"sources", "chain_special_tokens"}:
            raise PPDError(f"pass either a decoding or its settings ({', '.join(scalars)}), not both")
        return decoding if isinstance(decoding, Decoding) else Decoding.of(self.model, decoding, **scalars)

    # the decoding's parts, as attributes
    tree = property(lambda self: self.decoding.tree, doc="the prompt tokens' dynamic tree (None: plain decoding)")
    sources = property(lambda self: self.decoding.sources, doc="the context sources (a list, shared with the decoding)")
    ppd = property(lambda self: self.decoding.tree is not None, doc="True: this decoder appends the prompt tokens")
    prompt_lookup_num_tokens = property(lambda self: self.decoding.prompt_lookup_num_tokens)
    suffix_nodes = property(lambda self: self.decoding.suffix_nodes, doc="the tuned suffix candidate tree (0: off)")
    chain_special_tokens = property(lambda self: self.decoding.chain_special_tokens)

    def batch_setting(self, rows: int) -> Decoding | None:
        """The decoding a running batch of `rows` sequences uses: the one tuned for the largest recorded batch size
        <= rows (None: the decoder's own). Its tree is used only where the decoder appends the prompt tokens (a
        decoder whose tuned decoding has no tree prefills without them); the decoder's sources other than the
        prompt lookup stay."""
        sizes = [size for size in self._batch_choices if size <= rows]
        if not sizes:
            return None
        size = max(sizes)
        if size not in self._batch_decodings:
            choice = self._batch_choices[size]
            if not self.ppd:
                choice = replace(choice, tree_spec=None)
            sources = [s for s in self.sources if not isinstance(s, PromptLookup)]
            self._batch_decodings[size] = Decoding.of(self.model, choice, sources, self.chain_special_tokens)
        return self._batch_decodings[size]

    def describe(self) -> str:
        """The decoding in words, e.g. 'PPD tree of 24 inputs + prompt lookup 10, greedy'."""
        parts = [f"PPD tree of {self.tree.input_length} inputs"] if self.ppd else []
        if self.prompt_lookup_num_tokens:
            parts.append(f"prompt lookup {self.prompt_lookup_num_tokens}")
        if self.suffix_nodes:
            parts.append(f"suffix tree {self.suffix_nodes}")
        priced = " (each draft cut to the depth that pays)" if self.decoding.pricing is not None and self.sources else ""
        layout = " (weights transposed)" if self.decoding.weight_layout != STANDARD else ""
        return f"{' + '.join(parts) or 'plain decoding'}{priced}{layout}, {self.rule.describe()}"

    # ----------------------------------------------------------------------------------------------
    # the steps
    def prefill(self, input_ids: torch.Tensor, max_new_tokens: int, generator=None, result=None, rule=None,
                stop_token_ids=None, prompt_tokens: bool | None = None) -> tuple:
        """Run the prompt (with the prompt tokens appended when they fit the context): (the new state, its cache).

        `rule` and `stop_token_ids` override the decoder's for this sequence (a server's per-request settings);
        `prompt_tokens=False` decodes this sequence plainly (a batch size whose decoding has no tree)."""
        result = result if result is not None else GenerationResult()
        rule = self.rule if rule is None else rule
        stop_token_ids = self.stop_token_ids if stop_token_ids is None else frozenset(int(t) for t in stop_token_ids)
        start = time.perf_counter()
        length = input_ids.shape[1]
        prompt_tokens = self.ppd and prompt_tokens is not False and (
            self.max_positions is None or length + self.model.config.num_special_tokens <= self.max_positions)
        while True:
            prefilled = self._prefill(input_ids, max_new_tokens, generator, result, start, prompt_tokens, rule,
                                      stop_token_ids)
            if prefilled is not None:
                return prefilled
            prompt_tokens = False  # the prompt tokens made the logits non-finite: decode plainly

    def _prefill(self, input_ids, max_new_tokens, generator, result, start, prompt_tokens, rule, stop_token_ids):
        """One prefill forward: (state, cache), or None when the prompt tokens made the logits non-finite."""
        model, length = self.model, input_ids.shape[1]
        prefix_slots = model.layout.prefix_length if prompt_tokens else 0
        cache = model.with_prefix() if prefix_slots else new_cache(self.base)
        embeds, allowed, positions, special_of_inputs = self._prefill_inputs(input_ids, prompt_tokens)
        output = self._forward(embeds, allowed, positions, 0, prefix_slots, special_of_inputs, cache,
                               prompt_tokens and self.model.needs_hidden_states())
        result.forward_passes += 1
        root_logits = backbone.head_logits(self.base, output.last_hidden_state[0, length - 1])
        special_logits = None
        if prompt_tokens:
            nv = model.config.num_virtual_tokens
            special_logits = model.special_token_logits(model.special_hidden(output, slice(length, length + nv)))[0]
            if not bool(torch.isfinite(root_logits).all() & torch.isfinite(special_logits).all()):
                self._warn_non_finite()
                return None
            keep_cache_entries(cache, prefix_slots + length, [], nv)
        root = int(rule.first_token(root_logits, generator))
        return SequenceState(context=input_ids[0].tolist() + [root], prefix_slots=prefix_slots, past=length,
                             root=root, prompt_tokens=prompt_tokens, special_logits=special_logits,
                             max_new_tokens=max_new_tokens, result=result, generator=generator, start=start,
                             rule=rule, stop_token_ids=stop_token_ids), cache

    def _prefill_inputs(self, input_ids, prompt_tokens: bool) -> tuple:
        """(embeds, allowed among the inputs or None for plainly causal, positions, special_of_inputs): the prompt,
        then the prompt tokens anchored at its last token where `prompt_tokens`."""
        length, device = input_ids.shape[1], self.device
        embeds = self.base.get_input_embeddings()(input_ids)
        positions = torch.arange(length, device=device)
        if not prompt_tokens:
            return embeds, None, positions, None
        layout = self.model.layout
        special_positions, special_allowed, special = layout.append(
            torch.tensor([length - 1], device=device), torch.ones(1, length, dtype=torch.bool, device=device))
        count = length + special.shape[0]
        allowed = torch.zeros(count, count, dtype=torch.bool, device=device)
        allowed[:length, :length] = torch.tril(torch.ones(length, length, dtype=torch.bool, device=device))
        allowed[length:] = special_allowed
        embeds = torch.cat([embeds, self.model.prompt_embeds()[None]], 1)
        positions = torch.cat([positions, special_positions])
        special_of_inputs = torch.cat([torch.full((length,), -1, device=device), special])
        return embeds, allowed, positions, special_of_inputs

    def propose(self, state: SequenceState, decoding: Decoding | None = None) -> StepTree:
        """The step's tree and its node tokens: the prompt tokens' top-k guesses placed by the tree, then one chain
        per context source (the tree and sources of `decoding`, else the decoder's)."""
        decoding = self.decoding if decoding is None else decoding
        dynamic, sources = decoding.tree, decoding.sources
        if state.prompt_tokens and dynamic is not None:
            tree = dynamic.for_special_tokens(state.special_logits.shape[0])
        else:
            tree = self.root_only
        # every source's chain or tree, merged into one tree of context nodes (a path two sources share once)
        chains = merge_proposals([self._source_for(state, source).propose(state, state.context)
                                  for source in sources]) if sources else ()
        if decoding.pricing is not None and tree is self.root_only:
            state.gate = state.gate or decoding.pricing.start()
            chains = state.gate.cut(chains)  # the depth that pays on this machine (empty: a plain step)
        if chains:
            tree = self._with_chains(tree, chains.parents)
        if self.max_positions is not None and state.past + tree.max_position_offset >= self.max_positions:
            tree, chains = self.root_only, ()  # no room for the tree: one plain step
        node_tokens = self.prompt_token_candidates(state, tree)
        if chains:
            chain_tokens = torch.tensor(chains.tokens, device=self.device)
            node_tokens = torch.cat([node_tokens, chain_tokens])
        return StepTree(tree, node_tokens)

    def prompt_token_candidates(self, state: SequenceState, tree: TreeBuffers) -> torch.Tensor:
        """Token of every prompt-token node: the root, then the top-k guesses of each special token."""
        root = torch.tensor([state.root], device=self.device)
        if tree.num_prompt_nodes == 1:
            return root
        guesses = torch.topk(state.special_logits[: tree.depth], tree.top_k, dim=-1).indices.reshape(-1)
        return torch.cat([root, guesses])[tree.candidate_index]

    @staticmethod
    def _source_for(state: SequenceState, source):
        if not any(known is source for known in state.sources):
            state.sources.append(source)
        return source

    def emit(self, state: SequenceState, tokens: list, next_token: int | None) -> list:
        """Append the accepted `tokens` (root first) to the result, cut at a stop token or the token limit; the base
        model's `next_token` becomes the next root."""
        result = state.result
        stops = state.stop_token_ids
        tokens = truncate_at_stop(tokens[: state.max_new_tokens - result.new_tokens], stops)
        result.token_ids.extend(tokens)
        for source in state.sources:
            source.accepted(state, tokens)
        if state.gate is not None:
            state.gate.observe(tokens)
        if tokens[-1] in stops:
            self._end(state, "eos")
        elif result.new_tokens >= state.max_new_tokens:
            self._end(state, "length")
        elif next_token is None:
            self._end(state, "context")
        else:
            state.context.extend(tokens[1:])
            state.context.append(next_token)
            state.root = next_token
        if state.done:
            synchronize(self.device)  # the last step's queued work counts in the time
        result.wall_time = time.perf_counter() - state.start
        return tokens

    def _end(self, state: SequenceState, reason: str) -> None:
        state.result.stop_reason, state.done = reason, True
        self.finish(state)

    @staticmethod
    def finish(state: SequenceState) -> None:
        """Tell the sources that proposed for `state` that it ended (done, cancelled or abandoned)."""
        for source in state.sources:
            source.finished(state)
        if state.gate is not None:
            state.gate.finish()

    def closing_step(self, state: SequenceState) -> list | None:
        """The step of a sequence that ends without a forward (its last token, or the context is full): the tokens it
        emits; None when the sequence needs a verification forward."""
        if self.max_positions is not None and state.past + 1 >= self.max_positions:
            if state.past >= self.max_positions:  # the root would sit past the context's last position
                self._end(state, "context")
                return []
            return self.emit(state, [state.root], None)  # the root takes the context's last position
        if state.result.new_tokens + 1 >= state.max_new_tokens or state.root in state.stop_token_ids:
            return self.emit(state, [state.root], None)
        return None

    def emit_step(self, state: SequenceState, tokens: list, next_token: int) -> list:
        """Emit a verified step's accepted `tokens` (root first) and count the step; `next_token` is the next root."""
        emitted = self.emit(state, tokens, next_token)
        state.result.step_tokens.append(len(emitted))
        return emitted

    # ----------------------------------------------------------------------------------------------
    def _forward(self, embeds, allowed_new, positions, past: int, prefix_slots: int, special_of_inputs, cache,
                 output_hidden_states: bool):
        """Body forward of new inputs that see the whole past plus the `allowed_new` pattern among themselves
        (None: plainly causal, and the model builds its own mask: the same kernels as transformers' generate).
        With a prefix, `special_of_inputs` says which prefix slots each input sees (-1: none)."""
        count = embeds.shape[1]
        mask = None
        if allowed_new is not None or prefix_slots:
            allowed = torch.ones(count, past + count, dtype=torch.bool, device=self.device)
            if allowed_new is not None:
                allowed[:, past:] = allowed_new
            else:
                allowed[:, past:] = torch.tril(torch.ones(count, count, dtype=torch.bool, device=self.device))
            if prefix_slots:
                allowed = self.model.layout.with_prefix_columns(allowed, special_of_inputs)
            mask = backbone.additive_mask(allowed, embeds.dtype)
        return backbone.run_body(self.base, embeds, mask, (positions + past)[None], cache,
                                 output_hidden_states=output_hidden_states)

    def _with_chains(self, tree: TreeBuffers, parents: tuple) -> TreeBuffers:
        key = (id(tree), parents)
        merged = self._merged.get(key)
        if merged is None:
            if len(self._merged) >= 4096:  # context trees take many shapes: bound the cache
                self._merged.clear()
            merged = with_branches(tree, parents, self.chain_special_tokens, self.layout).to(self.device)
            self._merged[key] = merged
        return merged

    def prefill_plainly(self, state: SequenceState):
        """The prompt tokens made a step's logits non-finite: the sequence's cache rebuilt without them (and without
        the prefix), so that it goes on plainly and nothing they computed decides what is emitted."""
        self._warn_non_finite()
        context = torch.tensor([state.context[:-1]], device=self.device)
        cache = new_cache(self.base)
        embeds = self.base.get_input_embeddings()(context)
        self._forward(embeds, None, torch.arange(context.shape[1], device=self.device), 0, 0, None, cache, False)
        state.result.forward_passes += 1
        state.prefix_slots, state.prompt_tokens, state.special_logits = 0, False, None
        return cache

    @staticmethod
    def _warn_non_finite():
        warnings.warn("the prompt tokens gave non-finite logits (corrupt weights?): decoding without them",
                      RuntimeWarning, stacklevel=3)

    # ----------------------------------------------------------------------------------------------
    def check_inputs(self, input_ids, max_new_tokens) -> torch.Tensor:
        """`input_ids` as a [1, length] tensor on the model's device; PPDError for anything that is not one prompt."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise PPDError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        try:
            input_ids = torch.as_tensor(input_ids)
        except (TypeError, ValueError, RuntimeError):
            raise PPDError("input_ids must be a sequence of token ids") from None
        if input_ids.dtype in (torch.bool,) or input_ids.is_floating_point() or input_ids.is_complex():
            raise PPDError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise PPDError("decoding takes one sequence at a time (batch size 1)")
        length = input_ids.shape[1]
        if length == 0:
            raise PPDError("the prompt is empty")
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size:
            raise PPDError(f"input_ids hold ids outside the vocabulary 0..{self.vocab_size - 1}")
        if self.max_positions is not None and length >= self.max_positions:
            raise PPDError(f"the prompt has {length} tokens; the model's context is {self.max_positions}")
        return input_ids.long().to(self.device)

    def stream(self, input_ids, max_new_tokens: int = 512, result: GenerationResult | None = None, seed=None):
        """Yield the tokens accepted at each step (a list of ids; its first is the base model's own token).

        Statistics accumulate in `result` (pass one in to read them while or after streaming).
        """
        # one sequence is a batch of one row with the decoder's own decoding; inference mode is per thread, and a
        # consumer (a web server's thread pool) may resume this generator in another thread: the batch enters it
        # around each step rather than across the yields
        set_weight_layout(self.model, self.decoding.weight_layout)  # the layout the choice was priced in
        batch = DecodeBatch(self, _own_decoding)
        state = batch.add(input_ids, max_new_tokens, seed=seed, result=result)
        try:
            while len(batch):
                for _, tokens in batch.step():
                    yield tokens
        finally:
            batch.remove(state)  # a consumer that stops reading: the sources let the sequence go

    def generate(self, input_ids, max_new_tokens: int = 512, seed=None) -> GenerationResult:
        result = GenerationResult()
        for _ in self.stream(input_ids, max_new_tokens, result, seed=seed):
            pass
        return result

    def batch(self, setting=None, expected_rows: int = 0):
        """A running batch (`prompt.inference.batch.DecodeBatch`) that sequences join and leave between steps (the
        weights in the standard layout, which batches are priced in)."""
        set_weight_layout(self.model, STANDARD)
        return DecodeBatch(self, setting, expected_rows)

    def generate_batch(self, prompts, max_new_tokens: int = 512, seed=None) -> list:
        """Decode several prompts (token-id sequences of any lengths) together: one GenerationResult per prompt, in
        order, each token-identical (in float32) to the prompt decoded alone."""
        set_weight_layout(self.model, STANDARD)
        return generate_batch(self, prompts, max_new_tokens, seed)


def _own_decoding(rows: int) -> None:
    """The decoding of a batch of one sequence decoded alone: the decoder's own, whatever the batch size."""
    return None
