"""Where and how a model runs: the device, the dtype, bitsandbytes quantization, CUDA synchronisation.

Every script and loader resolves its device here, so they all default the same way: `cuda` when torch
sees a GPU, else `cpu`; `cuda:N`, `cpu` and `auto` (accelerate's `device_map="auto"`, for models larger
than one GPU) are accepted too. `add_device_flags` gives every script the same `--device`, `--dtype`
and quantization flags.
"""
from __future__ import annotations

import argparse

import torch

from prompt.errors import PPDError

DTYPE_CHOICES = ("float32", "bfloat16", "float16")
AUTO = "auto"


def resolve_device(device=None) -> str:
    """None or "" -> "cuda" when available, else "cpu"; "auto" stays "auto" (device_map="auto"); others are checked."""
    if device is None or device == "":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == AUTO:
        return AUTO
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError):
        raise PPDError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise PPDError(f"device {device!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise PPDError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    elif parsed.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise PPDError(f"device {device!r} asked for, but torch sees no MPS device")
    elif parsed.type != "cpu":
        raise PPDError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")
    return name


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a host clock times it."""
    if device is None:
        return
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantization_config(load_in_4bit: bool = False, load_in_8bit: bool = False, dtype=torch.float16):
    """A transformers BitsAndBytesConfig for 4-bit (nf4, double quantization) or 8-bit weights, else None."""
    if load_in_4bit and load_in_8bit:
        raise PPDError("choose one of --load-in-4bit and --load-in-8bit")
    if not (load_in_4bit or load_in_8bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise PPDError("4-bit/8-bit loading needs bitsandbytes: pip install -e '.[gpu]'") from None
    from transformers import BitsAndBytesConfig

    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def add_device_flags(parser: argparse.ArgumentParser, dtype: str = "float32", quantization: bool = True,
                     underscores: bool = False) -> argparse.ArgumentParser:
    """Add --device, --dtype (unless `dtype` is None) and (with `quantization`) --load-in-4bit/--load-in-8bit.

    Both spellings of the quantization flags are accepted (upstream's training uses --load_in_4bit);
    `underscores` only picks the one shown in the help.
    """
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N, or auto (device_map='auto': spread over the GPUs and the CPU). "
                             "Default: cuda when available, else cpu.")
    if dtype is not None:
        parser.add_argument("--dtype", default=dtype, choices=DTYPE_CHOICES, help=f"Model dtype (default {dtype}).")
    if quantization:
        for bits in (4, 8):
            names = [f"--load-in-{bits}bit", f"--load_in_{bits}bit"]
            parser.add_argument(*(names[::-1] if underscores else names), dest=f"load_in_{bits}bit",
                                action="store_true",
                                help=f"Load the base model's linear layers in {bits} bits (bitsandbytes).")
    return parser


def device_kwargs(args) -> dict:
    """The loader keywords (device, dtype, load_in_4bit, load_in_8bit) from flags added by `add_device_flags`."""
    return {"device": args.device, "dtype": getattr(args, "dtype", "float32"), "load_in_4bit": getattr(args, "load_in_4bit", False),
            "load_in_8bit": getattr(args, "load_in_8bit", False)}
