"""Forward latency of one decode step against its number of inputs (the tree length) on this machine.

    python tree_latency.py --min-tree-length 1 --max-tree-length 64 --length-interval 4 --dtype bfloat16 \
        --output-file latency.json [--plot-file latency.png] [--answer-file latency.jsonl]

Each point is the median of --repeats forwards after a --prefix-length token prefix, with a tree mask and
the lm head over every input, as the decode loop runs them. Prints the curve and its ratio to one input.
Upstream's flags are all accepted: --answer-file writes upstream's rows (one per tree length, its latency as
the wall time) that `get_throughput_results.py LATENCY_FILE ANSWER_DIR` reads; --model-path may name a
prompt-token checkpoint (its base model is measured; the default: the default model's). With prompt tokens, a row's
tree length is upstream's (the candidates and their special tokens), measured at the inputs of that tree's forward
(the root and its special tokens added); for a plain base model, a row's tree length is the inputs. The decoding
flags (--temperature, --posterior_threshold,
--sampling, --max-new-token, the question selection) do not change a forward's latency and are not used.
"""
import json
import os
import time

from prompt.cli import ArgumentParser, apply_threads
from prompt.errors import PPDError, cli_entry
from prompt.evaluation.answer_flags import add_common_flags, resolve_revision
from prompt.evaluation.gpus import check_gpu_flags, load_kwargs
from prompt.evaluation.tune import forward_latency, machine_name, plot_latency
from prompt.jsonio import write_json, write_text


@cli_entry
def main():
    parser = add_common_flags(ArgumentParser(description=__doc__),
                              "Base model, or a prompt-token checkpoint (its base model), a folder or Hub repo id.",
                              "tree-latency")
    parser.set_defaults(dtype="bfloat16", warmup=0)
    parser.add_argument("--min-tree-length", type=int, default=1)
    parser.add_argument("--max-tree-length", type=int, default=64)
    parser.add_argument("--length-interval", type=int, default=4)
    parser.add_argument("--prefix-length", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output-file", default=None, help="The curve as JSON (needed unless --answer-file is given).")
    parser.add_argument("--plot-file", default=None, help="PNG plot (default: the output file with .png).")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.min_tree_length <= args.max_tree_length:
        raise PPDError("need 1 <= --min-tree-length <= --max-tree-length")
    if args.length_interval < 1 or args.repeats < 1 or args.prefix_length < 1:
        raise PPDError("--length-interval, --repeats and --prefix-length must be >= 1")
    if not (args.output_file or args.answer_file):
        raise PPDError("give --output-file (the curve as JSON) or --answer-file (upstream's rows), or both")
    if check_gpu_flags(args) > 1:
        raise PPDError("--num-gpus-total: one process measures one device; run one tree_latency.py per GPU")
    base_name = os.path.splitext(args.output_file or args.answer_file)[0]
    plot_file = args.plot_file or base_name + ".png"
    for path in (args.output_file, plot_file, args.answer_file):
        if path and os.path.exists(path) and not args.overwrite:
            raise PPDError(f"{path!r} exists; pass --overwrite to replace it")
    apply_threads(args.threads)
    resolve_revision(args)
    from prompt.model.loading import load_base_model

    base, _ = load_base_model(base_model_of(args.model_path), **load_kwargs(args))
    trees = list(range(args.min_tree_length, args.max_tree_length + 1, args.length_interval))
    root = root_inputs(args.model_path)  # inputs of a tree forward beyond its tree length (0: no prompt tokens)
    # the rows' tree lengths (upstream's) and the inputs each is measured at; a plain model's rows: the inputs
    inputs = {n: n + root for n in (trees if root else sorted({1, *trees}))}
    lengths = sorted({1, *trees, *(inputs.values() if args.answer_file else ())})
    max_positions = getattr(base.config, "max_position_embeddings", None)
    if max_positions is not None and args.prefix_length + lengths[-1] > max_positions:
        raise PPDError(f"--prefix-length plus --max-tree-length exceeds the model's context ({max_positions})")
    machine = machine_name()
    if args.warmup:
        forward_latency(base, lengths[:1], args.prefix_length, args.warmup)
    latency = forward_latency(base, lengths, args.prefix_length, args.repeats)
    print(f"{machine}, {args.dtype}, prefix {args.prefix_length}, median of {args.repeats}")
    print("| inputs | ms | vs 1 input |\n|---|---|---|")
    for n, ms in latency.items():
        print(f"| {n} | {ms:.1f} | {ms / latency[1]:.2f}x |")
    if args.output_file:
        write_json(args.output_file, {"machine": machine, "dtype": args.dtype, "prefix_length": args.prefix_length,
                                      "repeats": args.repeats, "latency_ms": latency})
    if args.answer_file:  # upstream's rows: get_throughput_results reads sum(wall_time) of each tree length
        rows = [{"question_id": i, "answer_id": f"tree-{n}", "model_id": args.model_id, "tree_length": n,
                 "inputs": inputs[n], "choices": [{"index": 0, "turns": [], "idxs": [0], "new_tokens": [0],
                                                   "wall_time": [latency[inputs[n]] / 1000]}],
                 "tstamp": time.time()} for i, n in enumerate(inputs)]
        if root:
            print(f"{args.answer_file}: tree length n measured at n + {root} inputs (the root and its special tokens)")
        os.makedirs(os.path.dirname(os.path.abspath(args.answer_file)), exist_ok=True)
        write_text(args.answer_file, "".join(json.dumps(row) + "\n" for row in rows))
    plot_latency(latency, plot_file, f"forward latency, {machine}, {args.dtype}")
    print("saved " + " and ".join(p for p in (args.output_file, args.answer_file, plot_file) if p))


def prompt_config_of(model_path):
    """The PromptConfig of a prompt-token checkpoint folder, or of the default model's shipped tokens; else None."""
    from prompt.model.config import PromptConfig
    from prompt.model.loading import SHIPPED_PROMPT_TOKENS, is_default_model

    folder = SHIPPED_PROMPT_TOKENS if is_default_model(model_path) else os.path.expanduser(str(model_path))
    if os.path.isfile(os.path.join(folder, "adapter_config.json")):
        return PromptConfig.from_pretrained(folder)
    return None


def root_inputs(model_path) -> int:
    """Inputs of a tree forward beyond its tree length: the root and its special tokens (0 without prompt tokens).
    Exact with one virtual token per special token; with more, the nodes' own special tokens cost more."""
    config = prompt_config_of(model_path)
    if config is None:
        return 0
    return 1 + config.num_special_tokens * config.virtual_tokens_per_special_token


def base_model_of(model_path):
    """A prompt-token checkpoint folder (adapter_config.json) names its base model; anything else is the base model."""
    if model_path and os.path.isfile(os.path.join(os.path.expanduser(str(model_path)), "adapter_config.json")):
        from prompt.model.config import PromptConfig

        return PromptConfig.from_pretrained(os.path.expanduser(str(model_path))).base_model_name_or_path
    return model_path


if __name__ == "__main__":
    main()
