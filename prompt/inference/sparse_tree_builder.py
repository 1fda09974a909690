"""Build sparse candidate trees from the prompt tokens' measured top-k accuracies.

Under the usual independence assumption, the guess of rank r of special token d is right with
probability p[d][r] = acc@(r+1) - acc@r, and a tree node is accepted with the product of those
probabilities along its path. The expected number of accepted candidates of a tree is the sum over its
nodes, and a node's probability never exceeds its parent's, so the best tree of n nodes is made of the
n most probable paths: a best-first search finds it.

The dynamic extension gives every node a number of special tokens (how deep the next step's tree can
be if it is the last accepted node): the nodes most likely to be the last accepted get all N, the
others one, within the input-length budget.

    python -m prompt.inference.sparse_tree_builder --accuracies-file accuracies.json --output-file trees.json \\
        --min-input-length 8 --max-input-length 32
"""
from __future__ import annotations

import heapq
import os

from prompt.cli import ArgumentParser
from prompt.errors import PPDError, cli_entry
from prompt.inference.budget import tree_input_length
from prompt.inference.tree import spec_input_length
from prompt.jsonio import read_json, write_json


def rank_probabilities(top_k_accuracy) -> list[list[float]]:
    """Cumulative top-k accuracies [N][K] -> probability that rank r of special token d is right."""
    if (not isinstance(top_k_accuracy, list) or not top_k_accuracy
            or not all(isinstance(row, list) and row for row in top_k_accuracy)):
        raise PPDError("accuracies must be a non-empty list of top-k accuracy lists, one per special token")
    probs = []
    for row in top_k_accuracy:
        if not all(isinstance(a, (int, float)) and 0 <= a <= 1 for a in row):
            raise PPDError("accuracies must lie in [0, 1]")
        if any(b < a - 1e-9 for a, b in zip(row, row[1:])):
            raise PPDError("top-k accuracies must not decrease with k")
        probs.append([row[0]] + [max(b - a, 0.0) for a, b in zip(row, row[1:])])
    return probs


def best_paths(probs, num_nodes: int, max_depth: int) -> list[tuple[list[int], float]]:
    """The `num_nodes` most probable paths of depth <= max_depth (each path's parent comes first)."""
    heap = [(-probs[0][r], [r]) for r in range(len(probs[0]))]
    heapq.heapify(heap)
    chosen = []
    while heap and len(chosen) < num_nodes:
        neg, path = heapq.heappop(heap)
        chosen.append((path, -neg))
        depth = len(path)
        if depth < max_depth and depth < len(probs):
            for r in range(len(probs[depth])):
                heapq.heappush(heap, (neg * probs[depth][r], path + [r]))
    return chosen


def expected_accept_length(paths) -> float:
    """1 (the base model's own token) + the expected number of accepted candidates."""
    return 1.0 + sum(p for _, p in paths)


def deepest_tree(spec) -> list:
    """The nodes [path, probability, n_special] of a spec's deepest tree."""
    return spec[str(max(int(k) for k in spec))]


def predicted_accept_length(spec) -> float:
    """The expected accept length of a tree spec (its deepest tree's node probabilities)."""
    return expected_accept_length([(path, float(p)) for path, p, _ in deepest_tree(spec)])


def tree_spec(probs, num_nodes: int, input_budget: int | None = None, virtual_tokens: int = 1) -> dict:
    """A dynamic tree spec {depth: [[path, probability, n_special], ...]} with `num_nodes` nodes per tree.

    A special token costs `virtual_tokens` inputs; `input_budget` bounds the inputs of the deepest tree.
    """
    n = len(probs)
    spec = {}
    for depth in range(1, n + 1):
        paths = best_paths(probs, num_nodes, depth)
        accepted = {tuple(p): q for p, q in paths}
        # probability that a node is the deepest accepted one: accepted, and no child accepted
        last = {}
        for path, q in paths:
            children = sum(accepted.get(tuple(path) + (r,), 0.0) for r in range(len(probs[min(len(path), n - 1)])))
            last[tuple(path)] = q - children
        special = {tuple(p): 1 for p, _ in paths}  # every node carries one special token, or all N
        for path in sorted(special, key=lambda p: -last[p]):
            more = {**special, path: n}
            if input_budget is not None and tree_input_length(more.values(), n, virtual_tokens) > input_budget:
                break
            special = more
        spec[str(depth)] = [[list(p), round(q, 6), special[tuple(p)]] for p, q in paths]
    return spec


def read_accuracies(path: str) -> list[list[float]]:
    data = read_json(path, "accuracies file")
    accuracies = data.get("top_k_accuracy") if isinstance(data, dict) else data
    rank_probabilities(accuracies)  # validates the shape
    return accuracies


def build_trees(accuracies, min_input_length: int, max_input_length: int, virtual_tokens: int = 1) -> dict:
    """The best tree spec for each input length in the range (keyed by its real input length), for prompt
    tokens of `virtual_tokens` virtual tokens per special token."""
    probs = rank_probabilities(accuracies)
    n = len(probs)
    smallest = tree_input_length([1], n, virtual_tokens)  # the root and one node, each with its special tokens
    if max_input_length < smallest:
        raise PPDError(f"--max-input-length {max_input_length} is smaller than the smallest tree ({smallest} inputs)")
    trees = {}
    for budget in range(max(min_input_length, smallest), max_input_length + 1):
        best = None
        for nodes in range(1, budget):
            if tree_input_length([1] * nodes, n, virtual_tokens) > budget:
                break
            spec = tree_spec(probs, nodes, budget, virtual_tokens)
            if spec_input_length(spec, n, virtual_tokens) <= budget:
                best = spec
        if best is not None:
            trees[str(spec_input_length(best, n, virtual_tokens))] = best
    return trees


@cli_entry
def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--accuracies-file", required=True)
    parser.add_argument("--output-file", required=True)
    parser.add_argument("--min-input-length", type=int, default=8)
    parser.add_argument("--max-input-length", type=int, default=32)
    parser.add_argument("--virtual-tokens", type=int, default=1,
                        help="Virtual tokens per special token of the prompt tokens (each costs an input).")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if os.path.exists(args.output_file) and not args.overwrite:
        raise PPDError(f"{args.output_file!r} exists; pass --overwrite to replace it")
    if args.virtual_tokens < 1:
        raise PPDError("--virtual-tokens must be >= 1")
    trees = build_trees(read_accuracies(args.accuracies_file), args.min_input_length, args.max_input_length,
                        args.virtual_tokens)
    write_json(args.output_file, trees)
    for length, spec in trees.items():
        print(f"input length {length}: {len(deepest_tree(spec))} nodes, predicted accept length "
              f"{predicted_accept_length(spec):.3f}")


if __name__ == "__main__":
    main()
