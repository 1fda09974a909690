"""This machine's cost of a verify forward against its number of inputs: the hardware half of the decoding choice.

A `CostProfile` holds, for one base model, dtype and machine, the milliseconds of one decode-step forward (tree
mask, output head over every input) after a fixed context, for each number of inputs of one sequence, and for each
batch size the server uses at a few inputs per row. It is keyed by the machine's `fingerprint` (CPU model and ISA
flags or GPU name, the ISA limits set in the environment, torch's CPU capability, threads, torch version) and
stored in `$PPD_CACHE_DIR/profiles/`. `prompt.inference.choice.resolve_decoding` combines it with what the
checkpoint's prompt tokens accept (its `acceptance.json`) to choose the decoding.

Which profile a decoding uses (`machine_profile`): the one measured on this machine, measured now when `measure`
is asked for (the answer scripts, the demo and the web UI do on first use, unless `--no-profile`), else the
profile that ships beside the checkpoint (`cost_profiles.json`: the development machine's, marked as such).
`PPD_COST_PROFILE=shipped` ignores measured profiles (the tests set it, so that they do not depend on what was
measured on the machine that runs them).

    python -m prompt.evaluation.tune --quick [--dtype float32]   # measure this machine's profile alone
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from prompt.errors import PPDError
from prompt.jsonio import read_json, write_json
from prompt.model import backbone
from prompt.model.cache import keep_cache_entries, new_cache, select_rows
from prompt.model.devices import synchronize
from prompt.model.loading import cache_dir
from prompt.model.weight_layout import (
    STANDARD,
    TRANSPOSED,
    can_transpose,
    set_weight_layout,
    weight_layout,
)

PROFILE_LENGTHS = (1, 2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 64)  # inputs of one sequence's forward
PROFILE_BATCH_SIZES = (2, 4, 8, 16)  # rows of a running batch (the server's)
PROFILE_BATCH_LENGTHS = (1, 8, 16)  # inputs per row measured at each batch size
PROFILE_CONTEXT = 256  # cached tokens before the measured forward
PROFILE_TRANSPOSED_LENGTHS = (1, 2, 4, 8, 16, 32)  # inputs of one sequence measured with the weights transposed
SHIPPED_PROFILES = "cost_profiles.json"  # beside a checkpoint: profiles of the machine it was tuned on
PROFILE_ENV = "PPD_COST_PROFILE"  # "shipped": ignore profiles measured on this machine
# CPU features that decide which matrix kernels run (x86 and Arm)
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "sve2", "bf16", "i8mm")
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset]:
    """The CPU's model name and feature flags (from /proc/cpuinfo; the platform's name elsewhere)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name in ("", platform.processor(), platform.machine()):
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, frozenset(flags)


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (avx512_bf16 or AMX on x86, bf16 on Arm) and oneDNN
    is allowed to use it (`ONEDNN_MAX_CPU_ISA` below AVX512_CORE_BF16 emulates it). Emulated bfloat16 was measured
    8x slower than float32 for one input (BENCHMARKS, an AVX2-only EPYC)."""
    _, flags = _cpuinfo()
    if not flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        return False
    limit = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return limit in ("ALL", "DEFAULT") or "BF16" in limit or "AMX" in limit


def fingerprint(device="cpu", threads: int | None = None) -> dict:
    """What a forward's cost depends on besides the model: the processor, the kernels it may use, threads, torch."""
    device = torch.device(device)
    name, flags = _cpuinfo()
    print_name = name
    if device.type == "cuda":
        print_name = torch.cuda.get_device_name(device)
    return {
        "device": device.type,
        "processor": print_name,
        "cpu": name,
        "isa": sorted(f for f in ISA_FLAGS if f in flags),
        "isa_limits": {k: os.environ[k] for k in ISA_LIMITS if os.environ.get(k)},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
    }


def fingerprint_key(print_: dict) -> str:
    return hashlib.sha1(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:16]


