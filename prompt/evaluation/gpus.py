"""GPUs of an answer run: the flags that spread a model or the questions over them, and power measurement."""
from __future__ import annotations

import importlib.util

import torch

from prompt.errors import PPDError
from prompt.model.devices import device_kwargs


def check_gpu_flags(args) -> int:
    """Check --num-gpus-per-model, --num-gpus-total, --max-gpu-memory and --gpu-power; returns the number of workers
    (total / per model: each answers a share of the questions, through ray when more than one)."""
    if args.num_gpus_per_model < 1 or args.num_gpus_total < 1:
        raise PPDError("--num-gpus-per-model and --num-gpus-total must be >= 1")
    if args.num_gpus_total % args.num_gpus_per_model:
        raise PPDError(f"--num-gpus-total ({args.num_gpus_total}) must be a multiple of --num-gpus-per-model "
                       f"({args.num_gpus_per_model})")
    needs_gpu = [flag for flag, used in (("--num-gpus-per-model", args.num_gpus_per_model > 1),
                                         ("--max-gpu-memory", args.max_gpu_memory is not None),
                                         ("--gpu-power", args.gpu_power)) if used]
    on_cpu = not torch.cuda.is_available() or str(args.device or "").lower() == "cpu"
    if needs_gpu and on_cpu:
        raise PPDError(f"{needs_gpu[0]} needs CUDA GPUs, and this run has none "
                       f"({'--device cpu' if torch.cuda.is_available() else f'torch {torch.__version__} sees no GPU'})")
    if not on_cpu and args.num_gpus_total > torch.cuda.device_count():
        raise PPDError(f"--num-gpus-total {args.num_gpus_total}, but torch sees {torch.cuda.device_count()} GPU(s)")
    if args.gpu_power and importlib.util.find_spec("zeus") is None:
        raise PPDError("--gpu-power measures with zeus-ml: pip install zeus-ml")
    if args.num_gpus_per_model > 1 or args.max_gpu_memory is not None:
        args.device = "auto"  # the model spread over its GPUs (device_map="auto"), as FastChat loads it
    workers = args.num_gpus_total // args.num_gpus_per_model
    if workers > 1 and importlib.util.find_spec("ray") is None:
        raise PPDError(f"--num-gpus-total {args.num_gpus_total} runs {workers} workers through ray: pip install ray")
    return workers


def load_kwargs(args) -> dict:
    """The loader keywords of the device flags, with --max-gpu-memory as from_pretrained's max_memory."""
    kwargs = device_kwargs(args)
    if args.max_gpu_memory is not None:
        kwargs["max_memory"] = {i: args.max_gpu_memory for i in range(args.num_gpus_per_model)}
    return kwargs

def gpu_power_monitor(args):
    """With --gpu-power, a zeus-ml monitor of the GPUs this process sees, else None."""
    if not getattr(args, "gpu_power", False):
        return None
    from zeus.monitor import ZeusMonitor

    return ZeusMonitor(gpu_indices=list(range(torch.cuda.device_count())))


def end_power_window(monitor, name: str) -> tuple[float, float]:
    """Close the monitor's window `name`: (joules, watts) over the GPUs it measures."""
    measured = monitor.end_window(name)
    joules = sum((getattr(measured, "gpu_energy", None) or getattr(measured, "energy", {})).values())
    return joules, joules / max(measured.time, 1e-9)
