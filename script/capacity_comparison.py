"""Capacity options of the prompt tokens compared at equal training time on this machine (issue: training, part 4).

    python script/capacity_comparison.py train  --work outputs/capacity --minutes 8 --threads 2
    python script/capacity_comparison.py decode --work outputs/capacity --question-end 10 --max-new-token 256

`train` trains every option for the same wall-clock minutes on the same self-distilled data (built by
script/capacity_comparison.sh), then measures its held-out top-k accuracies. Options that already have
accuracies are skipped, so the command resumes. `decode` loads the base model once and runs, interleaved
question by question, transformers `generate` greedy and the real decode loop of every option on MT-Bench
first turns, each with its own 16-candidate-node tree built from its own accuracies. It writes
comparison.json and comparison.md in --work.

The tree for an option with N special tokens of V virtual tokens: the builder's 16 most probable candidate
nodes; the 4 nodes most likely to be the last accepted carry all N special tokens, the others one. A special
token costs V inputs, so V = 3 pays three times for each special token it carries.
"""
from __future__ import annotations

import os
import sys
import time

import torch

from prompt.cli import ArgumentParser, add_model_flags
from prompt.errors import PPDError, cli_entry
from prompt.jsonio import write_json, write_text

# name -> (dataset N, extra train.py flags)
OPTIONS = {
    "v1_decoder": (3, []),
    "v3_ensemble_mean": (3, ["--virtual_tokens_per_special_token", "3", "--vt_attention_type", "ensemble",
                             "--aggregation_type", "mean"]),
    "v3_ensemble_weighted": (3, ["--virtual_tokens_per_special_token", "3", "--vt_attention_type", "ensemble",
                                 "--aggregation_type", "weighted"]),
    "v3_ensemble_adaptive": (3, ["--virtual_tokens_per_special_token", "3", "--vt_attention_type", "ensemble",
                                 "--aggregation_type", "adaptive_weighted"]),
    "custom_lm_head": (3, ["--use_custom_lm_head"]),
    "prefix_tuning": (3, ["--use_prefix_tuning", "--prefix_virtual_tokens", "10"]),
    "n4_decoder": (4, ["--num_special_tokens", "4"]),
}
NODES = 16
FULL_NODES = 4  # nodes that carry all special tokens


def dataset_paths(work: str, n: int) -> tuple[str, str]:
    return (os.path.join(work, f"train_{n}_self_distillation_1024.pt"),
            os.path.join(work, f"heldout_{n}_self_distillation_1024.pt"))


def train_option(name: str, args) -> None:
    from prompt.evaluation import accuracy
    from prompt.train import train

    n, flags = OPTIONS[name]
    train_set, heldout = dataset_paths(args.work, n)
    for path in (train_set, heldout):
        if not os.path.isfile(path):
            raise PPDError(f"{path} is missing: build the datasets first (script/capacity_comparison.sh)")
    out = os.path.join(args.work, name)
    started = time.perf_counter()
    train.main(["--dataset_path", train_set, "--output_dir", out, "--num_train_epochs", "3",
                "--max_train_minutes", str(args.minutes), "--save_steps", "50", "--model_max_length", "1024",
                "--learning_rate", "1e-2", "--lr_scheduler_type", "cosine", "--logging_steps", "10",
                "--trainer_type", "distillation_trainer", "--dtype", "bfloat16", "--seed", "42",
                "--threads", str(args.threads)] + flags)
    print(f"{name}: trained in {(time.perf_counter() - started) / 60:.1f} minutes of wall time", flush=True)
    accuracy.main(["--model-path", out, "--data_path", heldout, "--output", os.path.join(out, "accuracies.json"),
                   "--plot", os.path.join(out, "accuracies.png"), "--dtype", "float32", "--threads", str(args.threads)]
                  + (["--max-sequences", str(args.heldout_sequences)] if args.heldout_sequences else []))


def option_tree(accuracies, num_special: int, virtual_tokens: int) -> tuple[dict, float]:
    """The option's 16-node tree spec and the builder's predicted accept length for it."""
    from prompt.inference.budget import tree_length
    from prompt.inference.sparse_tree_builder import predicted_accept_length, rank_probabilities, tree_spec

    # FULL_NODES nodes carry all the special tokens, the others one (the budget does not depend on virtual_tokens)
    budget = tree_length([num_special] * FULL_NODES + [1] * (NODES - FULL_NODES))
    spec = tree_spec(rank_probabilities(accuracies), NODES, budget)
    return spec, predicted_accept_length(spec)


def trained_options(work: str) -> list[str]:
    return [name for name in OPTIONS if os.path.isfile(os.path.join(work, name, "accuracies.json"))]


