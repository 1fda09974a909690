"""Batched decoding against its baselines, per batch size, in one process; with --record, the tuner of the batch
dimension (the best tree and lookup per batch size, written into the checkpoint's decoding.json).

    python -m prompt.evaluation.batching --dtype bfloat16 --bench-name mt_bench \\
        --question-file ../shared/data/mt_bench/question.jsonl --batch-sizes 1,2,4,8,16 --max-new-tokens 96

For each batch size B the first B prompts (first turns) are decoded together by each method, the methods
interleaved and rotated over `--rounds` rounds so that machine noise hits them alike:
- generate: transformers `generate` greedy on the left-padded batch (the reference of the ratios);
- plain: our running batch without prompt tokens;
- ppd_tuned: our running batch with the single-sequence tuned decoding (tree and lookup of decoding.json);
- ppd_L (each --tree-lengths L, 0 meaning plain with lookup) with --lookup-lengths K: candidates for the best;
- batch_tuned: the decoding recorded per batch size (decoding.json `batch_sizes`), where there is one;
- sequential: the tuned decoding one prompt at a time (batch of one), whose tokens/s is the same at every B.
Aggregate tokens/s counts each row's new tokens up to its stop token; accept length is new tokens per forward
(prefill included). Memory per sequence: KV-cache bytes allocated at the batch's peak between steps (stale slots
of shorter rows and the growing cache's spare slots included), divided by its rows; for generate and sequential, the
longest row's prompt and new tokens. With --record the best candidate of each batch size from 2 is recorded (tune on
prompts that are not evaluation sets, e.g. ShareGPT); a batch of one row decodes with the single-sequence decoding.
"""
from __future__ import annotations

import time

import torch

from prompt.cli import ArgumentParser, add_model_flags, apply_threads
from prompt.errors import PPDError, cli_entry
from prompt.evaluation.chat import ChatFormatter
from prompt.evaluation.questions import BENCH_NAMES, EVALUATION_BENCHES, load_questions
from prompt.evaluation.tune import check_tree_lengths, machine_name, parse_lengths
from prompt.inference.choice import (
    BATCH_SIZES_KEY,
    DECODING_NAME,
    checkpoint_file,
    tuned_decoding,
)
from prompt.inference.cost_profile import fingerprint, fingerprint_key
from prompt.inference.decoding import Decoder
from prompt.jsonio import read_json, write_json
from prompt.model.defaults import checkpoint_folder, load_prompt_decoder
from prompt.model.devices import add_device_flags, device_kwargs, synchronize


def kv_bytes_per_slot(base) -> int:
    """Bytes one cache slot (one token of one sequence) takes over all layers."""
    config = base.config.get_text_config(decoder=True)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = base.get_input_embeddings().weight.element_size()
    return 2 * config.num_hidden_layers * heads * head_dim * element


def new_tokens(row: list, stops) -> int:
    """New tokens of a generated row up to and including its first stop token."""
    for i, token in enumerate(row):
        if token in stops:
            return i + 1
    return len(row)


class HFBatch:
    """transformers `generate` greedy over a left-padded batch."""

    def __init__(self, model, stops, pad_id: int):
        self.model, self.stops, self.pad_id = model, list(stops), pad_id

    def run(self, prompts: list, max_new_tokens: int):
        width = max(map(len, prompts))
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        synchronize(self.model.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=self.stops or None, pad_token_id=self.pad_id)
        synchronize(self.model.device)
        seconds = time.perf_counter() - start
        rows = [row[:new_tokens(row, self.stops)] for row in out[:, width:].tolist()]
        return rows, seconds, None, out.shape[1]  # every row holds the padded width plus the new tokens


class OurBatch:
    """A Decoder's running batch (or, `sequential`, one prompt at a time). `run` returns (rows, seconds, forward
    passes, peak cache slots per sequence)."""

    def __init__(self, decoder, sequential: bool = False, setting=None):
        self.decoder, self.sequential, self.setting = decoder, sequential, setting

    def run(self, prompts: list, max_new_tokens: int):
        synchronize(self.decoder.device)
        start = time.perf_counter()
        if self.sequential:
            results = [self.decoder.generate(torch.tensor([p]), max_new_tokens) for p in prompts]
            slots = max(len(p) + r.new_tokens for p, r in zip(prompts, results))  # one sequence at a time
        else:
            batch = self.decoder.batch(self.setting, expected_rows=len(prompts))
            states = [batch.add(p, max_new_tokens) for p in prompts]
            while len(batch):
                batch.step()
            results, slots = [s.result for s in states], batch.peak_slots / len(prompts)
        synchronize(self.decoder.device)
        seconds = time.perf_counter() - start
        passes = sum(r.forward_passes for r in results)
        return [r.token_ids for r in results], seconds, passes, slots


