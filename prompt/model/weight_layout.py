"""How the base model's linear weights lie in memory: a per-machine choice of the matrix kernel a decode step runs.

`nn.Linear` stores its weight as [out, in] and computes `x @ W.T`. On some CPUs (measured: an AVX2-only AMD EPYC,
BENCHMARKS "weight layout") the product of one or two input rows with that layout runs a slower kernel than the
same product with the weight stored transposed ([in, out] contiguous, `W` a transposed view of it): 1.5-1.7x for
the matrix products alone, about 1.3x for a whole one-token step; from about 8 rows the standard layout is the
faster one. Which layout pays is the machine's, so the cost profile measures both (`cost_profile`) and the decoding
choice names one (`DecodingChoice.weight_layout`); `set_weight_layout` switches in place, without more memory (the
transposed weight replaces the standard one, and the module code is unchanged: `F.linear` accepts the view).

The two layouts give identical results from about 4 rows on and may differ in the last bits for one to three rows
(another kernel, another summation order), as any change of kernel does; the decode loop's exactness holds within
one layout (the verify forward and the plain step read the same weights).
"""
from __future__ import annotations

import torch

STANDARD, TRANSPOSED = "standard", "transposed"
LAYOUTS = (STANDARD, TRANSPOSED)


def _linears(model):
    base = model.base_model if hasattr(model, "prompt_embeddings") else model
    seen = set()
    for module in base.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            yield module


def _is_transposed(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and not weight.is_contiguous() and weight.t().is_contiguous()


def weight_layout(model) -> str:
    """The layout of `model`'s linear weights (the first one's: `set_weight_layout` switches all together)."""
    for module in _linears(model):
        return TRANSPOSED if _is_transposed(module.weight) else STANDARD
    return STANDARD


def can_transpose(model) -> bool:
    """Whether the layout choice applies: plain floating-point weights on a CPU (quantized or GPU weights keep their
    own kernels)."""
    for module in _linears(model):
        weight = module.weight
        return weight.device.type == "cpu" and weight.is_floating_point() and type(weight.data) is torch.Tensor
    return False


def set_weight_layout(model, layout: str) -> str:
    """Store every linear weight of `model`'s base model in `layout` (in place; a no-op where it already is, or where
    `can_transpose` says no). Returns the layout the model now has."""
    if layout not in LAYOUTS:
        raise ValueError(f"weight layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not can_transpose(model) or weight_layout(model) == layout:
        return weight_layout(model)
    with torch.no_grad():
        for module in _linears(model):
            weight = module.weight.data
            if layout == TRANSPOSED and not _is_transposed(weight):
                module.weight.data = weight.t().contiguous().t()
            elif layout == STANDARD and _is_transposed(weight):
                module.weight.data = weight.contiguous()
    return layout
