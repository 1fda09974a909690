"""Hardware-aware decoding: measure this machine, then record the tree size and lookup length that run fastest.

1. The latency curve: one decode-step forward (tree mask, lm head over every row) after a fixed prefix, for
   each input length in a range (`tree_latency.py` prints and plots it).
2. The real decode loop on validation prompts (never an evaluation set) for each tree length, prompt lookup
   length and suffix-tree budget (the context sources, merged with the prompt tokens' tree into one tree: the
   tree length and the context budgets together make the input budget), interleaved prompt by prompt: accept
   length and tokens/s (`accept_length.py`). A source whose configurations do not win is off in the choice.
3. The fastest configuration is written to the checkpoint's `decoding.json` under the dtype's name, which the
   answer scripts and the web UI then use by default. Where no tree beats plain greedy, plain greedy is
   recorded (tree length 0) and the tool says so.

With `--temperature T` (> 0) the configurations decode by sampling with the acceptance rule `--sampling` (default
exact), against plain sampling in the same loop, and the choice is recorded as that rule's entry inside the dtype's
(`{dtype: {..greedy.., "exact": {...}}}`, read by `prompt.inference.choice`): a sampled token matches a guess less
often than a greedy one, so sampling pays for other trees than greedy decoding does.

    python -m prompt.evaluation.tune --dtype bfloat16 \\
        --question-file ../shared/data/sharegpt/ShareGPT_V3_filtered_1000.json --question-begin 940 --question-end 946
    python -m prompt.evaluation.tune --dtype bfloat16 --temperature 0.7 ...   # the exact-sampling entry
"""
from __future__ import annotations

import datetime
import os
import platform
import sys

import torch

from prompt.cli import ArgumentParser, add_model_flags, apply_threads
from prompt.errors import PPDError, cli_entry
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.compare import compare
from prompt.evaluation.questions import BENCH_NAMES, EVALUATION_BENCHES, load_questions
from prompt.inference.acceptance import ACCEPTANCE_RULES, acceptance_rule
from prompt.inference.candidates import SuffixCandidates
from prompt.inference.choice import (ACCEPTANCE_NAME, ACCURACIES_NAME, BATCH_SIZES_KEY, DECODING_NAME, checkpoint_file,
                                     profile_dtypes, trees_for)
from prompt.inference.cost_profile import (describe_machine, fingerprint, fingerprint_key, forward_latency,
                                           measure_profile, save_profile)
from prompt.inference.decoding import Decoder
from prompt.inference.sparse_tree_builder import predicted_accept_length
from prompt.inference.tree import spec_input_length, specs_by_length
from prompt.jsonio import atomic_write, read_json, write_json
from prompt.model.defaults import load_prompt_decoder
from prompt.model.devices import add_device_flags, device_kwargs

PLAIN = (0, 0, 0)  # (tree length, prompt lookup tokens, suffix tree nodes): plain decoding (greedy, or sampling)


def machine_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    return f"{name}, {torch.get_num_threads()} threads"


def tree_specs(model) -> dict:
    """{tree length: spec} of the tree file a Decoder for `model` reads (`prompt.inference.choice.trees_for`)."""
    path, _ = trees_for(model)
    if not path:
        return {}
    return specs_by_length(path, model.config.num_special_tokens, model.config.virtual_tokens_per_special_token)


def available_tree_lengths(model) -> list[int]:
    return sorted(tree_specs(model))


def measure_configs(model, formatter, prompts, configs, max_new_tokens: int, warmup: int = 1, progress: bool = True,
                    temperature: float = 0.0, sampling: str | None = None, rounds: int = 1):
    """Run the decode loop with each (tree length, lookup tokens, suffix nodes) on every prompt, in the comparison
    harness (interleaved and rotated; seeded per prompt when sampling at `temperature` with the rule `sampling`;
    each configuration's fastest of `rounds` answers per prompt). Returns {config: MethodTotals}."""
    stops = formatter.stops(model)
    rule = {"temperature": temperature, "sampling": sampling}
    decoders = {}
    for tree_length, lookup, suffix in configs:
        sources = [SuffixCandidates(suffix, stop_token_ids=stops)] if suffix else []
        decoders[(tree_length, lookup, suffix)] = Decoder(model if tree_length else model.base_model,
                                                          tree_length=tree_length or None,
                                                          prompt_lookup_num_tokens=lookup, sources=sources,
                                                          stop_token_ids=stops, **rule)
    return compare(decoders, formatter, prompts, max_new_tokens, warmup, progress, rounds=rounds)


