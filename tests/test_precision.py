"""smis.precision: the bf16 probe and the precision choices that follow from it."""

from __future__ import annotations

import logging

import pytest

from smis import precision as P


@pytest.fixture(autouse=True)
def _fresh_probe():
    P._probe_cached.cache_clear()
    yield
    P._probe_cached.cache_clear()


def _fake_probe(monkeypatch, native: bool, fp32_ms: float = 2.0, bf16_ms: float = 30.0):
    probe = P.Bf16Probe("cpu", native, fp32_ms, bf16_ms, (), "measured by the test")
    monkeypatch.setattr(P, "probe_bf16", lambda device="cpu": probe)
    return probe


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile avx512_bf16\n")
    assert P.cpu_bf16_flags(info) == ("amx_bf16", "amx_tile", "avx512_bf16")
    info.write_text("processor : 0\nflags\t\t: fpu avx2 fma\n")
    assert P.cpu_bf16_flags(info) == ()
    assert P.cpu_bf16_flags(tmp_path / "missing") == ()


def test_the_real_probe_measures_both_precisions_on_this_cpu():
    probe = P.probe_bf16("cpu")
    assert probe.fp32_ms > 0 and probe.bf16_ms > 0 and probe.native == (probe.slowdown <= P.NATIVE_RATIO)
    assert "probe conv" in probe.reason
    assert P.probe_bf16("cpu") is probe  # once per process and device


def test_a_slow_bf16_call_ends_the_probe_early(monkeypatch):
    calls = []

    def step(x, w, dtype):
        calls.append(dtype)
        return 5.0 if dtype is not None else 0.01

    monkeypatch.setattr(P, "_probe_step", step)
    fp32_s, bf16_s = P.measure_bf16("cpu")
    assert (fp32_s, bf16_s) == (0.01, 5.0) and len(calls) == 3  # warm-up fp32, one bf16, one fp32


def test_a_probe_that_cannot_run_means_float32(monkeypatch):
    def fail(*a, **k):
        raise PermissionError("no perf counters")

    monkeypatch.setattr(P, "measure_bf16", fail)
    probe = P.probe_bf16("cpu")
    assert not probe.native and "could not run" in probe.reason and "PermissionError" in probe.reason
    assert P.choose_amp("auto", "cpu")[0] == "none"


def test_auto_takes_bf16_only_where_it_is_native(monkeypatch):
    _fake_probe(monkeypatch, native=False)
    amp, why = P.choose_amp("auto", "cpu")
    assert amp == "none" and why.startswith("--amp auto:") and "measured by the test" in why
    _fake_probe(monkeypatch, native=True, fp32_ms=10.0, bf16_ms=4.0)
    assert P.choose_amp("auto", "cpu")[0] == "bf16"
    assert P.choose_amp("none", "cpu") == ("none", "--amp none (asked for)")
    with pytest.raises(ValueError, match="unknown --amp"):
        P.choose_amp("int8", "cpu")


def test_explicit_bf16_without_native_support_warns_with_the_slowdown(monkeypatch, caplog):
    _fake_probe(monkeypatch, native=False, fp32_ms=2.0, bf16_ms=30.0)
    with caplog.at_level(logging.WARNING, logger="smis.precision"):
        amp, why = P.choose_amp("bf16", "cpu")
    assert amp == "bf16" and "not native" in why
    assert "15.0x slower" in caplog.text


def test_bf16_on_a_cuda_device_without_it_is_refused(monkeypatch):
    probe = P.Bf16Probe("cuda", False, None, None, (), "Tesla T4: bf16 not supported")
    monkeypatch.setattr(P, "probe_bf16", lambda device="cpu": probe)
    with pytest.raises(ValueError, match="needs a GPU with bfloat16.*Tesla T4"):
        P.choose_amp("bf16", "cuda")
    with pytest.raises(ValueError, match="--dtype bf16 needs a GPU"):
        P.choose_dtype("bfloat16", "cuda")
    assert P.choose_dtype("auto", "cuda")[0] == "float32"


def test_inference_dtype_choice(monkeypatch, caplog):
    _fake_probe(monkeypatch, native=False)
    assert P.choose_dtype(None, "cpu")[0] == "float32"
    assert P.choose_dtype("auto", "cpu")[0] == "float32"
    assert P.choose_dtype("float16", "cpu") == ("float16", "--dtype float16 (asked for)")
    with caplog.at_level(logging.WARNING, logger="smis.precision"):
        name, why = P.choose_dtype("bf16", "cpu")
    assert name == "bfloat16" and why.startswith("--dtype bf16") and "slower" in caplog.text
