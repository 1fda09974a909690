"""Answer benchmark questions with plain decoding (no prompt tokens): our loop, or transformers `generate`."""
from prompt.cli import ArgumentParser
from prompt.errors import cli_entry
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.runner import check_args, HFGenerate, add_common_flags, make_decoder, run_benchmark
from prompt.model.devices import device_kwargs
from prompt.model.loading import load_base_model


@cli_entry
def main():
    parser = add_common_flags(ArgumentParser(description=__doc__), "Base model: a local folder or a Hub repo id.", "smollm2-135m-baseline")
    parser.add_argument("--hf-generate", action="store_true",
                        help="Decode with transformers generate (greedy) instead of our loop, as a reference.")
    parser.add_argument("--prompt-lookup-num-tokens", type=int, default=None,
                        help="With --hf-generate: transformers prompt lookup decoding with this many tokens.")
    args = parser.parse_args()
    questions = check_args(args)
    if not questions:
        return
    model, tokenizer = load_base_model(args.model_path, **device_kwargs(args))
    formatter = ChatFormatter(tokenizer, args.model_id)
    if args.hf_generate:
        decoder = HFGenerate(model, formatter.stops(model), args.prompt_lookup_num_tokens)
    else:
        decoder = make_decoder(model, formatter, args)
    run_benchmark(args, questions, decoder, formatter, "hf-generate" if args.hf_generate else "baseline")


if __name__ == "__main__":
    main()