def config_name(config, plain: str = "plain greedy") -> str:
    tree_length, lookup, suffix = config
    parts = [f"tree {tree_length}"] if tree_length else []
    if lookup:
        parts.append(f"lookup {lookup}")
    if suffix:
        parts.append(f"suffix {suffix}")
    return " + ".join(parts) or plain


def results_table(totals: dict, latency: dict | None = None, inputs: dict | None = None,
                  plain_name: str = "plain greedy") -> str:
    """Markdown table; speed as a ratio to plain decoding (our loop) when it was measured. `inputs` maps each tree
    length to the inputs of its forward (what the latency curve is measured against)."""
    plain = totals.get(PLAIN)
    lines = ["| decoding | accept length (per forward, prefill counted) | upstream's accept length (per step) | tokens/s "
             f"| speed vs {plain_name} | predicted from latency curve |",
             "|---|---|---|---|---|---|"]
    for config, t in totals.items():
        ratio = f"{t.tokens_per_second / plain.tokens_per_second:.2f}x" if plain and plain.tokens_per_second else "-"
        predicted = "-"
        forward = (inputs or {}).get(config[0])
        if latency and config[1:] == (0, 0) and forward in latency and 1 in latency:
            predicted = f"{t.accept_length * latency[1] / latency[forward]:.2f}x"
        upstream = f"{t.accept_length_upstream:.3f}" if t.accept_length_upstream else "-"
        lines.append(f"| {config_name(config, plain_name)} | {t.accept_length:.3f} | {upstream} | "
                     f"{t.tokens_per_second:.2f} | {ratio} | {predicted} |")
    return "\n".join(lines)


def choose(totals: dict):
    return max(totals, key=lambda c: totals[c].tokens_per_second)


def plot_latency(latency: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted(latency)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lengths, [latency[n] for n in lengths], marker="o")
    ax.set_xlabel("inputs per forward")
    ax.set_ylabel("forward latency, ms (median)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def plot_tree_sizes(totals: dict, predicted: dict, path: str, title: str, plain_name: str = "plain greedy") -> None:
    """Accept length (measured and predicted by the builder) and speed against tree length, per lookup length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = totals.get(PLAIN)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for context in sorted({c[1:] for c in totals}):
        configs = sorted(c for c in totals if c[1:] == context)
        label = config_name((0,) + context) if any(context) else "prompt tokens only"
        left.plot([c[0] for c in configs], [totals[c].accept_length for c in configs], marker="o", label=f"measured, {label}")
        if plain:
            right.plot([c[0] for c in configs], [totals[c].tokens_per_second / plain.tokens_per_second for c in configs],
                       marker="o", label=label)
    if predicted:
        lengths = sorted(predicted)
        left.plot(lengths, [predicted[n] for n in lengths], linestyle="--", label="predicted by the builder")
    left.set_xlabel("tree length (nodes + special tokens, 0 = no prompt tokens)")
    left.set_ylabel("accept length (tokens per forward)")
    right.set_xlabel("tree length (nodes + special tokens, 0 = no prompt tokens)")
    right.set_ylabel(f"speed vs {plain_name}")
    right.axhline(1.0, color="grey", linewidth=0.8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def predicted_accept_lengths(model) -> dict[int, float]:
    """The builder's predicted accept length of each tree in the tree file (its deepest tree's node probabilities)."""
    return {length: predicted_accept_length(spec) for length, spec in tree_specs(model).items()}


def recorded_decodings(path: str, dtype: str, overwrite: bool, rule: str = "greedy") -> dict:
    """The entries of decoding.json ({} if none), refusing to replace `dtype`'s (for a sampling `rule`: that rule's
    entry inside it) without `overwrite`."""
    data = read_json(path, "tuned decoding file") if os.path.isfile(path) else {}
    if not isinstance(data, dict) or not isinstance(data.get(dtype, {}), dict):
        raise PPDError(f"{path!r} is not a tuned decoding file (expected a JSON object of objects)")
    recorded = dtype in data if rule == "greedy" else rule in data.get(dtype, {})
    if recorded and not overwrite:
        what = f"a {dtype} decoding" if rule == "greedy" else f"a {dtype} decoding for {rule} sampling"
        raise PPDError(f"{path!r} already records {what}; pass --overwrite to replace it")
    return data


def record_choice(path: str, dtype: str, entry: dict, overwrite: bool, rule: str = "greedy") -> None:
    """Add the dtype's entry (greedy) or the entry of a sampling `rule` inside it to decoding.json, keeping the
    other entries."""
    data = recorded_decodings(path, dtype, overwrite, rule)
    old = data.get(dtype, {})
    if rule == "greedy":  # the rules' own entries and the per-batch-size decodings stay
        data[dtype] = {**{k: v for k, v in old.items() if k in ACCEPTANCE_RULES or k == BATCH_SIZES_KEY}, **entry}
    else:
        data[dtype] = {**old, rule: entry}
    write_json(path, data, sort_keys=True)


def parse_lengths(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace("[", "").replace("]", "").split(",") if x.strip()]
    except ValueError:
        raise PPDError(f"{flag} must be a comma-separated list of integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise PPDError(f"{flag} must list integers >= 0, got {text!r}")
    return values


def check_tree_lengths(model, lengths) -> None:
    """Refuse lengths that neither the tree file holds nor the checkpoint's accuracies.json can build."""
    available = available_tree_lengths(model)
    missing = [n for n in lengths if n and n not in available]
    if missing and checkpoint_file(model, ACCURACIES_NAME):
        missing = [n for n in missing if n < 2]  # the rest are built from the accuracies on the spot
    if missing:
        raise PPDError(f"no tree of length {', '.join(map(str, missing))} in {trees_for(model)[0]!r}; available: "
                       f"{', '.join(map(str, available)) or 'none'} (build more with prompt.inference.sparse_tree_builder)")


