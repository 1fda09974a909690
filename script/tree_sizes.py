"""Probe: accept length and speed of each tree size on validation prompts (ShareGPT, never an evaluation set).

    python script/tree_sizes.py --trees-file trees.json --lengths 10,16,24,32 --dtype bfloat16 \
        [--sharegpt ../shared/data/sharegpt/ShareGPT_V3_filtered_1000.json --begin 940 --end 946]

Runs `generate` greedy and PPD with each tree, interleaved, in one process (prompt.evaluation.compare).
"""
import argparse
import json

from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.compare import compare, format_table
from prompt.evaluation.runner import HFGenerate
from prompt.inference.decoding import Decoder, stop_token_ids_for
from prompt.inference.tree import load_tree_specs, spec_input_length
from prompt.model.defaults import load_prompt_decoder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees-file", required=True)
    parser.add_argument("--lengths", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--sharegpt", default="../shared/data/sharegpt/ShareGPT_V3_filtered_1000.json")
    parser.add_argument("--begin", type=int, default=940)
    parser.add_argument("--end", type=int, default=946)
    parser.add_argument("--max-new-token", type=int, default=128)
    args = parser.parse_args()
    model = load_prompt_decoder(args.model_path, dtype=args.dtype, quiet=True)
    formatter = ChatFormatter(model.tokenizer)
    with open(args.sharegpt, encoding="utf-8") as f:
        prompts = [record["conversations"][0]["value"] for record in json.load(f)[args.begin: args.end]]
    n = model.config.num_special_tokens
    specs = {spec_input_length(spec, n): spec for spec in load_tree_specs(args.trees_file).values()}
    stops = stop_token_ids_for(formatter.tokenizer)
    decoders = {"generate": HFGenerate(model.base_model, stops)}
    for length in (int(x) for x in args.lengths.split(",")):
        decoders[f"ppd-{length}-inputs"] = Decoder(model, tree_spec=specs[length], stop_token_ids=stops)
    totals = compare(decoders, formatter, prompts, args.max_new_token)
    print(f"{args.dtype}, {len(prompts)} prompts, {args.max_new_token} new tokens")
    print(format_table(totals))


if __name__ == "__main__":
    main()
