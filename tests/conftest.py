import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

# decodings are chosen from the cost profile shipped with a checkpoint, never from one measured on the machine that
# runs the tests: the same choice on every machine (tests of measured profiles unset it)
os.environ["PPD_COST_PROFILE"] = "shipped"


def tiny_llama(seed=0, vocab=97, hidden=32, layers=2, heads=4, kv_heads=2, dtype=torch.float32, max_positions=256):
    """A random tiny Llama: fast, and with logits far from ties for most positions."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(dtype)
    # sharpen the output so that greedy paths do not hinge on near-ties
    with torch.no_grad():
        model.lm_head.weight.mul_(8)
    model.eval()
    return model


@pytest.fixture
def tiny_model():
    return tiny_llama()


def with_chains(tree, chain_lengths, chain_special_tokens, layout):
    """`tree` with one chain from the root per length in `chain_lengths` (the context sources' candidates as
    `prompt.inference.tree.with_branches` hangs them), each node carrying `chain_special_tokens` special tokens."""
    from prompt.inference.tree import with_branches

    parents = []
    for length in chain_lengths:
        parents.extend([-1] + [len(parents) + d for d in range(length - 1)])
    return with_branches(tree, parents, chain_special_tokens, layout)
