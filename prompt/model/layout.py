"""Where the special tokens go: the one owner of their positions, attention pattern and prefix columns.

Every place that appends special tokens asks this module: the training forward (after the last real token),
many cuts per forward (after each cut), the decode loop's prefill (after the prompt) and the tree buffers
(after every tree node). Building them all here is what makes "decode logits equal training logits" hold by
construction.

For n special tokens of V virtual tokens each, appended after a token (the anchor) at position p:
- input r (0 <= r < n*V) belongs to special token r // V and sits at position p + 1 + shift + r // V, where the
  shift is 0, or with prefix tuning upstream's P (its training puts the special tokens after the P prefix
  positions); `prefix_tuning.pt` checkpoints (the shipped tokens, and training with `--prefix_positions next`)
  use 0;
- it sees whatever the anchor sees, the anchor itself, and the virtual tokens that the `vt_attention`
  pattern allows among the n*V (the pattern is prefix-closed, so fewer special tokens use its top-left block);
- with prefix tuning, special token j also sees its own P prefix slots at the front of the cache.
"""
from __future__ import annotations

import torch

from prompt.model.config import PromptConfig, VTAttentionType


def virtual_token_attention(config: PromptConfig) -> torch.Tensor:
    """Boolean [NV, NV] matrix: which virtual tokens each virtual token sees (special-token-major order).

    Each pattern is prefix-closed: its top-left block for the first n special tokens is the pattern
    for n special tokens, which lets a tree node carry fewer special tokens than the maximum.
    """
    n, v = config.num_special_tokens, config.virtual_tokens_per_special_token
    special = torch.arange(n * v) // v
    virtual = torch.arange(n * v) % v
    if config.vt_attention_type == VTAttentionType.DECODER:
        return torch.tril(torch.ones(n * v, n * v, dtype=torch.bool))
    if config.vt_attention_type == VTAttentionType.ENCODER:
        return special[:, None] == special[None, :]
    # ensemble: V parallel chains, one per virtual-token slot
    return (virtual[:, None] == virtual[None, :]) & (special[None, :] <= special[:, None])


class SpecialTokenLayout:
    """Positions, attention and prefix columns of special tokens appended after anchor tokens."""

    def __init__(self, num_special_tokens: int, virtual_tokens: int = 1, vt_attention: torch.Tensor | None = None,
                 prefix_virtual_tokens: int = 0, position_shift: int = 0):
        self.num_special_tokens = num_special_tokens
        self.position_shift = position_shift
        self.virtual_tokens = virtual_tokens
        self.prefix_virtual_tokens = prefix_virtual_tokens
        nv = num_special_tokens * virtual_tokens
        # default: the decoder pattern (each virtual token sees every earlier one)
        self.vt_attention = (torch.tril(torch.ones(nv, nv, dtype=torch.bool)) if vt_attention is None
                             else vt_attention.bool().cpu())

    @classmethod
    def from_config(cls, config: PromptConfig, upstream_prefix_positions: bool = True) -> "SpecialTokenLayout":
        """The layout of `config`'s prompt tokens; with prefix tuning, special tokens sit after the P prefix
        positions as upstream trains them, unless `upstream_prefix_positions` is False (our earlier convention)."""
        prefix = config.prefix_virtual_tokens if config.use_prefix_tuning else 0
        return cls(config.num_special_tokens, config.virtual_tokens_per_special_token, virtual_token_attention(config),
                   prefix, prefix if upstream_prefix_positions else 0)

    @property
    def prefix_length(self) -> int:
        """Cache slots the prefix takes before the sequence (0 without prefix tuning)."""
        return self.prefix_virtual_tokens * self.num_special_tokens

    def inputs(self, n: int) -> int:
        """Inputs taken by n special tokens."""
        return n * self.virtual_tokens

    def special_of_inputs(self, n: int, device=None) -> torch.Tensor:
        """[n*V]: the special token (0-based) of each input of n special tokens."""
        return torch.arange(n * self.virtual_tokens, device=device) // self.virtual_tokens

    def position_offsets(self, n: int, device=None) -> torch.Tensor:
        """[n*V]: each input's position minus its anchor's position."""
        return 1 + self.position_shift + self.special_of_inputs(n, device)

    def among_themselves(self, n: int, device=None) -> torch.Tensor:
        """[n*V, n*V]: which of one anchor's special-token inputs see which."""
        nv = self.inputs(n)
        return self.vt_attention[:nv, :nv].to(device)

    def append(self, anchor_positions: torch.Tensor, anchor_sees: torch.Tensor, n: int | None = None):
        """n special tokens after each of k anchors, in one block of k*n*V new inputs.

        `anchor_positions` [k]; `anchor_sees` [k, K] boolean: the columns each anchor sees, itself included.
        Returns (positions [k*nV], allowed [k*nV, K + k*nV], special_of_inputs [k*nV]): each anchor's special
        tokens see its columns and their own block, nothing of other anchors' special tokens.
        """
        n = self.num_special_tokens if n is None else n
        device = anchor_sees.device
        count, nv = anchor_sees.shape[0], self.inputs(n)
        positions = (anchor_positions.to(device)[:, None] + self.position_offsets(n, device)[None]).reshape(-1)
        sees = anchor_sees.repeat_interleave(nv, 0)
        own = torch.kron(torch.eye(count, dtype=torch.int8, device=device),
                         self.among_themselves(n, device).to(torch.int8)).bool()
        return positions, torch.cat([sees, own], 1), self.special_of_inputs(n, device).repeat(count)

    def prefix_attention(self, special_of_rows: torch.Tensor) -> torch.Tensor:
        """Boolean [Q, prefix_length]: rows that are special token j (>= 0) see its P prefix slots, others (-1) none."""
        block = torch.arange(self.prefix_length, device=special_of_rows.device) // max(self.prefix_virtual_tokens, 1)
        return special_of_rows[:, None] == block[None, :]

    def with_prefix_columns(self, allowed: torch.Tensor, special_of_rows: torch.Tensor | None) -> torch.Tensor:
        """`allowed` [..., Q, K] over the sequence, with the prefix's columns put in front (unchanged without a
        prefix). `special_of_rows` [Q]: each row's special token, -1 for a token (None: every row is a token)."""
        if not self.prefix_length:
            return allowed
        if special_of_rows is None:
            special_of_rows = torch.full((allowed.shape[-2],), -1, device=allowed.device)
        prefix = self.prefix_attention(special_of_rows.to(allowed.device))
        return torch.cat([prefix.expand(*allowed.shape[:-2], -1, -1), allowed], -1)
