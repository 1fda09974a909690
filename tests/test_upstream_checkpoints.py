"""Upstream's checkpoint layout, read and written: a checkpoint built here as upstream saves one (its peft
PromptTuning adapter at the root, its PrefixTuning adapter in `prefix/`, `custom_lm_head.pt`, `weighting_layers.pt`,
`num_exits`) loads and decodes exactly as greedy decoding; our prefix is saved so that peft reads it back."""
import json

import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, get_peft_model

from conftest import tiny_llama
from prompt import Decoder, PPDError
from prompt.inference.tree import chain_tree_spec, select_tree_spec
from prompt.model.prompt_decoder import AutoPromptDecoder

N, P = 3, 2  # special tokens, prefix tokens per special token


def reference(model, ids, n):
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def peft_prefix_cache(peft_model):
    """peft's own prefix keys and values per layer: [(keys, values)] of [kv_heads, P*N, head_dim]."""
    cache = peft_model.get_prompt(1)
    if hasattr(cache, "layers"):
        return [(layer.keys[0], layer.values[0]) for layer in cache.layers]
    return [(k[0], v[0]) for k, v in cache]


def upstream_checkpoint(folder, seed=0, virtual=1, aggregation="mean", custom_head=False, num_exits=1, prefix=True):
    """Write a checkpoint as upstream's PromptDecoder.save_pretrained leaves it (peft save_pretrained of the
    default prompt-tuning adapter, peft's `prefix` adapter in its subfolder, torch.save of the extra modules)."""
    base = tiny_llama(seed)
    hidden = base.config.hidden_size
    generator = torch.Generator().manual_seed(seed + 10)
    config = {  # upstream's PromptConfig fields (a peft PromptTuningConfig); upstream's loader drops peft_type
        "base_model_name_or_path": "lmsys/vicuna-7b-v1.3", "task_type": "CAUSAL_LM", "inference_mode": True,
        "num_virtual_tokens": N * virtual, "token_dim": hidden, "num_transformer_submodules": 1,
        "num_attention_heads": 4, "num_layers": 2, "prompt_tuning_init": "TEXT",
        "prompt_tuning_init_text": "Next 2 word Next 3 word Next 4 word", "tokenizer_name_or_path": None,
        "num_special_tokens": N, "virtual_tokens_per_special_token": virtual, "num_exits": num_exits,
        "use_custom_lm_head": custom_head, "use_prefix_tuning": prefix, "prefix_virtual_tokens": P if prefix else None,
        "vt_attention_type": "decoder", "aggregation_type": aggregation, "revision": None}
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    embeddings = torch.randn(N * virtual, hidden, generator=generator) * 0.5
    torch.save({"prompt_embeddings": embeddings}, folder / "adapter_model.bin")  # older peft: .bin
    if custom_head:
        head = torch.nn.Linear(hidden, base.config.vocab_size, bias=False)
        torch.save(head.state_dict(), folder / "custom_lm_head.pt")
    if aggregation == "weighted":
        layers = torch.nn.ModuleList(torch.nn.Linear(virtual, 1, bias=False) for _ in range(N))
        torch.save(layers.state_dict(), folder / "weighting_layers.pt")
    peft_model = None
    if prefix:
        peft_model = get_peft_model(tiny_llama(seed), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P * N))
        with torch.no_grad():
            peft_model.prompt_encoder["default"].embedding.weight.normal_(generator=generator)
        peft_model.save_pretrained(str(folder / "prefix"))
    return base, peft_model


