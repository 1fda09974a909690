"""Stop tokens: the ids that end a reply (tokenizer and generation config) and cutting tokens after the first."""
from types import SimpleNamespace

import torch

from conftest import tiny_llama
from prompt import PromptConfig, PromptDecoder
from prompt.data.cli import distillation_record
from prompt.data.files import IGNORE_INDEX
from prompt.model.stops import stop_token_ids_for, truncate_at_stop


def test_stop_ids_join_the_tokenizer_the_generation_config_and_extra_ids():
    tokenizer = SimpleNamespace(eos_token_id=5)
    model = tiny_llama(0)
    model.generation_config.eos_token_id = [2, 7]
    assert stop_token_ids_for(tokenizer) == [5]
    assert stop_token_ids_for(tokenizer, [9]) == [5, 9]
    assert stop_token_ids_for(tokenizer, model=model) == [2, 5, 7]
    # a PromptDecoder's stop ids are its base model's
    ppd = PromptDecoder(model, PromptConfig(num_special_tokens=2))
    assert stop_token_ids_for(tokenizer, (9,), model=ppd) == [2, 5, 7, 9]
    assert stop_token_ids_for(SimpleNamespace(eos_token_id=None), model=SimpleNamespace()) == []


def test_truncate_at_stop_keeps_the_first_stop_token():
    assert truncate_at_stop([4, 2, 6, 2], {2}) == [4, 2]
    assert truncate_at_stop([4, 6], {2}) == [4, 6]
    assert truncate_at_stop([], {2}) == []


def test_distillation_labels_are_ignored_after_the_first_stop_token():
    tokens = torch.tensor([4, 2, 6, 8])
    probs = torch.ones(4, 3) / 3
    record = distillation_record(torch.tensor([1, 3]), tokens, torch.zeros(4, 3, dtype=torch.long), probs, {2})
    assert record["labels"].tolist() == [4, 2, IGNORE_INDEX, IGNORE_INDEX]
    assert record["continuation"].tolist() == [4, 2, 6, 8]
    record = distillation_record(torch.tensor([1, 3]), tokens, torch.zeros(4, 3, dtype=torch.long), probs, {9})
    assert record["labels"].tolist() == [4, 2, 6, 8]
