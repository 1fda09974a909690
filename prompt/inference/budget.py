"""The size of a tree: the two formulas behind every tree length (builder, tuner, tree buffers).

- `tree_length`: upstream's measure and the meaning of `--tree-length` everywhere: the candidate nodes plus the
  special tokens appended after them (the root and its own special tokens are not counted). Upstream's tree
  builder takes it as its budget, and upstream names its tree files' entries by it (`dynamic_sparse_trees_105`).
- `tree_input_length`: the inputs of one tree forward, what its latency depends on.
"""
from __future__ import annotations


def tree_length(node_special_tokens) -> int:
    """Upstream's tree length: every candidate node plus the special tokens it carries (`node_special_tokens` lists
    how many each node carries)."""
    return sum(1 + n for n in node_special_tokens)


def tree_input_length(node_special_tokens, num_special_tokens: int, virtual_tokens: int = 1) -> int:
    """Inputs of one tree forward: the root with its `num_special_tokens` special tokens, then every candidate node
    with its own special tokens (`node_special_tokens` lists how many each carries; 0 for none). Each special token
    costs `virtual_tokens` inputs."""
    return 1 + num_special_tokens * virtual_tokens + sum(1 + n * virtual_tokens for n in node_special_tokens)
