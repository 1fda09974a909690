"""Dynamic sparse trees: specs as data, and the one function that turns a spec into tree buffers.

A tree spec is the upstream format `{depth: [[path, probability, n_special_tokens], ...]}`:
- `depth` (a JSON key) is how many special-token logits the tree needs, i.e. its deepest node;
  the decode loop picks, each step, the deepest tree that the accepted node's special tokens allow.
- `path` lists top-k ranks from the root: `[0, 2]` is the 3rd guess of special token 2 placed
  after the 1st guess of special token 1.
- `probability` is the builder's estimate that the node is accepted (informational).
- `n_special_tokens` is how many special tokens are appended after that node (1..N), which decides
  how deep the next step's tree can be if this node ends up the last accepted one.
The root (the token the base model itself predicted) always carries all N special tokens.

A file may hold one spec, or several keyed by tree length: upstream's measure, the candidate nodes plus the special
tokens appended after them (`prompt.inference.budget.tree_length`); an entry's key is the builder's budget, which its
tree may undershoot by a little, as in upstream's files. Files keyed by the inputs of the forward are re-keyed
(docs/COMPAT.md). Files may be gzip-compressed (`.json.gz`).
"""
from __future__ import annotations

import functools
import gzip
import json
import os
from dataclasses import dataclass

import torch

from prompt.errors import PPDError
from prompt.inference.budget import tree_input_length, tree_length
from prompt.jsonio import read_json
from prompt.model.layout import SpecialTokenLayout

TREES_DIR = os.path.join(os.path.dirname(__file__), "trees")
DEFAULT_TREE_FILE = os.path.join(TREES_DIR, "default_3.json")
UPSTREAM_TREES_INDEX = os.path.join(TREES_DIR, "upstream_trees.json")


@dataclass
class TreeBuffers:
    """Everything the decode loop indexes for one tree shape. Inputs: token nodes first, then special tokens.

    Token nodes: the root, the prompt-token candidates (`num_prompt_nodes` counts the root and them),
    then the context sources' nodes (prompt lookup's chain, the suffix index's tree), hanging from the root.

    node_paths[i]        path of top-k ranks of a prompt-token node (the root's is []); a chain node's
                         path is -1 repeated to its depth
    node_parent[i]       parent node index (-1 for the root)
    accepted_path[i]     node indices from the root to node i (root first): what is accepted if i is the deepest
    candidate_index[i]   index into the flat candidate vector [root, top-K of special 1, top-K of special 2, ...]
                         (prompt-token nodes only)
    special_rows[i]      input rows of the special tokens appended after node i (n_i * V rows)
    special_prompt_index prompt-embedding row of every special-token input
    special_of_inputs    [T] special token of every input (-1 for token nodes): which prefix slots it sees
    allowed              [T, T] boolean tree mask (row attends to column)
    positions            [T] position offsets from the current sequence length
    ancestors            [nodes, nodes] boolean: node i's path includes node j (tensor form of accepted_path)
    depths               [nodes] depth of every node (tensor form of node_paths' lengths)
    parent_index         [nodes] parent of every node, the root its own parent
    earlier_siblings     [nodes, nodes] boolean: node j shares node i's parent and comes before it (tried first)
    max_position_offset  the largest position offset (the forward needs past + it inside the context)
    context_nodes        how many of the nodes are the context sources' (after the prompt-token nodes)
    """

    depth: int
    top_k: int
    node_paths: list
    node_parent: list
    accepted_path: list
    candidate_index: torch.Tensor
    special_rows: list
    special_prompt_index: torch.Tensor
    special_of_inputs: torch.Tensor
    allowed: torch.Tensor
    positions: torch.Tensor
    ancestors: torch.Tensor
    depths: torch.Tensor
    parent_index: torch.Tensor
    earlier_siblings: torch.Tensor
    max_position_offset: int
    context_nodes: int = 0

    @property
    def num_nodes(self) -> int:
        return len(self.node_paths)

    @property
    def num_inputs(self) -> int:
        return int(self.positions.shape[0])

    @property
    def num_prompt_nodes(self) -> int:
        return self.num_nodes - self.context_nodes

    @property
    def num_special_inputs(self) -> int:
        return self.num_inputs - self.num_nodes

    def to(self, device) -> "TreeBuffers":
        """The same buffers with every tensor on `device`."""
        moved = {name: value.to(device) if isinstance(value, torch.Tensor) else value
                 for name, value in self.__dict__.items()}
        return TreeBuffers(**moved)