def test_upstream_prefix_checkpoint_loads_peft_prefix_and_upstream_positions(tmp_path):
    base, peft_model = upstream_checkpoint(tmp_path / "ppd-vicuna-7b-v1.3")
    ppd = AutoPromptDecoder.from_pretrained(str(tmp_path / "ppd-vicuna-7b-v1.3"), base_model=base)
    for layer, (keys, values) in enumerate(peft_prefix_cache(peft_model)):
        assert torch.allclose(ppd.prefix.keys[layer], keys) and torch.allclose(ppd.prefix.values[layer], values)
    # upstream trains special token i after the P prefix positions: at L + P + i for an input of length L
    assert ppd.layout.position_offsets(N).tolist() == [1 + P + i for i in range(N)]

    # its special-token logits are those of upstream's training forward, rebuilt here from the base model:
    # tokens see no prefix, special token i sees its own P prefix slots, the tokens and the special tokens before it
    ids = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(3))
    L = ids.shape[1]
    from transformers import DynamicCache

    cache = DynamicCache(config=base.config)
    for layer, (keys, values) in enumerate(peft_prefix_cache(peft_model)):
        cache.update(keys[None], values[None], layer)
    embeds = torch.cat([base.get_input_embeddings()(ids), ppd.prompt_embeddings[None]], 1)
    positions = torch.cat([torch.arange(L), L + P + torch.arange(N)])[None]
    q = L + N
    allowed = torch.zeros(q, P * N + q, dtype=torch.bool)
    allowed[:, P * N:] = torch.tril(torch.ones(q, q, dtype=torch.bool))
    for i in range(N):
        allowed[L + i, i * P:(i + 1) * P] = True
    mask = torch.zeros(1, 1, q, P * N + q).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        expected = base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache).logits
        special, next_token = ppd(ids)
    assert torch.allclose(special[0], expected[0, -N:], atol=1e-4)
    assert torch.allclose(next_token[0], expected[0, L - 1], atol=1e-4)  # the tokens do not see the prefix


@pytest.mark.parametrize("variant", [
    dict(custom_head=True), dict(virtual=2, aggregation="weighted", prefix=False), dict(num_exits=2)])
def test_upstream_variants_load_and_decode_exactly(tmp_path, variant):
    base, _ = upstream_checkpoint(tmp_path / "ppd-vicuna-7b-v1.3", seed=1, **variant)
    ppd = AutoPromptDecoder.from_pretrained(str(tmp_path / "ppd-vicuna-7b-v1.3"), base_model=base)
    if variant.get("custom_head"):
        saved = torch.load(tmp_path / "ppd-vicuna-7b-v1.3" / "custom_lm_head.pt")
        assert torch.equal(ppd.custom_lm_head.weight, saved["weight"])
    if variant.get("aggregation") == "weighted":
        saved = torch.load(tmp_path / "ppd-vicuna-7b-v1.3" / "weighting_layers.pt")
        assert torch.equal(ppd.weighting_layers[1].weight, saved["1.weight"])
    ids = torch.randint(3, 97, (1, 7), generator=torch.Generator().manual_seed(4))
    expected = reference(base, ids, 24)
    for spec in (select_tree_spec(None, N), chain_tree_spec(N, width=3)):
        assert Decoder(ppd, tree_spec=spec).generate(ids, 24).token_ids == expected
    # and with upstream's own tree for the checkpoint's family (Vicuna-7B, length 60)
    assert Decoder(ppd, tree_length=60).generate(ids, 24).token_ids == expected


