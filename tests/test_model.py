"""The prompt-token module: attention patterns, training forward, consistency with decoding, save/load."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_llama
from prompt import AutoPromptDecoder, Decoder, PPDError, PromptConfig, PromptDecoder
from prompt.model.prompt_decoder import virtual_token_attention


def test_virtual_token_attention_patterns():
    def pattern(kind):
        return virtual_token_attention(PromptConfig(num_special_tokens=2, virtual_tokens_per_special_token=2,
                                                    vt_attention_type=kind)).int().tolist()
    assert pattern("decoder") == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert pattern("encoder") == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert pattern("ensemble") == [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1]]


def test_config_fields_and_errors():
    config = PromptConfig(num_special_tokens=4, virtual_tokens_per_special_token=3, vt_attention_type="ENSEMBLE")
    assert config.num_virtual_tokens == 12 and config.vt_attention_type == "ensemble"
    assert config.prompt_tuning_init_text.startswith("Next 2 word")
    with pytest.raises(PPDError):
        PromptConfig(num_special_tokens=0)
    with pytest.raises(PPDError):
        PromptConfig(aggregation_type="median")


def test_training_forward_matches_plain_model_with_appended_embeddings():
    """Decoder attention, V=1: special token k's logits equal the base model run on [x, p_1..p_k] causally."""
    model = tiny_llama(0)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    ids = torch.randint(3, 97, (1, 9))
    special, next_logits = ppd(ids)
    with torch.no_grad():
        embeds = torch.cat([model.get_input_embeddings()(ids), ppd.prompt_embeds()[None]], 1)
        plain = model(inputs_embeds=embeds).logits[0]
    assert torch.allclose(special[0], plain[9:12], atol=1e-4)
    assert torch.allclose(next_logits[0], plain[8], atol=1e-4)


@pytest.mark.parametrize("kind,virtual,aggregation,prefix", [("decoder", 1, "mean", 0),
                                                             ("ensemble", 3, "adaptive_weighted", 0),
                                                             ("encoder", 2, "weighted", 0), ("decoder", 1, "mean", 2)])
def test_training_forward_is_padding_invariant(kind, virtual, aggregation, prefix):
    model = tiny_llama(1)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, virtual_tokens_per_special_token=virtual,
                                            vt_attention_type=kind, aggregation_type=aggregation,
                                            prompt_tuning_init="RANDOM", use_prefix_tuning=bool(prefix),
                                            prefix_virtual_tokens=prefix or None))
    a, b = torch.randint(3, 97, (1, 7)), torch.randint(3, 97, (1, 4))
    single_a, next_a = ppd(a)
    single_b, next_b = ppd(b)
    pad = torch.zeros(1, 3, dtype=torch.long)
    for left in (True, False):
        padded_b = torch.cat([pad, b], 1) if left else torch.cat([b, pad], 1)
        mask_b = (torch.arange(7) >= 3) if left else (torch.arange(7) < 4)
        batch = torch.cat([a, padded_b])
        mask = torch.stack([torch.ones(7, dtype=torch.bool), mask_b]).long()
        special, next_logits = ppd(batch, mask)
        assert torch.allclose(special[0], single_a[0], atol=1e-4)
        assert torch.allclose(special[1], single_b[0], atol=1e-4)
        assert torch.allclose(next_logits[1], next_b[0], atol=1e-4)


class RecordingDecoder(Decoder):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def prompt_token_candidates(self, state, tree):
        self.seen.append((list(state.context), state.special_logits.clone()))
        return super().prompt_token_candidates(state, tree)


@pytest.mark.parametrize("kind,virtual,prefix", [("decoder", 1, 0), ("ensemble", 3, 0), ("decoder", 1, 2), ("ensemble", 2, 3)])
def test_decode_special_logits_equal_training_forward(kind, virtual, prefix):
    """The special tokens appended to the accepted tree node predict what a fresh forward over the accepted text does."""
    model = tiny_llama(2)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, virtual_tokens_per_special_token=virtual,
                                            vt_attention_type=kind, prompt_tuning_init="RANDOM",
                                            use_prefix_tuning=bool(prefix), prefix_virtual_tokens=prefix or None))
    if prefix:  # trained-looking prefix values, so that a wrong prefix mask shows in the logits
        with torch.no_grad():
            ppd.prefix.values.normal_()
    decoder = RecordingDecoder(ppd)
    decoder.generate(torch.randint(3, 97, (1, 6)), 20)
    assert len(decoder.seen) > 5
    for context, special_logits in decoder.seen:
        fresh, _ = ppd(torch.tensor([context[:-1]]))
        n = special_logits.shape[0]
        assert torch.allclose(special_logits, fresh[0, :n], atol=1e-4)


