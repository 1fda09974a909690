"""Hub repo ids: a base model and a PPD checkpoint (whose adapter_config.json names its base by id) load from a
Hugging Face cache laid out in tmp, with HF_HUB_OFFLINE=1, in the library and through the scripts."""
import json
import os
import subprocess
import sys

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import tiny_llama
from test_model import write_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_ID, PPD_ID = "tiny-org/tiny-llama", "tiny-org/tiny-llama-ppd"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def cache_folder(cache, repo_id):
    """The snapshot folder of `repo_id` in a Hub cache (models--org--name/snapshots/<sha>, refs/main -> sha)."""
    root = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(SNAPSHOT)
    folder = os.path.join(root, "snapshots", SNAPSHOT)
    os.makedirs(folder, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("hf") / "hub")
    base = cache_folder(cache, BASE_ID)
    tiny_llama(0).save_pretrained(base)
    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(93)]  # the tiny Llama's 97 ids
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(base)
    write_checkpoint(cache_folder(cache, PPD_ID), 32, BASE_ID)  # adapter_config.json names the base by its id
    env = dict(os.environ, HF_HUB_CACHE=cache, HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
    env.pop("HF_HOME", None)
    return env


def python(env, *args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


LIBRARY = f"""
import torch
from prompt import AutoPromptDecoder, Decoder, load_base_model
base, tokenizer = load_base_model({BASE_ID!r})
ppd = AutoPromptDecoder.from_pretrained({PPD_ID!r})
assert type(ppd.base_model).__name__ == "LlamaForCausalLM" and ppd.tokenizer is not None
ids = torch.tensor([tokenizer("w5 w6 w7 w8 w9 w10").input_ids])
plain = Decoder(base).generate(ids, 12).token_ids
assert Decoder(ppd).generate(ids, 12).token_ids == plain
print("ok", plain)
"""


def test_library_loads_ids_offline(hub_cache):
    proc = python(hub_cache, "-c", LIBRARY)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_missing_id_offline_is_one_clear_error(hub_cache):
    proc = python(hub_cache, "-c", "from prompt import load_base_model; load_base_model('tiny-org/absent')")
    assert proc.returncode != 0 and "PPDError" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr, proc.stderr
    proc = python(hub_cache, "-c", "from prompt import AutoPromptDecoder; AutoPromptDecoder.from_pretrained('a/b')")
    assert "prompt-token checkpoint 'a/b' is not a local folder and could not be fetched" in proc.stderr, proc.stderr


def test_answer_script_with_ids_offline(hub_cache, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "turns": ["w1 w2 w3 w1 w2"]}) + "\n")
    answers = tmp_path / "a.jsonl"
    proc = python(hub_cache, "gen_model_answer_prompt_decoding.py", "--model-path", PPD_ID, "--model-id", "vicuna",
                  "--question-file", questions, "--answer-file", answers, "--max-new-token", "8", "--warmup", "0",
                  "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(answers.read_text())
    assert row["question_id"] == 1 and row["choices"][0]["new_tokens"][0] == 8
    proc = python(hub_cache, "gen_model_answer_baseline.py", "--model-path", "tiny-org/absent", "--question-file",
                  questions, "--answer-file", answers)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "error: model 'tiny-org/absent'" in proc.stderr
