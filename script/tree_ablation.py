"""The paper's tree ablation at equal input length: the builder's sparse tree against a random tree and a chain.

    python script/tree_ablation.py --tree-length 12 --dtype bfloat16 \
        --question-file ../shared/data/sharegpt/ShareGPT_V3_filtered_1000.json [--question-begin 940 --question-end 946]

All three trees have the same tree length (upstream's: candidate nodes plus their special tokens, so the same
inputs per forward) and the shipped prompt tokens; they run interleaved with `generate` greedy in one process, on validation prompts.
- sparse: the builder's tree of that length from the shipped trees.json;
- random: as many nodes, each a random child (rank < 10, depth <= number of special tokens) of a node
  already in the tree, every node with one special token;
- chain: the top-1 guess of each special token in a chain, each node carrying all special tokens:
  tree length 12 with 3 special tokens (16 inputs), the longest chain they allow (so compare at --tree-length 12).
"""
import random

from prompt.cli import ArgumentParser
from prompt.errors import PPDError, cli_entry
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.compare import compare, format_table
from prompt.evaluation.questions import load_questions
from prompt.evaluation.transformers_baseline import TransformersBaseline
from prompt.inference.choice import tree_file
from prompt.inference.decoding import Decoder
from prompt.inference.tree import select_tree_spec, spec_tree_length
from prompt.model.defaults import load_prompt_decoder


def random_spec(num_nodes: int, num_special: int, seed: int, max_rank: int = 10) -> dict:
    rng = random.Random(seed)
    spec = {}
    for depth in range(1, num_special + 1):
        paths = []
        while len(paths) < num_nodes:
            parent = rng.choice([[]] + [p for p in paths if len(p) < depth])
            child = parent + [rng.randrange(max_rank)]
            if child not in paths:
                paths.append(child)
        spec[str(depth)] = [[p, 0.0, 1] for p in paths]
    return spec


def chain_spec(num_special: int) -> dict:
    """Top-1 chains, every node with all special tokens (so every step can use the full depth)."""
    return {str(d): [[[0] * k, 0.0, num_special] for k in range(1, d + 1)] for d in range(1, num_special + 1)}


@cli_entry
def main():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--tree-length", type=int, default=12)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--question-file", required=True, help="ShareGPT JSON (validation prompts)")
    parser.add_argument("--question-begin", type=int, default=940)
    parser.add_argument("--question-end", type=int, default=946)
    parser.add_argument("--max-new-token", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_prompt_decoder(None, dtype=args.dtype)
    n = model.config.num_special_tokens
    sparse = select_tree_spec(tree_file(model), n, 1, args.tree_length)
    nodes = len(sparse[str(n)])
    rand = random_spec(nodes, n, args.seed)
    if spec_tree_length(rand, n) != spec_tree_length(sparse, n):
        raise PPDError("the random tree's length differs from the sparse tree's")
    chain = chain_spec(n)
    chain_length = spec_tree_length(chain, n)
    formatter = ChatFormatter(model.tokenizer)
    stops = formatter.stops(model)
    decoders = {"generate": TransformersBaseline(model.base_model, stops),
                f"sparse ({nodes} nodes, tree length {args.tree_length})": Decoder(model, tree_spec=sparse, stop_token_ids=stops, prompt_lookup_num_tokens=0),
                f"random ({nodes} nodes, tree length {args.tree_length})": Decoder(model, tree_spec=rand, stop_token_ids=stops, prompt_lookup_num_tokens=0),
                f"chain ({n} nodes, tree length {chain_length})": Decoder(model, tree_spec=chain, stop_token_ids=stops, prompt_lookup_num_tokens=0)}
    questions = load_questions("sharegpt", args.question_file, args.question_begin, args.question_end)
    totals = compare(decoders, formatter, [q["turns"][0] for q in questions], args.max_new_token)
    print(f"{args.dtype}, {len(questions)} ShareGPT prompts ({args.question_begin}:{args.question_end}), "
          f"{args.max_new_token} new tokens")
    print(format_table(totals))


if __name__ == "__main__":
    main()
