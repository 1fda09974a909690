"""Which decoding a Decoder runs: one function, one precedence.

A checkpoint folder may carry four inference files beside its weights:
- `trees.json`: sparse trees built for these prompt tokens, keyed by tree length (upstream's `--tree-length`: the
  candidate nodes plus their special tokens, `prompt.inference.budget.tree_length`);
- `accuracies.json`: the prompt tokens' measured top-k accuracies (`prompt.evaluation.accuracy`), from which a
  tree of a length that no tree file holds is built on the spot;
- `acceptance.json`: what the prompt tokens and context sources accept, whatever the machine
  (`prompt.evaluation.tune --acceptance`): per acceptance rule, each configuration's accept length and mean inputs
  per verify forward, `{rule: {"configs": [{tree_length, prompt_lookup_num_tokens, suffix_nodes, accept_length,
  inputs_per_step}], ...}}`;
- `decoding.json`: the decoding tuned end to end on one machine for each dtype (`prompt.evaluation.tune`):
  `{dtype: {"tree_length": L (0: no prompt tokens), "prompt_lookup_num_tokens": K (0: off),
  "suffix_nodes": S (the suffix candidate tree's node budget, 0 or absent: off), "fingerprint": ...}}`, tuned for
  greedy decoding; an entry may hold one more object per sampling acceptance rule, tuned at a temperature above 0,
  e.g. `{"bfloat16": {"tree_length": 16, ..., "exact": {"tree_length": 32, "prompt_lookup_num_tokens": 0,
  "temperature": 0.7, ...}}}`. An entry's `batch_sizes` object holds the decodings tuned per batch size
  (`tuned_batch_decodings`).

`resolve_decoding` takes each of the two choices, the tree and the prompt-lookup length, from the first of:
1. the caller's argument (`tree_spec` or `tree_length` for the tree, 0 meaning no prompt tokens;
   `prompt_lookup_num_tokens` for the lookup, 0 meaning off);
2. the checkpoint's `decoding.json` entry for the model's dtype (the acceptance rule's own where it records one)
   when it was tuned on this machine (its fingerprint: CPU or GPU, ISA limits, threads, torch);
3. the configuration of `acceptance.json` (for the rule; restricted to the caller's tree or lookup length where
   one is given) predicted fastest on this machine's cost profile (`prompt.inference.cost_profile`: measured here,
   else the one shipped beside the checkpoint): accept length x cost(1 input) / cost(inputs per step), plain
   decoding unless another is predicted `MIN_PREDICTED_GAIN` times faster;
4. the `decoding.json` entry tuned on another machine, where the checkpoint records no acceptance to choose from;
5. the default: upstream's default tree for a published upstream checkpoint, else the largest tree of the tree
   file; no lookup.
`DecodingChoice.reason` says which, in one line (the demo, the answer scripts and the web UI print it).
The suffix candidate tree follows the lookup: from the choice of 2-4 where the caller passes no lookup length,
else off (a caller who wants it passes a `SuffixCandidates` source).
The tree file is the checkpoint's `trees.json`, else the upstream trees shipped for its family (picked by name, as
upstream does: `prompt.inference.tree.upstream_tree_file`), else the packaged default trees. A length the tree file
lacks is built from the checkpoint's `accuracies.json` (`prompt.inference.sparse_tree_builder.build_tree`, well
under a second). A plain causal LM (no prompt tokens) decodes without a tree. Tree files are read once per file
version, so building a Decoder per request is cheap; `DecodingChoice.tree_source` says which tree was used.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace

import torch

from prompt.errors import PPDError
from prompt.inference.cost_profile import (
    PROFILE_BATCH_SIZES,
    CostProfile,
    fingerprint,
    fingerprint_key,
    machine_profile,
    native_bfloat16,
)
from prompt.inference.tree import (
    DEFAULT_TREE_FILE,
    select_tree_spec,
    specs_by_length,
    upstream_tree_file,
)
from prompt.jsonio import read_json
from prompt.model.devices import resolve_device
from prompt.model.weight_layout import STANDARD, TRANSPOSED

TREES_NAME = "trees.json"
DECODING_NAME = "decoding.json"
ACCURACIES_NAME = "accuracies.json"
ACCEPTANCE_NAME = "acceptance.json"


def profile_dtypes(device=None) -> list[str]:
    """The dtypes a decoding may run in on `device` when the user fixes none: float32 and bfloat16 on a CPU, float16
    and bfloat16 on a GPU (bfloat16 where it is supported)."""
    if resolve_device(device) == "cpu":
        return ["float32", "bfloat16"]
    return ["float16"] + (["bfloat16"] if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else [])


def checkpoint_file(model, name: str) -> str | None:
    """`name` inside the folder `model` (a PromptDecoder) was loaded from, if that file exists."""
    folder = getattr(model, "checkpoint_dir", None)
    path = os.path.join(folder, name) if folder else None
    return path if path and os.path.isfile(path) else None


def tree_file(model) -> str | None:
    """The checkpoint's own trees (trees.json), if it has them."""
    return checkpoint_file(model, TREES_NAME)


