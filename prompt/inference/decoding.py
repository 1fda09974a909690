"""The PPD decode loop, in the paper's order.

1. Prefill: run the prompt with the prompt tokens appended; the last input's logits give the next
   token (the tree's root), the prompt tokens' logits give guesses for the tokens after it.
2. Propose: the top-k of each special token's logits fill the candidate tree.
3. Verify: one forward over the root, the candidate nodes and the special tokens appended to them,
   with a tree attention mask.
4. Accept the longest path whose tokens the base model agrees with, keep those nodes' cache entries.
5. Read the next root from the last accepted node's logits, and the next special-token logits from
   the special tokens appended to that node: their number picks the next tree (dynamic depth).

Plain decoding is the same loop with no prompt tokens: each tree is the root alone.
Context sources (prompt lookup, `prompt.inference.candidates`) add one chain each to the step's tree, as
a branch from the root, verified in the same forward.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from prompt.errors import PPDError
from prompt.inference.candidates import PromptLookup
from prompt.inference.tree import DynamicTree, TreeBuffers, root_only_buffers, select_tree_spec, with_chains
from prompt.jsonio import read_json
from prompt.model import backbone
from prompt.model.cache import keep_cache_entries, new_cache
from prompt.model.prompt_decoder import PromptDecoder

SAMPLING_MODES = ("greedy", "typical")


@dataclass
class GenerationResult:
    """What one generation call produced and what it cost."""

    token_ids: list = field(default_factory=list)  # the new tokens only
    forward_passes: int = 0  # prefill included
    wall_time: float = 0.0
    step_tokens: list = field(default_factory=list)  # tokens emitted per forward pass after the prefill
    chain_wins: int = 0  # steps whose accepted path ended in a context source's chain
    stop_reason: str = ""  # "eos", "length" or "context"

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def accept_length(self) -> float:
        """Mean new tokens per forward pass (1.0 for plain decoding)."""
        return self.new_tokens / max(self.forward_passes, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_time if self.wall_time > 0 else 0.0


def _typical_filter(logits: torch.Tensor, temperature: float, threshold: float, alpha: float) -> torch.Tensor:
    """Probabilities after temperature, with tokens below the typical-acceptance threshold removed."""
    probs = F.softmax(logits.float() / temperature, dim=-1)
    entropy = -(probs * torch.log(probs + 1e-5)).sum(-1, keepdim=True)
    cut = torch.minimum(torch.full_like(entropy, threshold), torch.exp(-entropy) * alpha)
    probs = torch.where(probs < cut, torch.zeros_like(probs), probs)
    return probs / probs.sum(-1, keepdim=True)


def tuned_decoding(model, dtype: str) -> dict:
    """The decoding recorded for `model`'s prompt tokens in `dtype` by `prompt.inference.tune` ({} if none):
    {"tree_length": inputs of the tree (0: no prompt tokens), "prompt_lookup_num_tokens": chain length (0: off)}."""
    path = getattr(model, "decoding_file", None)
    if not path:
        return {}
    data = read_json(path, "tuned decoding file")
    entry = data.get(dtype) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) else {}


class Decoder:
    """Decoding settings bound to a model. `stream()` and `generate()` own their cache: calls may run concurrently.

    `tree_length` picks the tree from the tree file by its input length; 0 decodes without the prompt
    tokens. `prompt_lookup_num_tokens` adds a prompt-lookup chain of that length to every tree (0: off).
    Left as None, both come from the checkpoint's tuned decoding for the model's dtype, if it has one,
    else the largest tree and no lookup. `sources` adds other context sources.
    """

    def __init__(self, model, tree_spec=None, tree_length: int | None = None, tree_file: str | None = None,
                 temperature: float = 0.0, posterior_threshold: float = 0.09, posterior_alpha: float = 0.3,
                 sampling: str = "greedy", stop_token_ids=None, use_prompt_tokens: bool = True,
                 prompt_lookup_num_tokens: int | None = None, sources=(), chain_special_tokens: int = 0):
        if sampling not in SAMPLING_MODES:
            raise PPDError(f"sampling must be one of {', '.join(SAMPLING_MODES)}, got {sampling!r}")
        if temperature < 0:
            raise PPDError(f"temperature must be >= 0, got {temperature}")
        self.model = model
        self.base = model.base_model if isinstance(model, PromptDecoder) else model
        is_ppd = isinstance(model, PromptDecoder)
        tuned = tuned_decoding(model, str(self.base.dtype).replace("torch.", "")) if is_ppd and tree_spec is None else {}
        if tree_length is None and tree_spec is None and tree_file is None:
            tree_length = tuned.get("tree_length")
        if prompt_lookup_num_tokens is None:
            prompt_lookup_num_tokens = tuned.get("prompt_lookup_num_tokens", 0)
        if tree_length is not None and tree_length < 0:
            raise PPDError(f"the tree length must be >= 0 (0: no prompt tokens), got {tree_length}")
        if prompt_lookup_num_tokens < 0:
            raise PPDError(f"prompt_lookup_num_tokens must be >= 0 (0: off), got {prompt_lookup_num_tokens}")
        self.ppd = is_ppd and use_prompt_tokens and tree_length != 0
        self.temperature = float(temperature)
        self.posterior_threshold = posterior_threshold
        self.posterior_alpha = posterior_alpha
        self.sampling = sampling
        self.stop_token_ids = set(stop_token_ids or [])
        self.sources = list(sources)
        if prompt_lookup_num_tokens:
            self.sources.append(PromptLookup(prompt_lookup_num_tokens, stop_token_ids=self.stop_token_ids))
        self.prompt_lookup_num_tokens = prompt_lookup_num_tokens
        self.max_positions = getattr(self.base.config, "max_position_embeddings", None)
        self.device = self.base.get_input_embeddings().weight.device
        self.root_only = root_only_buffers()
        self.tree = None
        self.virtual_tokens, self.vt_attention = 1, torch.zeros(0, 0, dtype=torch.bool)
        self.chain_special_tokens = 0
        if self.ppd:
            config = model.config
            tree_file = tree_file or getattr(model, "tree_file", None)  # the checkpoint's own tuned trees
            spec = tree_spec if tree_spec is not None else select_tree_spec(
                tree_file, config.num_special_tokens, config.virtual_tokens_per_special_token, tree_length)
            self.virtual_tokens, self.vt_attention = config.virtual_tokens_per_special_token, model.vt_attention.cpu()
            self.tree = DynamicTree(spec, config.num_special_tokens, self.virtual_tokens, self.vt_attention)
            if not 0 <= chain_special_tokens <= config.num_special_tokens:
                raise PPDError(f"chain_special_tokens must lie in 0..{config.num_special_tokens}")
            self.chain_special_tokens = chain_special_tokens
        self._merged = {}  # (tree, chain lengths) -> buffers, built once per shape

    def describe(self) -> str:
        """The decoding in words, e.g. 'PPD tree of 24 inputs + prompt lookup 10'."""
        parts = [f"PPD tree of {self.tree.input_length} inputs"] if self.ppd else []
        if self.prompt_lookup_num_tokens:
            parts.append(f"prompt lookup {self.prompt_lookup_num_tokens}")
        return " + ".join(parts) or ("plain greedy" if self.temperature == 0 else "plain sampling")

    def _with_chains(self, tree: TreeBuffers, chain_lengths: tuple) -> TreeBuffers:
        key = (id(tree), chain_lengths)
        merged = self._merged.get(key)
        if merged is None:
            merged = with_chains(tree, chain_lengths, self.chain_special_tokens, self.virtual_tokens, self.vt_attention)
            self._merged[key] = merged
        return merged

    # ----------------------------------------------------------------------------------------------
    def _pick(self, logits: torch.Tensor, generator) -> int:
        """The next token from one row of logits: argmax, or a typical-filtered sample."""
        if self.temperature == 0 or self.sampling == "greedy":
            return int(logits.argmax(-1))
        probs = _typical_filter(logits, self.temperature, self.posterior_threshold, self.posterior_alpha)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _verify(self, tree: TreeBuffers, node_tokens: list, node_logits: torch.Tensor, generator) -> list:
        """Indices of the accepted path, root first: the deepest node whose whole path the base model accepts."""
        parents = tree.node_parent
        if tree.num_nodes == 1:
            return [0]
        if self.temperature == 0:
            targets = node_logits.argmax(-1).tolist()
            ok = [True] + [node_tokens[i] == targets[parents[i]] for i in range(1, tree.num_nodes)]
            score = None
        elif self.sampling == "typical":
            probs = _typical_filter(node_logits, self.temperature, self.posterior_threshold, self.posterior_alpha)
            targets = torch.multinomial(probs, 1, generator=generator)[:, 0].tolist()
            ok = [True] + [node_tokens[i] == targets[parents[i]] for i in range(1, tree.num_nodes)]
            score = None
        else:  # temperature > 0 with greedy sampling: typical acceptance by probability threshold (Medusa)
            probs = F.softmax(node_logits.float() / self.temperature, dim=-1)
            entropy = -(probs * torch.log(probs + 1e-5)).sum(-1)
            cut = torch.minimum(torch.full_like(entropy, self.posterior_threshold),
                                torch.exp(-entropy) * self.posterior_alpha).tolist()
            parent_index = torch.tensor(parents[1:])
            cand_probs = probs[parent_index, torch.tensor(node_tokens[1:])].tolist()
            ok = [True] + [cand_probs[i - 1] > cut[parents[i]] for i in range(1, tree.num_nodes)]
            score = [0.0] + [math.log(max(p, 1e-30)) for p in cand_probs]
        accepted = [False] * tree.num_nodes
        loglik = [0.0] * tree.num_nodes
        best, best_depth, best_score = 0, 0, 0.0
        for i in range(tree.num_nodes):  # parents come before children
            accepted[i] = ok[i] and (i == 0 or accepted[parents[i]])
            if not accepted[i]:
                continue
            depth = tree.node_depth(i)
            if score is not None and i > 0:
                loglik[i] = loglik[parents[i]] + score[i]
            if depth > best_depth or (score is not None and depth == best_depth and loglik[i] > best_score):
                best, best_depth, best_score = i, depth, loglik[i]
        path = []
        while best != -1:
            path.append(best)
            best = parents[best]
        return path[::-1]

    @staticmethod
    def _keep_cache_entries(cache, past: int, kept: list, written: int) -> None:
        """Keep the cache entries of the accepted nodes (at past + kept) in slots past.., drop the rest."""
        keep_cache_entries(cache, past, kept, written)

    def _propose(self, root: int, special_logits, tree: TreeBuffers, context: list) -> torch.Tensor:
        """Token of every prompt-token node: the root, then the top-k guesses of each special token, placed by
        the tree (context sources' chains follow them). `context` holds the prompt and every token so far,
        root included.
        """
        root_tensor = torch.tensor([root], device=self.device)
        if tree.num_prompt_nodes == 1:
            return root_tensor
        guesses = torch.topk(special_logits[: tree.depth], tree.top_k, dim=-1).indices.reshape(-1)
        return torch.cat([root_tensor, guesses])[tree.candidate_index.to(self.device)]

    def _forward(self, embeds, allowed_new: torch.Tensor, positions: torch.Tensor, past: int, cache,
                 special_rows: torch.Tensor | None = None, offset: int = 0):
        """Body forward of new inputs that see the whole past plus the `allowed_new` pattern among themselves
        (None: plainly causal). With prefix tuning the cache starts with the prefix, which only the special-token
        inputs see: `offset` is the prefix's length and `special_rows` each input's special token (-1: a token)."""
        count = embeds.shape[1]
        causal = allowed_new is None or count == 1 or torch.equal(allowed_new, torch.tril(torch.ones_like(allowed_new)))
        if causal and not offset:
            # plainly causal (prefill without prompt tokens, single-token steps): let the model build its
            # own causal mask, the same kernel path (and bf16 rounding) as transformers' generate
            mask = None
        else:
            allowed = torch.ones(count, offset + past + count, dtype=torch.bool, device=embeds.device)
            allowed[:, offset + past:] = allowed_new  # not None here: offset > 0 only with prompt tokens
            if offset:
                rows = special_rows if special_rows is not None else torch.full((count,), -1)
                allowed[:, :offset] = self.model.prefix_attention(rows.to(embeds.device))
            mask = backbone.additive_mask(allowed, embeds.dtype)
        return backbone.run_body(self.base, embeds, mask, (positions + past)[None].to(embeds.device), cache,
                                 output_hidden_states=self.ppd and self.model.needs_hidden_states())

    # ----------------------------------------------------------------------------------------------
    def stream(self, input_ids, max_new_tokens: int = 512, result: GenerationResult | None = None, seed=None):
        """Yield the tokens accepted at each step (a list of ids; its first is the base model's own token).

        Statistics accumulate in `result` (pass one in to read them while or after streaming).
        """
        result = result if result is not None else GenerationResult()
        input_ids = torch.as_tensor(input_ids)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise PPDError("decoding takes one sequence at a time (batch size 1)")
        length = input_ids.shape[1]
        if length == 0:
            raise PPDError("the prompt is empty")
        if max_new_tokens < 1:
            raise PPDError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if self.max_positions is not None and length >= self.max_positions:
            raise PPDError(f"the prompt has {length} tokens; the model's context is {self.max_positions}")
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        input_ids = input_ids.to(self.device)
        start = time.perf_counter()
        steps = self._run(input_ids, max_new_tokens, result, generator, start)
        # Inference mode is per thread, and a consumer (a web server's thread pool) may resume this
        # generator in another thread: enter it around each step rather than across the yields.
        try:
            while True:
                with torch.inference_mode():
                    try:
                        accepted = next(steps)
                    except StopIteration:
                        return
                yield accepted
        finally:
            with torch.inference_mode():
                steps.close()

    def _run(self, input_ids, max_new_tokens, result, generator, start):
        model, ppd = self.model, self.ppd
        if ppd and self.max_positions is not None and input_ids.shape[1] + model.config.num_special_tokens > self.max_positions:
            ppd = False  # no room left for the prompt tokens: decode plainly
        offset = model.prefix_length if ppd else 0  # cache slots the prefix takes before the sequence
        cache = model.with_prefix() if offset else new_cache(self.base)
        length = input_ids.shape[1]
        embeds = self.base.get_input_embeddings()(input_ids)
        allowed = None  # plainly causal
        positions = torch.arange(length)
        special_rows = None
        if ppd:
            config = model.config
            nv, v = config.num_virtual_tokens, config.virtual_tokens_per_special_token
            embeds = torch.cat([embeds, model.prompt_embeds()[None]], 1)
            grown = torch.zeros(length + nv, length + nv, dtype=torch.bool)
            grown[:length, :length] = torch.tril(torch.ones(length, length, dtype=torch.bool))
            grown[length:, :length] = True
            grown[length:, length:] = model.vt_attention.cpu()
            allowed = grown
            positions = torch.cat([positions, length + torch.arange(nv) // v])
            special_rows = torch.cat([torch.full((length,), -1), torch.arange(nv) // v])
        output = self._forward(embeds, allowed if allowed is None else allowed.to(embeds.device), positions, 0, cache,
                               special_rows, offset)
        result.forward_passes += 1
        hidden = output.last_hidden_state
        root = self._pick(backbone.head_logits(self.base, hidden[0, length - 1]), generator)
        special_logits = None
        if ppd:
            special_logits = model.special_token_logits(model.special_hidden(output, slice(length, length + nv)))[0]
            self._keep_cache_entries(cache, offset + length, [], nv)
        past = length
        context = input_ids[0].tolist()

        while True:
            remaining = max_new_tokens - result.new_tokens
            if root in self.stop_token_ids or remaining == 1:
                result.token_ids.append(root)
                result.stop_reason = "eos" if root in self.stop_token_ids else "length"
                result.wall_time = time.perf_counter() - start
                yield [root]
                return
            if self.max_positions is not None and past + 1 >= self.max_positions:
                result.stop_reason = "context"
                result.wall_time = time.perf_counter() - start
                return
            tree = self.root_only
            if special_logits is not None:
                tree = self.tree.for_special_tokens(special_logits.shape[0])
            context.append(root)  # popped below: the accepted tokens (root first) extend it after the step
            chains = [chain for chain in (source.propose(context) for source in self.sources) if chain]
            if chains:
                tree = self._with_chains(tree, tuple(len(chain) for chain in chains))
            if self.max_positions is not None and past + tree.num_inputs > self.max_positions:
                tree, chains = self.root_only, []
            node_tokens = self._propose(root, special_logits, tree, context)
            context.pop()
            if chains:
                node_tokens = torch.cat([node_tokens, torch.tensor([t for c in chains for t in c], device=self.device)])
            embeds = self.base.get_input_embeddings()(node_tokens)[None]
            special_rows = None
            if tree.special_prompt_index.numel():
                embeds = torch.cat([embeds, model.prompt_embeds()[tree.special_prompt_index][None]], 1)
                if offset:
                    special_rows = torch.cat([torch.full((len(node_tokens),), -1),
                                              tree.special_prompt_index.cpu() // self.virtual_tokens])
            output = self._forward(embeds, tree.allowed.to(embeds.device), tree.positions, past, cache, special_rows,
                                   offset)
            result.forward_passes += 1
            hidden = output.last_hidden_state
            # one head call over every input when the special tokens read the base head: the head's weights are
            # read once per step (a second call for the accepted node's special tokens costs as much again)
            shared_head = special_logits is not None and model.reads_base_head()
            all_logits = backbone.head_logits(self.base, hidden[0]) if shared_head else None
            node_logits = all_logits[: tree.num_nodes] if shared_head else backbone.head_logits(
                self.base, hidden[0, : tree.num_nodes])
            node_tokens = node_tokens.tolist()
            path = self._verify(tree, node_tokens, node_logits, generator)
            last = path[-1]
            self._keep_cache_entries(cache, offset + past, path, tree.num_inputs)
            past += len(path)
            if special_logits is not None:
                rows = tree.special_rows[last]
                if not rows:  # a chain node without special tokens: the next step recovers from the root
                    special_logits = special_logits[:0]
                else:
                    special_logits = model.special_token_logits(
                        model.special_hidden(output, rows), all_logits[rows][None] if shared_head else None)[0]
            result.chain_wins += int(last >= tree.num_prompt_nodes)
            accepted = [node_tokens[i] for i in path][:remaining]
            for i, token in enumerate(accepted):
                if token in self.stop_token_ids:
                    accepted = accepted[: i + 1]
                    break
            result.token_ids.extend(accepted)
            context.extend(accepted)
            result.step_tokens.append(len(accepted))
            done = accepted[-1] in self.stop_token_ids or result.new_tokens >= max_new_tokens
            if done:
                result.stop_reason = "eos" if accepted[-1] in self.stop_token_ids else "length"
            result.wall_time = time.perf_counter() - start
            yield accepted
            if done:
                return
            root = self._pick(node_logits[last], generator)

    def generate(self, input_ids, max_new_tokens: int = 512, seed=None) -> GenerationResult:
        result = GenerationResult()
        for _ in self.stream(input_ids, max_new_tokens, result, seed=seed):
            pass
        return result


def stop_token_ids_for(tokenizer, extra=()) -> list:
    """EOS ids of the tokenizer (and generation config, where given) plus `extra` ids."""
    ids = set(extra)
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(eos)
    return sorted(ids)
