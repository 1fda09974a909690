"""`generate_dataset.py`: build the truncated, distillation or self-distillation dataset.

    python generate_dataset.py --dataset_type finetune --num_special_tokens 3 --data_path sharegpt.json --model_max_length 2048
    python generate_dataset.py --dataset_type distillation --num_special_tokens 3 \\
        --data_path ShareGPT_training_dataset_3_finetune_2048.pt --model_max_length 2048
    python generate_dataset.py --dataset_type self_distillation --num_special_tokens 3 \\
        --data_path ../shared/data/sharegpt/ShareGPT_V3_filtered_1000.json:0:300 ../shared/data/gsm8k/train.jsonl:0:100

Output: `{save_path}_{num_special_tokens}_{dataset_type}_{model_max_length}.pt` (see prompt.data.files). With
`--use_chunked`, a folder of that name without `.pt` instead, holding `chunk_00000.pt`, ... (each a dataset file
of `--chunk_size` inputs' records, written as soon as it is built) and `manifest.json`; an interrupted run
resumes at the first missing chunk. Train on it with `train.py --use_chunked --dataset_path FOLDER`.
With `--upstream_format`, a finetune or distillation dataset is written as upstream's generate_dataset.py writes it
(its FineTuningDataset or DistillationDataset object, under upstream's file names; see prompt.data.upstream), for
upstream's train.py. A distillation build reads our finetune file or upstream's.
A `--data_path` may carry a slice, PATH:START:END. The model defaults to the embedded default model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from prompt.cli import ArgumentParser, add_model_flags, apply_threads
from prompt.data.chat import chat_ids
from prompt.data.files import (CHUNK_MANIFEST, DATASET_TYPES, IGNORE_INDEX, canonical_model_name, check_output_file,
                               dataset_file_name, load_dataset, save_dataset)
from prompt.data.finetune import build_finetune_records
from prompt.data.generation import batches_by_length, greedy_replies, greedy_teacher
from prompt.data.sources import parse_source, read_conversations, read_prompts
from prompt.data.upstream import save_upstream_dataset, upstream_dataset, upstream_file_name
from prompt.errors import PPDError, cli_entry
from prompt.jsonio import read_json, write_json
from prompt.model.devices import add_device_flags, device_kwargs
from prompt.model.loading import load_base_model
from prompt.model.stops import stop_token_ids_for, truncate_at_stop


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_type", default="finetune", choices=DATASET_TYPES)
    parser.add_argument("--model_name_or_path", default=None,
                        help="Base model, a folder or Hub repo id (tokenizer for finetune). Default: the embedded default model.")
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
    # --dtype: bf16 is about 2x faster on CPUs with avx512_bf16; batched bf16 replies differ from float32 at a few
    # percent of positions
    add_device_flags(parser, dtype="bfloat16", underscores=True)
    parser.add_argument("--seed", type=int, default=0)
    add_model_flags(parser, model_path=None)
    parser.add_argument("--use_chunked", action="store_true",
                        help="Write a folder of chunk files as they are built (large runs; resumable).")
    parser.add_argument("--chunk_size", type=int, default=1000, help="With --use_chunked: inputs per chunk file.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output file (or chunk folder).")
    parser.add_argument("--upstream_format", action="store_true",
                        help="Write upstream's dataset file (finetune: left-padded [count, model_max_length] rows; "
                             "distillation: full [N, vocab] teacher logits per row, about N*vocab*4 bytes each) "
                             "under upstream's file name, for upstream's train.py.")
    return parser


def check_args(args) -> None:
    for name, low in (("model_max_length", 8), ("num_special_tokens", 1), ("batch_size", 1), ("max_new_tokens", 1),
                      ("top_k", 1), ("chunk_size", 1)):
        if getattr(args, name) < low:
            raise PPDError(f"--{name} must be >= {low}")
    if args.size is not None and args.size < 1:
        raise PPDError("--size must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise PPDError("--threads must be >= 1")
    if args.upstream_format and args.dataset_type == "self_distillation":
        raise PPDError("upstream has no self_distillation dataset; --upstream_format writes finetune and distillation")
    if args.upstream_format and args.use_chunked:
        raise PPDError("--upstream_format writes one file (upstream's chunk_dataset splits a whole file); drop "
                       "--use_chunked")
    if args.dataset_type == "distillation" and len(args.data_path) != 1:
        raise PPDError("distillation reads exactly one finetune dataset (--data_path X_finetune_N.pt)")


def limit(items: list, size: int | None) -> list:
    return items if size is None else items[:size]


def read_inputs(args) -> list:
    """What the records are built from: conversations (finetune), prefixes (distillation) or prompts."""
    if args.dataset_type == "finetune":
        conversations = []
        for spec in args.data_path:
            conversations.extend(read_conversations(parse_source(spec)))
        return limit(conversations, args.size)
    if args.dataset_type == "distillation":
        source = load_dataset(args.data_path[0], expected_types=("finetune",), num_special_tokens=args.num_special_tokens)
        if source.model_name_or_path and source.model_name_or_path != canonical_model_name(args.model_name_or_path):
            raise PPDError(f"{args.data_path[0]!r} was tokenized for {source.model_name_or_path!r}, not "
                           f"{canonical_model_name(args.model_name_or_path)!r}: token ids would not match")
        return [r["input_ids"][-args.model_max_length:] for r in limit(source.records, args.size)]
    prompts = []
    for spec in args.data_path:
        prompts.extend(read_prompts(parse_source(spec)))
    prompts = limit(prompts, args.size)
    if not prompts:
        raise PPDError("no prompts in --data_path")
    return prompts


def build_records(args, model, tokenizer, inputs: list, seed: int) -> tuple[list, dict]:
    if args.dataset_type == "finetune":
        return build_finetune(args, tokenizer, inputs, seed)
    if args.dataset_type == "distillation":
        return build_distillation(args, model, tokenizer, inputs)
    return build_self_distillation(args, model, tokenizer, inputs)


def no_records_error(args, count: int) -> PPDError:
    if args.dataset_type == "finetune":
        return PPDError(f"none of the {count} conversations has an assistant reply of at least "
                        f"{args.num_special_tokens + 2} tokens to cut (a prompt-only file needs --dataset_type "
                        "self_distillation)")
    if args.dataset_type == "distillation":
        return PPDError(f"{args.data_path[0]!r} gave no records")
    return PPDError("no prompt produced a reply long enough to train on")


def build_finetune(args, tokenizer, conversations: list, seed: int) -> tuple[list, dict]:
    records, skipped = build_finetune_records(tokenizer, conversations, args.num_special_tokens, args.model_max_length,
                                              seed)
    return records, {"conversations": len(conversations), "skipped": skipped}


def build_distillation(args, model, tokenizer, prefixes: list) -> tuple[list, dict]:
    steps = args.num_special_tokens + 1
    vocab = model.get_input_embeddings().weight.shape[0]
    largest = max(int(p.max()) for p in prefixes)
    if largest >= vocab:  # an upstream finetune file does not say which tokenizer made it
        raise PPDError(f"{args.data_path[0]!r} holds token id {largest}, outside the model's vocabulary of {vocab}: "
                       f"it was tokenized for another model")
    stops = set(stop_token_ids_for(tokenizer, model=model))
    records = []
    for batch in tqdm(batches_by_length(prefixes, args.batch_size), desc="teacher", unit="batch"):
        outputs = greedy_teacher(model, [prefixes[i] for i in batch], steps, args.top_k, pad_id(tokenizer, model))
        for i, (tokens, top_ids, top_probs) in zip(batch, outputs):
            records.append((i, distillation_record(prefixes[i], tokens, top_ids, top_probs, stops)))
    records = [record for _, record in sorted(records, key=lambda pair: pair[0])]
    return records, {"source": args.data_path[0], "top_k": args.top_k}


def distillation_record(prefix, tokens, top_ids, top_probs, stops) -> dict:
    """A distillation record; labels after the first stop token of the continuation are IGNORE_INDEX."""
    labels = tokens.clone()
    labels[len(truncate_at_stop(tokens.tolist(), stops)):] = IGNORE_INDEX
    return {"input_ids": prefix.clone(), "continuation": tokens, "labels": labels,
            "teacher_ids": top_ids.to(torch.int32), "teacher_probs": top_probs.float()}


def build_self_distillation(args, model, tokenizer, prompts: list) -> tuple[list, dict]:
    room = args.model_max_length - args.max_new_tokens
    encoded = [torch.tensor(chat_ids(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True))
               for p in prompts]
    usable = [i for i, ids in enumerate(encoded) if len(ids) <= room]
    stops, pad = stop_token_ids_for(tokenizer, model=model), pad_id(tokenizer, model)
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
    info = {"prompts": len(prompts), "too_long": len(prompts) - len(usable), "short_replies": len(usable) - len(records),
            "generated_tokens": generated, "max_new_tokens": args.max_new_tokens, "dtype": args.dtype,
            "sources": list(args.data_path)}
    return [records[i] for i in sorted(records)], info


def pad_id(tokenizer, model) -> int:
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(model.config, "pad_token_id", None) if model else None):
        if isinstance(value, int):
            return value
    stops = stop_token_ids_for(tokenizer, model=model) if model is not None else []
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
    apply_threads(args.threads)
    torch.manual_seed(args.seed)
    output = dataset_file_name(args.save_path, args.num_special_tokens, args.dataset_type, args.model_max_length)
    if args.upstream_format:
        output = upstream_file_name(args.save_path, args.num_special_tokens, args.dataset_type, args.model_max_length,
                                    canonical_model_name(args.model_name_or_path))
    if args.use_chunked:
        output = output[: -len(".pt")]
        done = prepare_chunk_folder(output, manifest_of(args), args.overwrite)  # fail before any slow work
    else:
        check_output_file(output, args.overwrite)
    inputs = read_inputs(args)
    model = None
    if args.dataset_type == "finetune":
        tokenizer = load_tokenizer(args.model_name_or_path)
        if not getattr(tokenizer, "chat_template", None):
            raise PPDError("the tokenizer has no chat template")
    else:
        model, tokenizer = load_base_model(args.model_name_or_path, **device_kwargs(args))
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise PPDError("the model folder has no tokenizer with a chat template")
    if args.use_chunked:
        return write_chunks(args, model, tokenizer, inputs, output, done)
    records, info = build_records(args, model, tokenizer, inputs, args.seed)
    if not records:
        raise no_records_error(args, len(inputs))
    if args.upstream_format:
        vocab = model.get_output_embeddings().weight.shape[0] if model is not None else None
        dataset = upstream_dataset(args.dataset_type, records, args.num_special_tokens, args.model_max_length,
                                   pad_id(tokenizer, model), vocab)
        check_output_file(output, args.overwrite)  # again: the file may have appeared during the build
        save_upstream_dataset(output, dataset)
    else:
        save(args, output, records, {**info, "seed": args.seed}, args.overwrite)
    print(f"wrote {len(records)} {args.dataset_type} records to {output}", file=sys.stderr)
    return output


def save(args, path: str, records: list, info: dict, overwrite: bool) -> None:
    save_dataset(path, args.dataset_type, records, num_special_tokens=args.num_special_tokens,
                 model_name_or_path=args.model_name_or_path, model_max_length=args.model_max_length,
                 overwrite=overwrite, info=info)


# --------------------------------------------------------------------------------------------------
# chunked output
MANIFEST = CHUNK_MANIFEST
PROGRESS_KEYS = ("done", "chunks", "records")  # manifest fields that a build fills in as it goes


def chunk_name(index: int) -> str:
    return f"chunk_{index:05d}.pt"


def manifest_of(args) -> dict:
    """What decides a chunked build's content: a folder resumes only a build with the same manifest."""
    return {"dataset_type": args.dataset_type, "model_name_or_path": canonical_model_name(args.model_name_or_path),
            "data_path": list(args.data_path), "num_special_tokens": args.num_special_tokens,
            "model_max_length": args.model_max_length, "size": args.size, "chunk_size": args.chunk_size,
            "max_new_tokens": args.max_new_tokens, "top_k": args.top_k, "dtype": args.dtype, "seed": args.seed,
            "done": []}


