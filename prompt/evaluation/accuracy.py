"""Top-1..top-10 accuracy of each special token on the base model's own greedy continuations.

Two inputs. A held-out self-distillation dataset (`generate_dataset.py --dataset_type self_distillation`): at every
reply position c of a sequence (the base model's own greedy reply), special token k is right at top-i when
x_{c+1+k} is among its i highest logits; the cuts of a sequence run in one forward (prompt/train/many_cuts.py).
Or, as upstream's prompt/evaluation/eval.py, an alpaca-style JSON list of {"instruction": ...}: each instruction,
chat-formatted, is continued greedily for --steps + 1 tokens (stop tokens included, as upstream), and special token
k at each step is scored against the token k+1 places after that step's own (so token k has k fewer positions per
instruction, as upstream counts them). The alpaca input also writes upstream's results file beside the JSON: a
`.pt` list of one bool tensor [positions, 1, 10] per special token, which upstream's sparse_tree_builder.py and
ours (`--accuracies-file X.pt`) read.

    python -m prompt.evaluation.accuracy --model-path CKPT --data_path HELD_OUT.pt \\
        --output accuracies.json --plot accuracies.png
    python -m prompt.evaluation.accuracy --model_path CKPT --model_name NAME --data_path alpaca.json \\
        --save_dir log/eval          # upstream's flags: log/eval/NAME_accuracy.{json,pt,png}
    python -m prompt.evaluation.accuracy --eval_result_path NAME_accuracy.pt --model_name NAME  # its JSON and plot

JSON: {"num_special_tokens": N, "top_k_accuracy": [[acc@1..acc@10] for each special token], ...}. An output file
that exists is kept unless --overwrite is given.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from prompt.cli import ArgumentParser, add_model_flags, apply_threads
from prompt.data.files import load_dataset
from prompt.data.sources import refuse_evaluation_set
from prompt.errors import PPDError, cli_entry
from prompt.inference.sparse_tree_builder import load_upstream_results, upstream_top_k_accuracy
from prompt.jsonio import atomic_write, write_json
from prompt.model.devices import add_device_flags, device_kwargs
from prompt.train.many_cuts import many_cuts_special_logits, teacher_pass, valid_cuts
from prompt.train.objectives import future_tokens

TOP = 10


def sequence_hits(model, ids: torch.Tensor, reply_start: int, top: int = TOP, chunk: int = 256) -> tuple[torch.Tensor, int]:
    """Counts [N, top] of cuts whose target is in each special token's top-i, and the number of cuts."""
    n = model.config.num_special_tokens
    counts = torch.zeros(n, top, dtype=torch.long)
    cuts = valid_cuts(len(ids), reply_start, n)
    if len(cuts) == 0:
        return counts, 0
    ids = ids.to(model.device)
    _, cache = teacher_pass(model.base_model, ids[None])
    for start in range(0, len(cuts), chunk):
        part = cuts[start: start + chunk].to(model.device)
        logits = many_cuts_special_logits(model, cache, len(ids), part, restore_cache=True)
        ranked = logits.topk(top, dim=-1).indices  # [C, N, top]
        found = (ranked == future_tokens(ids, part, n)[..., None]).long().cumsum(-1).clamp(max=1)
        counts += found.sum(0).cpu()
    return counts, len(cuts)


@torch.inference_mode()
def special_token_accuracy(model, records: list[dict], top: int = TOP, max_length: int | None = None,
                           progress: bool = True) -> dict:
    """Accuracy of every special token at top-1..top-`top` over all reply positions of `records`."""
    from tqdm import tqdm

    n = model.config.num_special_tokens
    counts, positions, used = torch.zeros(n, top, dtype=torch.long), 0, 0
    for record in tqdm(records, desc="accuracy", unit="sequence", disable=not progress):
        ids = record["input_ids"].long()
        if max_length:
            ids = ids[:max_length]
        hits, cuts = sequence_hits(model, ids, int(record["reply_start"]), top)
        counts += hits
        positions += cuts
        used += cuts > 0
    if positions == 0:
        raise PPDError(f"no held-out sequence has a reply of at least {n + 2} tokens")
    accuracy = (counts.double() / positions).tolist()
    return {"num_special_tokens": n, "top_k_accuracy": [[round(a, 6) for a in row] for row in accuracy],
            "num_positions": positions, "num_sequences": used}


