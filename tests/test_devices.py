"""Devices, dtypes and flags: one resolution for every script and loader, the fastest tuned dtype, CUDA sync."""
import argparse
import json

import pytest
import torch

from prompt import PPDError
from prompt.inference.choice import fastest_dtype
from prompt.inference.dtype_choice import fastest_decoding_dtype
from prompt.model.devices import add_device_flags, device_kwargs, resolve_device, synchronize


def test_resolve_device():
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("") == resolve_device(None)
    assert resolve_device("CPU") == "cpu" and resolve_device(torch.device("cpu")) == "cpu"
    assert resolve_device("auto") == "auto"
    with pytest.raises(PPDError, match="unknown device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(PPDError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    synchronize("cpu")  # a no-op off CUDA


def test_device_flags():
    parser = add_device_flags(argparse.ArgumentParser(), dtype="bfloat16")
    args = parser.parse_args(["--device", "cpu", "--load_in_4bit"])
    assert device_kwargs(args) == {"device": "cpu", "dtype": "bfloat16", "load_in_4bit": True, "load_in_8bit": False}
    args = parser.parse_args(["--load-in-8bit", "--dtype", "float16"])
    assert device_kwargs(args) == {"device": None, "dtype": "float16", "load_in_4bit": False, "load_in_8bit": True}
    assert not hasattr(add_device_flags(argparse.ArgumentParser(), dtype=None).parse_args([]), "dtype")


def test_fastest_dtype(tmp_path, monkeypatch):
    from prompt.inference import cost_profile

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(cost_profile, "_cpuinfo", lambda: ("Xeon", {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
    path = tmp_path / "decoding.json"
    assert fastest_dtype(str(path), "cpu") == "float32"  # nothing tuned
    path.write_text(json.dumps({"float32": {"speed_vs_plain_greedy": 1.3, "machine": "a CPU"},
                                "bfloat16": {"speed_vs_plain_greedy": 1.7, "machine": "a CPU"}}))
    assert fastest_dtype(str(path), "cpu") == "bfloat16"
    path.write_text(json.dumps({"float32": {"speed_vs_plain_greedy": 1.3, "tokens_per_second": 30, "machine": "a CPU"},
                                "bfloat16": {"speed_vs_plain_greedy": 1.7, "tokens_per_second": 20, "machine": "a CPU"}}))
    assert fastest_dtype(str(path), "cpu") == "float32"  # absolute speed wins where every entry records it
    # the shipped prompt tokens were tuned on an AMX Xeon, where bfloat16 decodes fastest
    assert fastest_decoding_dtype(None, "cpu") == "bfloat16"
    # a CPU without bfloat16 in hardware (or oneDNN limited below it) emulates it: the tuned bfloat16 entry is not
    # applied there
    path.write_text(json.dumps({"bfloat16": {"tokens_per_second": 30, "machine": "a CPU"}}))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert fastest_dtype(str(path), "cpu") == "float32"
    assert fastest_decoding_dtype(None, "cpu") == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert fastest_dtype(str(path), "cpu") == "bfloat16"
    monkeypatch.setattr(cost_profile, "_cpuinfo", lambda: ("EPYC", {"avx", "avx2", "fma"}))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert fastest_dtype(str(path), "cpu") == "float32"
    assert fastest_decoding_dtype(None, "cpu") == "float32"