def describe_machine(print_: dict) -> str:
    """The machine in words, e.g. 'AMD EPYC (avx2, no AVX-512, no AMX), 2 threads'."""
    if print_.get("device") == "cuda":
        return f"{print_['processor']}"
    isa = set(print_.get("isa", ()))
    if "amx_bf16" in isa:
        level = "AMX"
    elif "avx512_bf16" in isa:
        level = "AVX-512 with bf16, no AMX"
    elif "avx512f" in isa:
        level = "AVX-512, no bf16"
    elif "avx2" in isa:
        level = "AVX2, no AVX-512"
    else:
        level = ", ".join(sorted(isa)) or "no vector ISA found"
    limits = print_.get("isa_limits") or {}
    if limits:
        level += "; limited by " + " ".join(f"{k}={v}" for k, v in sorted(limits.items()))
    return f"{print_.get('cpu', '?')} ({level}), {print_.get('threads', '?')} threads"


def model_key(base) -> str:
    """The base model's identity for its cost: architecture sizes, dtype-independent (the dtype is its own key)."""
    config = base.config.get_text_config(decoder=True) if hasattr(base.config, "get_text_config") else base.config
    sizes = {k: getattr(config, k, None) for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                                                     "num_attention_heads", "num_key_value_heads", "vocab_size")}
    sizes["quantized"] = str(getattr(base.config, "quantization_config", None) is not None and
                             getattr(base, "hf_quantizer", None) is not None)
    sizes["attention"] = getattr(base.config, "_attn_implementation", None)
    name = os.path.basename(str(getattr(base.config, "_name_or_path", "") or config.model_type).rstrip("/")) or "model"
    digest = hashlib.sha1(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:40]}-{digest}"


def _interpolate(curve: dict, x: float) -> float:
    """Piecewise-linear interpolation of {inputs: ms}; linear extrapolation past the ends (never below 0)."""
    points = sorted((int(k), float(v)) for k, v in curve.items())
    if len(points) == 1:
        return points[0][1] * max(x, 1) / max(points[0][0], 1)
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = points[-2], points[-1]
    return max(y1 + (y1 - y0) * (x - x1) / (x1 - x0), y1)