def quick_profile(args) -> None:
    """`--quick`: measure and store this machine's cost profile for each dtype asked for (replacing a stored one)."""
    apply_threads(args.threads)
    device = device_kwargs(args)["device"]
    dtypes = [args.dtype] if args.dtype else profile_dtypes(device)
    for dtype in dtypes:
        model = load_prompt_decoder(args.model_path, base_model_path=args.base_model_path,
                                    **{**device_kwargs(args), "dtype": dtype})
        base = model.base_model
        print(f"measuring the cost profile of {dtype} on {describe_machine(fingerprint(base.device))} ...")
        profile = measure_profile(base, dtype)
        path = save_profile(profile)
        one = profile.latency_ms[1]
        print(f"{dtype}: " + " ".join(f"{n}:{ms / one:.2f}x" for n, ms in profile.latency_ms.items()) +
              f" of one input ({one:.1f} ms); measured in {profile.seconds:.0f} s, stored in {path}")


def tune_acceptance(args, model, questions, output, rule, tree_lengths, lookup_lengths, suffix_nodes, argv) -> None:
    """`--acceptance`: run every configuration on the validation prompts and record, per configuration, its accept
    length and the mean inputs of its verify forwards (what the checkpoint's prompt tokens and the context sources
    give, whatever the machine) as the rule's entry of acceptance.json."""
    data = read_json(output, "acceptance file") if os.path.isfile(output) else {}
    if not isinstance(data, dict):
        raise PPDError(f"{output!r} is not an acceptance file (expected a JSON object)")
    if rule in data and not args.overwrite:
        raise PPDError(f"{output!r} already records the {rule} acceptance; pass --overwrite to replace it")
    configs = [(t, k, n) for t in tree_lengths for k in lookup_lengths for n in suffix_nodes]
    formatter = ChatFormatter(model.tokenizer)
    totals = measure_configs(model, formatter, [q["turns"][0] for q in questions], configs, args.max_new_token,
                             temperature=args.temperature, sampling=args.sampling, rounds=1)
    rows = [{"tree_length": c[0], "prompt_lookup_num_tokens": c[1], "suffix_nodes": c[2],
             "accept_length": round(t.accept_length or 1.0, 4), "inputs_per_step": round(t.inputs_per_step or 1.0, 3)}
            for c, t in totals.items()]
    for row in rows:
        print(f"{config_name((row['tree_length'], row['prompt_lookup_num_tokens'], row['suffix_nodes'])):34s} "
              f"accept {row['accept_length']:.3f}  inputs/step {row['inputs_per_step']:.1f}")
    command = "python -m prompt.evaluation.tune " + " ".join(argv if argv is not None else sys.argv[1:])
    data[rule] = {"configs": rows, "dtype": args.dtype, "temperature": args.temperature,
                  "prompts": f"{args.bench_name} {args.question_begin}:{args.question_end}",
                  "max_new_tokens": args.max_new_token, "date": datetime.date.today().isoformat(), "command": command}
    write_json(output, data, sort_keys=True)
    print(f"recorded the {rule} acceptance of {len(rows)} configurations in {output}")


