"""End to end on the real default model (SmolLM2-135M-Instruct): PPD greedy in fp32 (alone and with prompt lookup)
equals `generate` greedy."""
import os

import pytest

from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.compare import build_decoders, compare, format_per_question
from prompt.evaluation.questions import load_questions
from prompt.model.defaults import load_prompt_decoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("PPD_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
MT_BENCH = os.path.join(SHARED_DATA, "mt_bench", "question.jsonl")


@pytest.fixture(scope="module")
def default_ppd():
    return load_prompt_decoder(None, dtype="float32", quiet=True)


@pytest.mark.skipif(not os.path.isfile(MT_BENCH), reason="../shared/data is not beside the repository")
def test_ppd_is_lossless_on_ten_mt_bench_first_turns(default_ppd):
    formatter = ChatFormatter(default_ppd.tokenizer)
    prompts = [q["turns"][0] for q in load_questions("mt_bench", MT_BENCH, 0, 10)]
    decoders = build_decoders(default_ppd, formatter, ["generate", "ppd", "ppd_lookup"], tree_length=16)
    totals = compare(decoders, formatter, prompts, max_new_tokens=128, warmup=0, progress=False)
    assert totals["ppd"].identical == 10, "PPD output differs from generate greedy"
    assert totals["ppd_lookup"].identical == 10, "PPD with prompt lookup differs from generate greedy"
    assert totals["ppd"].accept_length > 1.2 and totals["ppd_lookup"].accept_length > totals["ppd"].accept_length
    assert all(len(o) > 0 for o in totals["ppd"].outputs)
    table = format_per_question(totals)
    assert len(table.splitlines()) == 12 and "(1.00x)" in table.splitlines()[2]


def test_default_model_chat_and_stop_token(default_ppd):
    formatter = ChatFormatter(default_ppd.tokenizer)
    decoders = build_decoders(default_ppd, formatter, ["baseline", "ppd"])
    ids = formatter.input_ids(["What is 2 + 2? Answer with one number."])
    results = {name: d.generate(ids, 64) for name, d in decoders.items()}
    assert results["ppd"].token_ids == results["baseline"].token_ids
    assert results["ppd"].stop_reason == "eos"  # the chat template's end token ends the answer
    text = default_ppd.tokenizer.decode(results["ppd"].token_ids, skip_special_tokens=True)
    assert "4" in text
