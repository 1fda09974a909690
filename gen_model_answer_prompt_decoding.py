"""Answer benchmark questions with Parallel Prompt Decoding (prompt tokens + dynamic sparse tree)."""
import sys

from prompt.cli import ArgumentParser
from prompt.errors import cli_entry
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.answer_flags import add_common_flags, check_args
from prompt.evaluation.gpus import load_kwargs
from prompt.evaluation.runner import PerTemperature, make_decoder, run_answers
from prompt.inference.choice import resolve_decoding
from prompt.inference.cost_profile import machine_profile
from prompt.inference.tree import select_tree_spec
from prompt.model.defaults import load_prompt_decoder


def setup(args):
    """Load the model and return (decoder for a temperature, chat formatter, label); runs in each worker."""
    model = load_prompt_decoder(args.model_path, base_model_path=args.base_model_path, **load_kwargs(args))
    formatter = ChatFormatter(model.tokenizer, args.model_id)
    tree = {"tree_length": args.tree_length}
    if args.tree_file:  # a tree file of the user's: its tree of --tree-length (else its largest)
        tree = {"tree_spec": select_tree_spec(args.tree_file, model.config.num_special_tokens,
                                              model.config.virtual_tokens_per_special_token, args.tree_length)}
    machine_profile(model, measure=not args.no_profile)  # this machine's costs, measured on first use
    choice = resolve_decoding(model, prompt_lookup_num_tokens=args.prompt_lookup_num_tokens, **tree)
    if choice.reason:
        print(f"why: {choice.reason}")
    if choice.tree_source:  # which tree --tree-length named (built on the spot where the tree file lacks it)
        print(f"tree: {choice.tree_source}", file=sys.stderr)
    decoders = PerTemperature(lambda temperature: make_decoder(
        model, formatter, args, temperature, prompt_lookup_num_tokens=args.prompt_lookup_num_tokens, **tree))
    # the decoding of every temperature the questions are answered at (MT-Bench's categories differ without
    # --temperature): a sampled category is named as such, never as greedy
    used = getattr(args, "question_temperatures", None) or {args.temperature or 0.0: []}
    for temperature, categories in used.items():
        named = ", ".join(c or "(none)" for c in categories)
        where = f" at temperature {temperature:g} ({named})" if len(used) > 1 else ""
        print(f"decoding{where}: {decoders(temperature).describe()}")
    return decoders, formatter, "ppd"


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
    if questions:
        run_answers(args, questions, setup)


if __name__ == "__main__":
    main()
