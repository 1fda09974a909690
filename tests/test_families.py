"""Any model a user brings: greedy PPD equals transformers' greedy `generate` (float32) on tiny random models of
the families users bring, sliding-window ones decoding well past their window; recurrent ones are refused."""
import random

import pytest
import torch
import transformers as T

from prompt import Decoder, PPDError, PromptConfig, PromptDecoder
from prompt.inference.candidates import StatelessSource
from prompt.model.backbone import check_supported, layer_types

COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
              tie_word_embeddings=False)
WINDOW = 6  # shorter than the prompt: every sliding layer decodes past its window
MIXED = ["sliding_attention", "full_attention"]
FAMILIES = {  # name: (config class, extra fields, attention implementation)
    "llama": (T.LlamaConfig, {}, "sdpa"),
    "qwen2-window": (T.Qwen2Config, dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1), "sdpa"),
    "qwen3": (T.Qwen3Config, dict(head_dim=8), "sdpa"),
    "qwen3-moe": (T.Qwen3MoeConfig, dict(head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32), "sdpa"),
    "mixtral": (T.MixtralConfig, dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW), "sdpa"),
    "mistral-window": (T.MistralConfig, dict(sliding_window=WINDOW, head_dim=8), "sdpa"),
    "gemma": (T.GemmaConfig, dict(head_dim=8), "sdpa"),
    "gemma2": (T.Gemma2Config, dict(head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=8), "eager"),
    "gemma3": (T.Gemma3TextConfig, dict(head_dim=8, sliding_window=WINDOW, query_pre_attn_scalar=8, layer_types=MIXED),
               "sdpa"),
    "phi": (T.PhiConfig, {}, "sdpa"),
    "phi3-window": (T.Phi3Config, dict(sliding_window=WINDOW), "sdpa"),
    "gpt2": (T.GPT2Config, dict(n_embd=32, n_layer=2, n_head=4, n_positions=256), "sdpa"),
    "gpt-neox": (T.GPTNeoXConfig, {}, "sdpa"),
    "falcon": (T.FalconConfig, dict(new_decoder_architecture=True, num_kv_heads=2), "sdpa"),
    "opt": (T.OPTConfig, dict(ffn_dim=64, word_embed_proj_dim=32), "sdpa"),
    "gpt-oss": (T.GptOssConfig, dict(head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW,
                                     layer_types=MIXED, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
                "eager"),
    "cohere2": (T.Cohere2Config, dict(sliding_window=WINDOW, head_dim=8, layer_types=MIXED), "sdpa"),
}


def tiny(name, seed=0):
    config_class, extra, attention = FAMILIES[name]
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config_class(**{**COMMON, **extra}), attn_implementation=attention)
    with torch.no_grad():  # sharpen the output so that greedy paths do not hinge on near-ties
        model.get_output_embeddings().weight.mul_(8)
    return model.eval()


class Oracle(StatelessSource):
    """A context source proposing the true continuation from a reference run, with one token in three chains
    corrupted at a random place: long acceptances, and rejections in the middle of a chain."""

    def __init__(self, full_sequence, length=5, seed=0):
        self.full_sequence, self.length, self.rng = full_sequence, length, random.Random(seed)

    def propose(self, seq, context):
        chain = list(self.full_sequence[len(context): len(context) + self.length])
        if chain and self.rng.random() < 1 / 3:
            chain[self.rng.randrange(len(chain))] = (chain[0] + 1) % 97
        return chain


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_ppd_greedy_equals_generate(name):
    model = tiny(name)
    torch.manual_seed(1)
    ids = torch.randint(3, 97, (1, 3 * WINDOW))
    new = 4 * WINDOW
    out = model.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = out[0, ids.shape[1]:].tolist()
    full = out[0].tolist()
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=2, prompt_tuning_init="RANDOM"))
    for decoder in (Decoder(ppd, sources=[Oracle(full)]), Decoder(model, sources=[Oracle(full, seed=1)]),
                    Decoder(model)):
        result = decoder.generate(ids, new)
        assert result.token_ids == expected, (name, decoder.describe())
    assert result.forward_passes == new  # plain greedy: one token per forward
    assert Decoder(ppd, sources=[Oracle(full, seed=2)]).generate(ids, new).accept_length > 2  # long acceptances