@dataclass
class CostProfile:
    """One machine's forward costs for one base model and dtype."""

    fingerprint: dict
    model: str
    dtype: str
    latency_ms: dict  # {inputs: ms} of one sequence's forward
    batch_latency_ms: dict = field(default_factory=dict)  # {rows: {inputs per row: ms}}
    transposed_ms: dict = field(default_factory=dict)  # {inputs: ms} of one sequence, weights stored transposed
    date: str = ""
    seconds: float = 0.0  # what measuring it took
    source: str = "measured on this machine"  # or "shipped: ..." for a profile that came with the checkpoint

    def __post_init__(self):
        self.latency_ms = {int(k): float(v) for k, v in self.latency_ms.items()}
        self.batch_latency_ms = {int(b): {int(k): float(v) for k, v in c.items()}
                                 for b, c in self.batch_latency_ms.items()}
        self.transposed_ms = {int(k): float(v) for k, v in self.transposed_ms.items()}
        if not self.latency_ms or 1 not in self.latency_ms:
            raise PPDError(f"a cost profile needs the cost of one input; this one has {sorted(self.latency_ms)}")

    @property
    def shipped(self) -> bool:
        return self.source.startswith("shipped")

    @property
    def key(self) -> str:
        return fingerprint_key(self.fingerprint)

    @property
    def layouts(self) -> tuple[str, ...]:
        """The weight layouts this profile prices one sequence in (`prompt.model.weight_layout`)."""
        return (STANDARD, TRANSPOSED) if self.transposed_ms and 1 in self.transposed_ms else (STANDARD,)

    def cost(self, inputs: float, rows: int = 1, layout: str = STANDARD) -> float:
        """Milliseconds of one forward of `rows` sequences with `inputs` inputs each, the weights in `layout` (one
        sequence only; batches in the standard layout). Batch sizes between the measured ones scale the nearest
        measured batch curve by rows; without batch curves, rows x inputs inputs of one sequence (what the weights'
        matrix products see)."""
        if layout == TRANSPOSED and rows <= 1:
            if TRANSPOSED not in self.layouts:
                raise PPDError("this cost profile has no costs of the transposed weight layout")
            return _interpolate(self.transposed_ms, inputs)
        if rows <= 1:
            return _interpolate(self.latency_ms, inputs)
        if self.batch_latency_ms:
            near = min(self.batch_latency_ms, key=lambda b: (abs(b - rows), -b))
            return _interpolate(self.batch_latency_ms[near], inputs) * rows / near if near != rows else \
                _interpolate(self.batch_latency_ms[near], inputs)
        return _interpolate(self.latency_ms, inputs * rows)

    def relative_costs(self, layout: str = STANDARD) -> tuple:
        """The cost of one sequence's forward of 1, 2, ... inputs over one input's in `layout`, up to the most inputs
        measured, never falling as inputs grow (a noisy point above a later one is lowered to it)."""
        curve = self.transposed_ms if layout == TRANSPOSED else self.latency_ms
        costs = [self.cost(n, 1, layout) for n in range(1, max(curve) + 1)]
        for i in range(len(costs) - 2, -1, -1):
            costs[i] = min(costs[i], costs[i + 1])
        return tuple(c / costs[0] for c in costs)

    def describe(self) -> str:
        where = "this machine" if not self.shipped else describe_machine(self.fingerprint)
        return f"profile of {self.date or 'an unknown date'}" + ("" if not self.shipped else f", {where}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "cost profile") -> "CostProfile":
        try:
            return cls(**{k: data[k] for k in ("fingerprint", "model", "dtype", "latency_ms")},
                       **{k: data[k] for k in ("batch_latency_ms", "transposed_ms", "date", "seconds", "source") if k in data})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PPDError(f"{where} is not a cost profile ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------------------------------------------
# measuring
def _timed_forward(base, cache, rows: int, inputs: int, context: int, generator) -> float:
    """Milliseconds of one forward of `inputs` new inputs per row after `context` cached tokens (the new entries are
    dropped after it)."""
    device = base.get_input_embeddings().weight.device
    ids = torch.randint(0, base.config.vocab_size, (rows, inputs), generator=generator).to(device)
    embeds = base.get_input_embeddings()(ids)
    mask = None
    if inputs > 1 or rows > 1:
        allowed = torch.ones(inputs, context + inputs, dtype=torch.bool)
        allowed[:, context:] = torch.tril(torch.ones(inputs, inputs, dtype=torch.bool))
        mask = backbone.additive_mask(allowed.to(device), embeds.dtype).expand(rows, -1, -1, -1)
    positions = (context + torch.arange(inputs))[None].expand(rows, -1).to(device)
    synchronize(device)
    start = time.perf_counter()
    out = backbone.run_body(base, embeds, mask, positions, cache)
    backbone.head_logits(base, out.last_hidden_state.reshape(rows * inputs, -1)).argmax(-1).tolist()
    synchronize(device)
    elapsed = time.perf_counter() - start
    keep_cache_entries(cache, context, [], inputs)
    return elapsed * 1000


def forward_latency(base, input_lengths, prefix_length: int = PROFILE_CONTEXT, repeats: int = 3, seed: int = 0,
                    rows: int = 1, progress=None) -> dict[int, float]:
    """Fastest of `repeats` milliseconds of a decode-step forward over n new inputs per row (`rows` sequences) after
    `prefix_length` cached tokens, with a 4D mask as a tree forward uses and the output head over every input, for
    each n (a first round warms up; rounds interleave the lengths, so a burst of other work spreads over them)."""
    device = base.get_input_embeddings().weight.device
    generator = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, base.config.vocab_size, (1, prefix_length), generator=generator).to(device)
    times = {n: [] for n in input_lengths}
    with torch.inference_mode():
        cache = new_cache(base)
        backbone.run_body(base, base.get_input_embeddings()(prefix), None, None, cache)
        if rows > 1:  # every row holds the same context: one prefill, repeated
            select_rows(cache, [0] * rows)
        for repeat in range(repeats + 1):
            for n in input_lengths:
                elapsed = _timed_forward(base, cache, rows, n, prefix_length, generator)
                if repeat:
                    times[n].append(elapsed)
                if progress is not None:
                    progress.update(1)
    return {n: min(t) for n, t in times.items()}


def measure_profile(base, dtype: str, lengths=PROFILE_LENGTHS, batch_sizes=PROFILE_BATCH_SIZES,
                    batch_lengths=PROFILE_BATCH_LENGTHS, repeats: int = 3, budget_s: float = 60.0,
                    progress: bool = True, transposed_lengths=PROFILE_TRANSPOSED_LENGTHS) -> CostProfile:
    """Measure `base`'s forward costs on this machine: one sequence at each of `lengths` inputs, then each batch size
    at `batch_lengths` inputs per row, within about `budget_s` seconds: fewer repeats where one round is slow, and
    the batch sizes that do not fit the budget left out (`CostProfile.cost` then scales one sequence's curve). On a
    CPU, one sequence is also measured at `transposed_lengths` with the weights stored transposed
    (`prompt.model.weight_layout`; restored after)."""
    from tqdm.auto import tqdm

    device = base.get_input_embeddings().weight.device
    start = time.perf_counter()
    left = lambda: budget_s - (time.perf_counter() - start)  # noqa: E731 - the seconds the budget has left
    with tqdm(total=2 * len(lengths), desc=f"cost profile ({dtype})", disable=not progress, leave=False,
              file=sys.stderr) as bar:
        latency = _one_sequence_costs(base, lengths, repeats, budget_s, bar)
        transposed = _transposed_costs(base, latency, transposed_lengths, repeats, left(), bar)
        batches = _batch_costs(base, latency, batch_sizes, batch_lengths, left, bar)
    return CostProfile(fingerprint(device), model_key(base), dtype, latency, batches, transposed,
                       datetime.date.today().isoformat(), round(time.perf_counter() - start, 1))


def _one_sequence_costs(base, lengths, repeats: int, budget_s: float, bar) -> dict:
    """{inputs: ms} of one sequence: a warm-up round and one measured, then as many more as a third of the budget
    holds (up to `repeats` in all), the fastest of each kept."""
    latency = forward_latency(base, lengths, repeats=1, progress=bar)
    round_s = sum(latency.values()) / 1000
    more = min(repeats - 1, int((budget_s / 3) // max(round_s, 1e-3)))
    if more > 0:
        bar.total += (more + 1) * len(lengths)
        again = forward_latency(base, lengths, repeats=more, progress=bar)
        latency = {n: min(latency[n], again[n]) for n in lengths}
    return latency


def _transposed_costs(base, latency: dict, lengths, repeats: int, left_s: float, bar) -> dict:
    """{inputs: ms} of one sequence with the weights stored transposed ({} where they cannot be, or it does not fit
    the `left_s` seconds left); the weights' layout restored after."""
    guess = 2 * sum(_interpolate(latency, n) for n in lengths) / 1000
    if not lengths or not can_transpose(base) or (repeats + 1) * guess >= left_s:
        return {}
    before = weight_layout(base)
    set_weight_layout(base, TRANSPOSED)
    try:
        bar.total += (repeats + 1) * len(lengths)
        return forward_latency(base, lengths, repeats=repeats, progress=bar)
    finally:
        set_weight_layout(base, before)


def _batch_costs(base, latency: dict, batch_sizes, batch_lengths, left, bar) -> dict:
    """{rows: {inputs per row: ms}} for the batch sizes that fit the budget (`left()`: the seconds it has left)."""
    batches = {}
    for rows in batch_sizes:
        # a batch round costs about rows x a sequence's round at the same inputs per row (warm-up + one round)
        guess = sum(_interpolate(latency, n) for n in batch_lengths) / 1000
        if 2 * rows * guess > left():
            break
        bar.total += 2 * len(batch_lengths)
        batches[rows] = forward_latency(base, batch_lengths, repeats=1, rows=rows, progress=bar)
    return batches


# ----------------------------------------------------------------------------------------------------------------
# storing and finding
def profile_path(model_id: str, dtype: str, print_: dict) -> str:
    return os.path.join(cache_dir(), "profiles", f"{model_id}-{dtype}-{fingerprint_key(print_)}.json")


def save_profile(profile: CostProfile) -> str:
    path = profile_path(profile.model, profile.dtype, profile.fingerprint)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, profile.to_json())
    return path


def measured_profile(base, dtype: str, device=None) -> CostProfile | None:
    """The profile measured earlier on this machine for this base model and dtype (None: none, or ignored by
    PPD_COST_PROFILE=shipped). A file that does not read as a profile is ignored (and measured again)."""
    if os.environ.get(PROFILE_ENV, "").lower() == "shipped":
        return None
    device = device if device is not None else base.get_input_embeddings().weight.device
    path = profile_path(model_key(base), dtype, fingerprint(device))
    if not os.path.isfile(path):
        return None
    try:
        return CostProfile.from_json(read_json(path, "cost profile"), path)
    except PPDError:
        return None


def shipped_profiles(folder: str | None) -> list[CostProfile]:
    """The profiles that ship beside a checkpoint (`cost_profiles.json`: a list), each marked as shipped."""
    path = os.path.join(folder, SHIPPED_PROFILES) if folder else None
    if not path or not os.path.isfile(path):
        return []
    data = read_json(path, "shipped cost profiles")
    if not isinstance(data, list):
        raise PPDError(f"{path} is not a list of cost profiles")
    profiles = [CostProfile.from_json(entry, f"{path} entry {i}") for i, entry in enumerate(data)]
    for profile in profiles:
        if not profile.shipped:
            profile.source = "shipped: " + profile.source
    return profiles


def machine_profile(model, dtype: str | None = None, measure: bool = False, progress: bool = True,
                    log=print) -> CostProfile | None:
    """The cost profile a decoding of `model` (a PromptDecoder or a causal LM) in `dtype` (default: the model's) uses:
    measured on this machine (measured now and stored when `measure` and there is none yet), else the shipped
    profile for this dtype (None without one). Measuring says in one line what it does and takes."""
    base = model.base_model if hasattr(model, "prompt_embeddings") else model
    dtype = dtype or str(base.dtype).replace("torch.", "")
    profile = measured_profile(base, dtype)
    if profile is not None:
        return profile
    if measure and os.environ.get(PROFILE_ENV, "").lower() != "shipped":
        device = base.get_input_embeddings().weight.device
        log(f"measuring this machine's forward costs for {dtype} ({describe_machine(fingerprint(device))}): "
            f"once per model, dtype and machine, at most about a minute; --no-profile skips it")
        profile = measure_profile(base, dtype, progress=progress)
        path = save_profile(profile)
        log(f"cost profile measured in {profile.seconds:.0f} s, stored in {path}")
        return profile
    shipped = [p for p in shipped_profiles(getattr(model, "checkpoint_dir", None)) if p.dtype == dtype]
    if os.environ.get(PROFILE_ENV, "").lower() == "shipped":  # the first: the same choice on every machine
        return (shipped or [None])[0]
    exact = [p for p in shipped if p.key == fingerprint_key(fingerprint(base.get_input_embeddings().weight.device))]
    return (exact or shipped or [None])[0]
