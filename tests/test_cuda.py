"""The GPU paths (they skip without CUDA): float16 decoding on the GPU, 4-bit/8-bit bitsandbytes on the GPU,
device_map="auto", and the decode loop's buffers on the model's device."""
import pytest
import torch

from conftest import tiny_llama
from prompt import Decoder, PromptConfig, PromptDecoder
from prompt.inference.candidates import StatelessSource
from prompt.model.loading import load_base_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Oracle(StatelessSource):
    """The true continuation from a reference run, as a context source: long acceptances."""

    def __init__(self, full_sequence, length=4):
        self.full_sequence, self.length = full_sequence, length

    def propose(self, seq, context):
        return list(self.full_sequence[len(context): len(context) + self.length])


def generate(model, ids, n):
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("cuda") / "model"
    tiny_llama(0, hidden=128).save_pretrained(path)  # wide enough for bitsandbytes' quantization blocks
    return str(path)


def check_decoding(model, min_matching: int, new: int = 24):
    """PPD and plain decoding run on the GPU and (mostly: half precision rounds a tree forward and a one-token
    step apart at near-ties) give `generate`'s greedy tokens, with long acceptances from the oracle."""
    device = model.get_input_embeddings().weight.device
    assert device.type == "cuda"
    torch.manual_seed(0)
    ids = torch.randint(3, 97, (1, 16), device=device)
    expected = generate(model, ids, new)
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=2, prompt_tuning_init="RANDOM"))
    assert ppd.prompt_embeddings.device.type == "cuda"
    for decoder in (Decoder(ppd, sources=[Oracle(ids[0].tolist() + expected)]), Decoder(model)):
        result = decoder.generate(ids, new)
        assert len(result.token_ids) == new
        assert sum(a == b for a, b in zip(result.token_ids, expected)) >= min_matching, decoder.describe()
    return result


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_decoding_on_cuda(folder, dtype):
    model, _ = load_base_model(folder, dtype=dtype)  # the default device is cuda when there is one
    assert model.dtype == getattr(torch, dtype)
    check_decoding(model, min_matching=24 if dtype == "float32" else 18)


def test_default_device_is_cuda(folder):
    from prompt.model.devices import resolve_device

    assert resolve_device(None) == "cuda"
    model, _ = load_base_model(folder)
    assert model.device.type == "cuda"


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_on_cuda(folder, bits):
    pytest.importorskip("bitsandbytes")
    model, _ = load_base_model(folder, dtype="float16", device="cuda", **{f"load_in_{bits}bit": True})
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    check_decoding(model, min_matching=16)


def test_device_map_auto(folder):
    model, _ = load_base_model(folder, dtype="float16", device="auto")
    assert getattr(model, "hf_device_map", None), "device_map='auto' was not used"
    check_decoding(model, min_matching=18)


def test_sliding_window_family_on_cuda():
    from test_families import tiny

    model = tiny("mistral-window").to("cuda", torch.float16)
    check_decoding(model, min_matching=18)