def build_methods(model, stops, pad_id, tree_lengths, lookup_lengths, batch_tuned: bool) -> dict:
    base = model.base_model
    methods = {"generate": HFBatch(base, stops, pad_id),
               "plain": OurBatch(Decoder(base, stop_token_ids=stops)),
               "ppd_tuned": OurBatch(Decoder(model, stop_token_ids=stops, tree_length=tuned_length(model),
                                             prompt_lookup_num_tokens=tuned_lookup(model)))}
    for length in tree_lengths:
        for lookup in lookup_lengths:
            if not length and not lookup:
                continue  # that is "plain"
            target = model if length else base
            kwargs = {"tree_length": length} if length else {}
            methods[f"ppd_{length}_lookup_{lookup}"] = OurBatch(Decoder(target, stop_token_ids=stops,
                                                                        prompt_lookup_num_tokens=lookup, **kwargs))
    if batch_tuned:
        methods["batch_tuned"] = OurBatch(Decoder(model, stop_token_ids=stops))
    methods["sequential"] = OurBatch(Decoder(model, stop_token_ids=stops), sequential=True)
    return methods


def tuned_length(model) -> int:
    return tuned_decoding(model, str(model.dtype).replace("torch.", "")).get("tree_length", 0) or 0


def tuned_lookup(model) -> int:
    return tuned_decoding(model, str(model.dtype).replace("torch.", "")).get("prompt_lookup_num_tokens", 0) or 0


def candidate_config(name: str):
    """(tree length, lookup) of a candidate method name, or None for the others."""
    if name == "plain":
        return (0, 0)
    if name.startswith("ppd_") and "_lookup_" in name:
        length, lookup = name[4:].split("_lookup_")
        return int(length), int(lookup)
    return None


def measure(methods: dict, prompts: list, batch_sizes: list, max_new_tokens: int, rounds: int, log=print) -> dict:
    """{batch size: {method: totals}}: tokens, seconds, forward passes, peak cache slots per sequence, identical rows
    (to generate)."""
    results = {}
    names = list(methods)
    for size in batch_sizes:
        group = prompts[:size]
        totals = {name: {"tokens": 0, "seconds": 0.0, "passes": 0, "slots": 0, "identical": 0, "rows": 0}
                  for name in names}
        for round_index in range(rounds):
            order = names[round_index % len(names):] + names[: round_index % len(names)]
            reference = None
            outputs = {}
            for name in order:
                rows, seconds, passes, slots = methods[name].run(group, max_new_tokens)
                outputs[name] = rows
                entry = totals[name]
                entry["tokens"] += sum(map(len, rows))
                entry["seconds"] += seconds
                entry["passes"] += passes or 0
                entry["slots"] = max(entry["slots"], slots)
            reference = outputs["generate"]
            for name, rows in outputs.items():
                totals[name]["identical"] += sum(a == b for a, b in zip(rows, reference))
                totals[name]["rows"] += len(rows)
        results[size] = totals
        log(f"batch size {size}: " + ", ".join(
            f"{name} {t['tokens'] / max(t['seconds'], 1e-9):.1f}" for name, t in totals.items()) + " tokens/s")
    return results


def table(results: dict, bytes_per_slot: int) -> str:
    names = list(next(iter(results.values())))
    lines = ["| batch | method | tokens/s (all rows) | x generate | x sequential PPD | accept length | "
             "KV MB per sequence | rows identical to generate |", "|---|---|---|---|---|---|---|---|"]
    for size, totals in results.items():
        speed = {n: t["tokens"] / max(t["seconds"], 1e-9) for n, t in totals.items()}
        best = max((n for n in names if candidate_config(n) is not None), key=lambda n: speed[n], default=None)
        for name in names:
            t = totals[name]
            accept = f"{t['tokens'] / t['passes']:.2f}" if t["passes"] else "n.a."
            label = f"**{name}** (best)" if name == best else name
            lines.append(f"| {size} | {label} | {speed[name]:.1f} | {speed[name] / speed['generate']:.2f} | "
                         f"{speed[name] / speed['sequential']:.2f} | {accept} | "
                         f"{t['slots'] * bytes_per_slot / 2**20:.1f} | {t['identical']}/{t['rows']} |")
    return "\n".join(lines)


def best_per_size(results: dict) -> dict:
    """{batch size: (tree length, lookup, tokens/s)} of the fastest candidate."""
    chosen = {}
    for size, totals in results.items():
        candidates = {candidate_config(n): t["tokens"] / max(t["seconds"], 1e-9)
                      for n, t in totals.items() if candidate_config(n) is not None}
        config = max(candidates, key=candidates.get)
        chosen[size] = (*config, candidates[config])
    return chosen


