"""Upstream's accuracy step (prompt/evaluation/eval.py: an alpaca JSON in, `<model_name>_accuracy.pt` out) and its
results file feeding our tree builder, on a tiny random Llama."""
import json
import os
import subprocess
import sys

import pytest
import torch

from prompt.evaluation import accuracy
from prompt.evaluation.chat import ChatFormatter
from prompt.inference.sparse_tree_builder import build_trees, read_accuracies, upstream_top_k_accuracy
from prompt.model.config import PromptConfig
from prompt.model.prompt_decoder import AutoPromptDecoder, PromptDecoder
from training_helpers import save_tiny_model

N, STEPS = 3, 6
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("accuracy")
    base = save_tiny_model(root / "base")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ppd = PromptDecoder(AutoModelForCausalLM.from_pretrained(base),
                        PromptConfig(num_special_tokens=N, prompt_tuning_init="RANDOM", base_model_name_or_path=base))
    ppd.save_pretrained(str(root / "ppd"))
    alpaca = root / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "hello there", "output": "x", "dataset": "t"},
                                  {"instruction": "tell me a story", "output": "y", "dataset": "t"}]))
    return {"root": root, "ppd": str(root / "ppd"), "alpaca": str(alpaca)}


def upstream_eval_results(model, prompts, steps):
    """Upstream's eval.py loop, step by step: a forward of the whole sequence per step, the greedy token appended,
    the prompt tokens' top-10 kept, then get_accuracies' comparison."""
    results = None
    for input_ids in prompts:
        preds, logit_ids, approximate = input_ids[None], [], []
        for _ in range(steps + 1):
            special, logits = model(preds)
            pred = logits.argmax(-1)  # the base model's next token [1]
            approximate.append(special.topk(10, dim=-1).indices)  # [1, N, 10]
            preds = torch.cat([preds, pred[:, None]], dim=-1)
            logit_ids.append(preds[:, -1:])
        approximate_ids, logit_ids = torch.stack(approximate), torch.stack(logit_ids)  # [S, 1, N, 10], [S, 1, 1]
        current = [approximate_ids[:-1 - i, :, i].eq(logit_ids[1 + i:, :, :1]) for i in range(N)]
        results = current if results is None else [torch.cat([a, b]) for a, b in zip(results, current)]
    return results


def test_alpaca_accuracy_is_upstreams_and_feeds_the_tree_builder(checkpoint, tmp_path):
    save_dir = tmp_path / "log" / "eval"
    result = accuracy.main(["--model_path", checkpoint["ppd"], "--model_name", "tiny", "--data_path",
                            checkpoint["alpaca"], "--save_dir", str(save_dir), "--steps", str(STEPS)])
    assert sorted(os.listdir(save_dir)) == ["tiny_accuracy.json", "tiny_accuracy.png", "tiny_accuracy.pt"]
    saved = torch.load(save_dir / "tiny_accuracy.pt", weights_only=True)
    # the same tensors as upstream's loop computes them
    model = AutoPromptDecoder.from_pretrained(checkpoint["ppd"])
    formatter = ChatFormatter(model.tokenizer)
    prompts = [formatter.input_ids([text])[0] for text in ("hello there", "tell me a story")]
    with torch.no_grad():
        expected = upstream_eval_results(model, prompts, STEPS)
    assert len(saved) == N
    for i in range(N):
        assert saved[i].dtype == torch.bool and saved[i].shape == (2 * (STEPS - i), 1, 10)
        assert torch.equal(saved[i], expected[i])
    table = json.loads((save_dir / "tiny_accuracy.json").read_text())["top_k_accuracy"]
    assert table == result["top_k_accuracy"] == read_accuracies(str(save_dir / "tiny_accuracy.pt"))
    for i in range(N):  # upstream's load_accuracy: top-K share of positions
        assert table[i][0] == pytest.approx(float(expected[i][:, :, :1].any(-1).float().mean()), abs=1e-6)
        assert table[i][9] == pytest.approx(float(expected[i].any(-1).float().mean()), abs=1e-6)
    # the builder reads the .pt directly, as upstream's sparse_tree_builder.py does
    trees = tmp_path / "trees.json"
    proc = subprocess.run([sys.executable, "-m", "prompt.inference.sparse_tree_builder", "--accuracies-file",
                           str(save_dir / "tiny_accuracy.pt"), "--output-file", str(trees), "--min-input-length", "4",
                           "--max-input-length", "8"], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(trees.read_text()) == json.loads(json.dumps(build_trees(table, 4, 8)))
    # a rerun keeps the files; upstream's --eval_result_path writes the JSON and plot from the saved results
    with pytest.raises(SystemExit):
        accuracy.main(["--model_path", checkpoint["ppd"], "--model_name", "tiny", "--data_path", checkpoint["alpaca"],
                       "--save_dir", str(save_dir), "--steps", str(STEPS)])
    again = accuracy.main(["--eval_result_path", str(save_dir / "tiny_accuracy.pt"), "--output",
                           str(tmp_path / "again.json"), "--plot", str(tmp_path / "again.png")])
    assert again["top_k_accuracy"] == table and os.path.getsize(tmp_path / "again.png") > 1000


def test_upstream_results_shaped_by_hand_give_upstreams_table(tmp_path):
    hits = torch.zeros(4, 1, 10, dtype=torch.bool)
    hits[0, 0, 0] = hits[1, 0, 2] = hits[2, 0, 9] = True  # ranks 1, 3 and 10 right; one position missed
    second = torch.zeros(2, 1, 10, dtype=torch.bool)
    second[1, 0, 1] = True
    table = upstream_top_k_accuracy([hits, second])
    assert table[0] == [0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.75]
    assert table[1] == [0.0] + [0.5] * 9
    path = tmp_path / "up_accuracy.pt"
    torch.save([hits, second], path)
    assert read_accuracies(str(path)) == table


@pytest.mark.parametrize("content,words", [([torch.zeros(3)], "not upstream's accuracy results"),
                                           ({"a": 1}, "not upstream's accuracy results")])
def test_bad_results_files_are_one_error(tmp_path, content, words):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    proc = subprocess.run([sys.executable, "-m", "prompt.inference.sparse_tree_builder", "--accuracies-file",
                           str(path), "--output-file", str(tmp_path / "t.json")], capture_output=True, text=True,
                          cwd=REPO, timeout=900)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and words in proc.stderr, proc.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    proc = subprocess.run([sys.executable, "-m", "prompt.evaluation.accuracy", "--eval_result_path",
                           str(tmp_path / "junk.pt"), "--output", str(tmp_path / "o.json")], capture_output=True,
                          text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "cannot read accuracies file" in proc.stderr