def _validate_spec(spec, num_special_tokens: int) -> dict[int, list]:
    if not isinstance(spec, dict) or not spec:
        raise PPDError("malformed tree spec: expected a non-empty object {depth: [[path, probability, n_special], ...]}")
    trees = dict(_validate_depth(key, entries, num_special_tokens) for key, entries in spec.items())
    usable = sorted(trees)
    needed = {num_special_tokens} | {n for nodes in trees.values() for _, n in nodes}
    for n in needed:
        if not any(d <= n for d in usable):
            raise PPDError(f"malformed tree spec: no tree of depth <= {n} for a node with {n} special tokens")
    return trees


def _validate_depth(key, entries, num_special_tokens: int) -> tuple[int, list]:
    """(depth, [(path, n_special)]) of one depth's tree; PPDError naming what is malformed."""
    try:
        depth = int(key)
    except (TypeError, ValueError):
        raise PPDError(f"malformed tree spec: depth key {key!r} is not an integer") from None
    if not 1 <= depth <= num_special_tokens:
        raise PPDError(f"malformed tree spec: depth {depth} is outside 1..{num_special_tokens} "
                       f"(the number of special tokens)")
    if not isinstance(entries, list):
        raise PPDError(f"malformed tree spec: depth {depth} must map to a list of [path, probability, n_special]")
    nodes = [_validate_node(entry, depth, num_special_tokens) for entry in entries]
    paths = [tuple(p) for p, _ in nodes]
    present = set(paths)
    if len(present) != len(paths):
        raise PPDError(f"malformed tree spec: a node appears twice in the depth-{depth} tree")
    for p in paths:
        if len(p) > 1 and p[:-1] not in present:
            raise PPDError(f"malformed tree spec: node {list(p)} has no parent {list(p[:-1])}")
    return depth, nodes


def _validate_node(entry, depth: int, num_special_tokens: int) -> tuple[list, int]:
    if (not isinstance(entry, (list, tuple)) or len(entry) != 3 or not isinstance(entry[0], list)
            or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in entry[0])
            or not entry[0] or not isinstance(entry[2], int)):
        raise PPDError(f"malformed tree spec: bad node {entry!r} at depth {depth} "
                       f"(want [path of ranks >= 0, probability, n_special_tokens])")
    path, _, n_special = entry
    if len(path) > depth:
        raise PPDError(f"malformed tree spec: node {path} is deeper than its tree's depth {depth}")
    if not 1 <= n_special <= num_special_tokens:
        raise PPDError(f"malformed tree spec: node {path} has {n_special} special tokens, "
                       f"outside 1..{num_special_tokens}")
    return list(path), n_special


def build_tree_buffers(nodes, layout: SpecialTokenLayout, depth: int,
                       root_special_tokens: int | None = None) -> TreeBuffers:
    """Turn a list of (path, n_special_tokens) into the buffers of one tree forward."""
    nodes = sorted(((list(p), n) for p, n in nodes), key=lambda x: (len(x[0]), x[0]))
    root_special = layout.num_special_tokens if root_special_tokens is None else root_special_tokens
    node_paths = [[]] + [p for p, _ in nodes]
    node_special = [root_special] + [n for _, n in nodes]
    index_of = {tuple(p): i for i, p in enumerate(node_paths)}
    node_parent = [-1] + [index_of[tuple(p[:-1])] for p in node_paths[1:]]
    top_k = max([p[-1] for p in node_paths[1:]], default=-1) + 1
    candidate_index = [0] + [1 + (len(p) - 1) * top_k + p[-1] for p in node_paths[1:]]
    return _assemble(node_paths, node_parent, node_special, candidate_index, top_k, depth, layout)