def tuned_decoding(model, dtype: str, sampling: str | None = None) -> dict:
    """The decoding recorded for `model`'s prompt tokens in `dtype` by `prompt.evaluation.tune` ({} if none): the
    entry for the acceptance rule `sampling` where the dtype's entry holds one, else the dtype's (greedy) entry."""
    path = checkpoint_file(model, DECODING_NAME)
    if not path:
        return {}
    data = read_json(path, "tuned decoding file")
    entry = data.get(dtype) if isinstance(data, dict) else None
    if entry is not None and not isinstance(entry, dict):
        raise PPDError(f"{path}: the entry for {dtype} is not an object {{tree_length, prompt_lookup_num_tokens}}")
    entry = entry or {}
    if sampling and sampling != "greedy" and sampling in entry:
        if not isinstance(entry[sampling], dict):
            raise PPDError(f"{path}: the {sampling} entry for {dtype} is not an object "
                           f"{{tree_length, prompt_lookup_num_tokens}}")
        return entry[sampling]
    return entry


def trees_for(model) -> tuple[str | None, int | None]:
    """The tree file a Decoder for `model` reads (None: the generic chain tree) and the tree length to use when none
    is asked for (None: the file's largest): the checkpoint's trees.json, else the upstream trees of its family,
    else the packaged default."""
    own = tree_file(model)
    if own:
        return own, None
    config = model.config
    names = (getattr(model, "checkpoint_dir", None), config.base_model_name_or_path,
             getattr(getattr(model, "base_model", None), "name_or_path", None))
    upstream = upstream_tree_file(names, config.num_special_tokens)
    if upstream:
        return upstream
    return (DEFAULT_TREE_FILE if config.num_special_tokens == 3 else None), None


