"""Does this device run bfloat16 natively? A short timed probe, and the precision it leads to.

bf16 autocast halves a training step on an Intel Xeon with AMX (oneDNN runs it on the tiles) and on
any CUDA GPU with bf16, but on a CPU without AMX / AVX512-BF16 oneDNN *emulates* it: measured 20-200x
slower than float32 on an AVX2-only AMD EPYC (one conv 13 s vs 0.06 s). CPU flags alone are not
enough to tell (a hypervisor may hide or show them, a oneDNN build may not use them), so
:func:`probe_bf16` times the same small convolution (forward + backward) in both precisions and
calls bf16 native only when it is faster; the CPU flags are reported beside the measurement.

    probe = probe_bf16("cpu")       # Bf16Probe(native=False, fp32_ms=1.9, bf16_ms=14.7, ...)
    amp, why = choose_amp("auto", "cpu")   # ("none", "bf16 is 7.7x slower than float32 here ...")

The probe runs once per process and device (cached), takes well under a second where bf16 is
native and is cut short where it is not. If it cannot run at all it reports that and float32 is
chosen.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

#: CPU flags (``/proc/cpuinfo``) of the instructions oneDNN runs bf16 on.
CPU_BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")
#: bf16 counts as native when one probe step takes at most this fraction of float32's.
NATIVE_RATIO = 0.9
#: A bf16 probe call slower than this (seconds) ends the probe at once: not native.
SLOW_CALL_S = 1.0
#: Names ``--amp`` and ``--dtype`` accept for "decide from the probe".
AUTO = "auto"


@dataclass(frozen=True)
class Bf16Probe:
    """What :func:`probe_bf16` measured on one device."""

    device: str
    #: bf16 runs natively (faster than float32 in the probe; on CUDA: ``torch.cuda.is_bf16_supported()``).
    native: bool
    #: Median milliseconds of one probe step in float32 and under bf16 autocast (None if not measured).
    fp32_ms: float | None
    bf16_ms: float | None
    #: The CPU's bf16 flags found in /proc/cpuinfo (empty on CUDA, or when the file cannot be read).
    cpu_flags: tuple[str, ...]
    #: One line for logs and model cards.
    reason: str

    @property
    def slowdown(self) -> float | None:
        """bf16 time / float32 time (> 1: bf16 is slower)."""
        if self.fp32_ms and self.bf16_ms:
            return self.bf16_ms / self.fp32_ms
        return None


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, ...]:
    """The flags of :data:`CPU_BF16_FLAGS` this CPU reports (empty where the file cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return tuple(f for f in CPU_BF16_FLAGS if f in flags)


def _probe_step(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype | None) -> float:
    """Seconds of one conv forward + backward (the work a training step is made of): CPU time of
    this process on a CPU (what it costs, whatever a neighbour does to the wall clock), wall time
    on CUDA."""
    cuda = x.device.type == "cuda"
    t = time.perf_counter() if cuda else time.process_time()
    if dtype is None:
        y = F.conv2d(x, w, padding=1)
    else:
        with torch.autocast(x.device.type, dtype=dtype):
            y = F.conv2d(x, w, padding=1)
    y.float().square().mean().backward()
    if cuda:
        torch.cuda.synchronize(x.device)
        return time.perf_counter() - t
    return time.process_time() - t


def _median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2]


