"""Print throughput, mean accept length and mean forward time of answer files (averaged over groups of --n runs).

As upstream: FILES... (groups of --n); a folder (its files grouped by the tree length in their names,
PREFIX<length>_<run>.jsonl as accept_length.py --dir-path writes them, and the best tree by accept length per
forward time; baseline_<run>.jsonl is shown, not ranked); or TREE_LATENCY_FILE FOLDER (a file named
*tree_latency.jsonl, ours from tree_latency.py --answer-file or upstream's, then each tree's accept length per
latency).
The accept length is upstream's: new tokens per decoding step after the prefill (from each row's idxs).
--gpu-power prints power and energy per token of answers written with --gpu-power.
"""
import os
import re

from prompt.cli import ArgumentParser
from prompt.errors import PPDError, cli_entry
from prompt.evaluation.throughput import file_throughput, gpu_power, summarize, tree_latencies


def print_group(group) -> float | None:
    """Print one group's figures; returns accept length per forward time (None when not counted)."""
    summary = summarize(group)
    (m, ms), (u, us), (a, as_), (f, fs) = (summary[k] for k in (
        "macro_tokens_per_s", "micro_tokens_per_s", "accept_length", "forward_time"))
    print(f"Macro-average throughput: {m:.3f} tokens/s (std {ms:.3f})")
    print(f"Micro-average throughput: {u:.3f} tokens/s (std {us:.3f})")
    if a is None:
        print("Average accept length: n.a. (the answers do not record their forward passes: idxs is -1, "
              "as transformers generate with prompt lookup writes)")
        print("Average forward pass time: n.a.")
        return None
    print(f"Average accept length: {a:.5f} tokens per decoding step (std {as_:.5f})")
    print(f"Average forward pass time: {f:.5f} s (std {fs:.5f})")
    return a / f if f else None


def tree_number(path: str) -> int:
    """The tree length in a file name PREFIX<length>_<run>.jsonl (0 if none)."""
    match = re.search(r"(\d+)_\d+\.jsonl?$", os.path.basename(path))
    return int(match.group(1)) if match else 0


def folder_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise PPDError(f"{folder!r} is not a folder")
    names = [n for n in os.listdir(folder) if n.endswith((".jsonl", ".json")) and "tree_latency.jsonl" not in n]
    if not names:
        raise PPDError(f"{folder!r} holds no answer files")
    return sorted((os.path.join(folder, n) for n in names), key=lambda p: (tree_number(p), p))


@cli_entry
def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("input_files", nargs="+", help="FastChat answer jsonl files, a folder of them, or a "
                                                       "tree latency file and a folder")
    parser.add_argument("--n", type=int, default=1, help="Number of files (runs) averaged per group")
    parser.add_argument("--gpu-power", action="store_true", help="Power and energy per token (answers written with --gpu-power)")
    args = parser.parse_args()
    if args.n < 1:
        raise PPDError("--n must be >= 1")
    first = args.input_files[0]
    if "tree_latency.jsonl" in os.path.basename(first):
        if len(args.input_files) != 2:
            raise PPDError("give the tree latency file and one folder of answer files")
        latencies = tree_latencies(first)
        best, best_ratio = None, 0.0
        for path in folder_files(args.input_files[1]):
            length = tree_number(path)
            accept = file_throughput(path).accept_length
            if length not in latencies or accept is None:
                continue
            ratio = accept / latencies[length]
            print(f">>> {path}\nRatio: {ratio:.3f}, accept length {accept:.5f}, latency {latencies[length]:.5f} s")
            if ratio > best_ratio:
                best, best_ratio = length, ratio
        print(f"Best sparse tree: {best}, ratio: {best_ratio:.3f}")
        return
    files = folder_files(first) if os.path.isdir(first) else args.input_files
    best, best_ratio = None, 0.0
    for start in range(0, len(files), args.n):
        group = files[start: start + args.n]
        print(">>> " + ", ".join(group))
        if args.gpu_power:
            for name, (mean, std) in gpu_power(group).items():
                print(f"{name}: {mean:.3f} (std {std:.3f})")
            continue
        ratio = print_group(group)
        if ratio is not None and ratio > best_ratio and tree_number(group[0]):  # baseline_<j>: no tree
            best, best_ratio = tree_number(group[0]), ratio
    if os.path.isdir(first) and not args.gpu_power:
        print(f"Best sparse tree: {best}, ratio: {best_ratio:.3f}")


if __name__ == "__main__":
    main()
