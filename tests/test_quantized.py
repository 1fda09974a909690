"""4-bit and 8-bit base models through bitsandbytes (its CPU backend here; CUDA in tests/test_cuda.py): loading,
lossless decoding against the quantized model's own `generate`, and training prompt tokens on a 4-bit model."""
import os

import pytest
import torch

from conftest import tiny_llama
from training_helpers import write_sharegpt
from webui_helpers import tiny_chat_tokenizer
from prompt import Decoder, PPDError, PromptConfig, PromptDecoder
from prompt.data import cli as dataset_cli
from prompt.inference.candidates import StatelessSource
from prompt.model.loading import load_base_model
from prompt.train import train as trainer

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Llama wide enough for bitsandbytes' 64-number quantization blocks, with a chat tokenizer."""
    path = tmp_path_factory.mktemp("quantized") / "model"
    model = tiny_llama(0, hidden=128)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 2, 0
    model.save_pretrained(path)
    tiny_chat_tokenizer().save_pretrained(path)
    return str(path)


def generate(model, ids, n):
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


class Oracle(StatelessSource):
    """The true continuation from a reference run, as a context source: long acceptances."""

    def __init__(self, full_sequence, length=4):
        self.full_sequence, self.length = full_sequence, length

    def propose(self, seq, context):
        return list(self.full_sequence[len(context): len(context) + self.length])


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_decoding_matches_its_generate(folder, bits):
    model, _ = load_base_model(folder, dtype="float32", device="cpu", **{f"load_in_{bits}bit": True})
    linear = type(model.model.layers[0].self_attn.q_proj).__name__
    assert linear == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    torch.manual_seed(0)
    ids = torch.randint(3, 97, (1, 12))
    expected = generate(model, ids, 16)
    full = ids[0].tolist() + expected
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=2, prompt_tuning_init="RANDOM"))
    plain = Decoder(model).generate(ids, 16).token_ids
    tree = Decoder(ppd, sources=[Oracle(full)]).generate(ids, 16)
    if bits == 4:  # weights dequantized to float32: a tree forward computes what one-token steps compute
        assert plain == expected and tree.token_ids == expected
    else:  # LLM.int8 quantizes activations too: batches of rows may round apart at near-ties
        assert sum(a == b for a, b in zip(plain, expected)) >= 12
        assert sum(a == b for a, b in zip(tree.token_ids, expected)) >= 12
    assert tree.accept_length > 2


def test_both_quantizations_is_one_clear_error(folder):
    with pytest.raises(PPDError, match="choose one"):
        load_base_model(folder, device="cpu", load_in_4bit=True, load_in_8bit=True)


def test_training_on_a_4bit_base_model(folder, tmp_path):
    torch.set_num_threads(1)
    prompts = write_sharegpt(tmp_path / "prompts.json", 4, with_replies=False)
    data = dataset_cli.main(["--dataset_type", "self_distillation", "--model_name_or_path", folder, "--data_path",
                             prompts, "--save_path", str(tmp_path / "ds"), "--num_special_tokens", "2",
                             "--model_max_length", "128", "--dtype", "float32", "--device", "cpu", "--batch_size", "4",
                             "--max_new_tokens", "12", "--load_in_4bit"])
    out = str(tmp_path / "out")
    trainer.main(["--model_name_or_path", folder, "--dataset_path", data, "--output_dir", out, "--num_special_tokens",
                  "2", "--dtype", "float32", "--device", "cpu", "--load_in_4bit", "--max_steps", "2",
                  "--logging_steps", "1", "--save_steps", "1000"])
    assert os.path.isfile(os.path.join(out, "adapter_model.safetensors"))


def test_prompt_token_gradients_through_4bit_layers(folder):
    """Training on a 4-bit model gets the gradients of the model its dequantized weights make."""
    quantized, _ = load_base_model(folder, dtype="float32", device="cpu", load_in_4bit=True)
    dense, _ = load_base_model(folder, dtype="float32", device="cpu")
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weights = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            dense.get_submodule(name).weight.data.copy_(weights.float())
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    grads = []
    for base in (quantized, dense):
        ppd = PromptDecoder(base, PromptConfig(num_special_tokens=2, prompt_tuning_init="RANDOM"))
        special, _ = ppd(ids)
        special.logsumexp(-1).sum().backward()
        grads.append(ppd.prompt_embeddings.grad)
    assert grads[1].abs().max() > 0.1
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)
