"""Forward latency of one decode step against its number of inputs (the tree length) on this machine.

    python tree_latency.py --min-tree-length 1 --max-tree-length 64 --length-interval 4 --dtype bfloat16 \
        --output-file latency.json [--plot-file latency.png]

Each point is the median of --repeats forwards after a --prefix-length token prefix, with a tree mask and
the lm head over every input, as the decode loop runs them. Prints the curve and its ratio to one input.
"""
import os

import torch

from prompt.cli import ArgumentParser
from prompt.errors import PPDError, cli_entry
from prompt.evaluation.tune import forward_latency, machine_name, plot_latency
from prompt.jsonio import write_json
from prompt.model.devices import add_device_flags, device_kwargs


@cli_entry
def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", default=None,
                        help="Base model folder or Hub repo id (default: the embedded default model).")
    add_device_flags(parser, dtype="bfloat16")
    parser.add_argument("--min-tree-length", type=int, default=1)
    parser.add_argument("--max-tree-length", type=int, default=64)
    parser.add_argument("--length-interval", type=int, default=4)
    parser.add_argument("--prefix-length", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output-file", required=True, help="The curve as JSON.")
    parser.add_argument("--plot-file", default=None, help="PNG plot (default: the output file with .png).")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.min_tree_length <= args.max_tree_length:
        raise PPDError("need 1 <= --min-tree-length <= --max-tree-length")
    if args.length_interval < 1 or args.repeats < 1 or args.prefix_length < 1:
        raise PPDError("--length-interval, --repeats and --prefix-length must be >= 1")
    plot_file = args.plot_file or os.path.splitext(args.output_file)[0] + ".png"
    for path in (args.output_file, plot_file):
        if os.path.exists(path) and not args.overwrite:
            raise PPDError(f"{path!r} exists; pass --overwrite to replace it")
    if args.threads:
        torch.set_num_threads(args.threads)
    from prompt.model.loading import load_base_model

    base, _ = load_base_model(args.model_path, **device_kwargs(args))
    lengths = sorted({1, *range(args.min_tree_length, args.max_tree_length + 1, args.length_interval)})
    max_positions = getattr(base.config, "max_position_embeddings", None)
    if max_positions is not None and args.prefix_length + lengths[-1] > max_positions:
        raise PPDError(f"--prefix-length plus --max-tree-length exceeds the model's context ({max_positions})")
    machine = machine_name()
    latency = forward_latency(base, lengths, args.prefix_length, args.repeats)
    print(f"{machine}, {args.dtype}, prefix {args.prefix_length}, median of {args.repeats}")
    print("| inputs | ms | vs 1 input |\n|---|---|---|")
    for n, ms in latency.items():
        print(f"| {n} | {ms:.1f} | {ms / latency[1]:.2f}x |")
    write_json(args.output_file, {"machine": machine, "dtype": args.dtype, "prefix_length": args.prefix_length,
                                  "repeats": args.repeats, "latency_ms": latency})
    plot_latency(latency, plot_file, f"forward latency, {machine}, {args.dtype}")
    print(f"saved {args.output_file} and {plot_file}")


if __name__ == "__main__":
    main()
