"""Answer benchmark questions with plain decoding (no prompt tokens): our loop, or transformers `generate`."""
import sys

from prompt.cli import ArgumentParser
from prompt.errors import PPDError, cli_entry
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.answer_flags import add_common_flags, check_args
from prompt.evaluation.gpus import load_kwargs
from prompt.evaluation.runner import PerTemperature, make_decoder, run_answers
from prompt.evaluation.transformers_baseline import TransformersBaseline
from prompt.model.loading import load_base_model, plain_model_path


def setup(args):
    """Load the model and return (decoder for a temperature, chat formatter, label); runs in each worker.

    As upstream's baseline, the answers are plain greedy at every temperature (a question's category temperature or
    --temperature) unless --sampling names a sampling rule: then they are sampled at that temperature."""
    model, tokenizer = load_base_model(args.model_path, **load_kwargs(args))
    formatter = ChatFormatter(tokenizer, args.model_id)

    def decoding_temperature(temperature):
        return 0.0 if args.greedy_at_every_temperature else temperature

    if args.hf_generate:
        decoders = PerTemperature(lambda temperature: TransformersBaseline(model, formatter.stops(model),
                                                                           args.prompt_lookup_num_tokens,
                                                                           decoding_temperature(temperature)))
        return decoders, formatter, "hf-generate"
    return PerTemperature(lambda temperature: make_decoder(model, formatter, args, decoding_temperature(temperature))
                          ), formatter, "baseline"


@cli_entry
def main():
    parser = add_common_flags(ArgumentParser(description=__doc__), "Base model: a local folder or a Hub repo id (a PPD "
                              "checkpoint means its base model, as upstream).", "smollm2-135m-baseline")
    parser._option_string_actions["--sampling"].help = (
        "Default, greedy and typical: plain greedy at every temperature, as upstream's baseline; exact: sample at the "
        "question's temperature (its category's, or --temperature), as plain sampling from the model does; "
        "typical_sampling: sample the typical-filtered distribution.")
    parser._option_string_actions["--acceptance"].help = (
        "Ours: sample at the question's temperature with this rule (exact: plain sampling from the model); without it "
        "(and without a sampling --sampling) plain greedy at every temperature, as upstream's baseline.")
    parser.add_argument("--tree-length", default=None,
                        help="Accepted as upstream, where the baseline builds the tree's buffers but never uses them: "
                             "no effect on plain decoding.")
    parser.add_argument("--hf-generate", action="store_true",
                        help="Decode with transformers generate instead of our loop, as a reference (greedy; "
                             "--sampling exact: transformers' sampling at the temperature).")
    parser.add_argument("--prompt-lookup-num-tokens", type=int, default=None,
                        help="With --hf-generate: transformers prompt lookup decoding with this many tokens.")
    args = parser.parse_args()
    if args.tree_length is not None:
        print(f"note: --tree-length {args.tree_length} has no effect on plain decoding (as upstream's baseline)",
              file=sys.stderr)
    # upstream's baseline decodes by argmax whatever --sampling names
    args.greedy_at_every_temperature = args.sampling in (None, "greedy", "typical") and not args.acceptance
    rule = args.acceptance or args.sampling
    if args.hf_generate and not args.greedy_at_every_temperature and rule != "exact":
        raise PPDError(f"--hf-generate samples plainly (transformers' sampling): use --sampling exact, not {rule}")
    if args.greedy_at_every_temperature and args.temperature:
        print(f"note: --temperature {args.temperature:g}: the baseline decodes greedily all the same, as upstream's "
              f"(--sampling exact samples at it)", file=sys.stderr)
    questions = check_args(args)
    if questions:
        base = plain_model_path(args.model_path)  # a PPD checkpoint, as upstream's baseline takes it: its base model
        if base != args.model_path:
            print(f"note: {args.model_path} is a PPD checkpoint: the baseline decodes its base model {base}",
                  file=sys.stderr)
            args.model_path = base
        run_answers(args, questions, setup)


if __name__ == "__main__":
    main()