def decode(args) -> None:
    from prompt.evaluation.chat import ChatFormatter
    from prompt.evaluation.compare import compare
    from prompt.evaluation.questions import load_questions
    from prompt.evaluation.transformers_baseline import TransformersBaseline
    from prompt.inference.decoding import Decoder
    from prompt.jsonio import read_json
    from prompt.model.loading import SHIPPED_PROMPT_TOKENS, load_base_model
    from prompt.model.prompt_decoder import AutoPromptDecoder

    torch.set_num_threads(args.threads)
    base, tokenizer = load_base_model(None, dtype=args.dtype)
    formatter = ChatFormatter(tokenizer)
    stops = formatter.stops(base)
    decoders, rows = {"generate": TransformersBaseline(base, stops)}, {}
    folders = {name: os.path.join(args.work, name) for name in trained_options(args.work)}
    if args.with_shipped:
        folders["shipped"] = SHIPPED_PROMPT_TOKENS
    for name, folder in folders.items():
        model = AutoPromptDecoder.from_pretrained(folder, base_model=base, tokenizer=tokenizer)
        config = model.config
        accuracies = read_json(os.path.join(folder, "accuracies.json"), "accuracies file")["top_k_accuracy"]
        spec, predicted = option_tree(accuracies, config.num_special_tokens, config.virtual_tokens_per_special_token)
        decoders[name] = Decoder(model, tree_spec=spec, stop_token_ids=stops, prompt_lookup_num_tokens=0)
        tree = decoders[name].tree
        state = read_json(os.path.join(folder, "trainer_state.json"), "trainer state")
        trainable = model.num_trained_parameters()
        rows[name] = {"accuracies": accuracies, "predicted_accept_length": round(predicted, 4),
                      "tree_inputs": tree.input_length, "tree_nodes": tree.max_nodes, "trainable_parameters": trainable,
                      "training_minutes": round(state.get("elapsed", 0.0) / 60, 2), "training_steps": state.get("step"),
                      "training_cuts": state.get("cuts")}
    questions = load_questions("mt_bench", args.question_file, args.question_begin, args.question_end)
    totals = compare(decoders, formatter, [q["turns"][0] for q in questions], args.max_new_token, warmup=1)
    reference = totals["generate"].tokens_per_second
    for name, row in rows.items():
        t = totals[name]
        row.update(tokens_per_second=round(t.tokens_per_second, 2), speedup=round(t.tokens_per_second / reference, 3),
                   accept_length=round(t.accept_length, 4))
    result = {"questions": len(questions), "max_new_tokens": args.max_new_token, "dtype": args.dtype,
              "threads": torch.get_num_threads(), "generate_tokens_per_second": round(reference, 2), "options": rows}
    write_json(os.path.join(args.work, "comparison.json"), result)
    table = format_rows(rows)
    write_text(os.path.join(args.work, "comparison.md"), table + "\n")
    print(f"\n{len(questions)} MT-Bench first turns, {args.max_new_token} new tokens, {args.dtype}, "
          f"{torch.get_num_threads()} threads; generate greedy {reference:.2f} tokens/s")
    print(table)


def format_rows(rows: dict) -> str:
    lines = ["| option | trainable params | training (min, steps, cuts) | held-out top-1 per special token | "
             "top-5 of token 1 | tree inputs (16 nodes) | predicted accept | measured accept | tokens/s vs generate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        top1 = " / ".join(f"{100 * row[0]:.1f}%" for row in r["accuracies"])
        lines.append(f"| {name} | {r['trainable_parameters']:,} | {r['training_minutes']:.1f}, {r['training_steps']}, "
                     f"{r['training_cuts']:,} | {top1} | {100 * r['accuracies'][0][4]:.1f}% | {r['tree_inputs']} | "
                     f"{r['predicted_accept_length']:.3f} | {r['accept_length']:.3f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


@cli_entry
def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("phase", choices=("train", "decode"))
    parser.add_argument("--work", default="outputs/capacity", help="Datasets in, one folder per option out.")
    parser.add_argument("--options", default=",".join(OPTIONS), help="Comma-separated options to train.")
    parser.add_argument("--minutes", type=float, default=8.0, help="Training minutes per option.")
    add_model_flags(parser, model_path=None, threads="torch CPU threads of every run (default 2).", threads_default=2)
    parser.add_argument("--heldout-sequences", type=int, default=None, help="Measure accuracy on the first K only.")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--question-file", default="../shared/data/mt_bench/question.jsonl")
    parser.add_argument("--question-begin", type=int, default=None)
    parser.add_argument("--question-end", type=int, default=10)
    parser.add_argument("--max-new-token", type=int, default=256)
    parser.add_argument("--with-shipped", action="store_true", help="Also run the shipped prompt tokens.")
    args = parser.parse_args(argv)
    if args.phase == "decode":
        return decode(args)
    names = [name.strip() for name in args.options.split(",") if name.strip()]
    unknown = [name for name in names if name not in OPTIONS]
    if unknown:
        raise PPDError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    done = set(trained_options(args.work))
    for name in names:
        if name in done:
            print(f"{name}: already trained and measured, skipped", flush=True)
            continue
        train_option(name, args)


if __name__ == "__main__":
    sys.exit(main())