def prepare_chunk_folder(folder: str, manifest: dict, overwrite: bool) -> list:
    """Create the folder, or find which chunks of this same build it already holds; returns their indices.

    A folder of another build is refused without --overwrite, which removes its chunks and manifest first.
    """
    if os.path.isfile(folder):
        raise PPDError(f"output {folder!r} is a file, not a chunk folder")
    path = os.path.join(folder, MANIFEST)
    if os.path.isdir(folder) and os.listdir(folder):
        if not overwrite:
            if not os.path.isfile(path):
                raise PPDError(f"output folder {folder!r} exists and is not a chunked dataset; pass --overwrite "
                               "to replace its chunks, or choose another --save_path")
            try:
                with open(path, encoding="utf-8") as f:
                    saved = json.load(f)
            except (OSError, ValueError) as exc:
                raise PPDError(f"cannot read {path}: {exc}") from None
            if ({k: v for k, v in saved.items() if k not in PROGRESS_KEYS}
                    != {k: v for k, v in manifest.items() if k not in PROGRESS_KEYS}):
                raise PPDError(f"{folder!r} holds chunks of a different build; pass --overwrite to replace them")
            return list(saved.get("done", []))
        for name in os.listdir(folder):
            if name == MANIFEST or (name.startswith("chunk_") and name.endswith(".pt")):
                os.remove(os.path.join(folder, name))
    os.makedirs(folder, exist_ok=True)
    write_manifest(folder, manifest)
    return []