def test_prefix_decodes_exactly_and_our_prefix_is_read_by_peft(tmp_path):
    base, _ = upstream_checkpoint(tmp_path / "up", seed=2)
    ppd = AutoPromptDecoder.from_pretrained(str(tmp_path / "up"), base_model=base)
    ids = torch.randint(3, 97, (1, 5), generator=torch.Generator().manual_seed(5))
    assert Decoder(ppd, tree_length=60).generate(ids, 24).token_ids == reference(base, ids, 24)
    # saved again by us: upstream's layout, which peft loads into the same keys and values
    ppd.save_pretrained(str(tmp_path / "ours"))
    assert json.loads((tmp_path / "ours" / "prefix" / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
    peft_model = PeftModel.from_pretrained(tiny_llama(2), str(tmp_path / "ours" / "prefix"))
    for layer, (keys, values) in enumerate(peft_prefix_cache(peft_model)):
        assert torch.allclose(ppd.prefix.keys[layer], keys) and torch.allclose(ppd.prefix.values[layer], values)
    again = AutoPromptDecoder.from_pretrained(str(tmp_path / "ours"), base_model=base)
    assert torch.allclose(again(ids)[0], ppd(ids)[0], atol=1e-5)


def test_malformed_upstream_prefix_is_a_clear_error(tmp_path):
    upstream_checkpoint(tmp_path / "up")
    config = tmp_path / "up" / "prefix" / "adapter_config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "num_virtual_tokens": P * N + 1}))
    with pytest.raises(PPDError, match="num_virtual_tokens=7.*asks for.* = 6"):
        AutoPromptDecoder.from_pretrained(str(tmp_path / "up"), base_model=tiny_llama(0))
    config.write_text(json.dumps(data))
    with pytest.raises(PPDError, match="does not fit this base model"):  # a prefix made for a 2-layer model
        AutoPromptDecoder.from_pretrained(str(tmp_path / "up"), base_model=tiny_llama(0, layers=3))
    config.write_text(json.dumps({**data, "peft_type": "LORA"}))
    with pytest.raises(PPDError, match="not PREFIX_TUNING|peft adapter config"):
        AutoPromptDecoder.from_pretrained(str(tmp_path / "up"), base_model=tiny_llama(0))
    config.write_text("{")
    with pytest.raises(PPDError, match="peft adapter config"):
        AutoPromptDecoder.from_pretrained(str(tmp_path / "up"), base_model=tiny_llama(0))


def test_from_pretrained_takes_upstreams_keywords_and_ppd_generate_decodes_greedily(tmp_path):
    """Upstream's tutorial loads with `low_cpu_mem_usage=True, torch_dtype=...`; its web UI streams with
    `model.ppd_generate(input_ids, temperature=..., max_steps=...)`, the whole sequence after each step."""
    from webui_helpers import tiny_chat_tokenizer

    from prompt.model.stops import stop_token_ids_for, truncate_at_stop

    folder = tmp_path / "ppd-vicuna-7b-v1.3"
    base, _ = upstream_checkpoint(folder, seed=1)
    base.save_pretrained(tmp_path / "base")
    tiny_chat_tokenizer().save_pretrained(tmp_path / "base")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "base")}))

    ppd = AutoPromptDecoder.from_pretrained(str(folder), low_cpu_mem_usage=True, torch_dtype=torch.float32,
                                            device_map="cpu")
    assert ppd.base_model.dtype == torch.float32 and ppd.base_model.device.type == "cpu"
    half = AutoPromptDecoder.from_pretrained(str(folder), torch_dtype=torch.bfloat16, device_map={"": "cpu"})
    assert half.base_model.dtype == torch.bfloat16
    assert AutoPromptDecoder.from_pretrained(str(folder), dtype="bfloat16", torch_dtype=torch.bfloat16).base_model.dtype \
        == torch.bfloat16
    for kwargs, words in (({"dtype": "float32", "torch_dtype": torch.bfloat16}, "disagree"),
                          ({"device_map": {"model.layers.0": "cpu"}}, "device_map"),
                          ({"trust_remote_code": True}, "does not take trust_remote_code")):
        with pytest.raises(PPDError, match=words):
            AutoPromptDecoder.from_pretrained(str(folder), **kwargs)

    ids = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(7))
    L, n = ids.shape[1], 24
    outputs = list(ppd.ppd_generate(ids, max_new_tokens=n))
    assert all(isinstance(o, torch.Tensor) and o.shape[0] == 1 and torch.equal(o[:, :L], ids) for o in outputs)
    assert all(a.shape[1] < b.shape[1] and torch.equal(b[:, :a.shape[1]], a) for a, b in zip(outputs, outputs[1:]))
    expected = truncate_at_stop(reference(base, ids, n), stop_token_ids_for(ppd.tokenizer, model=ppd))
    assert outputs[-1][0, L:].tolist() == expected
    assert len(outputs) < len(expected)  # the prompt tokens' tree accepted more than one token per step somewhere
    # upstream's web UI call: a temperature with its default sampling ('greedy') is upstream's greedy mode, the
    # Decoder of that rule step for step; max_steps bounds
    steps = list(ppd.ppd_generate(ids, temperature=0.7, max_steps=2, max_new_tokens=n))
    rule = Decoder(ppd, temperature=0.7, sampling="upstream_greedy", stop_token_ids=stop_token_ids_for(ppd.tokenizer, model=ppd))
    expected_steps = list(rule.stream(ids, n))[:2]
    assert [s[0, L:].tolist() for s in steps] == [sum(expected_steps[:i + 1], []) for i in range(2)]
    sampled = list(ppd.ppd_generate(ids, temperature=0.7, sampling="typical", max_new_tokens=n, seed=0))
    assert sampled and int(sampled[-1].max()) < base.config.vocab_size
    assert {key[0] for key in ppd._ppd_generate_decoders} == {"greedy", "upstream_greedy", "upstream_typical"}
    with pytest.raises(PPDError, match="sampling"):
        next(ppd.ppd_generate(ids, sampling="beam"))
