"""`generate_dataset.py`: build the truncated, distillation or self-distillation dataset.

    python generate_dataset.py --dataset_type finetune --num_special_tokens 3 --data_path sharegpt.json --model_max_length 2048
    python generate_dataset.py --dataset_type distillation --num_special_tokens 3 \\
        --data_path ShareGPT_training_dataset_3_finetune_2048.pt --model_max_length 2048
    python generate_dataset.py --dataset_type self_distillation --num_special_tokens 3 \\
        --data_path ../shared/data/sharegpt/ShareGPT_V3_filtered_1000.json:0:300 ../shared/data/gsm8k/train.jsonl:0:100

Output: `{save_path}_{num_special_tokens}_{dataset_type}_{model_max_length}.pt` (see prompt.data.files).
A `--data_path` may carry a slice, PATH:START:END. The model defaults to the embedded default model.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from tqdm import tqdm

from prompt.data.files import DATASET_TYPES, canonical_model_name, check_output_file, dataset_file_name, load_dataset, save_dataset
from prompt.data.finetune import build_finetune_records, chat_ids
from prompt.data.generation import batches_by_length, greedy_replies, greedy_teacher
from prompt.data.sources import parse_source, read_conversations, read_prompts
from prompt.errors import PPDError, cli_entry
from prompt.evaluation.runner import ArgumentParser
from prompt.model.loading import load_base_model


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_type", default="finetune", choices=DATASET_TYPES)
    parser.add_argument("--model_name_or_path", default=None,
                        help="Base model (tokenizer for finetune). Default: the embedded default model.")
    parser.add_argument("--data_path", nargs="+", required=True,
                        help="finetune: ShareGPT JSON file(s); distillation: a finetune .pt; self_distillation: "
                             "ShareGPT and/or GSM8K-train style jsonl files. Each may end in :START:END.")
    parser.add_argument("--save_path", default="data/ShareGPT_training_dataset", help="Output name prefix.")
    parser.add_argument("--model_max_length", type=int, default=2048)
    parser.add_argument("--num_special_tokens", type=int, default=3)
    parser.add_argument("--size", type=int, default=None, help="Use at most this many records (after slicing).")
    parser.add_argument("--batch_size", type=int, default=32, help="Sequences per forward (distillation, self_distillation).")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="self_distillation: reply length cap.")
    parser.add_argument("--top_k", type=int, default=20, help="distillation: teacher probabilities kept per position.")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"),
                        help="dtype of the base model when it runs (bf16 is about 2x faster on CPUs with avx512_bf16; "
                             "batched bf16 replies differ from float32 at a few %% of positions).")
    parser.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output file.")
    return parser


def check_args(args) -> None:
    for name, low in (("model_max_length", 8), ("num_special_tokens", 1), ("batch_size", 1), ("max_new_tokens", 1),
                      ("top_k", 1)):
        if getattr(args, name) < low:
            raise PPDError(f"--{name} must be >= {low}")
    if args.size is not None and args.size < 1:
        raise PPDError("--size must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise PPDError("--threads must be >= 1")
    if args.dataset_type == "distillation" and len(args.data_path) != 1:
        raise PPDError("distillation reads exactly one finetune dataset (--data_path X_finetune_N.pt)")


def limit(items: list, size: int | None) -> list:
    return items if size is None else items[:size]


def build_finetune(args, tokenizer) -> tuple[list, dict]:
    conversations = []
    for spec in args.data_path:
        conversations.extend(read_conversations(parse_source(spec)))
    conversations = limit(conversations, args.size)
    records, skipped = build_finetune_records(tokenizer, conversations, args.num_special_tokens, args.model_max_length,
                                              args.seed)
    if not records:
        raise PPDError(f"none of the {len(conversations)} conversations has an assistant reply of at least "
                       f"{args.num_special_tokens + 2} tokens to cut (a prompt-only file needs --dataset_type self_distillation)")
    return records, {"conversations": len(conversations), "skipped": skipped}


def build_distillation(args, model, tokenizer) -> tuple[list, dict]:
    source = load_dataset(args.data_path[0], expected_types=("finetune",), num_special_tokens=args.num_special_tokens)
    if source.model_name_or_path != canonical_model_name(args.model_name_or_path):
        raise PPDError(f"{args.data_path[0]!r} was tokenized for {source.model_name_or_path!r}, not "
                       f"{canonical_model_name(args.model_name_or_path)!r}: token ids would not match")
    prefixes = [r["input_ids"][-args.model_max_length:] for r in limit(source.records, args.size)]
    steps = args.num_special_tokens + 1
    stops = set(stop_ids(tokenizer, model))
    records = []
    for batch in tqdm(batches_by_length(prefixes, args.batch_size), desc="teacher", unit="batch"):
        outputs = greedy_teacher(model, [prefixes[i] for i in batch], steps, args.top_k, pad_id(tokenizer, model))
        for i, (tokens, top_ids, top_probs) in zip(batch, outputs):
            records.append((i, distillation_record(prefixes[i], tokens, top_ids, top_probs, stops)))
    records = [record for _, record in sorted(records, key=lambda pair: pair[0])]
    return records, {"source": args.data_path[0], "top_k": args.top_k}


def distillation_record(prefix, tokens, top_ids, top_probs, stops) -> dict:
    """A distillation record; labels after the first stop token of the continuation are -100."""
    labels = tokens.clone()
    stopped = [i for i, t in enumerate(tokens.tolist()) if t in stops]
    if stopped:
        labels[stopped[0] + 1:] = -100
    return {"input_ids": prefix.clone(), "continuation": tokens, "labels": labels,
            "teacher_ids": top_ids.to(torch.int32), "teacher_probs": top_probs.float()}


def build_self_distillation(args, model, tokenizer) -> tuple[list, dict]:
    prompts = []
    for spec in args.data_path:
        prompts.extend(read_prompts(parse_source(spec)))
    prompts = limit(prompts, args.size)
    if not prompts:
        raise PPDError("no prompts in --data_path")
    room = args.model_max_length - args.max_new_tokens
    encoded = [torch.tensor(chat_ids(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True))
               for p in prompts]
    usable = [i for i, ids in enumerate(encoded) if len(ids) <= room]
    stops, pad = stop_ids(tokenizer, model), pad_id(tokenizer, model)
    records, generated, start = {}, 0, time.perf_counter()
    bar = tqdm(batches_by_length([encoded[i] for i in usable], args.batch_size), desc="replies", unit="batch")
    for batch in bar:
        indices = [usable[j] for j in batch]
        replies = greedy_replies(model, [encoded[i] for i in indices], args.max_new_tokens, stops, pad)
        for i, reply in zip(indices, replies):
            generated += len(reply)
            if len(reply) >= args.num_special_tokens + 2:
                records[i] = {"input_ids": torch.cat([encoded[i], reply]), "reply_start": len(encoded[i])}
        bar.set_postfix(tokens_per_s=f"{generated / (time.perf_counter() - start):.0f}")
    if not records:
        raise PPDError("no prompt produced a reply long enough to train on")
    info = {"prompts": len(prompts), "too_long": len(prompts) - len(usable), "short_replies": len(usable) - len(records),
            "generated_tokens": generated, "max_new_tokens": args.max_new_tokens, "dtype": args.dtype,
            "sources": list(args.data_path)}
    return [records[i] for i in sorted(records)], info


def stop_ids(tokenizer, model) -> list[int]:
    """EOS ids of the tokenizer and the model's generation config."""
    ids = set()
    for eos in (getattr(tokenizer, "eos_token_id", None), getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(eos)
    return sorted(ids)


def pad_id(tokenizer, model) -> int:
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(model.config, "pad_token_id", None) if model else None):
        if isinstance(value, int):
            return value
    stops = stop_ids(tokenizer, model) if model is not None else []
    return stops[0] if stops else 0