def write_manifest(folder: str, manifest: dict) -> None:
    write_json(os.path.join(folder, MANIFEST), manifest)


def write_chunks(args, model, tokenizer, inputs: list, folder: str, done: list) -> str:
    """Build and save each chunk of `chunk_size` inputs in turn, skipping those already done."""
    count = (len(inputs) + args.chunk_size - 1) // args.chunk_size
    counts = {}
    if os.path.isfile(os.path.join(folder, MANIFEST)):  # records of the chunks an interrupted run finished
        counts = read_json(os.path.join(folder, MANIFEST), "chunk manifest").get("records", {})
    manifest = {**manifest_of(args), "done": sorted(done), "chunks": count,
                "records": {key: n for key, n in counts.items() if int(key) in done}}
    write_manifest(folder, manifest)  # how many chunks the folder will hold, before the first is built
    written = 0
    for index in range(count):
        if index in manifest["done"]:
            continue
        part = inputs[index * args.chunk_size: (index + 1) * args.chunk_size]
        records, info = build_records(args, model, tokenizer, part, args.seed + index)
        if records:  # a chunk without records leaves no file
            # a chunk file of this build left by an interrupted run is replaced
            save(args, os.path.join(folder, chunk_name(index)), records,
                 {**info, "seed": args.seed + index, "chunk": index}, overwrite=True)
            written += len(records)
        manifest["done"] = sorted(manifest["done"] + [index])
        manifest["records"][str(index)] = len(records)
        write_manifest(folder, manifest)
        print(f"chunk {index + 1}/{count}: {len(records)} records", file=sys.stderr)
    if not any(name.startswith("chunk_") for name in os.listdir(folder)):
        raise no_records_error(args, len(inputs))
    print(f"wrote {written} {args.dataset_type} records in chunks to {folder} "
          f"({len(done)} chunk(s) were already there)", file=sys.stderr)
    return folder
