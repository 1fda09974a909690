"""Answer benchmark questions with plain decoding (no prompt tokens): our loop, or transformers `generate`."""
import sys

from prompt.cli import ArgumentParser
from prompt.errors import cli_entry
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.runner import (HFGenerate, PerTemperature, add_common_flags, check_args, load_kwargs,
                                      make_decoder, run_answers)
from prompt.model.loading import load_base_model


def setup(args):
    """Load the model and return (decoder for a temperature, chat formatter, label); runs in each worker."""
    model, tokenizer = load_base_model(args.model_path, **load_kwargs(args))
    formatter = ChatFormatter(tokenizer, args.model_id)
    if args.hf_generate:
        decoders = PerTemperature(lambda temperature: HFGenerate(model, formatter.stops(model),
                                                                 args.prompt_lookup_num_tokens, temperature))
        return decoders, formatter, "hf-generate"
    return PerTemperature(lambda temperature: make_decoder(model, formatter, args, temperature)), formatter, "baseline"


@cli_entry
def main():
    parser = add_common_flags(ArgumentParser(description=__doc__), "Base model: a local folder or a Hub repo id.", "smollm2-135m-baseline")
    parser.add_argument("--tree-length", default=None,
                        help="Accepted as upstream, where the baseline builds the tree's buffers but never uses them: "
                             "no effect on plain decoding.")
    parser.add_argument("--hf-generate", action="store_true",
                        help="Decode with transformers generate (greedy) instead of our loop, as a reference.")
    parser.add_argument("--prompt-lookup-num-tokens", type=int, default=None,
                        help="With --hf-generate: transformers prompt lookup decoding with this many tokens.")
    args = parser.parse_args()
    if args.tree_length is not None:
        print(f"note: --tree-length {args.tree_length} has no effect on plain decoding (as upstream's baseline)",
              file=sys.stderr)
    questions = check_args(args)
    if questions:
        run_answers(args, questions, setup)


if __name__ == "__main__":
    main()