def with_branches(tree: TreeBuffers, parents, chain_special_tokens: int, layout: SpecialTokenLayout) -> TreeBuffers:
    """`tree` with the context sources' candidate tree hanging from the root: `parents[i]` is the parent of
    context node i among the context nodes (-1: the root), every parent listed before its children; each node
    carries `chain_special_tokens` special tokens. A chain of n nodes is parents [-1, 0, .., n-2]."""
    node_paths, node_parent = list(tree.node_paths), list(tree.node_parent)
    node_special = [len(rows) // layout.virtual_tokens for rows in tree.special_rows]
    first = len(node_paths)
    for i, parent in enumerate(parents):
        if not -1 <= parent < i:
            raise PPDError(f"context node {i} has parent {parent}: parents must come before their children")
        node_parent.append(0 if parent == -1 else first + parent)
        node_paths.append([-1] * (len(node_paths[node_parent[-1]]) + 1))
        node_special.append(chain_special_tokens)
    return _assemble(node_paths, node_parent, node_special, tree.candidate_index.tolist(), tree.top_k, tree.depth,
                     layout, tree.context_nodes + len(parents))


def _assemble(node_paths, node_parent, node_special, candidate_index, top_k, depth, layout: SpecialTokenLayout,
              context_nodes: int = 0) -> TreeBuffers:
    num_nodes = len(node_paths)
    special_rows, special_prompt_index = _special_inputs(node_special, num_nodes, layout)
    accepted_path = _accepted_paths(node_parent)
    allowed, positions, special_of_inputs = _pattern(node_paths, node_special, special_rows, accepted_path, layout)
    return TreeBuffers(
        depth=depth,
        top_k=top_k,
        node_paths=node_paths,
        node_parent=node_parent,
        accepted_path=accepted_path,
        candidate_index=torch.tensor(candidate_index, dtype=torch.long),
        special_rows=special_rows,
        special_prompt_index=torch.tensor(special_prompt_index, dtype=torch.long),
        special_of_inputs=special_of_inputs,
        allowed=allowed,
        positions=positions,
        ancestors=allowed[:num_nodes, :num_nodes].clone(),
        depths=positions[:num_nodes].clone(),
        parent_index=torch.tensor([max(p, 0) for p in node_parent], dtype=torch.long),
        earlier_siblings=_earlier_siblings(node_parent),
        max_position_offset=int(positions.max()),
        context_nodes=context_nodes,
    )


def _special_inputs(node_special, num_nodes: int, layout: SpecialTokenLayout) -> tuple[list, list]:
    """The input rows of the special tokens after each node (after every node's own input), and the prompt
    embedding each of those inputs reads."""
    special_rows, special_prompt_index = [], []
    row = num_nodes
    for n in node_special:
        special_rows.append(list(range(row, row + layout.inputs(n))))
        special_prompt_index.extend(range(layout.inputs(n)))
        row += layout.inputs(n)
    return special_rows, special_prompt_index


def _accepted_paths(node_parent) -> list:
    """The ancestors (including itself) of every token node, root first."""
    accepted_path = []
    for i in range(len(node_parent)):
        chain, j = [], i
        while j != -1:
            chain.append(j)
            j = node_parent[j]
        accepted_path.append(chain[::-1])
    return accepted_path


def _pattern(node_paths, node_special, special_rows, accepted_path, layout: SpecialTokenLayout):
    """(allowed [inputs, inputs], positions [inputs], special_of_inputs [inputs]): each node sees its path; the
    special tokens after node i are placed by the layout, anchored at node i."""
    total = len(node_paths) + sum(len(rows) for rows in special_rows)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    positions = torch.zeros(total, dtype=torch.long)
    special_of_inputs = torch.full((total,), -1, dtype=torch.long)
    for i, path in enumerate(accepted_path):
        allowed[i, path] = True
        positions[i] = len(node_paths[i])
    for i, rows in enumerate(special_rows):
        if not rows:
            continue
        block, n = torch.tensor(rows), node_special[i]
        allowed[block[:, None], torch.tensor(accepted_path[i])[None, :]] = True
        allowed[block[:, None], block[None, :]] = layout.among_themselves(n)
        positions[block] = len(node_paths[i]) + layout.position_offsets(n)
        special_of_inputs[block] = layout.special_of_inputs(n)
    return allowed, positions, special_of_inputs


def _earlier_siblings(node_parent) -> torch.Tensor:
    parent = torch.tensor(node_parent)
    index = torch.arange(len(node_parent))
    return (parent[:, None] == parent[None, :]) & (index[None, :] < index[:, None]) & (parent[:, None] >= 0)


class DynamicTree:
    """The buffers of every tree in one spec, and the rule that picks the next one."""

    def __init__(self, spec, layout: SpecialTokenLayout, device=None):
        trees = _validate_spec(spec, layout.num_special_tokens)
        self.tree_length = _largest_tree_length(trees)  # upstream's measure
        self.buffers = {d: build_tree_buffers(nodes, layout, d).to(device) for d, nodes in trees.items()}
        self.depths = sorted(self.buffers)
        # no special-token logits to read (the last accepted node carried none): the root alone, with
        # all special tokens appended so that the next step has a full tree again
        self.recovery = build_tree_buffers([], layout, 0).to(device)

    def for_special_tokens(self, available: int) -> TreeBuffers:
        """The deepest tree that `available` special-token logits can fill."""
        usable = [d for d in self.depths if d <= available]
        return self.buffers[usable[-1]] if usable else self.recovery

    @property
    def input_length(self) -> int:
        """Inputs of the largest tree's forward (what its latency depends on; `tree_length` is upstream's measure)."""
        return max(b.num_inputs for b in self.buffers.values())


def root_only_buffers(device=None) -> TreeBuffers:
    """A tree with only the root and no special tokens: one plain decoding step."""
    return build_tree_buffers([], SpecialTokenLayout(0), depth=0, root_special_tokens=0).to(device)


def _largest_tree_length(trees: dict) -> int:
    """Upstream's tree length of validated trees ({depth: [(path, n_special)]}): candidate nodes plus their special
    tokens, over the largest tree."""
    return max(tree_length([n for _, n in nodes]) for nodes in trees.values())


def spec_tree_length(spec, num_special_tokens: int) -> int:
    """Upstream's tree length of `spec`: candidate nodes plus their special tokens, over its largest tree."""
    return _largest_tree_length(_validate_spec(spec, num_special_tokens))


def spec_input_length(spec, num_special_tokens: int, virtual_tokens: int = 1) -> int:
    """Inputs of the largest tree of `spec`'s forward, without building its buffers."""
    trees = _validate_spec(spec, num_special_tokens)
    return max(tree_input_length([n for _, n in nodes], num_special_tokens, virtual_tokens) for nodes in trees.values())


def _read_tree_file(path: str):
    if not path.endswith(".gz"):
        return read_json(path, "tree spec file")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PPDError(f"tree spec file {path!r} does not exist") from None
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise PPDError(f"tree spec file {path!r} is corrupt or unreadable ({exc})") from None


def load_tree_specs(path: str) -> dict:
    """Read a tree file: one spec, or several keyed by tree length. Returns {name: spec}."""
    data = _read_tree_file(path)
    if not isinstance(data, dict) or not data:
        raise PPDError(f"malformed tree spec file {path!r}: expected a JSON object")
    if all(isinstance(v, dict) for v in data.values()):
        return data
    return {"default": data}


def specs_by_length(path: str, num_special_tokens: int, virtual_tokens: int = 1) -> dict:
    """The specs of a tree file keyed by tree length (upstream's `--tree-length`); read once per file version."""
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = None  # the reader reports the missing file
    return dict(_specs_by_length(path, stamp, num_special_tokens, virtual_tokens))


def _integer_key(name):
    try:
        return int(name)
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=32)
def _specs_by_length(path: str, stamp, num_special_tokens: int, virtual_tokens: int) -> tuple:
    specs = load_tree_specs(path)
    try:
        sizes = {name: (spec_tree_length(spec, num_special_tokens),
                        spec_input_length(spec, num_special_tokens, virtual_tokens)) for name, spec in specs.items()}
    except PPDError as exc:
        raise PPDError(f"{path}: {exc}") from None
    # a file keyed by forward inputs (written before tree lengths took upstream's meaning): key by tree length
    legacy = all(_integer_key(name) == inputs != size for name, (size, inputs) in sizes.items())
    keyed = {}
    for name, spec in specs.items():
        size, _ = sizes[name]
        key = _integer_key(name)
        if legacy or key is None:
            key = size
        elif key < size:
            raise PPDError(f"malformed tree spec file {path!r}: the tree named {name} has {size} candidate nodes "
                           f"plus special tokens, more than its length {name}")
        keyed.setdefault(key, spec)
    return tuple(sorted(keyed.items()))


