"""The machine's cost profile: measured within its budget, stored under its fingerprint, found again, interpolated."""
import json

import pytest

from prompt.errors import PPDError
from prompt.inference import cost_profile as cp


def test_profile_is_measured_stored_and_found(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PPD_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(cp.PROFILE_ENV, raising=False)
    assert cp.measured_profile(tiny_model, "float32") is None
    lines = []
    profile = cp.machine_profile(tiny_model, measure=True, progress=False, log=lines.append)
    assert profile is not None and not profile.shipped
    assert sorted(profile.latency_ms) == sorted(cp.PROFILE_LENGTHS)
    assert all(ms > 0 for ms in profile.latency_ms.values())
    assert set(profile.batch_latency_ms) <= set(cp.PROFILE_BATCH_SIZES) and profile.batch_latency_ms
    assert "measuring this machine's forward costs" in lines[0] and "stored in" in lines[1]
    # found again without measuring, from the file named by the fingerprint
    again = cp.machine_profile(tiny_model, measure=True, progress=False, log=lines.append)
    assert len(lines) == 2 and again.latency_ms == profile.latency_ms
    stored = list((tmp_path / "profiles").glob("*.json"))
    assert len(stored) == 1 and cp.fingerprint_key(profile.fingerprint) in stored[0].name
    # the tests' setting ignores what was measured on the machine
    monkeypatch.setenv(cp.PROFILE_ENV, "shipped")
    assert cp.machine_profile(tiny_model, measure=True, progress=False, log=lines.append) is None
    assert len(lines) == 2
    # a corrupt stored profile is measured again, not trusted
    monkeypatch.delenv(cp.PROFILE_ENV)
    stored[0].write_text("{not json")
    assert cp.measured_profile(tiny_model, "float32") is None


def test_fingerprint_changes_with_the_isa_limit_and_threads(monkeypatch):
    base = cp.fingerprint("cpu", threads=2)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    limited = cp.fingerprint("cpu", threads=2)
    assert limited["isa_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert cp.fingerprint_key(limited) != cp.fingerprint_key(base)
    assert cp.fingerprint_key(cp.fingerprint("cpu", threads=1)) != cp.fingerprint_key(base)
    assert "limited by ONEDNN_MAX_CPU_ISA=AVX2" in cp.describe_machine(limited)


def test_cost_interpolates_and_scales_batches():
    profile = cp.CostProfile({"device": "cpu"}, "m", "float32", {1: 10.0, 8: 20.0, 16: 40.0},
                             {4: {1: 12.0, 8: 60.0}})
    assert profile.cost(1) == 10.0 and profile.cost(4) == pytest.approx(10 + 10 * 3 / 7)
    assert profile.cost(32) == pytest.approx(80.0)  # linear past the last point
    assert profile.cost(8, rows=4) == 60.0
    assert profile.cost(8, rows=8) == pytest.approx(120.0)  # the nearest batch curve, scaled by rows
    flat = cp.CostProfile({"device": "cpu"}, "m", "float32", {1: 10.0, 8: 20.0, 16: 40.0})
    assert flat.cost(2, rows=4) == flat.cost(8)  # without batch curves: rows x inputs of one sequence
    with pytest.raises(PPDError, match="cost of one input"):
        cp.CostProfile({}, "m", "float32", {8: 1.0})


def test_shipped_profiles_are_marked(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("PPD_CACHE_DIR", str(tmp_path / "cache"))
    entry = {"fingerprint": {"device": "cpu", "cpu": "Dev Xeon", "isa": ["amx_bf16"], "threads": 2}, "model": "m",
             "dtype": "float32", "latency_ms": {"1": 5.0, "16": 6.0}, "source": "development machine"}
    (tmp_path / cp.SHIPPED_PROFILES).write_text(json.dumps([entry]))
    tiny_model.checkpoint_dir = str(tmp_path)
    profile = cp.machine_profile(tiny_model, "float32", measure=False)
    assert profile.shipped and profile.source == "shipped: development machine"
    assert "Dev Xeon (AMX)" in profile.describe()
    (tmp_path / cp.SHIPPED_PROFILES).write_text(json.dumps({"not": "a list"}))
    with pytest.raises(PPDError, match="not a list"):
        cp.machine_profile(tiny_model, "float32", measure=False)
