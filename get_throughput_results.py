"""Print throughput, mean accept length and mean forward time of answer files (averaged over groups of --n runs)."""
from prompt.cli import ArgumentParser
from prompt.errors import PPDError, cli_entry
from prompt.evaluation.throughput import summarize


@cli_entry
def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("input_files", nargs="+", help="FastChat answer jsonl files")
    parser.add_argument("--n", type=int, default=1, help="Number of files (runs) averaged per group")
    args = parser.parse_args()
    if args.n < 1:
        raise PPDError("--n must be >= 1")
    for start in range(0, len(args.input_files), args.n):
        group = args.input_files[start: start + args.n]
        summary = summarize(group)
        print(">>> " + ", ".join(group))
        (m, ms), (u, us), (a, as_), (f, fs) = (summary[k] for k in (
            "macro_tokens_per_s", "micro_tokens_per_s", "accept_length", "forward_time"))
        print(f"Macro-average throughput: {m:.3f} tokens/s (std {ms:.3f})")
        print(f"Micro-average throughput: {u:.3f} tokens/s (std {us:.3f})")
        if a is None:
            print("Average accept length: n.a. (the answers do not record their forward passes: idxs is -1, "
                  "as transformers generate with prompt lookup writes)")
            print("Average forward pass time: n.a.")
        else:
            print(f"Average accept length: {a:.5f} tokens per forward (std {as_:.5f})")
            print(f"Average forward pass time: {f:.5f} s (std {fs:.5f})")


if __name__ == "__main__":
    main()
