"""The input budget of a tree forward: the one formula behind every tree length (builder, tuner, tree buffers)."""
from __future__ import annotations


def tree_input_length(node_special_tokens, num_special_tokens: int, virtual_tokens: int = 1) -> int:
    """Inputs of one tree forward: the root with its `num_special_tokens` special tokens, then every candidate node
    with its own special tokens (`node_special_tokens` lists how many each carries; 0 for none). Each special token
    costs `virtual_tokens` inputs."""
    return 1 + num_special_tokens * virtual_tokens + sum(1 + n * virtual_tokens for n in node_special_tokens)
