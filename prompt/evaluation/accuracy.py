"""Top-1..top-10 accuracy of each special token on held-out self-distilled sequences (teacher forcing).

At every reply position c of a held-out sequence (the base model's own greedy reply), special token k is
right at top-i when x_{c+1+k} is among its i highest logits. The cuts of a sequence run in one forward
(prompt/train/many_cuts.py). Writes the JSON a tree builder reads and a PNG plot:

    python -m prompt.evaluation.accuracy --model-path CKPT --data_path HELD_OUT.pt \\
        --output accuracies.json --plot accuracies.png

JSON: {"num_special_tokens": N, "top_k_accuracy": [[acc@1..acc@10] for each special token], ...}.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from prompt.cli import ArgumentParser, add_model_flags, apply_threads
from prompt.data.files import load_dataset
from prompt.errors import PPDError, cli_entry
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
    parser.add_argument("--data-path", "--data_path", dest="data_path", required=True,
                        help="Held-out self_distillation dataset (generate_dataset.py --dataset_type self_distillation).")
    parser.add_argument("--output", default="accuracies.json")
    parser.add_argument("--plot", default=None, help="PNG file for the plot (optional).")
    parser.add_argument("--max-sequences", "--max_sequences", dest="max_sequences", type=int, default=None)
    parser.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=None)
    add_device_flags(parser, dtype="float32")
    return parser


@cli_entry
def main(argv=None) -> dict:
    from prompt.model.defaults import load_prompt_decoder

    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise PPDError("--threads must be >= 1")
        apply_threads(args.threads)
    if os.path.isdir(args.output):
        raise PPDError(f"--output {args.output!r} is a folder")
    dataset = load_dataset(args.data_path, expected_types=("self_distillation",))
    records = dataset.records[: args.max_sequences]
    model = load_prompt_decoder(args.model_path, base_model_path=args.base_model_path, **device_kwargs(args))
    result = special_token_accuracy(model, records, max_length=args.max_length)
    result.update({"model_path": args.model_path, "data_path": args.data_path, "dtype": args.dtype})
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json(args.output, result)
    if args.plot:
        plot_accuracy(result, args.plot)
    for k, row in enumerate(result["top_k_accuracy"], 1):
        print(f"special token {k}: top-1 {100 * row[0]:.1f}%  top-5 {100 * row[min(4, len(row) - 1)]:.1f}%  "
              f"top-10 {100 * row[-1]:.1f}%", file=sys.stderr)
    print(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""), file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