@pytest.mark.parametrize("name", ["mistral-window", "gemma3"])
def test_prefix_tuning_past_the_window(name):
    """Prefix keys and values (seen by the special tokens only) take the cache's first slots and carry no position:
    the window still lands on the right slots past the window, so greedy output stays exact."""
    model = tiny(name)
    torch.manual_seed(2)
    ids = torch.randint(3, 97, (1, 3 * WINDOW))
    out = model.generate(ids, max_new_tokens=3 * WINDOW, do_sample=False, eos_token_id=None, pad_token_id=0)
    config = PromptConfig(num_special_tokens=2, prompt_tuning_init="RANDOM", use_prefix_tuning=True,
                          prefix_virtual_tokens=2)
    result = Decoder(PromptDecoder(model, config), sources=[Oracle(out[0].tolist())]).generate(ids, 3 * WINDOW)
    assert result.token_ids == out[0, ids.shape[1]:].tolist()


def test_batched_teacher_past_the_window():
    """Dataset generation's left-padded batches on a sliding-window model: each row as if it ran alone."""
    from prompt.data.generation import greedy_teacher

    model = tiny("mistral-window")
    torch.manual_seed(3)
    prefixes = [torch.randint(3, 97, (n,)) for n in (3 * WINDOW, WINDOW, 2)]
    batched = greedy_teacher(model, prefixes, 2 * WINDOW, top_k=3)
    for prefix, (tokens, ids, _) in zip(prefixes, batched):
        alone_tokens, alone_ids, _ = greedy_teacher(model, [prefix], 2 * WINDOW, top_k=3)[0]
        assert tokens.tolist() == alone_tokens.tolist() and ids[:, 0].tolist() == alone_ids[:, 0].tolist()


def test_sliding_families_are_sliding():
    """The window tests above test windows: these configs do have sliding layers shorter than the prompt."""
    for name in ("qwen2-window", "mistral-window", "mixtral", "gemma2", "gemma3", "phi3-window", "gpt-oss", "cohere2"):
        assert "sliding_attention" in layer_types(tiny(name).config), name


@pytest.mark.parametrize("config", [
    T.MambaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2),
    T.RwkvConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2),
    T.JambaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    T.RecurrentGemmaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
], ids=lambda c: c.model_type)
def test_recurrent_architectures_are_refused(config):
    with pytest.raises(PPDError, match="recurrent or state-space"):
        check_supported(config)


def test_recurrent_model_refused_when_the_prompt_decoder_is_built():
    torch.manual_seed(0)
    mamba = T.AutoModelForCausalLM.from_config(T.MambaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2))
    with pytest.raises(PPDError, match="cannot be served"):
        PromptDecoder(mamba, PromptConfig(num_special_tokens=2, prompt_tuning_init="RANDOM"))


class BatchOracle(Oracle):
    """`Oracle` for a batch: the reference run whose tokens the row's context starts with."""

    def __init__(self, full_sequences, seed=0):
        super().__init__(None, seed=seed)
        self.full_sequences = full_sequences

    def propose(self, seq, context):
        self.full_sequence = next(s for s in self.full_sequences if s[: len(context)] == context)
        return super().propose(seq, context)


@pytest.mark.parametrize("name", ["mistral-window", "gemma3", "gemma2", "cohere2", "qwen2-window", "gpt-oss"])
def test_batch_rows_past_the_window_equal_generate(name):
    """Rows of different lengths in one batch (stale slots hidden per row) on sliding-window families."""
    model = tiny(name)
    torch.manual_seed(4)
    prompts = [torch.randint(3, 97, (1, n)) for n in (3 * WINDOW, WINDOW - 2, 2 * WINDOW + 1)]
    outs = [model.generate(ids, max_new_tokens=3 * WINDOW, do_sample=False, eos_token_id=None, pad_token_id=0)
            for ids in prompts]
    config = PromptConfig(num_special_tokens=2, prompt_tuning_init="RANDOM", use_prefix_tuning=True,
                          prefix_virtual_tokens=2)
    decoder = Decoder(PromptDecoder(model, config), sources=[BatchOracle([o[0].tolist() for o in outs])])
    results = decoder.generate_batch([ids[0].tolist() for ids in prompts], 3 * WINDOW)
    assert [r.token_ids for r in results] == [o[0, ids.shape[1]:].tolist() for o, ids in zip(outs, prompts)]
    assert max(r.accept_length for r in results) > 1.5