def record(model, dtype: str, chosen: dict, command: str) -> str:
    path = checkpoint_file(model, DECODING_NAME)
    if path is None:
        raise PPDError(f"the checkpoint has no {DECODING_NAME} to record into: run prompt.evaluation.tune first")
    data = read_json(path, "tuned decoding file")
    if dtype not in data:
        raise PPDError(f"{path} has no {dtype} entry: run prompt.evaluation.tune --dtype {dtype} first")
    # sizes from 2: a batch of one row decodes as one sequence, with the decoding `tune` chose on more prompts
    data[dtype][BATCH_SIZES_KEY] = {
        str(size): {"tree_length": length, "prompt_lookup_num_tokens": lookup, "tokens_per_second": round(speed, 2),
                    "command": command, "machine": machine_name(), "date": time.strftime("%Y-%m-%d"),
                    "fingerprint": fingerprint_key(fingerprint(model.base_model.device))}
        for size, (length, lookup, speed) in sorted(chosen.items()) if size > 1}
    write_json(path, data, sort_keys=True)
    return path


@cli_entry
def main(argv=None):
    import argparse
    import sys

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser)
    parser.add_argument("--base-model-path", default=None)
    add_device_flags(parser, dtype="bfloat16")
    parser.add_argument("--bench-name", default="mt_bench", choices=BENCH_NAMES)
    parser.add_argument("--question-file", default=None)
    parser.add_argument("--question-begin", type=int, default=None)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--tree-lengths", default="6,10,16", help="Candidate trees (0: no prompt tokens).")
    parser.add_argument("--lookup-lengths", default="0", help="Candidate prompt-lookup lengths (0: off).")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--record", action="store_true", help="Record the best candidate per batch size (from 2) into "
                        "the checkpoint's decoding.json (tune on prompts that are not evaluation sets).")
    parser.add_argument("--output", default=None, help="Also write the markdown table here.")
    args = parser.parse_args(argv)
    sizes = parse_lengths(args.batch_sizes, "--batch-sizes")
    lengths = parse_lengths(args.tree_lengths, "--tree-lengths")
    lookups = parse_lengths(args.lookup_lengths, "--lookup-lengths")
    if min(sizes) < 1 or args.max_new_tokens < 1 or args.rounds < 1:
        raise PPDError("--batch-sizes, --max-new-tokens and --rounds must be >= 1")
    if args.record and args.bench_name in EVALUATION_BENCHES:
        raise PPDError(f"--record tunes on the prompts given: use training-side prompts (e.g. --bench-name sharegpt), "
                       f"not the {args.bench_name} evaluation set")
    apply_threads(args.threads)
    questions = load_questions(args.bench_name, args.question_file, args.question_begin,
                               (args.question_begin or 0) + max(sizes))
    if len(questions) < max(sizes):
        raise PPDError(f"batch size {max(sizes)} needs {max(sizes)} questions; the selection has {len(questions)}")
    model = load_prompt_decoder(args.model_path, args.base_model_path, **device_kwargs(args)).eval()
    check_tree_lengths(model, lengths)
    formatter = ChatFormatter(model.tokenizer)
    prompts = [formatter.input_ids(q["turns"][:1])[0].tolist() for q in questions]
    stops = formatter.stops(model)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else stops[0]
    batch_tuned = bool(tuned_decoding(model, args.dtype).get(BATCH_SIZES_KEY))
    methods = build_methods(model, stops, pad, lengths, lookups, batch_tuned)
    print(f"{machine_name()}; {args.dtype}; {checkpoint_folder(args.model_path)}; {len(methods)} methods; "
          f"{args.max_new_tokens} new tokens; warming up", flush=True)
    measure(methods, prompts, [min(sizes)], 8, 1, log=lambda _: None)  # warm-up
    results = measure(methods, prompts, sizes, args.max_new_tokens, args.rounds)
    text = table(results, kv_bytes_per_slot(model.base_model))
    print(text)
    chosen = best_per_size(results)
    for size, (length, lookup, speed) in chosen.items():
        print(f"best at batch size {size}: tree {length or 'none'}, lookup {lookup or 'off'} ({speed:.1f} tokens/s)")
    if args.output:
        from prompt.jsonio import write_text

        write_text(args.output, text + "\n")
    if args.record:
        command = "python -m prompt.evaluation.batching " + " ".join(sys.argv[1:] if argv is None else argv)
        print(f"recorded into {record(model, args.dtype, chosen, command)}")


if __name__ == "__main__":
    main()