def select_tree_spec(path: str | None, num_special_tokens: int, virtual_tokens: int = 1,
                     tree_length: int | None = None):
    """Pick the spec to use from a tree file (the shipped default for 3 special tokens if None).

    With `tree_length`, the spec of that tree length (upstream's measure); without, the file's only spec or its
    largest.
    """
    if path is None:
        if num_special_tokens != 3:
            return chain_tree_spec(num_special_tokens)
        path = DEFAULT_TREE_FILE
    sized = specs_by_length(path, num_special_tokens, virtual_tokens)
    if tree_length is None:
        return sized[max(sized)]
    if tree_length not in sized:
        raise PPDError(f"no tree of length {tree_length} in {path!r}; available lengths: "
                       f"{', '.join(str(k) for k in sorted(sized))}")
    return sized[tree_length]


def upstream_tree_file(names, num_special_tokens: int) -> tuple[str, int] | None:
    """The shipped upstream trees for a published checkpoint, picked as upstream picks them: by a family name
    (`vicuna-7b`, `vicuna-13b`, `mobilellama`, `vicuna-68m`) inside the checkpoint's or its base model's name or
    path (`names`, case-insensitive), for its number of special tokens. Returns (tree file, upstream's default tree
    length for it), or None."""
    index = read_json(UPSTREAM_TREES_INDEX, "upstream tree index")
    text = " ".join(str(n).lower() for n in names if n)
    for family in sorted(index):
        entry = index[family]
        name = entry["files"].get(str(num_special_tokens))
        if family in text and name:
            return os.path.join(TREES_DIR, name), int(entry["default_tree_length"])
    return None


def chain_tree_spec(num_special_tokens: int, width: int = 4) -> dict:
    """A small generic tree for any number of special tokens: `width` guesses at depth 1, then a top-1 chain."""
    spec = {}
    for depth in range(1, num_special_tokens + 1):
        nodes = [[[k], 0.0, num_special_tokens if k == 0 else 1] for k in range(width)]
        nodes += [[[0] * d, 0.0, 1] for d in range(2, depth + 1)]
        spec[str(depth)] = nodes
    return spec