def measure_bf16(device: str | torch.device = "cpu", repeats: int = 5,
                 size: tuple[int, int, int, int] = (2, 64, 48, 32),
                 slow_call_s: float = SLOW_CALL_S) -> tuple[float, float]:
    """Median seconds of the probe step in float32 and in bf16, on one thread (a bf16 call slower than
    ``slow_call_s`` stops the measurement there)."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(size, generator=gen).to(dev)
    w = (torch.randn(size[1], size[1], 3, 3, generator=gen) * 0.05).to(dev).requires_grad_(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for dtype in (None, torch.bfloat16):  # warm-up of both paths (kernel selection, allocation)
            first = _probe_step(x, w, dtype)
            if dtype is not None and first > slow_call_s:
                return _probe_step(x, w, None), first
        fp32, bf16 = [], []
        for _ in range(repeats):  # alternating, so whatever else happens hits both alike
            fp32.append(_probe_step(x, w, None))
            bf16.append(_probe_step(x, w, torch.bfloat16))
    finally:
        torch.set_num_threads(threads)
    return _median(fp32), _median(bf16)


@functools.lru_cache(maxsize=8)
def _probe_cached(device: str) -> Bf16Probe:
    dev = torch.device(device)
    if dev.type == "cuda":
        native = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        name = torch.cuda.get_device_name(dev) if torch.cuda.is_available() else "no CUDA device"
        return Bf16Probe(device, native, None, None, (),
                         f"{name}: bf16 {'supported' if native else 'not supported'} (torch.cuda.is_bf16_supported)")
    flags = cpu_bf16_flags() if dev.type == "cpu" else ()
    shown = ", ".join(flags) if flags else "no amx_bf16 / avx512_bf16 flag"
    try:
        fp32_s, bf16_s = measure_bf16(dev)
    except Exception as err:  # noqa: BLE001 -- any failure of the probe means: do not use bf16
        return Bf16Probe(device, False, None, None, flags,
                         f"the bf16 probe could not run ({type(err).__name__}: {err}); float32 ({shown})")
    ratio = bf16_s / fp32_s if fp32_s > 0 else float("inf")
    native = ratio <= NATIVE_RATIO
    verdict = (f"bf16 runs natively: {1 / ratio:.1f}x faster than float32" if native
               else f"bf16 is not native here: {ratio:.1f}x slower than float32" if ratio >= 1
               else f"bf16 is only {1 / ratio:.2f}x faster than float32, not worth it")
    return Bf16Probe(device, native, 1e3 * fp32_s, 1e3 * bf16_s, flags,
                     f"{verdict} (probe conv {1e3 * fp32_s:.1f} vs {1e3 * bf16_s:.1f} ms; CPU: {shown})")


def probe_bf16(device: str | torch.device = "cpu") -> Bf16Probe:
    """Measure (once per process and device) whether bf16 runs natively on ``device``."""
    return _probe_cached(str(torch.device(device)))


def choose_amp(requested: str, device: str | torch.device) -> tuple[str, str]:
    """The autocast mode to train with (``"none"``, ``"bf16"`` or ``"fp16"``) and why.

    ``auto``: bf16 where :func:`probe_bf16` finds it native, else none (float32). An explicit
    ``bf16`` is kept, with a warning carrying the measured slowdown when it is not native on a CPU;
    on a CUDA device without bf16 it is refused (``ValueError``). ``none`` and ``fp16`` pass through
    (fp16's CUDA check belongs to the caller).
    """
    dev = torch.device(device)
    if requested in ("none", "fp16"):
        return requested, f"--amp {requested} (asked for)"
    if requested not in (AUTO, "bf16"):
        raise ValueError(f"unknown --amp {requested!r}; choose auto, none, bf16 or fp16")
    probe = probe_bf16(dev)
    if requested == AUTO:
        return ("bf16" if probe.native else "none"), f"--amp auto: {probe.reason}"
    if dev.type == "cuda" and not probe.native:
        raise ValueError(f"--amp bf16 needs a GPU with bfloat16: {probe.reason}; use --amp fp16 or --amp none")
    if not probe.native:
        slow = f"{probe.slowdown:.1f}x slower" if probe.slowdown else "slower"
        logger.warning("--amp bf16 on a device without native bf16: measured %s than float32 here (%s); "
                       "--amp auto or none would use float32", slow, probe.reason)
        return "bf16", f"--amp bf16 (asked for, not native: {probe.reason})"
    return "bf16", f"--amp bf16 (asked for; {probe.reason})"


def choose_dtype(requested: str | None, device: str | torch.device) -> tuple[str, str]:
    """The inference dtype name for a backend, and why.

    ``auto``: bfloat16 on a CUDA GPU with bf16, float32 on a CPU (at batch 1 the bundled models run
    slower in bf16 even where it is native: the README's speed table). An explicit bfloat16 where the
    probe finds it not native is kept, with a warning carrying the measured slowdown; on a CUDA
    device without bf16 it is refused (``ValueError``). Other names pass through.
    """
    dev = torch.device(device)
    name = (requested or "float32").lower()
    if name in ("bf16", "bfloat16"):
        try:
            _, why = choose_amp("bf16", dev)
        except ValueError as err:
            raise ValueError(str(err).replace("--amp", "--dtype")) from err
        return "bfloat16", why.replace("--amp", "--dtype")
    if name != AUTO:
        return name, f"--dtype {name} (asked for)"
    if dev.type == "cuda":
        probe = probe_bf16(dev)
        return ("bfloat16" if probe.native else "float32"), f"--dtype auto: {probe.reason}"
    return "float32", "--dtype auto: float32 on a CPU (bf16 does not pay at batch 1 for these models)"
