"""Training throughput, supervised cuts per second: many cuts per forward against one cut per forward.

Both sides run whole training steps (teacher forward, student forward and backward, optimizer step) on the
same self-distilled sequences:

    python -m prompt.train.bench_many_cuts --dataset_path D_3_self_distillation_1024.pt --seconds 40

Without --dataset_path it builds stand-in sequences (a ShareGPT prompt and a GSM8K-train answer as the
"reply", 128 tokens): the token values do not change the cost.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from prompt.cli import ArgumentParser, add_model_flags, apply_threads
from prompt.errors import cli_entry


def stand_in_sequences(tokenizer, sharegpt: str, gsm8k: str, count: int, reply_tokens: int) -> list[dict]:
    """Prompt + reply sequences with the shape of self-distilled data (the reply is GSM8K answer text)."""
    from prompt.data.chat import chat_ids
    from prompt.data.sources import Source, read_prompts

    prompts = read_prompts(Source(sharegpt, 0, count))
    answers = [json.loads(line)["answer"] for line in open(gsm8k, encoding="utf-8").read().splitlines()[: count * 4]]
    records = []
    for i, text in enumerate(prompts):
        prompt_ids = chat_ids(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)[:256]
        reply = tokenizer(" ".join(answers[4 * i: 4 * i + 4]), add_special_tokens=False)["input_ids"][:reply_tokens]
        records.append({"input_ids": torch.tensor(prompt_ids + reply), "reply_start": len(prompt_ids)})
    return records


def measure(step, records: list[dict], seconds: float) -> tuple[float, int, float]:
    """Run `step(record) -> cuts` over the records (cycling) for about `seconds`; returns (cuts/s, cuts, seconds)."""
    step(records[0])  # warm-up
    cuts, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        cuts += step(records[i % len(records)])
        i += 1
    wall = time.perf_counter() - start
    return cuts / wall, cuts, wall


@cli_entry
def main(argv=None) -> dict:
    from prompt.data.files import load_dataset
    from prompt.model.config import PromptConfig
    from prompt.model.loading import load_base_model
    from prompt.model.prompt_decoder import PromptDecoder
    from prompt.train.objectives import DISTILLATION, many_cuts_loss, one_cut_loss

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--dataset_path", default=None)
    parser.add_argument("--sharegpt", default="../shared/data/sharegpt/ShareGPT_V3_filtered_1000.json")
    parser.add_argument("--gsm8k", default="../shared/data/gsm8k/train.jsonl")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--num_special_tokens", type=int, default=3)
    parser.add_argument("--virtual_tokens_per_special_token", type=int, default=1)
    parser.add_argument("--cuts_per_sequence", type=int, default=0, help="0 = every reply position")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seconds", type=float, default=40.0, help="Measuring time of each side.")
    add_model_flags(parser, model_path=None,
                    threads="torch CPU threads (use fewer than the free cores: oversubscribed threads are very slow).")
    args = parser.parse_args(argv)
    apply_threads(args.threads)

    base, tokenizer = load_base_model(args.model_name_or_path, dtype=args.dtype)
    model = PromptDecoder(base, PromptConfig(num_special_tokens=args.num_special_tokens,
                                             virtual_tokens_per_special_token=args.virtual_tokens_per_special_token,
                                             prompt_tuning_init="RANDOM")).eval()
    if args.dataset_path:
        records = load_dataset(args.dataset_path, expected_types=("self_distillation",)).records[: args.sequences]
    else:
        records = stand_in_sequences(tokenizer, args.sharegpt, args.gsm8k, args.sequences, 128)
    optimizer = torch.optim.AdamW([model.prompt_embeddings], lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def step_many(record):
        optimizer.zero_grad()
        loss, cuts = many_cuts_loss(model, record, DISTILLATION, args.cuts_per_sequence, 4096, generator)
        loss.backward()
        optimizer.step()
        return cuts

    def step_one(record):
        optimizer.zero_grad()
        loss, cuts = one_cut_loss(model, [record], "self_distillation", DISTILLATION, 4096, [generator])
        loss.backward()
        optimizer.step()
        return cuts

    many = measure(step_many, records, args.seconds)
    one = measure(step_one, records, args.seconds)
    result = {"many_cuts_per_second": round(many[0], 2), "one_cut_per_second": round(one[0], 2),
              "ratio": round(many[0] / one[0], 1), "many_cuts": many[1], "one_cuts": one[1],
              "mean_sequence_tokens": round(sum(len(r["input_ids"]) for r in records) / len(records), 1),
              "dtype": args.dtype, "threads": torch.get_num_threads()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