def write_checkpoint(folder, hidden, base_path, n_special=3, fmt="safetensors"):
    os.makedirs(folder, exist_ok=True)
    config = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_path,
              "num_virtual_tokens": n_special, "num_special_tokens": n_special, "virtual_tokens_per_special_token": 1,
              "vt_attention_type": "ensemble", "aggregation_type": "mean", "token_dim": hidden,
              "num_transformer_submodules": 1, "num_attention_heads": 4, "num_layers": 2, "inference_mode": True,
              "prompt_tuning_init": "TEXT", "prompt_tuning_init_text": "Next 2 word", "revision": None,
              "tokenizer_name_or_path": base_path, "use_custom_lm_head": False, "use_prefix_tuning": False,
              "prefix_virtual_tokens": None, "num_exits": 1}
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    weights = torch.randn(n_special, hidden)
    if fmt == "safetensors":
        save_file({"prompt_embeddings": weights}, os.path.join(folder, "adapter_model.safetensors"))
    else:
        torch.save({"prompt_embeddings": weights}, os.path.join(folder, "adapter_model.bin"))
    return weights


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_loads_upstream_layout_checkpoint(tmp_path, fmt):
    model = tiny_llama(0)
    base = tmp_path / "base"
    model.save_pretrained(base)
    weights = write_checkpoint(tmp_path / "ppd", 32, str(base), fmt=fmt)
    ppd = AutoPromptDecoder.from_pretrained(str(tmp_path / "ppd"), tokenizer=None, base_model=model)
    assert torch.equal(ppd.prompt_embeddings.data, weights)
    assert ppd.config.vt_attention_type == "ensemble"
    # base model found through base_model_name_or_path
    ppd2 = AutoPromptDecoder.from_pretrained(str(tmp_path / "ppd"))
    ids = torch.randint(3, 97, (1, 5))
    assert Decoder(ppd2).generate(ids, 10).token_ids == Decoder(ppd).generate(ids, 10).token_ids


def test_save_and_reload_round_trip(tmp_path):
    model = tiny_llama(0)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=2, virtual_tokens_per_special_token=2,
                                            aggregation_type="weighted", use_custom_lm_head=True,
                                            base_model_name_or_path="unused", prompt_tuning_init="RANDOM"))
    with torch.no_grad():
        ppd.weighting_layers[0].weight.fill_(0.25)
        ppd.custom_lm_head.weight.mul_(2)
    ppd.save_pretrained(tmp_path / "out")
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert list(saved) == ["prompt_embeddings"] and saved["prompt_embeddings"].shape == (4, 32)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["num_virtual_tokens"] == 4 and config["peft_type"] == "PROMPT_TUNING"
    again = AutoPromptDecoder.from_pretrained(str(tmp_path / "out"), base_model=tiny_llama(0))
    ids = torch.randint(3, 97, (1, 6))
    assert torch.allclose(again(ids)[0], ppd(ids)[0], atol=1e-5)


def test_prefix_tuning_round_trip_and_clear_errors(tmp_path):
    """The prefix keys and values are saved beside the prompt tokens and loaded back; a prefix checkpoint without
    them, or for another base model shape, is one clear error."""
    ppd = PromptDecoder(tiny_llama(0), PromptConfig(num_special_tokens=2, use_prefix_tuning=True, prefix_virtual_tokens=3,
                                                    base_model_name_or_path="unused", prompt_tuning_init="RANDOM"))
    assert ppd.prefix_length == 6 and ppd.prefix.keys.shape[:3] == (2, 2, 6)  # layers, kv heads, P*N
    with torch.no_grad():
        ppd.prefix.values.normal_()
    ppd.save_pretrained(tmp_path / "out")
    again = AutoPromptDecoder.from_pretrained(str(tmp_path / "out"), base_model=tiny_llama(0))
    ids = torch.randint(3, 97, (1, 6))
    assert torch.allclose(again(ids)[0], ppd(ids)[0], atol=1e-5)
    assert not torch.allclose(PromptDecoder(tiny_llama(0), ppd.config)(ids)[0], ppd(ids)[0], atol=1e-3)
    assert (tmp_path / "out" / "prefix" / "adapter_model.safetensors").is_file()  # upstream's peft layout
    shutil.rmtree(tmp_path / "out" / "prefix")
    with pytest.raises(PPDError, match=r"without a prefix \(prefix/ or prefix_tuning.pt\)"):
        AutoPromptDecoder.from_pretrained(str(tmp_path / "out"), base_model=tiny_llama(0))