def greedy_continuation(base_model, prompt_ids: torch.Tensor, count: int) -> torch.Tensor:
    """`count` greedy tokens after `prompt_ids` [L] (no stop token ends it: upstream scores every step); a forward
    of the whole sequence per token, as upstream's eval.py (a few dozen short steps per instruction)."""
    device = base_model.get_input_embeddings().weight.device
    ids = prompt_ids[None].long().to(device)
    for _ in range(count):
        ids = torch.cat([ids, base_model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, len(prompt_ids):].cpu()


def instruction_hits(model, prompt_ids: torch.Tensor, steps: int, top: int = TOP) -> list[torch.Tensor]:
    """Upstream's per-instruction results: for special token i (0-based), a bool tensor [steps - i, 1, top], row t
    True at rank r when rank r of token i after the prompt and the first t greedy tokens is greedy token t+1+i."""
    n = model.config.num_special_tokens
    greedy = greedy_continuation(model.base_model, prompt_ids, steps + 1)
    ids = torch.cat([prompt_ids.cpu().long(), greedy]).to(model.device)
    start = len(prompt_ids)
    cuts = torch.arange(start - 1, start - 1 + steps, device=model.device)  # after the prompt and t greedy tokens
    _, cache = teacher_pass(model.base_model, ids[None])
    ranked = many_cuts_special_logits(model, cache, len(ids), cuts, restore_cache=True).topk(top, dim=-1).indices
    return [(ranked[: steps - i, i, :] == ids[start + 1 + i:, None]).cpu()[:, None, :] for i in range(n)]


@torch.inference_mode()
def alpaca_accuracy_results(model, prompts: list[torch.Tensor], steps: int = 20, top: int = TOP,
                            progress: bool = True) -> list[torch.Tensor]:
    """Upstream's accuracy results over prompts (each [L] ids): one bool tensor [positions, 1, top] per special
    token, the instructions' rows one after another (what eval.py saves as `<model_name>_accuracy.pt`)."""
    from tqdm import tqdm

    n = model.config.num_special_tokens
    if steps < n:
        raise PPDError(f"--steps must be >= the number of special tokens ({n}): special token {n} needs {n + 1} "
                       f"greedy tokens after a step")
    parts = [instruction_hits(model, ids, steps, top)
             for ids in tqdm(prompts, desc="accuracy", unit="instruction", disable=not progress)]
    return [torch.cat([part[i] for part in parts]) for i in range(n)]


def results_summary(results: list[torch.Tensor]) -> dict:
    """Our accuracies JSON of upstream's results (acc@K as upstream's load_accuracy computes it)."""
    return {"num_special_tokens": len(results), "top_k_accuracy": upstream_top_k_accuracy(results),
            "num_positions": int(results[0].shape[0] * results[0].shape[1]),
            "positions_per_token": [int(r.shape[0] * r.shape[1]) for r in results]}


def plot_accuracy(result: dict, path: str, title: str = "") -> None:
    """Accuracy against the special token's distance k, one line per top-i."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["top_k_accuracy"]
    ks = list(range(1, len(table) + 1))
    figure, axes = plt.subplots(figsize=(6, 4))
    for i in (1, 2, 3, 5, 10):
        if i <= len(table[0]):
            axes.plot(ks, [100 * row[i - 1] for row in table], marker="o", label=f"top-{i}")
    axes.set_xlabel("special token k (predicts the token k+1 places ahead)")
    axes.set_ylabel("accuracy (%)")
    axes.set_xticks(ks)
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(title or f"special-token accuracy ({result['num_positions']} held-out positions)")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120))
    plt.close(figure)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser, "Prompt-token checkpoint; default: the default model's shipped tokens.", underscore_alias=True)
    parser.add_argument("--base-model-path", "--base_model_path", dest="base_model_path", default=None,
                        help="Load the base model from here instead of the checkpoint's base_model_name_or_path.")
    parser.add_argument("--data-path", "--data_path", dest="data_path", default=None,
                        help="Held-out self_distillation dataset (generate_dataset.py --dataset_type "
                             "self_distillation), or an alpaca-style JSON list of {'instruction': ...} (upstream's "
                             "eval.py input).")
    parser.add_argument("--eval-result-path", "--eval_result_path", dest="eval_result_path", default=None,
                        help="Upstream's saved results (<model_name>_accuracy.pt): write their JSON and plot, "
                             "measure nothing (as upstream's eval.py with this flag).")
    parser.add_argument("--model-name", "--model_name", dest="model_name", default=None,
                        help="Upstream's naming: outputs are --save_dir/<model_name>_accuracy.json, .pt (alpaca input) "
                             "and .png, instead of --output and --plot.")
    parser.add_argument("--save-dir", "--save_dir", dest="save_dir", default="./", help="With --model_name.")
    parser.add_argument("--steps", type=int, default=20,
                        help="Alpaca input: greedy steps per instruction after the first token (upstream's --steps).")
    parser.add_argument("--model-id", default=None,
                        help="Alpaca input: a FastChat template name (e.g. vicuna, as upstream) to format the "
                             "instructions; default: the tokenizer's chat template.")
    parser.add_argument("--output", default="accuracies.json")
    parser.add_argument("--plot", default=None, help="PNG file for the plot (optional).")
    parser.add_argument("--overwrite", action="store_true", help="Replace output files that exist.")
    parser.add_argument("--max-sequences", "--max_sequences", dest="max_sequences", type=int, default=None)
    parser.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=None)
    add_device_flags(parser, dtype="float32")
    return parser


def is_alpaca_json(path: str) -> bool:
    """A text file (not a torch.save zip or pickle) given as --data_path: an alpaca-style JSON list."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return head[:1] == b"["


def output_paths(args, alpaca: bool) -> dict:
    """{"json", "plot", "results"} paths (None: not written)."""
    if args.model_name:
        stem = os.path.join(args.save_dir, args.model_name + "_accuracy")
        paths = {"json": stem + ".json", "plot": stem + ".png", "results": stem + ".pt"}
    else:
        paths = {"json": args.output, "plot": args.plot, "results": os.path.splitext(args.output)[0] + ".pt"}
    if not alpaca:
        paths["results"] = None
    for path in paths.values():
        if path and os.path.isdir(path):
            raise PPDError(f"output {path!r} is a folder")
        if path and os.path.exists(path) and not args.overwrite:
            raise PPDError(f"output file {path!r} already exists; pass --overwrite to replace it")
    return paths


def alpaca_instructions(args) -> list[dict]:
    """The instructions of an alpaca-style JSON file (read before any model loads: bad input fails fast)."""
    from prompt.evaluation.questions import load_questions

    try:
        refuse_evaluation_set(args.data_path)
    except PPDError:
        print(f"warning: measuring on {args.data_path}, an evaluation set, as upstream does", file=sys.stderr)
    return load_questions("alpaca_eval", args.data_path, 0, args.max_sequences)


def alpaca_prompts(args, questions: list[dict], tokenizer) -> list[torch.Tensor]:
    from prompt.evaluation.chat import ChatFormatter

    formatter = ChatFormatter(tokenizer, args.model_id)
    return [formatter.input_ids(q["turns"])[0] for q in questions]


@cli_entry
def main(argv=None) -> dict:
    from prompt.model.defaults import load_prompt_decoder

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise PPDError("--threads must be >= 1")
        apply_threads(args.threads)
    if (args.data_path is None) == (args.eval_result_path is None):
        parser.error("give --data_path (measure) or --eval_result_path (upstream's saved results), one of them")
    if args.steps < 1:
        raise PPDError("--steps must be >= 1")
    if args.data_path is not None and not os.path.isfile(args.data_path) and not os.path.isdir(args.data_path):
        raise PPDError(f"--data_path {args.data_path!r} does not exist")
    alpaca = args.data_path is not None and os.path.isfile(args.data_path) and is_alpaca_json(args.data_path)
    paths = output_paths(args, alpaca)
    results = None
    if args.eval_result_path is not None:
        result = {**results_summary(load_upstream_results(args.eval_result_path)),
                  "eval_result_path": args.eval_result_path}
    elif alpaca:
        questions = alpaca_instructions(args)
        model = load_prompt_decoder(args.model_path, base_model_path=args.base_model_path, **device_kwargs(args))
        prompts = alpaca_prompts(args, questions, model.tokenizer)
        results = alpaca_accuracy_results(model, prompts, args.steps)
        result = {**results_summary(results), "num_sequences": len(prompts), "steps": args.steps}
    else:
        dataset = load_dataset(args.data_path, expected_types=("self_distillation",))
        records = dataset.records[: args.max_sequences]
        model = load_prompt_decoder(args.model_path, base_model_path=args.base_model_path, **device_kwargs(args))
        result = special_token_accuracy(model, records, max_length=args.max_length)
    result.update({"model_path": args.model_path, "data_path": args.data_path, "dtype": args.dtype})
    os.makedirs(os.path.dirname(os.path.abspath(paths["json"])), exist_ok=True)
    if results is not None:
        atomic_write(paths["results"], lambda tmp: torch.save(results, tmp))
    write_json(paths["json"], result)
    if paths["plot"]:
        plot_accuracy(result, paths["plot"])
    for k, row in enumerate(result["top_k_accuracy"], 1):
        print(f"special token {k}: top-1 {100 * row[0]:.1f}%  top-5 {100 * row[min(4, len(row) - 1)]:.1f}%  "
              f"top-10 {100 * row[-1]:.1f}%", file=sys.stderr)
    written = [p for p in (paths["json"], paths["results"] if results is not None else None, paths["plot"]) if p]
    print(f"wrote {', '.join(written)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