def load_tokenizer(name_or_path):
    """The tokenizer alone (the finetune dataset needs no model weights)."""
    from transformers import AutoTokenizer

    from prompt.model.loading import resolve_model_path

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    except (OSError, ValueError) as exc:
        raise PPDError(f"cannot load a tokenizer from {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    return tokenizer


@cli_entry
def main(argv=None) -> str:
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    output = dataset_file_name(args.save_path, args.num_special_tokens, args.dataset_type, args.model_max_length)
    check_output_file(output, args.overwrite)  # fail before any slow work
    if args.dataset_type == "finetune":
        tokenizer = load_tokenizer(args.model_name_or_path)
        if not getattr(tokenizer, "chat_template", None):
            raise PPDError("the tokenizer has no chat template")
        records, info = build_finetune(args, tokenizer)
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_base_model(args.model_name_or_path, dtype=args.dtype, device=device)
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise PPDError("the model folder has no tokenizer with a chat template")
        if args.dataset_type == "distillation":
            records, info = build_distillation(args, model, tokenizer)
        else:
            records, info = build_self_distillation(args, model, tokenizer)
    save_dataset(output, args.dataset_type, records, num_special_tokens=args.num_special_tokens,
                 model_name_or_path=args.model_name_or_path, model_max_length=args.model_max_length,
                 overwrite=args.overwrite, info={**info, "seed": args.seed})
    print(f"wrote {len(records)} {args.dataset_type} records to {output}", file=sys.stderr)
    return output