def test_prefix_position_convention_survives_save_and_load(tmp_path):
    """Prompt tokens trained at the anchor's next positions (the shipped tokens' convention) are saved as
    prefix_tuning.pt and load with that convention; saving either convention over the other replaces its file."""
    config = PromptConfig(num_special_tokens=2, use_prefix_tuning=True, prefix_virtual_tokens=3,
                          base_model_name_or_path="unused", prompt_tuning_init="RANDOM")
    upstream = PromptDecoder(tiny_llama(0), config)
    nearby = PromptDecoder(tiny_llama(0), config)
    with torch.no_grad():
        nearby.prompt_embeddings.copy_(upstream.prompt_embeddings)
        for ppd in (upstream, nearby):
            ppd.prefix.values.normal_(generator=torch.Generator().manual_seed(3))
    nearby.use_next_positions_for_prefix()
    assert nearby.prefix_at_next_positions and not upstream.prefix_at_next_positions
    ids = torch.randint(3, 97, (1, 6))
    assert not torch.allclose(nearby(ids)[0], upstream(ids)[0], atol=1e-3)  # the convention changes the logits
    out = tmp_path / "out"
    upstream.save_pretrained(out)
    nearby.save_pretrained(out)  # over the upstream-convention files
    assert (out / "prefix_tuning.pt").is_file() and not (out / "prefix").exists()
    again = AutoPromptDecoder.from_pretrained(str(out), base_model=tiny_llama(0))
    assert again.prefix_at_next_positions and torch.allclose(again(ids)[0], nearby(ids)[0], atol=1e-5)
    upstream.save_pretrained(out)  # and back
    assert (out / "prefix" / "adapter_model.safetensors").is_file() and not (out / "prefix_tuning.pt").exists()
    again = AutoPromptDecoder.from_pretrained(str(out), base_model=tiny_llama(0))
    assert not again.prefix_at_next_positions and torch.allclose(again(ids)[0], upstream(ids)[0], atol=1e-5)


def test_hidden_size_mismatch_is_a_clear_error(tmp_path):
    model = tiny_llama(0)
    write_checkpoint(tmp_path / "ppd", 48, "unused")
    with pytest.raises(PPDError, match="hidden size"):
        AutoPromptDecoder.from_pretrained(str(tmp_path / "ppd"), base_model=model)


def test_missing_or_broken_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(PPDError, match="not a folder"):
        AutoPromptDecoder.from_pretrained(str(tmp_path / "nothing"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    with pytest.raises(PPDError, match="cannot read"):
        AutoPromptDecoder.from_pretrained(str(tmp_path / "broken"))
    write_checkpoint(tmp_path / "nobase", 32, str(tmp_path / "missing-base"))
    with pytest.raises(PPDError, match="is not a folder"):
        AutoPromptDecoder.from_pretrained(str(tmp_path / "nobase"))


def test_only_prompt_embeddings_train():
    model = tiny_llama(0)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    trainable = [name for name, p in ppd.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_embeddings"]
    special, _ = ppd(torch.randint(3, 97, (2, 5)))
    special.sum().backward()
    assert ppd.prompt_embeddings.grad is not None and ppd.prompt_embeddings.grad.abs().sum() > 0


def test_head_logits_of_a_slice_of_one_sequence_equal_the_head_of_each_row():
    from prompt.model import backbone

    model = tiny_llama(3)
    hidden = torch.randn(1, 9, model.config.hidden_size)
    sliced = hidden[:, 4:7]  # one sequence's rows: the batch stride is the longer sequence's
    logits = backbone.head_logits(model, sliced)
    assert logits.shape == (1, 3, model.config.vocab_size)
    for i in range(3):
        assert torch.allclose(logits[0, i], model.lm_head(hidden[0, 4 + i]), atol=1e-6)
