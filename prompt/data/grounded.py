"""Input-grounded prompts from ShareGPT: a pasted document or code with a request to summarise, rewrite, fix or
answer from it (the prompts whose answers copy their input). For developing and tuning context candidates; the
evaluation sets stay out.

    python -m prompt.data.grounded --sharegpt ../shared/data/sharegpt/ShareGPT_V3_filtered_1000.json \\
        --end 900 --output data/dev/sharegpt_grounded.json
"""
from __future__ import annotations

import re

from prompt.cli import ArgumentParser
from prompt.errors import PPDError, cli_entry
from prompt.jsonio import read_json, write_json

REQUEST = re.compile(r"\b(summar|rewrite|re-write|rephrase|paraphrase|translate|proofread|fix (this|the|my)|"
                     r"improve (this|the|my)|correct (this|the|my)|explain (this|the following)|refactor|"
                     r"convert (this|the)|based on (this|the))", re.IGNORECASE)


def is_grounded(text: str, min_chars: int = 500, max_chars: int = 2500) -> bool:
    """A request about text pasted with it: long enough, a few lines, and asking to work on that text."""
    return min_chars <= len(text) <= max_chars and text.count("\n") >= 2 and bool(REQUEST.search(text))


def grounded_records(records: list, begin: int = 0, end: int | None = None) -> list:
    """The ShareGPT records in [begin, end) whose first human message is input-grounded."""
    chosen = []
    for record in records[begin:end]:
        turns = record.get("conversations") if isinstance(record, dict) else None
        first = next((t.get("value") for t in turns or [] if isinstance(t, dict) and t.get("from") == "human"), None)
        if isinstance(first, str) and is_grounded(first):
            chosen.append({"id": record.get("id"), "conversations": [{"from": "human", "value": first}]})
    return chosen


@cli_entry
def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("--sharegpt", required=True, help="ShareGPT-format JSON (a list of records).")
    parser.add_argument("--begin", type=int, default=0)
    parser.add_argument("--end", type=int, default=None)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    records = read_json(args.sharegpt, "ShareGPT file")
    if not isinstance(records, list):
        raise PPDError(f"{args.sharegpt!r} is not a JSON list of ShareGPT records")
    chosen = grounded_records(records, args.begin, args.end)
    write_json(args.output, chosen)
    print(f"{len(chosen)} input-grounded prompts of {len(records[args.begin:args.end])} written to {args.output}")


if __name__ == "__main__":
    main()
