"""Acceptance rules: which path of a verified tree is accepted, and which token the base model adds after it.

Each rule looks at the whole tree at once: the tokens of its nodes and the base model's logits at every node
(what the base model predicts after that node's path). A node is acceptable when its token passes the rule
against its parent's logits; a path is accepted when every node on it is, which the tree's ancestor matrix
checks for all nodes in one operation. Rules return device tensors, so the loop reads them in one transfer.

- `greedy`: a node is acceptable when it is its parent's argmax; the next token is the argmax after the
  deepest accepted node. Output equals plain greedy decoding.
- `typical` (Medusa's typical acceptance): a node is acceptable when its probability under its parent exceeds
  min(posterior_threshold, posterior_alpha * exp(-entropy)); among the deepest accepted nodes the most likely path
  wins; the next token is sampled from the typical-filtered distribution. It changes the output distribution (it
  favours likely continuations).
- `upstream_greedy` (upstream's `--sampling greedy` above temperature 0, `evaluate_posterior` there): `typical`'s
  acceptance with an argmax next token (and an argmax first token after the prefill).
- `upstream_typical` (upstream's `--sampling typical`): every (path, depth) of the tree draws its own sample from the
  typical-filtered distribution of the node above it, one draw per root-to-leaf path, so a node shared by several
  paths is compared with several samples; a path is accepted as far as its candidates equal their samples; the first
  longest path in upstream's path order (the leaves from last to first) wins; the next token is a fresh draw from
  the typical-filtered distribution after it. Since a node passes exactly when its path's draw equals its token,
  each comparison is drawn as a Bernoulli of the token's filtered probability (the same law, no vocabulary-sized
  draw per path). The several draws favour the candidates, so it changes the output distribution too.
- `typical_sampling`: every node draws one sample from the typical-filtered distribution; a child is acceptable when
  it equals its parent's sample, and the deepest accepted node's own sample is the next token. Every emitted
  token is then one draw from the typical-filtered distribution.
- `exact`: lossless speculative sampling. The output distribution is the base model's own, after temperature,
  top-k and top-p as transformers' logits warpers apply them. Every candidate (a prompt-token guess or a
  prompt-lookup token) is a deterministic draft, so the children of a node are tried in order by recursive
  rejection sampling (SpecInfer): child x is taken with probability r(x), where r is the node's distribution
  with the tokens of the children tried before it removed and renormalised; when every child is refused, the
  next token is drawn from what remains. Each emitted token is then distributed exactly as plain sampling's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from prompt.errors import PPDError

# typical acceptance's defaults (upstream's and Medusa's): a candidate passes when its probability under its parent
# exceeds min(POSTERIOR_THRESHOLD, POSTERIOR_ALPHA * exp(-entropy))
POSTERIOR_THRESHOLD = 0.09
POSTERIOR_ALPHA = 0.3


def typical_cut(probs: torch.Tensor, threshold: float, alpha: float) -> torch.Tensor:
    """[..., 1] the typical-acceptance threshold of each distribution: min(threshold, alpha * exp(-entropy))."""
    entropy = -(probs * torch.log(probs + 1e-5)).sum(-1, keepdim=True)
    return torch.minimum(torch.full_like(entropy, threshold), torch.exp(-entropy) * alpha)


def typical_filtered_probs(logits: torch.Tensor, temperature: float, threshold: float, alpha: float) -> torch.Tensor:
    """Probabilities after temperature, with tokens below the typical-acceptance threshold removed."""
    probs = F.softmax(logits.float() / temperature, dim=-1)
    probs = torch.where(probs < typical_cut(probs, threshold, alpha), torch.zeros_like(probs), probs)
    return probs / probs.sum(-1, keepdim=True)


def draw(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One draw from each row of `probs` [..., vocab] (non-negative, each row with a positive sum; need not be
    normalised): the inverse of the cumulative distribution at a uniform number, in float64.

    Distributed as `torch.multinomial(probs, 1)` and about 20x cheaper on a CPU over a 49k vocabulary (a search
    instead of multinomial's per-call preparation); a token of probability 0 is never drawn."""
    cdf = probs.double().cumsum(-1)
    uniform = torch.rand(cdf.shape[:-1] + (1,), generator=generator, dtype=torch.float64, device=cdf.device)
    # uniform < 1, so the point lies below the total: the first cdf entry above it belongs to a token of mass > 0
    index = torch.searchsorted(cdf, uniform * cdf[..., -1:], right=True)
    return index.clamp_max(probs.shape[-1] - 1)[..., 0]