@cli_entry
def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    add_model_flags(parser)
    parser.add_argument("--base-model-path", default=None, help="Base model folder or Hub repo id (default: the checkpoint's).")
    add_device_flags(parser, dtype="bfloat16")
    parser.add_argument("--bench-name", default="sharegpt", choices=BENCH_NAMES,
                        help="Validation prompts' format (never tune on an evaluation set).")
    parser.add_argument("--question-file", default=None, help="Validation prompts (required unless --quick).")
    parser.add_argument("--question-begin", type=int, default=940)
    parser.add_argument("--question-end", type=int, default=946)
    parser.add_argument("--max-new-token", type=int, default=128)
    parser.add_argument("--tree-lengths", default="10,16,24,32", help="Tree lengths to try (0: no prompt tokens).")
    parser.add_argument("--lookup-lengths", default="0,10", help="Prompt lookup chain lengths to try (0: off).")
    parser.add_argument("--suffix-nodes", default="0,16", help="Suffix candidate tree budgets to try (0: off).")
    parser.add_argument("--latency-lengths", default="1,4,8,12,16,20,24,28,32,40,48,64")
    parser.add_argument("--output-file", default=None, help=f"Default: {DECODING_NAME} in the prompt-token folder.")
    parser.add_argument("--report-dir", default=None, help="Where the measurements (JSON) and plots go (default: beside the output).")
    parser.add_argument("--overwrite", action="store_true", help="Replace this dtype's recorded decoding.")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Answer each prompt this many times per configuration (interleaved) and count each "
                             "configuration's fastest: a steadier choice on a machine shared with other work.")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="Above 0: tune sampling at this temperature, recorded as the --sampling rule's entry.")
    parser.add_argument("--sampling", default=None, choices=[r for r in ACCEPTANCE_RULES if r != "greedy"],
                        help="Acceptance rule tuned at --temperature (default exact).")
    parser.add_argument("--quick", action="store_true",
                        help="Only measure this machine's cost profile (forward cost against inputs, for --dtype, "
                             "default every dtype the device may choose) and store it in $PPD_CACHE_DIR.")
    parser.add_argument("--acceptance", action="store_true",
                        help=f"Record what the prompt tokens accept per configuration (accept length, inputs per "
                             f"step) in the checkpoint's {ACCEPTANCE_NAME} instead of choosing by speed: a property "
                             f"of the checkpoint, combined with each machine's cost profile (best in float32).")
    parser.set_defaults(dtype=None)
    args = parser.parse_args(argv)
    if args.quick:
        return quick_profile(args)
    args.dtype = args.dtype or "bfloat16"
    rule = acceptance_rule(args.sampling, args.temperature).name  # bad values: one error before loading
    apply_threads(args.threads)
    if args.max_new_token < 1 or args.rounds < 1:
        raise PPDError("--max-new-token and --rounds must be >= 1")
    if args.bench_name in EVALUATION_BENCHES:
        print(f"warning: tuning on the evaluation set {args.bench_name} makes its benchmark figures optimistic",
              file=sys.stderr)
    tree_lengths = sorted(set(parse_lengths(args.tree_lengths, "--tree-lengths")) | {0})
    lookup_lengths = sorted(set(parse_lengths(args.lookup_lengths, "--lookup-lengths")) | {0})
    suffix_nodes = sorted(set(parse_lengths(args.suffix_nodes, "--suffix-nodes")) | {0})
    latency_lengths = sorted(set(parse_lengths(args.latency_lengths, "--latency-lengths")) | {1})
    if not args.question_file:
        raise PPDError("--question-file is required (validation prompts; --quick measures the cost profile alone)")
    questions = load_questions(args.bench_name, args.question_file, args.question_begin, args.question_end)
    model = load_prompt_decoder(args.model_path, base_model_path=args.base_model_path, **device_kwargs(args))
    check_tree_lengths(model, tree_lengths)
    folder = model.checkpoint_dir or args.model_path
    output = args.output_file or (os.path.join(folder, ACCEPTANCE_NAME if args.acceptance else DECODING_NAME)
                                  if folder else None)
    if output is None:
        raise PPDError("the prompt tokens come from no folder: pass --output-file")
    if args.acceptance:
        return tune_acceptance(args, model, questions, output, rule, tree_lengths, lookup_lengths, suffix_nodes, argv)
    recorded_decodings(output, args.dtype, args.overwrite, rule)  # fail before measuring, not after
    report_dir = args.report_dir or os.path.dirname(os.path.abspath(output))
    os.makedirs(report_dir, exist_ok=True)

    machine = machine_name()
    print(f"latency curve on {machine}, {args.dtype} ...")
    latency = forward_latency(model.base_model, latency_lengths)
    print(" ".join(f"{n}:{ms:.1f}ms" for n, ms in latency.items()))
    configs = [(t, k, n) for t in tree_lengths for k in lookup_lengths for n in suffix_nodes]
    formatter = ChatFormatter(model.tokenizer)
    totals = measure_configs(model, formatter, [q["turns"][0] for q in questions], configs, args.max_new_token,
                             temperature=args.temperature, sampling=args.sampling, rounds=args.rounds)
    plain_name = "plain greedy" if rule == "greedy" else "plain sampling"
    n, v = model.config.num_special_tokens, model.config.virtual_tokens_per_special_token
    inputs = {length: spec_input_length(spec, n, v) for length, spec in tree_specs(model).items()}
    print(results_table(totals, latency, inputs, plain_name))
    best = choose(totals)
    plain = totals[PLAIN].tokens_per_second
    ratio = totals[best].tokens_per_second / plain if plain else 0.0
    if best == PLAIN:
        print(f"no tree, lookup chain or suffix tree paid for its cost on this machine in {args.dtype}: "
              f"{plain_name} is recorded")
    else:
        print(f"chosen: {config_name(best)}, {ratio:.2f}x {plain_name}, accept length {totals[best].accept_length:.3f}")
    command = "python -m prompt.evaluation.tune " + " ".join(argv if argv is not None else sys.argv[1:])
    entry = {"tree_length": best[0], "prompt_lookup_num_tokens": best[1], "suffix_nodes": best[2],
             "accept_length": round(totals[best].accept_length, 3),
             f"speed_vs_{plain_name.replace(' ', '_')}": round(ratio, 3),
             "tokens_per_second": round(totals[best].tokens_per_second, 2),
             "machine": machine, "fingerprint": fingerprint_key(fingerprint(model.base_model.device)),
             "date": datetime.date.today().isoformat(), "command": command}
    if rule != "greedy":
        entry["temperature"] = args.temperature
    record_choice(output, args.dtype, entry, args.overwrite, rule)
    print(f"recorded in {output}" + ("" if rule == "greedy" else f" as the {args.dtype} entry's {rule!r}"))
    stem = os.path.join(report_dir, f"tuning_{args.dtype}" + ("" if rule == "greedy" else
                                                               f"_{rule}_t{args.temperature:g}"))
    report = {"machine": machine, "dtype": args.dtype, "sampling": rule, "temperature": args.temperature,
              "command": command, "latency_ms": latency,
              "prompts": f"{args.bench_name} {args.question_begin}:{args.question_end}", "max_new_tokens": args.max_new_token,
              "results": [{"tree_length": c[0], "prompt_lookup_num_tokens": c[1], "suffix_nodes": c[2], **t.row()}
                          for c, t in totals.items()],
              "chosen": entry}
    write_json(stem + ".json", report)
    plot_latency(latency, stem + "_latency.png", f"forward latency, {machine}, {args.dtype}")
    # the builder predicts greedy acceptance
    plot_tree_sizes(totals, predicted_accept_lengths(model) if rule == "greedy" else {}, stem + "_trees.png",
                    f"tree size on {machine}, {args.dtype}, {len(questions)} prompts", plain_name)
    print(f"measurements and plots: {stem}.json, {stem}_latency.png, {stem}_trees.png")


if __name__ == "__main__":
    main()
