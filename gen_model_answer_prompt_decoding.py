"""Answer benchmark questions with Parallel Prompt Decoding (prompt tokens + dynamic sparse tree)."""
import sys

from prompt.cli import ArgumentParser
from prompt.errors import cli_entry
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.runner import check_args, add_common_flags, make_decoder, run_benchmark
from prompt.inference.choice import resolve_decoding
from prompt.inference.tree import select_tree_spec
from prompt.model.defaults import load_prompt_decoder
from prompt.model.devices import device_kwargs


@cli_entry
def main():
    parser = add_common_flags(ArgumentParser(description=__doc__),
                              "Trained prompt tokens: a folder or Hub repo id (adapter_config.json + adapter_model.safetensors).",
                              "smollm2-135m-ppd")
    parser.add_argument("--base-model-path", default=None,
                        help="Base model (folder or Hub repo id) instead of the checkpoint's base_model_name_or_path.")
    parser.add_argument("--tree-length", type=int, default=None,
                        help="Tree length as upstream: candidate nodes plus their special tokens (the tree builder's "
                             "budget); a length the tree file lacks is built from the checkpoint's accuracies.json; "
                             "0: no prompt tokens (default: the checkpoint's tuned tree for the dtype, else upstream's "
                             "default for its family, else the tree file's largest).")
    parser.add_argument("--tree-file", default=None, help="JSON tree specs (default: the checkpoint's or the shipped tree).")
    parser.add_argument("--prompt-lookup-num-tokens", type=int, default=None,
                        help="Add a prompt-lookup chain of this many tokens to every tree; 0: off "
                             "(default: the checkpoint's tuned setting for the dtype, else off).")
    args = parser.parse_args()
    questions = check_args(args)
    if not questions:
        return
    model = load_prompt_decoder(args.model_path, base_model_path=args.base_model_path, **device_kwargs(args))
    formatter = ChatFormatter(model.tokenizer, args.model_id)
    tree = {"tree_length": args.tree_length}
    if args.tree_file:  # a tree file of the user's: its tree of --tree-length (else its largest)
        tree = {"tree_spec": select_tree_spec(args.tree_file, model.config.num_special_tokens,
                                              model.config.virtual_tokens_per_special_token, args.tree_length)}
    choice = resolve_decoding(model, prompt_lookup_num_tokens=args.prompt_lookup_num_tokens, **tree)
    if choice.tree_source:
        print(f"tree: {choice.tree_source}", file=sys.stderr)
    decoder = make_decoder(model, formatter, args, prompt_lookup_num_tokens=choice.prompt_lookup_num_tokens,
                           tree_spec=choice.tree_spec, tree_length=None if choice.tree_spec else 0)
    print(f"decoding: {decoder.describe()}")
    run_benchmark(args, questions, decoder, formatter, "ppd")


if __name__ == "__main__":
    main()