@dataclass(frozen=True)
class DecodingChoice:
    tree_spec: dict | None  # None: no prompt tokens
    prompt_lookup_num_tokens: int
    suffix_nodes: int = 0  # node budget of the suffix candidate tree (0: off)
    tree_source: str | None = None  # which tree, in words (None: no tree, or the caller's own spec)
    reason: str | None = None  # why this decoding, in one line (None: the caller fixed it)
    weight_layout: str = STANDARD  # the base model's weight layout its single sequences run in (weight_layout.py)
    # the cost of a verify forward of i + 1 inputs over one input's, on this machine in `weight_layout`: where given
    # (and no tree), each step's context draft is cut to the depth that pays (prompt.inference.draft_depth)
    input_costs: tuple = ()


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PPDError(f"{name} must be an integer >= 0 (0: off), got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------------------
# the choice from what the prompt tokens accept (the checkpoint's) and what a forward costs (the machine's)
MIN_PREDICTED_GAIN = 1.05  # proposals must be predicted this much faster than plain decoding: per-step host work
# (building the tree, reading back) is not in the profile's forward costs


@dataclass(frozen=True)
class Predicted:
    """One configuration of acceptance.json priced on a cost profile."""

    tree_length: int
    prompt_lookup_num_tokens: int
    suffix_nodes: int
    accept_length: float  # tokens per verify step (1: plain decoding)
    inputs_per_step: float  # mean inputs of its verify forwards
    speedup: float  # predicted tokens/s over plain decoding's (standard weight layout) on the profile
    layout: str = STANDARD  # the weight layout it is priced in

    @property
    def plain(self) -> bool:
        return not (self.tree_length or self.prompt_lookup_num_tokens or self.suffix_nodes)

    def name(self) -> str:
        parts = ([f"tree {self.tree_length}"] if self.tree_length else []) + \
            ([f"lookup {self.prompt_lookup_num_tokens}"] if self.prompt_lookup_num_tokens else []) + \
            ([f"suffix {self.suffix_nodes}"] if self.suffix_nodes else [])
        return (" + ".join(parts) or "plain decoding") + (", weights transposed" if self.layout == TRANSPOSED else "")


def acceptance_configs(model, rule: str = "greedy") -> list[dict]:
    """The configurations `prompt.evaluation.tune --acceptance` measured for the acceptance rule `rule` (its
    acceptance.json; [] without one or without this rule)."""
    path = checkpoint_file(model, ACCEPTANCE_NAME)
    if not path:
        return []
    return list(_acceptance_table(path, os.stat(path).st_mtime_ns).get(rule, ()))


@functools.lru_cache(maxsize=16)
def _acceptance_table(path: str, stamp) -> dict:
    data = read_json(path, "acceptance file")
    if not isinstance(data, dict):
        raise PPDError(f"{path} is not an acceptance file (expected a JSON object {{rule: {{configs: [...]}}}})")
    table = {}
    for rule, entry in data.items():
        configs = entry.get("configs") if isinstance(entry, dict) else None
        if not isinstance(configs, list):
            raise PPDError(f"{path}: the {rule!r} entry has no list of configs")
        rows = []
        for i, row in enumerate(configs):
            try:
                rows.append({"tree_length": _count(row["tree_length"], "tree_length"),
                             "prompt_lookup_num_tokens": _count(row["prompt_lookup_num_tokens"],
                                                                "prompt_lookup_num_tokens"),
                             "suffix_nodes": _count(row.get("suffix_nodes", 0), "suffix_nodes"),
                             "accept_length": float(row["accept_length"]),
                             "inputs_per_step": float(row["inputs_per_step"])})
            except (KeyError, TypeError, ValueError, PPDError) as exc:
                raise PPDError(f"{path}: config {i} of {rule!r} is not {{tree_length, prompt_lookup_num_tokens, "
                               f"suffix_nodes, accept_length, inputs_per_step}} ({exc})") from None
            if rows[-1]["accept_length"] < 1 or rows[-1]["inputs_per_step"] < 1:
                raise PPDError(f"{path}: config {i} of {rule!r} has an accept length or inputs per step below 1")
        table[rule] = tuple(rows)
    return table


def predictions(configs, profile: CostProfile, rows: int = 1) -> list[Predicted]:
    """Every configuration priced on `profile` for a batch of `rows` sequences in each weight layout the profile
    measured (one sequence only), best first; plain decoding (1 token and 1 input per step) is always among them.
    Predicted speed over plain decoding in the standard layout = accept length x cost(1 input) / cost(inputs per
    step, layout)."""
    one = profile.cost(1, rows)
    layouts = profile.layouts if rows <= 1 else (STANDARD,)
    plain = {"tree_length": 0, "prompt_lookup_num_tokens": 0, "suffix_nodes": 0, "accept_length": 1.0,
             "inputs_per_step": 1.0}
    priced = {}
    for c in [plain] + [c for c in configs if c["tree_length"] or c["prompt_lookup_num_tokens"] or c["suffix_nodes"]]:
        key = (c["tree_length"], c["prompt_lookup_num_tokens"], c["suffix_nodes"])
        for layout in layouts:
            priced[key + (layout,)] = Predicted(*key, c["accept_length"], c["inputs_per_step"],
                                                c["accept_length"] * one / profile.cost(c["inputs_per_step"], rows,
                                                                                        layout), layout)
    return sorted(priced.values(), key=lambda p: (-p.speedup, p.inputs_per_step, p.layout != STANDARD))


def best_prediction(ranked: list[Predicted]) -> Predicted:
    """The configuration predicted fastest among `ranked` (`predictions`); plain decoding (in its faster layout)
    unless another is predicted at least `MIN_PREDICTED_GAIN` times faster than that."""
    plain = next(p for p in ranked if p.plain)
    return ranked[0] if ranked[0].speedup >= plain.speedup * MIN_PREDICTED_GAIN else plain


def same_machine(entry: dict, model) -> bool:
    """Whether a tuned entry was recorded on this machine (its fingerprint, with this thread count)."""
    print_ = entry.get("fingerprint")
    return bool(print_) and print_ == fingerprint_key(fingerprint(input_device(model)))


def input_device(model) -> torch.device:
    """Where `model`'s (or its base model's) input embeddings live: the device the decode loop's buffers go to."""
    base = model.base_model if hasattr(model, "prompt_embeddings") else model
    return base.get_input_embeddings().weight.device


def predicted_decoding(model, rule: str = "greedy", profile: CostProfile | None = None, rows: int = 1,
                       tree_length: int | None = None, prompt_lookup_num_tokens: int | None = None):
    """(the best configuration of the checkpoint's acceptance.json on this machine's profile, the reason in one
    line), restricted to the given tree length or lookup length; None where the checkpoint records no acceptance for
    `rule`, no profile is found, or no configuration fits the restriction."""
    configs = acceptance_configs(model, rule)
    if tree_length is not None:
        configs = [c for c in configs if c["tree_length"] == tree_length]
    if prompt_lookup_num_tokens is not None:  # the caller's lookup: the suffix tree follows it (off)
        configs = [c for c in configs if c["prompt_lookup_num_tokens"] == prompt_lookup_num_tokens
                   and not c["suffix_nodes"]]
    if rows > 1:  # a running batch proposes from the prompt tokens and the prompt lookup
        configs = [c for c in configs if not c["suffix_nodes"]]
    if not configs:
        return None
    profile = profile if profile is not None else machine_profile(model, measure=False)
    if profile is None:
        return None
    ranked = predictions(configs, profile, rows)
    best = best_prediction(ranked)
    where = "this machine" if not profile.shipped else "the shipped " + profile.describe()
    batch = f" for batches of {rows}" if rows > 1 else ""
    if best.plain:
        runner_up = next((p for p in ranked if not p.plain), None)
        why = f" (best other: {runner_up.name()} at {runner_up.speedup:.2f}x)" if runner_up else ""
        gain = f", predicted {best.speedup:.2f}x the standard layout" if best.layout != STANDARD else ""
        reason = f"{best.name()}{batch}: nothing predicted to pay on {where}{why}{gain}"
    else:
        reason = (f"{best.name()}{batch}: predicted {best.speedup:.2f}x plain decoding on {where} "
                  f"(accept length {best.accept_length:.2f}, {best.inputs_per_step:.0f} inputs per step)")
    if not profile.shipped:
        reason += f", profile of {profile.date}"
    return best, reason


def resolve_decoding(model, tree_spec=None, tree_length=None, prompt_lookup_num_tokens=None,
                     sampling: str | None = None, profile: CostProfile | None = None) -> DecodingChoice:
    """The tree and lookup length a Decoder for `model` runs, by the precedence in this module's docstring
    (`sampling`: the acceptance rule's name; `profile`: the cost profile to price configurations on, default
    `machine_profile(model)`)."""
    has_prompt_tokens = hasattr(model, "prompt_embeddings")
    tuned, reason, lookup_chosen = {}, None, prompt_lookup_num_tokens is None
    if has_prompt_tokens and (tree_spec is None and tree_length is None or prompt_lookup_num_tokens is None):
        tuned, reason = _chosen_entry(model, tree_spec, tree_length, prompt_lookup_num_tokens, sampling, profile)
    suffix, layout = 0, tuned.get("weight_layout", STANDARD)
    if prompt_lookup_num_tokens is None:
        prompt_lookup_num_tokens = tuned.get("prompt_lookup_num_tokens", 0)
        suffix = _count(tuned.get("suffix_nodes", 0), f"suffix_nodes in {DECODING_NAME}")
    lookup = _count(prompt_lookup_num_tokens, "prompt_lookup_num_tokens")
    if tree_length is not None:
        _count(tree_length, "tree_length")
    if not has_prompt_tokens:
        if tree_spec is not None or tree_length:
            raise PPDError("a tree needs a model with prompt tokens (a PromptDecoder); this is a plain causal LM")
        return DecodingChoice(None, lookup, suffix)
    if tree_spec is not None:
        return DecodingChoice(tree_spec, lookup, suffix, reason=reason, weight_layout=layout)
    from_tuned = tree_length is None and "tree_length" in tuned
    if from_tuned:
        tree_length = _count(tuned["tree_length"], f"tree_length in {DECODING_NAME}")
    if tree_length == 0:
        choice = DecodingChoice(None, lookup, suffix, reason=reason, weight_layout=layout)
        chosen_here = lookup_chosen and reason is not None and not reason.startswith("tuned on this machine")
        return priced_drafts(model, choice, profile) if chosen_here and (lookup or suffix) else choice
    spec, source = _chosen_tree(model, tree_length, from_tuned, reason)
    return DecodingChoice(spec, lookup, suffix, source, reason, layout)


def _chosen_entry(model, tree_spec, tree_length, prompt_lookup_num_tokens, sampling, profile) -> tuple[dict, str]:
    """(the decoding entry to take the caller's unfixed parts from, why), by precedences 2-4: the decoding.json entry
    tuned on this machine, else the acceptance.json configuration priced best on the profile, else the entry tuned
    on another machine ({} and None: none of them)."""
    tuned = tuned_decoding(model, str(model.dtype).replace("torch.", ""), sampling)
    if tuned and same_machine(tuned, model):
        return tuned, f"tuned on this machine ({DECODING_NAME}, {tuned.get('date', 'undated')})"
    predicted = None
    if tree_spec is None:
        predicted = predicted_decoding(model, sampling or "greedy", profile, tree_length=tree_length,
                                       prompt_lookup_num_tokens=prompt_lookup_num_tokens)
    if predicted is not None:
        best, reason = predicted
        return {"tree_length": best.tree_length, "prompt_lookup_num_tokens": best.prompt_lookup_num_tokens,
                "suffix_nodes": best.suffix_nodes, "weight_layout": best.layout}, reason
    if tuned:
        return tuned, (f"tuned on {tuned.get('machine', 'another machine')} ({DECODING_NAME}); no "
                       f"{ACCEPTANCE_NAME} to choose for this machine from")
    return {}, None


def _chosen_tree(model, tree_length, from_tuned: bool, reason) -> tuple[dict, str]:
    """The spec of `tree_length` (None: the tree file's default) and its source; a length that came from a file the
    tree file lacks names that file as the one to fix."""
    path, default_length = trees_for(model)
    if tree_length is None:
        tree_length = default_length
    try:
        return _tree_of_length(model, path, tree_length)
    except PPDError as exc:
        if not from_tuned:
            raise
        # the length came from decoding.json or acceptance.json: that is the file to fix
        named = checkpoint_file(model, ACCEPTANCE_NAME if reason and "predicted" in reason else DECODING_NAME)
        raise PPDError(f"{named} asks for a tree of length {tree_length}, but "
                       f"{exc}; re-run the tuner for this checkpoint, restore its {TREES_NAME}, "
                       f"or pass a tree length") from None


def priced_drafts(model, choice: DecodingChoice, profile: CostProfile | None = None) -> DecodingChoice:
    """`choice` (context sources, no tree) with each step's draft cut to the depth that pays on `profile` (default:
    `machine_profile(model)`), in the weight layout whose one-input forward is cheapest there: most steps of a chat
    answer then run plainly (`prompt.inference.draft_depth`). Unchanged without a profile."""
    profile = profile if profile is not None else machine_profile(model, measure=False)
    if profile is None:
        return choice
    layout = min(profile.layouts, key=lambda name: (profile.cost(1, 1, name), name != STANDARD))
    where = "this machine's profile" if not profile.shipped else "the shipped " + profile.describe()
    reason = f"{choice.reason}; each draft cut to the depth that pays on {where}" if choice.reason else None
    return replace(choice, weight_layout=layout, input_costs=profile.relative_costs(layout), reason=reason)


def _tree_of_length(model, path: str | None, tree_length: int | None) -> tuple[dict, str]:
    """The spec of `tree_length` (None: the file's largest) from the tree file, else built from the checkpoint's
    accuracies; and where it came from, in words."""
    config = model.config
    n, v = config.num_special_tokens, config.virtual_tokens_per_special_token
    if path is None:  # no tree file fits these prompt tokens: the generic chain tree
        if tree_length is not None and not checkpoint_file(model, ACCURACIES_NAME):
            raise PPDError(f"no tree of length {tree_length} for {n} special tokens: the checkpoint has neither "
                           f"{TREES_NAME} nor {ACCURACIES_NAME}")
        if tree_length is None:
            return select_tree_spec(None, n, v), f"the generic chain tree for {n} special tokens"
    elif tree_length is None or tree_length in specs_by_length(path, n, v):
        spec = select_tree_spec(path, n, v, tree_length)
        length = tree_length if tree_length is not None else max(specs_by_length(path, n, v))
        return spec, f"tree of length {length} from {path}"
    accuracies = checkpoint_file(model, ACCURACIES_NAME)
    if not accuracies:
        available = ", ".join(str(k) for k in sorted(specs_by_length(path, n, v)))
        raise PPDError(f"no tree of length {tree_length} in {path!r} (available lengths: {available}), and no "
                       f"{ACCURACIES_NAME} beside the checkpoint to build one from")
    spec = _built_tree(accuracies, os.stat(accuracies).st_mtime_ns, n, tree_length)
    return spec, f"tree of length {tree_length} built from {accuracies}" + (f" (not in {path})" if path else "")


@functools.lru_cache(maxsize=32)
def _built_tree(accuracies: str, stamp, num_special_tokens: int, tree_length: int) -> dict:
    """The builder's tree of `tree_length` for an accuracies file, built once per file version (a Decoder per request
    stays cheap)."""
    # imported here: `python -m prompt.inference.sparse_tree_builder` must not find itself imported already
    from prompt.inference.sparse_tree_builder import build_tree, read_accuracies

    table = read_accuracies(accuracies)
    if len(table) != num_special_tokens:
        raise PPDError(f"{accuracies} holds accuracies of {len(table)} special tokens; the checkpoint has "
                       f"{num_special_tokens}")
    return build_tree(table, tree_length)


def fastest_dtype(decoding_file, device=None) -> str:
    """The dtype whose tuned decoding (decoding.json) is fastest on `device`'s kind of machine: by tokens/s where
    every entry records it, else by speed over plain greedy (entries made before tokens/s was recorded). Only
    entries measured on the same kind of device count (a CPU's figures say nothing about a GPU), and on a CPU without
    bfloat16 in hardware (`prompt.inference.cost_profile.native_bfloat16`) no half-precision entry counts. Without
    any: float16 on a GPU, float32 on a CPU."""
    gpu = resolve_device(device) != "cpu"
    fallback = "float16" if gpu else "float32"
    data = read_json(decoding_file, "tuned decoding file") if decoding_file and os.path.isfile(decoding_file) else {}
    gpu_name = torch.cuda.get_device_name(0) if gpu and torch.cuda.is_available() else None
    entries = {dtype: entry for dtype, entry in (data.items() if isinstance(data, dict) else ())
               if isinstance(entry, dict) and (gpu_name in str(entry.get("machine", "")) if gpu_name else not gpu)}
    if not gpu and not native_bfloat16():  # tuned where bfloat16 runs in hardware: emulated here, far slower
        entries = {dtype: entry for dtype, entry in entries.items() if dtype not in ("bfloat16", "float16")}
    if not entries:
        return fallback
    key = "tokens_per_second" if all("tokens_per_second" in e for e in entries.values()) else "speed_vs_plain_greedy"
    return max(entries, key=lambda dtype: entries[dtype].get(key) or 0.0)


BATCH_SIZES_KEY = "batch_sizes"


def tuned_batch_decodings(model, profile: CostProfile | None = None) -> dict:
    """The decodings running batches of `model` use, per batch size: {batch size: DecodingChoice}. A running batch of
    n rows uses the entry of the largest size <= n.

    Where the checkpoint records its greedy acceptance (acceptance.json) and a cost profile is found, each of the
    profile's batch sizes gets the configuration predicted fastest at that size (without the suffix tree, which a
    batch does not run), unless the dtype's `batch_sizes` in decoding.json were tuned on this machine
    (`prompt.evaluation.batching --record`, its fingerprint); else those tuned ones. A batch of one row is one
    sequence and decodes with the single-sequence decoding: an entry for size 1 (earlier versions recorded one) is
    ignored."""
    if not hasattr(model, "prompt_embeddings"):
        return {}
    entry = tuned_decoding(model, str(model.dtype).replace("torch.", ""))
    sizes = entry.get(BATCH_SIZES_KEY) or {}
    where = f"{checkpoint_file(model, DECODING_NAME)} ({BATCH_SIZES_KEY})"
    if not isinstance(sizes, dict):
        raise PPDError(f"{where} is not an object {{batch size: decoding}}")
    tuned_here = any(isinstance(c, dict) and same_machine(c, model) for c in sizes.values())
    if not tuned_here and acceptance_configs(model):
        profile = profile if profile is not None else machine_profile(model, measure=False)
        choices = {}
        for size in PROFILE_BATCH_SIZES if profile is not None else ():
            best, reason = predicted_decoding(model, "greedy", profile, rows=size)
            spec = _tree_of_length(model, trees_for(model)[0], best.tree_length)[0] if best.tree_length else None
            choices[size] = DecodingChoice(spec, best.prompt_lookup_num_tokens, reason=reason)
        if choices:
            return choices
    choices = {}
    for size, choice in sizes.items():
        if not str(size).isdigit() or int(size) < 1 or not isinstance(choice, dict):
            raise PPDError(f"{where}: {size!r} is not a batch size >= 1 with a decoding object")
        length = _count(choice.get("tree_length", 0), f"tree_length in {where}")
        lookup = _count(choice.get("prompt_lookup_num_tokens", 0), f"prompt_lookup_num_tokens in {where}")
        spec = _tree_of_length(model, trees_for(model)[0], length)[0] if length else None
        if int(size) > 1:
            choices[int(size)] = DecodingChoice(spec, lookup, reason=f"tuned for batches of {size} on "
                                                f"{choice.get('machine', 'a machine')} ({DECODING_NAME})")
    return choices
