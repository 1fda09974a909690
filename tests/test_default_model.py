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
    return load_prompt_decoder(None, dtype="float32")


@pytest.mark.skipif(not os.path.isfile(MT_BENCH), reason="../shared/data is not beside the repository")
def test_ppd_is_lossless_on_ten_mt_bench_first_turns(default_ppd):
    formatter = ChatFormatter(default_ppd.tokenizer)
    prompts = [q["turns"][0] for q in load_questions("mt_bench", MT_BENCH, 0, 10)]
    decoders = build_decoders(default_ppd, formatter, ["generate", "ppd", "ppd_lookup"], tree_length=12)
    totals = compare(decoders, formatter, prompts, max_new_tokens=128, warmup=0, progress=False)
    assert totals["ppd"].identical == 10, "PPD output differs from generate greedy"
    assert totals["ppd_lookup"].identical == 10, "PPD with prompt lookup differs from generate greedy"
    assert totals["ppd"].accept_length > 1.2 and totals["ppd_lookup"].accept_length > totals["ppd"].accept_length
    assert all(len(o) > 0 for o in totals["ppd"].outputs)
    table = format_per_question(totals)
    assert len(table.splitlines()) == 12 and "(1.00x)" in table.splitlines()[2]


def test_batch_rows_equal_decoding_alone_and_generate_on_the_default_model(default_ppd):
    import torch

    from prompt.inference.decoding import Decoder

    formatter = ChatFormatter(default_ppd.tokenizer)
    texts = ["Write a haiku about the sea.", "What is 12 times 7?",
             "List three uses of a paper clip, then explain which is the most creative and why."]
    prompts = [formatter.input_ids([t])[0].tolist() for t in texts]
    stops = formatter.stops(default_ppd)
    decoder = Decoder(default_ppd, tree_length=16, prompt_lookup_num_tokens=10, stop_token_ids=stops)
    batch = decoder.generate_batch(prompts, 48)
    reference = build_decoders(default_ppd, formatter, ["generate"])["generate"]
    for prompt, row in zip(prompts, batch):
        alone = decoder.generate(torch.tensor([prompt]), 48)
        assert row.token_ids == alone.token_ids == reference.generate(torch.tensor([prompt]), 48).token_ids
    assert max(r.accept_length for r in batch) > 1.2


def test_default_model_chat_and_stop_token(default_ppd):
    formatter = ChatFormatter(default_ppd.tokenizer)
    decoders = build_decoders(default_ppd, formatter, ["baseline", "ppd"])
    ids = formatter.input_ids(["What is 2 + 2? Answer with one number."])
    results = {name: d.generate(ids, 64) for name, d in decoders.items()}
    assert results["ppd"].token_ids == results["baseline"].token_ids
    assert results["ppd"].stop_reason == "eos"  # the chat template's end token ends the answer
    text = default_ppd.tokenizer.decode(results["ppd"].token_ids, skip_special_tokens=True)
    assert "4" in text


SHAREGPT = os.path.join(SHARED_DATA, "sharegpt", "ShareGPT_V3_filtered_1000.json")


@pytest.mark.skipif(not os.path.isfile(SHAREGPT), reason="../shared/data is not beside the repository")
def test_train_end_to_end_on_the_default_model(tmp_path):
    """The user's commands on the default model: a self-distilled dataset from two training prompts, a few training
    steps with prefix tuning (the most involved option), then the result loads and decodes exactly like greedy."""
    import subprocess
    import sys


    from prompt.data.files import load_dataset
    from prompt.inference.decoding import Decoder
    from prompt.model.prompt_decoder import AutoPromptDecoder

    run = lambda *argv: subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True)  # noqa: E731
    made = run("generate_dataset.py", "--dataset_type", "self_distillation", "--data_path", SHAREGPT + ":0:2",
               "--save_path", str(tmp_path / "train"), "--num_special_tokens", "3", "--model_max_length", "512",
               "--max_new_tokens", "24", "--dtype", "float32")
    assert made.returncode == 0, made.stderr[-2000:]
    dataset = str(tmp_path / "train_3_self_distillation_512.pt")
    assert len(load_dataset(dataset).records) == 2
    out = tmp_path / "ppd"
    trained = run("prompt/train/train.py", "--dataset_path", dataset, "--output_dir", str(out), "--max_steps", "3",
                  "--model_max_length", "512", "--use_prefix_tuning", "--prefix_virtual_tokens", "2", "--dtype", "float32",
                  "--logging_steps", "1")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "saved prompt tokens" in trained.stdout + trained.stderr
    model = AutoPromptDecoder.from_pretrained(str(out), dtype="float32")
    assert model.prefix_length == 6
    formatter = ChatFormatter(model.tokenizer)
    ids = formatter.input_ids(["Name three primary colors."])
    stops = formatter.stops(model)
    expected = model.base_model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=stops)[0, ids.shape[1]:]
    result = Decoder(model, prompt_lookup_num_tokens=0, stop_token_ids=stops).generate(ids, 24)
    assert result.token_ids == expected.tolist() and len(result.token_ids) >= 8
