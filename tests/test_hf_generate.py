"""transformers' generate interface decoded by PPD (prompt.inference.hf_generate), on tiny random Llamas."""
import threading

import pytest
import torch
from transformers import GenerationConfig, StoppingCriteria, TextIteratorStreamer
from transformers.generation import GenerateDecoderOnlyOutput

from conftest import tiny_llama
from prompt.errors import PPDError
from prompt.inference.hf_generate import enable_ppd_generate, generate
from prompt.model import PromptConfig, PromptDecoder


class CharTokenizer:
    """Enough of a tokenizer for transformers' text streamers: id i is one letter."""

    def decode(self, ids, **kwargs):
        return "".join(chr(ord("a") + int(i) % 26) if int(i) % 7 else " " for i in ids)


def setup(seed=0):
    base = tiny_llama(seed)
    ppd = PromptDecoder(base, PromptConfig(num_special_tokens=3, prompt_tuning_init="RANDOM"))
    ids = torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(seed))
    return base, ppd, ids


def plain_generate(base, ids, **kwargs):
    return type(base).generate(base, ids, attention_mask=torch.ones_like(ids), pad_token_id=0, **kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_equals_transformers_generate(seed):
    base, ppd, ids = setup(seed)
    expected = plain_generate(base, ids, max_new_tokens=40, do_sample=False, eos_token_id=None)
    model = enable_ppd_generate(ppd)
    assert model is base
    out = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=None)
    assert out.dtype == torch.long and torch.equal(out, expected)
    # the same through a GenerationConfig, with a result object
    config = GenerationConfig(max_new_tokens=40, do_sample=False, return_dict_in_generate=True)
    result = generate(ppd, ids, generation_config=config)
    assert isinstance(result, GenerateDecoderOnlyOutput) and torch.equal(result.sequences, expected)


def test_eos_and_default_length_as_transformers():
    base, ppd, ids = setup(3)
    free = plain_generate(base, ids, max_new_tokens=30, do_sample=False)[0, ids.shape[1]:].tolist()
    eos = free[7]  # a token the greedy answer reaches: generation ends there
    expected = plain_generate(base, ids, max_new_tokens=30, do_sample=False, eos_token_id=eos)
    model = enable_ppd_generate(ppd)
    assert torch.equal(model.generate(ids, max_new_tokens=30, eos_token_id=eos), expected)
    assert expected.shape[1] <= ids.shape[1] + 8
    assert torch.equal(model.generate(ids, eos_token_id=None), plain_generate(base, ids, eos_token_id=None))


def test_streamer_receives_the_same_text():
    base, ppd, ids = setup(4)
    model = enable_ppd_generate(ppd)
    streamer = TextIteratorStreamer(CharTokenizer(), skip_prompt=True)
    out = {}
    thread = threading.Thread(target=lambda: out.update(ids=model.generate(ids, max_new_tokens=30, streamer=streamer,
                                                                         eos_token_id=None)))
    thread.start()
    text = "".join(streamer)
    thread.join(30)
    assert text == CharTokenizer().decode(out["ids"][0, ids.shape[1]:])
    assert len(text) == 30


def test_stopping_criteria_and_stop_strings_stop_where_transformers_stops():
    from transformers import AutoTokenizer

    from prompt.model.loading import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())  # ids below 97 decode to short strings
    base, ppd, ids = setup(5)
    full = plain_generate(base, ids, max_new_tokens=30, do_sample=False, eos_token_id=None)
    new_text = tokenizer.decode(full[0, ids.shape[1]:])
    stop = new_text[len(new_text) // 2: len(new_text) // 2 + 2]
    expected = plain_generate(base, ids, max_new_tokens=30, do_sample=False, eos_token_id=None, stop_strings=[stop],
                              tokenizer=tokenizer)
    assert expected.shape[1] < full.shape[1]
    got = generate(ppd, ids, max_new_tokens=30, eos_token_id=None, stop_strings=[stop], tokenizer=tokenizer)
    assert torch.equal(got, expected)

    class AtLength(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= ids.shape[1] + 5)

    got = generate(ppd, ids, max_new_tokens=30, eos_token_id=None, stopping_criteria=[AtLength()])
    assert torch.equal(got, full[:, : ids.shape[1] + 5])


def test_sampling_runs_with_temperature():
    base, ppd, ids = setup(6)
    out = generate(ppd, ids, max_new_tokens=10, do_sample=True, temperature=0.8, top_k=0, top_p=1.0, eos_token_id=None)
    assert out.shape == (1, ids.shape[1] + 10) and torch.equal(out[:, : ids.shape[1]], ids)
    # transformers' defaults (top_k 50) and top_p shape the exact sampling; a top-k of 1 is greedy
    out = generate(ppd, ids, max_new_tokens=10, do_sample=True, temperature=0.8, top_p=0.9, eos_token_id=None)
    assert out.shape == (1, ids.shape[1] + 10)
    greedy = generate(ppd, ids, max_new_tokens=10, eos_token_id=None)
    assert torch.equal(generate(ppd, ids, max_new_tokens=10, do_sample=True, top_k=1, eos_token_id=None), greedy)


@pytest.mark.parametrize("kwargs, words", [
    ({"num_beams": 2}, "num_beams"),
    ({"repetition_penalty": 1.2}, "repetition_penalty"),
    ({"do_sample": True, "top_p": 1.5}, "top_p"),
    ({"output_scores": True}, "output_scores"),
    ({"num_return_sequences": 2}, "num_return_sequences"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"stop_strings": ["x"]}, "tokenizer"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_options_ppd_cannot_honour_are_one_clear_error(kwargs, words):
    base, ppd, ids = setup(7)
    with pytest.raises(PPDError, match=words):
        generate(ppd, ids, **kwargs)


def test_batches_and_padding_are_refused():
    base, ppd, ids = setup(8)
    with pytest.raises(PPDError, match="batch size 1"):
        generate(ppd, ids.repeat(2, 1), max_new_tokens=4)
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    with pytest.raises(PPDError, match="padding"):
        generate(ppd, ids, attention_mask=mask, max_new_tokens=4)
    with pytest.raises(PPDError, match="PromptDecoder"):
        generate(base, ids, max_new_tokens=4)
