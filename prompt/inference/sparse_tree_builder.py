"""Build sparse candidate trees from the prompt tokens' measured top-k accuracies.

Under the usual independence assumption, the guess of rank r of special token d is right with
probability p[d][r] = acc@(r+1) - acc@r, and a tree node is accepted with the product of those
probabilities along its path. The expected number of accepted candidates of a tree is the sum over its
nodes, and a node's probability never exceeds its parent's, so the best tree of n nodes is made of the
n most probable paths: a best-first search finds it.

The dynamic extension gives every node a number of special tokens (how deep the next step's tree can
be if it is the last accepted node): the nodes most likely to be the last accepted get all N, the
others one. The budget is upstream's tree length (`--tree-length`): candidate nodes plus their special
tokens. Among the node counts that fit it, the builder keeps the tree with the best long-run accept
length, in which each step's tree depends on the special tokens the last step's accepted node carried
(a Markov chain over that number, as upstream's builder solves it).

    python -m prompt.inference.sparse_tree_builder --accuracies-file accuracies.json --output-file trees.json \\
        --min-input-length 8 --max-input-length 32

`--accuracies-file` may also be upstream's accuracy results, `<model_name>_accuracy.pt` (prompt/evaluation/eval.py's
output, read as upstream's builder reads it).
"""
from __future__ import annotations

import heapq
import os

from prompt.cli import ArgumentParser
from prompt.errors import PPDError, cli_entry
from prompt.inference.budget import tree_length
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


def tree_spec(probs, num_nodes: int, budget: int | None = None, ranked=None) -> dict:
    """A dynamic tree spec {depth: [[path, probability, n_special], ...]} with `num_nodes` nodes per tree.

    `budget` bounds each tree's length (candidate nodes plus their special tokens). `ranked` ({depth: best_paths
    of at least `num_nodes` nodes}) saves recomputing the paths: the best k paths are the first k of the best m.
    """
    n = len(probs)
    spec = {}
    for depth in range(1, n + 1):
        paths = ranked[depth][:num_nodes] if ranked else best_paths(probs, num_nodes, depth)
        last = last_accepted_probabilities([(p, q) for p, q in paths])
        special = {tuple(p): 1 for p, _ in paths}  # every node carries one special token, or all N
        size = tree_length(special.values())
        for path in sorted(special, key=lambda p: -last[p]):
            if budget is not None and size + n - 1 > budget:
                break
            special[path] = n
            size += n - 1
        spec[str(depth)] = [[list(p), round(q, 6), special[tuple(p)]] for p, q in paths]
    return spec


def last_accepted_probabilities(paths) -> dict:
    """Probability that each node (path, acceptance probability) is the deepest accepted one: accepted, and none
    of its children."""
    accepted = {tuple(p): q for p, q in paths}
    children = {}
    for path in accepted:
        if len(path) > 1:
            children[path[:-1]] = children.get(path[:-1], 0.0) + accepted[path]
    return {path: q - children.get(path, 0.0) for path, q in accepted.items()}


def steady_accept_length(spec, num_special_tokens: int, steps: int = 200) -> float:
    """Long-run tokens per step of a dynamic spec: each step uses the deepest tree that the special tokens of the
    last accepted node allow (the root's N when no candidate is accepted), so the number of special tokens
    available is a Markov chain; this is the accept length averaged over its stationary distribution."""
    trees = {int(d): [(list(p), float(q), int(k)) for p, q, k in nodes] for d, nodes in spec.items()}
    states = range(1, num_special_tokens + 1)
    tree_of = {s: max(d for d in trees if d <= s) for s in states if any(d <= s for d in trees)}
    moves, gain = {}, {}
    for s, d in tree_of.items():
        last = last_accepted_probabilities([(p, q) for p, q, _ in trees[d]])
        move = dict.fromkeys(states, 0.0)
        for p, _, k in trees[d]:
            move[k] += last[tuple(p)]
        move[num_special_tokens] += max(0.0, 1.0 - sum(last.values()))
        moves[s], gain[s] = move, sum(q for _, q, _ in trees[d])
    share = {s: float(s == num_special_tokens) for s in states}
    for _ in range(steps):
        new = {t: sum(share[s] * moves[s][t] for s in tree_of) for t in states}
        settled = max(abs(new[t] - share[t]) for t in states) < 1e-12
        share = new
        if settled:
            break
    return 1.0 + sum(share[s] * gain[s] for s in tree_of)