def _accepted(tree, acceptable: torch.Tensor) -> torch.Tensor:
    """[nodes] boolean: every node on the node's path (root included, always acceptable) is acceptable."""
    acceptable = acceptable.clone()
    acceptable[0] = True
    return ~(tree.ancestors & ~acceptable[None, :]).any(-1)


def _deepest(tree, accepted: torch.Tensor, score: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the deepest accepted node (ties: the highest `score`, then the first)."""
    depth = torch.where(accepted, tree.depths, torch.full_like(tree.depths, -1))
    if score is None:
        return depth.argmax()
    deepest = depth == depth.max()
    return torch.where(deepest, score, torch.full_like(score, -float("inf"))).argmax()


def greedy_best(tree, tokens: list, targets: list) -> int:
    """The greedy rule: the deepest node whose path the base model's argmax `targets` (per node) follows (ties: the
    first)."""
    parents, paths = tree.node_parent, tree.node_paths
    accepted = [True] * len(tokens)
    best, best_depth = 0, 0
    for i in range(1, len(tokens)):
        parent = parents[i]
        accepted[i] = accepted[parent] and tokens[i] == targets[parent]
        if accepted[i] and len(paths[i]) > best_depth:
            best, best_depth = i, len(paths[i])
    return best


class AcceptanceRule:
    """What every rule offers the verification step: `first_token` after the prefill; `verify` over one tree (device
    tensors); `device_verdict`, what a row reads back to the host in the step's one transfer, and `decide`, the
    (deepest accepted node, next token) it gives on the host."""

    name = ""
    batched_targets = False  # True: the device verdict is the argmax at every node, one argmax for a whole batch

    def verify(self, tree, node_tokens: torch.Tensor, node_logits: torch.Tensor, generator=None):
        raise NotImplementedError

    def device_verdict(self, tree, node_tokens: torch.Tensor, node_logits: torch.Tensor, generator=None):
        return torch.stack(self.verify(tree, node_tokens, node_logits, generator))

    def decide(self, tree, tokens: list, verdict: list) -> tuple:
        return verdict[0], verdict[1]


class GreedyAcceptance(AcceptanceRule):
    """The deepest node whose path follows the base model's argmax (ties: the first); the argmax after it. Its
    device verdict is the argmax at every node; the walk down the tree runs on the host (`greedy_best`)."""

    name = "greedy"
    batched_targets = True

    def first_token(self, logits: torch.Tensor, generator=None) -> torch.Tensor:
        return logits.argmax(-1)

    def device_verdict(self, tree, node_tokens: torch.Tensor, node_logits: torch.Tensor, generator=None):
        return node_logits.argmax(-1)

    def decide(self, tree, tokens: list, verdict: list) -> tuple:
        best = greedy_best(tree, tokens, verdict)
        return best, verdict[best]

    def verify(self, tree, node_tokens: torch.Tensor, node_logits: torch.Tensor, generator=None):
        """(deepest accepted node, the base model's next token after it), as 0-d tensors."""
        best, next_token = self.decide(tree, node_tokens.tolist(), node_logits.argmax(-1).tolist())
        return torch.tensor(best), torch.tensor(next_token)

    def describe(self) -> str:
        return "greedy"


class TypicalAcceptance(AcceptanceRule):
    name = "typical"

    def __init__(self, temperature: float, posterior_threshold: float = POSTERIOR_THRESHOLD,
                 posterior_alpha: float = POSTERIOR_ALPHA):
        self.temperature, self.threshold, self.alpha = temperature, posterior_threshold, posterior_alpha

    def first_token(self, logits: torch.Tensor, generator=None) -> torch.Tensor:
        probs = typical_filtered_probs(logits, self.temperature, self.threshold, self.alpha)
        return draw(probs, generator)

    def accepted_and_likelihood(self, tree, node_tokens: torch.Tensor, node_logits: torch.Tensor):
        """([nodes] every node on the path passes the threshold, [nodes] the path's log-likelihood)."""
        probs = F.softmax(node_logits.float() / self.temperature, dim=-1)
        cut = typical_cut(probs, self.threshold, self.alpha)[:, 0]
        node_probs = probs[tree.parent_index, node_tokens]
        accepted = _accepted(tree, node_probs > cut[tree.parent_index])
        log_probs = torch.log(node_probs.clamp_min(1e-30))
        log_probs[0] = 0.0
        return accepted, tree.ancestors.float() @ log_probs

    def verify(self, tree, node_tokens: torch.Tensor, node_logits: torch.Tensor, generator=None):
        # the deepest accepted node (ties: the likeliest path, then the first)
        best = _deepest(tree, *self.accepted_and_likelihood(tree, node_tokens, node_logits))
        return best, self.first_token(node_logits[best], generator)

    def describe(self) -> str:
        return f"typical acceptance, temperature {self.temperature:g}"


class TypicalSampling(TypicalAcceptance):
    name = "typical_sampling"

    def verify(self, tree, node_tokens: torch.Tensor, node_logits: torch.Tensor, generator=None):
        probs = typical_filtered_probs(node_logits, self.temperature, self.threshold, self.alpha)
        samples = draw(probs, generator)
        best = _deepest(tree, _accepted(tree, node_tokens == samples[tree.parent_index]))
        # the deepest node's sample was matched by none of its children: it is the next token
        return best, samples[best]

    def describe(self) -> str:
        return f"typical-filtered sampling, temperature {self.temperature:g}"


class ExactSampling(AcceptanceRule):
    name = "exact"

    def __init__(self, temperature: float, top_p: float | None = None, top_k: int | None = None):
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        # transformers' order: temperature, top-k, top-p
        warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """[rows, vocab] sampling distributions after the warpers."""
        rows = logits.float().reshape(-1, logits.shape[-1])
        return F.softmax(self.warpers(None, rows), dim=-1)

    def first_token(self, logits: torch.Tensor, generator=None) -> torch.Tensor:
        return draw(self.probs(logits), generator).reshape(logits.shape[:-1])

    def verify(self, tree, node_tokens: torch.Tensor, node_logits: torch.Tensor, generator=None):
        # distributions only where they are read: at the nodes that have children (the leaves' rows, often half the
        # tree, are never a parent), and at the deepest taken node below
        parents, parent_row = torch.unique(tree.parent_index, return_inverse=True)
        probs = self.probs(node_logits[parents])
        uniform = torch.rand(node_tokens.shape[0], generator=generator, device=probs.device)
        # p(x_i) under its parent; a token already tried by an earlier sibling has nothing left to take
        node_probs = probs[parent_row, node_tokens]
        same_token = node_tokens[:, None] == node_tokens[None, :]
        repeated = (tree.earlier_siblings & same_token).any(-1)
        removed = tree.earlier_siblings.float() @ torch.where(repeated, torch.zeros_like(node_probs), node_probs)
        remaining = node_probs / (1.0 - removed).clamp_min(1e-12)
        passes = ~repeated & (uniform < remaining)
        # a node is taken when it passes and no earlier sibling did; a path when all its nodes are taken
        taken = passes & ~(tree.earlier_siblings & passes[None, :]).any(-1)
        best = _deepest(tree, _accepted(tree, taken))
        # every child of the deepest taken node was refused: draw the next token from what they left
        best_probs = self.probs(node_logits[best])[0]
        residual = best_probs.clone()
        children = (tree.parent_index == best) & (torch.arange(len(node_tokens), device=probs.device) != 0)
        residual[node_tokens[children]] = 0.0
        total = residual.sum()
        residual = torch.where(total > 0, residual / total.clamp_min(1e-30), best_probs)
        return best, draw(residual, generator)

    def describe(self) -> str:
        extra = "".join([f", top-p {self.top_p:g}" if self.top_p is not None and self.top_p < 1.0 else "",
                         f", top-k {self.top_k}" if self.top_k else ""])
        return f"exact sampling, temperature {self.temperature:g}{extra}"


def upstream_paths(tree) -> torch.Tensor:
    """Upstream's candidate paths (its `retrieve_indices`) as their leaves: one path per leaf, the last leaf first
    (our prompt-token nodes are in upstream's order, sorted by depth and then ranks)."""
    is_parent = torch.zeros(tree.num_nodes, dtype=torch.bool, device=tree.parent_index.device)
    is_parent[tree.parent_index] = True
    is_parent[0] = tree.num_nodes > 1  # the root is its own parent in parent_index
    return torch.nonzero(~is_parent).flatten().flip(0)


class UpstreamGreedy(TypicalAcceptance):
    """Upstream's `--sampling greedy` above temperature 0: typical acceptance, the argmax after the chosen path."""

    name = "upstream_greedy"

    def first_token(self, logits: torch.Tensor, generator=None) -> torch.Tensor:
        return logits.argmax(-1)

    def verify(self, tree, node_tokens: torch.Tensor, node_logits: torch.Tensor, generator=None):
        accepted, path_log_prob = self.accepted_and_likelihood(tree, node_tokens, node_logits)
        # upstream's ties (the same likelihood: repeated sibling tokens): the node on the first path in its order
        on_path = tree.ancestors[upstream_paths(tree)]  # [paths, nodes]
        first_path = torch.where(on_path, torch.arange(len(on_path), device=on_path.device)[:, None],
                                 len(on_path)).min(0).values
        depth = torch.where(accepted, tree.depths, torch.full_like(tree.depths, -1))
        score = torch.where(depth == depth.max(), path_log_prob, torch.full_like(path_log_prob, -float("inf")))
        tied = score == score.max()
        best = torch.where(tied, first_path, torch.full_like(first_path, len(on_path) + 1)).argmin()
        return best, node_logits[best].argmax(-1)

    def describe(self) -> str:
        return f"upstream's greedy (typical acceptance, argmax next token), temperature {self.temperature:g}"


class UpstreamTypical(TypicalAcceptance):
    """Upstream's `--sampling typical`: each root-to-leaf path compares its candidates with its own typical-filtered
    samples; the first longest accepted path (upstream's order), then a fresh typical-filtered draw."""

    name = "upstream_typical"

    def verify(self, tree, node_tokens: torch.Tensor, node_logits: torch.Tensor, generator=None):
        probs = typical_filtered_probs(node_logits, self.temperature, self.threshold, self.alpha)
        node_probs = probs[tree.parent_index, node_tokens]  # P(a path's draw at this node equals its token)
        best = self.first_longest_path(tree, node_probs, generator)
        return best, draw(probs[best], generator)

    @staticmethod
    def first_longest_path(tree, node_probs: torch.Tensor, generator=None) -> torch.Tensor:
        """The deepest node of the first longest accepted path, each path's comparisons drawn independently."""
        ancestors = tree.ancestors
        on_path = ancestors[upstream_paths(tree)]  # [paths, nodes]
        uniform = torch.rand(on_path.shape, generator=generator, device=node_probs.device, dtype=torch.float64)
        passes = (uniform < node_probs.double()[None, :]) | ~on_path
        passes[:, 0] = True
        # a path's node is accepted when every node above it on that path passed that path's comparison
        accepted = on_path & ~(ancestors[None, :, :] & ~passes[:, None, :]).any(-1)
        depth = torch.where(accepted, tree.depths[None, :], torch.full_like(accepted, -1, dtype=tree.depths.dtype))
        path_depth, path_node = depth.max(-1)
        return path_node[path_depth.argmax()]  # argmax: the first path of the greatest depth

    def describe(self) -> str:
        return f"upstream's typical (sample and compare per path), temperature {self.temperature:g}"


ACCEPTANCE_RULES = {"greedy": GreedyAcceptance, "typical": TypicalAcceptance, "typical_sampling": TypicalSampling,
                    "exact": ExactSampling, "upstream_greedy": UpstreamGreedy, "upstream_typical": UpstreamTypical}
# upstream's `--sampling` values (its answer scripts, `ppd_generate`) and the rules that compute what they compute
# above temperature 0; at 0 both are greedy there, as here
UPSTREAM_SAMPLING = {"greedy": "upstream_greedy", "typical": "upstream_typical"}


def acceptance_rule(sampling: str | None = None, temperature: float = 0.0,
                    posterior_threshold: float = POSTERIOR_THRESHOLD, posterior_alpha: float = POSTERIOR_ALPHA,
                    top_p: float | None = None, top_k: int | None = None):
    """The rule named `sampling`; None picks greedy at temperature 0 and exact sampling above it. Upstream's two rules
    (`upstream_greedy`, `upstream_typical`) are greedy at temperature 0, as upstream's modes are.

    `top_p` and `top_k` shape the distribution that exact sampling reproduces (transformers' semantics)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise PPDError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise PPDError(f"top_p must lie in (0, 1], got {top_p!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise PPDError(f"top_k must be an integer >= 0 (0: off), got {top_k!r}")
    if sampling is None:
        sampling = "greedy" if temperature == 0 else "exact"
    shaped = (top_p is not None and top_p < 1.0) or bool(top_k)
    if shaped and sampling != "exact":
        raise PPDError(f"top_p and top_k apply to exact sampling only (sampling={sampling!r})")
    if sampling not in ACCEPTANCE_RULES:
        raise PPDError(f"sampling must be one of {', '.join(ACCEPTANCE_RULES)}, got {sampling!r}")
    if sampling in UPSTREAM_SAMPLING.values() and temperature == 0:
        return GreedyAcceptance()  # upstream's rules are greedy at temperature 0
    if sampling == "greedy":
        if temperature > 0:
            raise PPDError(f"greedy decoding takes no temperature (got {temperature}); use sampling='typical' or "
                           f"'typical_sampling' to sample")
        return GreedyAcceptance()
    if temperature == 0:
        raise PPDError(f"sampling={sampling!r} needs a temperature > 0")
    if sampling == "exact":
        return ExactSampling(float(temperature), top_p, top_k)
    return ACCEPTANCE_RULES[sampling](float(temperature), posterior_threshold, posterior_alpha)


# named constructors, each checked as `acceptance_rule` checks its settings
def greedy() -> GreedyAcceptance:
    """Greedy verification: the output equals plain greedy decoding."""
    return acceptance_rule("greedy")


def exact(temperature: float, top_p: float | None = None, top_k: int | None = None) -> ExactSampling:
    """Lossless speculative sampling of the base model's distribution after temperature, top-k and top-p."""
    return acceptance_rule("exact", temperature, top_p=top_p, top_k=top_k)


def typical(temperature: float, posterior_threshold: float = POSTERIOR_THRESHOLD,
            posterior_alpha: float = POSTERIOR_ALPHA) -> TypicalAcceptance:
    """Upstream's typical acceptance."""
    return acceptance_rule("typical", temperature, posterior_threshold, posterior_alpha)


def upstream_greedy(temperature: float, posterior_threshold: float = POSTERIOR_THRESHOLD,
                    posterior_alpha: float = POSTERIOR_ALPHA):
    """Upstream's `--sampling greedy`: typical acceptance with an argmax next token (greedy at temperature 0)."""
    return acceptance_rule("upstream_greedy", temperature, posterior_threshold, posterior_alpha)


def upstream_typical(temperature: float, posterior_threshold: float = POSTERIOR_THRESHOLD,
                     posterior_alpha: float = POSTERIOR_ALPHA):
    """Upstream's `--sampling typical`: sample and compare per path (greedy at temperature 0)."""
    return acceptance_rule("upstream_typical", temperature, posterior_threshold, posterior_alpha)


def typical_sampling(temperature: float, posterior_threshold: float = POSTERIOR_THRESHOLD,
                     posterior_alpha: float = POSTERIOR_ALPHA) -> TypicalSampling:
    """Every emitted token one draw from the typical-filtered distribution."""
    return acceptance_rule("typical_sampling", temperature, posterior_threshold, posterior_alpha)