def build_tree(accuracies, length: int) -> dict:
    """The best dynamic tree spec whose tree length (candidate nodes plus their special tokens) is at most `length`."""
    probs = rank_probabilities(accuracies)
    if length < tree_length([1]):
        raise PPDError(f"tree length {length} is smaller than the smallest tree ({tree_length([1])}: one candidate "
                       f"and its special token)")
    best, best_value = None, -1.0
    ranked = {depth: best_paths(probs, length // 2, depth) for depth in range(1, len(probs) + 1)}
    for nodes in range(1, length // 2 + 1):
        spec = tree_spec(probs, nodes, length, ranked)
        if max(tree_length(k for _, _, k in tree) for tree in spec.values()) > length:
            continue
        value = steady_accept_length(spec, len(probs))
        if value > best_value + 1e-12:
            best, best_value = spec, value
    return best


def upstream_top_k_accuracy(results, path: str = "accuracies file", top: int = 10) -> list[list[float]]:
    """Cumulative top-1..top-`top` accuracies [N][top] of upstream's accuracy results (prompt/evaluation/eval.py's
    `<model_name>_accuracy.pt`): a list of N bool tensors [positions, 1, 10], True where rank r of special token k
    is the token it predicts; acc@K = the share of positions whose first K ranks hold it (upstream's load_accuracy)."""
    import torch

    if (not isinstance(results, (list, tuple)) or not results
            or not all(isinstance(r, torch.Tensor) and r.dim() == 3 and r.shape[0] * r.shape[1] > 0 for r in results)):
        raise PPDError(f"{path!r} is not upstream's accuracy results (a list of one [positions, 1, 10] tensor per "
                       f"special token)")
    table = []
    for hits in results:
        hits = hits.bool()
        table.append([round(float(hits[:, :, :k].any(-1).sum()) / (hits.shape[0] * hits.shape[1]), 6)
                      for k in range(1, min(top, hits.shape[2]) + 1)])
    return table


def load_upstream_results(path: str) -> list:
    """Upstream's accuracy results file (`torch.save`d list of one bool tensor per special token), checked."""
    import torch

    if not os.path.isfile(path):
        raise PPDError(f"accuracies file {path!r} does not exist")
    try:
        results = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip and unpickler errors come in many types
        raise PPDError(f"cannot read accuracies file {path!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    upstream_top_k_accuracy(results, path)
    return list(results)


def read_upstream_accuracies(path: str) -> list[list[float]]:
    """The cumulative top-k table of an upstream accuracy results file."""
    return upstream_top_k_accuracy(load_upstream_results(path), path)


def read_accuracies(path: str) -> list[list[float]]:
    """The cumulative top-k accuracies of each special token: our accuracies JSON ({"top_k_accuracy": ...} or the bare
    table), or upstream's `<model_name>_accuracy.pt` (a `.pt` file, or any file that is not JSON text)."""
    if path.endswith(".pt") or (os.path.isfile(path) and _is_zip(path)):
        accuracies = read_upstream_accuracies(path)
        rank_probabilities(accuracies)
        return accuracies
    data = read_json(path, "accuracies file")
    accuracies = data.get("top_k_accuracy") if isinstance(data, dict) else data
    rank_probabilities(accuracies)  # validates the shape
    return accuracies


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"  # torch.save's zip container


def build_trees(accuracies, min_length: int, max_length: int) -> dict:
    """The best tree spec for each tree length in the range (upstream's budget), keyed by it."""
    if max_length < tree_length([1]):
        raise PPDError(f"--max-input-length {max_length} is smaller than the smallest tree ({tree_length([1])}: "
                       f"one candidate and its special token)")
    return {str(length): build_tree(accuracies, length)
            for length in range(max(min_length, tree_length([1])), max_length + 1)}


@cli_entry
def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--accuracies-file", required=True,
                        help="Our accuracies JSON (prompt.evaluation.accuracy) or upstream's <model_name>_accuracy.pt "
                             "(prompt/evaluation/eval.py's output).")
    parser.add_argument("--output-file", required=True)
    parser.add_argument("--min-input-length", type=int, default=8,
                        help="Smallest tree length (upstream's: candidate nodes plus their special tokens).")
    parser.add_argument("--max-input-length", type=int, default=32, help="Largest tree length.")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if os.path.exists(args.output_file) and not args.overwrite:
        raise PPDError(f"{args.output_file!r} exists; pass --overwrite to replace it")
    accuracies = read_accuracies(args.accuracies_file)
    trees = build_trees(accuracies, args.min_input_length, args.max_input_length)
    write_json(args.output_file, trees)
    for length, spec in trees.items():
        print(f"tree length {length}: {len(deepest_tree(spec))} nodes, predicted accept length "
              f"{steady_accept_length(spec, len(accuracies)):.3f}")


if __name__ == "__main__":
    main()
