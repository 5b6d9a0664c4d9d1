"""Benchmark: backends x precisions x batch sizes for one preset, on CPU or CUDA.

    python -m export.bench --preset demo --threads 2                 # CPU: torch vs ONNX Runtime
    python -m export.bench --preset deepfashion --device cuda --batch 1,8,32
    python -m export.bench --preset demo --modes ort-fp32 --model path/to/model
    python -m export.bench --model ccp-demo-384 --baseline ccp-demo --threads 2   # a grown model vs the smaller one

For every mode and batch size it reports latency p50 / p95, images/s, the speed-up over PyTorch
eager fp32 measured in the same run, the max abs difference from eager fp32's output, and the
achieved FLOP/s against the device's peak (``--peak-tflops``, else a matmul measured in the same
run). Modes run round-robin (one call of each per round), so load from other processes on a
shared machine hits all of them alike: compare the ratios, not the absolute times. Writes
``bench-<preset>-<device>.json`` and ``.md`` under ``--out``.

Modes (``--modes``, comma-separated; the defaults depend on the device) are the table :data:`MODES`,
each with its precision and a line on what it runs (listed by ``--help``).

``--train-step`` adds a training-step measurement (generator + encoder forward/backward with an
L1 + KL loss and an Adam step; no discriminator or VGG) for what ``--amp auto`` picks on this device
(:func:`smis.precision.choose_amp`, with its reason), fp32 and bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from smis.backends import OnnxBackend, TorchBackend
from smis.backends.onnx import cpu_cores
from smis.config import PRESETS, SMISConfig, get_config
from smis.functional import kl_divergence, reparameterize
from smis.model import GroupDNet
from smis.onnx_format import graph_file_name
from smis.precision import choose_amp

from .flops import encoder_gflop, generator_gflop, render_gflop
from .onnx import export_model, inference_copy, random_inputs, random_model

logger = logging.getLogger("export.bench")

CPU_MODES = ("torch-eager", "torch-baked", "torch-folded", "ort-fp32", "ort-newmask", "torch-reroll", "ort-reroll")
CPU_EXTRA = ("torch-bf16", "ort-fp16")
#: Modes that re-render an unchanged mask with the label branch cached (the re-roll path).
REROLL_MODES = ("torch-reroll", "torch-reroll-bf16", "ort-reroll")
CUDA_MODES = ("torch-eager", "torch-tf32", "torch-bf16", "torch-fp16", "torch-channels-last", "torch-compile",
              "torch-cudagraphs", "ort-cuda-fp32", "ort-cuda-fp16", "ort-trt-fp16", "ort-trt-fp32")


@dataclass
class Row:
    mode: str
    precision: str
    batch: int
    p50_ms: float
    p95_ms: float
    cpu_ms: float
    images_per_s: float
    speedup_vs_eager_fp32: float
    max_abs_err: float
    tflops: float
    peak_fraction: float | None
    provider: str = ""


# ---------------------------------------------------------------------------------------------
# Modes: each returns a callable that runs one batch and returns the image as float32 numpy
# ---------------------------------------------------------------------------------------------

Runner = Callable[[], np.ndarray]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _owned_copy(model: GroupDNet) -> GroupDNet:
    """A separate GroupDNet with the same weights (TorchBackend bakes spectral norm in place)."""
    owned = GroupDNet(model.config)
    owned.load_state_dict(model.state_dict())
    return owned.eval()


class ModeFactory:
    """Builds each mode once per benchmark, then a runner per batch of inputs."""

    def __init__(self, model: GroupDNet, device: torch.device, threads: int, workdir: Path,
                 compile_mode: str = "max-autotune"):
        self.model = model.eval()
        self.compile_mode = compile_mode
        self.config: SMISConfig = model.config
        self.device = device
        self.threads = threads
        self.workdir = workdir
        self._cache: dict[str, object] = {}
        self.providers: dict[str, str] = {}

    # -- shared pieces --------------------------------------------------------------------------
    def _eager(self) -> GroupDNet:
        if "eager" not in self._cache:
            self._cache["eager"] = _owned_copy(self.model).to(self.device)
        return self._cache["eager"]

    def _folded(self) -> GroupDNet:
        if "folded" not in self._cache:
            self._cache["folded"] = inference_copy(self.model).to(self.device)
        return self._cache["folded"]

    def _onnx_folder(self, fp16: bool) -> Path:
        key = f"onnx-{fp16}"
        if key not in self._cache:
            folder = self.workdir / "onnx"
            export_model(self.model, folder, fp16=fp16, encoder=False, split=True)
            self._cache[key] = folder
        return self._cache[key]

    # -- the modes (see MODES) -------------------------------------------------------------------
    def runner(self, mode: str, inputs: dict[str, np.ndarray]) -> tuple[Runner, Runner]:
        """(timed call, call returning float32 numpy for the error check)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if MODES[mode].cuda_only and self.device.type != "cuda":
            raise ValueError(f"mode {mode} needs --device cuda")
        return MODES[mode].build(self, inputs)

    def _torch(self, net: GroupDNet, inputs: dict[str, np.ndarray], autocast: torch.dtype | None = None,
               channels_last: bool = False, compiled: Callable | None = None) -> tuple[Runner, Runner]:
        """The generator of ``net`` (or ``compiled``) on torch tensors, optionally autocast / channels-last."""
        dev = self.device
        labels = torch.from_numpy(inputs["labels"][:, 0]).to(dev)
        z = torch.from_numpy(inputs["z"]).to(dev)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        fwd = compiled or net.generator

        def call():
            ctx = torch.autocast(dev.type, dtype=autocast) if autocast else contextlib.nullcontext()
            with torch.inference_mode(), ctx:
                lab = net.label_tensor(labels)
                if autocast is not None:
                    lab = lab.to(autocast)
                if channels_last:
                    lab = lab.contiguous(memory_format=torch.channels_last)
                out = fwd(z, lab)
            _sync(dev)
            return out

        return call, lambda: call().float().cpu().numpy()

    def _eager_fp32(self, inputs: dict[str, np.ndarray]) -> tuple[Runner, Runner]:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return self._torch(self._eager(), inputs)

    def _tf32(self, inputs: dict[str, np.ndarray]) -> tuple[Runner, Runner]:
        call, _ = self._torch(self._folded(), inputs)

        def tf32_call():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            try:
                return call()
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False

        return tf32_call, lambda: tf32_call().float().cpu().numpy()

    def _compiled(self, inputs: dict[str, np.ndarray]) -> tuple[Runner, Runner]:
        if "compiled" not in self._cache:
            net = self._folded().to(memory_format=torch.channels_last)
            self._cache["compiled"] = torch.compile(net.generator, mode=self.compile_mode)
        return self._torch(self._folded(), inputs, torch.bfloat16, True, compiled=self._cache["compiled"])

    def _torch_backend(self, key: str, inputs: dict[str, np.ndarray], reroll: bool,
                       dtype: str | None = None) -> tuple[Runner, Runner]:
        """``smis.backends.TorchBackend``: a new mask every call, or (``reroll``) its label-branch cache warm;
        ``dtype`` "bfloat16" runs the weights in bf16 (``SMISPipeline.from_pretrained(..., dtype=...)``)."""
        if key not in self._cache:
            # A new mask every call for "baked": the label-branch cache is measured by the re-roll modes.
            self._cache[key] = TorchBackend(_owned_copy(self.model), str(self.device), dtype=dtype,
                                            cache_label_features=reroll)
            torch.set_num_threads(self.threads)  # TorchBackend takes every core
        return self._backend_call(self._cache[key], inputs, reroll)

    @staticmethod
    def _backend_call(backend, inputs: dict[str, np.ndarray], reroll: bool) -> tuple[Runner, Runner]:
        lab_np, z_np = inputs["labels"][:, 0], inputs["z"]
        if reroll and not np.all(lab_np == lab_np[:1]):
            raise ValueError("re-roll modes need one mask for the whole batch")
        call = lambda: backend.generate(lab_np, z_np)  # noqa: E731
        return call, call

    def _cudagraph(self, inputs: dict[str, np.ndarray]) -> tuple[Runner, Runner]:
        # A bf16 copy instead of autocast: autocast's weight-cast cache does not mix with capture.
        labels = torch.from_numpy(inputs["labels"][:, 0]).to(self.device)
        z = torch.from_numpy(inputs["z"]).to(self.device)
        if "bf16" not in self._cache:
            self._cache["bf16"] = copy.deepcopy(self._folded()).to(torch.bfloat16, memory_format=torch.channels_last)
        net = self._cache["bf16"]
        with torch.inference_mode():
            static_lab = net.label_tensor(labels).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            static_z = z.to(torch.bfloat16)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                net.generator(static_z, static_lab)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            static_out = net.generator(static_z, static_lab)

        def call():
            graph.replay()
            torch.cuda.synchronize()
            return static_out

        return call, lambda: call().float().cpu().numpy()

    def _ort(self, mode: str, inputs: dict[str, np.ndarray]) -> tuple[Runner, Runner]:
        fp16 = mode.endswith("fp16")
        device = {"ort-fp32": "cpu", "ort-fp16": "cpu", "ort-cuda-fp32": "cuda", "ort-cuda-fp16": "cuda",
                  "ort-trt-fp32": "tensorrt", "ort-trt-fp16": "tensorrt", "ort-reroll": "cpu",
                  "ort-newmask": "cpu"}[mode]
        if device != "cpu":
            device = f"{device}:{self.device.index or 0}"
        if mode not in self._cache:
            folder = self._onnx_folder(fp16)
            split = {} if mode not in ("ort-reroll", "ort-newmask") else {
                "maps_path": folder / graph_file_name("generator_maps", fp16),
                "render_path": folder / graph_file_name("generator_render", fp16)}
            backend = OnnxBackend(folder / graph_file_name("generator", fp16), None, None, device=device,
                                  fp16=fp16, threads=self.threads, trt_cache=self.workdir / "trt", **split)
            want = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}[device.partition(":")[0]]
            got = backend.session.get_providers()[0]
            if got != want:
                raise RuntimeError(f"{mode}: ONNX Runtime gave {got}, not {want}")
            self._cache[mode] = backend
            self.providers[mode] = got
        backend = self._cache[mode]
        if mode == "ort-reroll":
            return self._backend_call(backend, inputs, reroll=True)
        if mode == "ort-newmask":  # the cached-mask path on a mask it has not seen: the maps graph
            _, warm = self._backend_call(backend, inputs, reroll=True)

            def call():
                backend.label_cache.clear()
                return warm()

            return call, call
        session = backend.session
        feed = {"labels": inputs["labels"], "z": inputs["z"]}
        if device == "cpu":
            call = lambda: session.run(["image"], feed)[0]  # noqa: E731 - includes the host copies
            return call, call
        import onnxruntime as ort

        binding = session.io_binding()
        idx = self.device.index or 0
        for name, arr in feed.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", idx))
        binding.bind_output("image", "cuda", idx)

        def call():
            session.run_with_iobinding(binding)
            return binding

        return call, lambda: call().copy_outputs_to_cpu()[0]


@dataclass(frozen=True)
class Mode:
    """One benchmark mode: its precision, what it runs, and how :class:`ModeFactory` builds it."""

    precision: str
    description: str
    build: Callable[[ModeFactory, dict[str, np.ndarray]], tuple[Runner, Runner]]
    cuda_only: bool = False


def _ort_mode(mode: str, description: str) -> Mode:
    return Mode("fp16" if mode.endswith("fp16") else "fp32", description, lambda f, inputs: f._ort(mode, inputs))


MODES: dict[str, Mode] = {
    "torch-eager": Mode("fp32", "the model as loaded (spectral norm parametrized) - the baseline",
                        ModeFactory._eager_fp32),
    "torch-baked": Mode("fp32", "smis.backends.TorchBackend (spectral norm baked)",
                        lambda f, inputs: f._torch_backend("baked", inputs, reroll=False)),
    "torch-folded": Mode("fp32", "the export copy in PyTorch (SN baked, BatchNorm folded)",
                         lambda f, inputs: f._torch(f._folded(), inputs)),
    "torch-bf16": Mode("bf16", "bf16 autocast (CPU or CUDA)",
                       lambda f, inputs: f._torch(f._folded(), inputs, autocast=torch.bfloat16)),
    "torch-tf32": Mode("tf32", "CUDA: TF32 matmuls / convolutions", ModeFactory._tf32, cuda_only=True),
    "torch-fp16": Mode("fp16", "CUDA: fp16 autocast",
                       lambda f, inputs: f._torch(f._folded(), inputs, autocast=torch.float16), cuda_only=True),
    "torch-channels-last": Mode("bf16", "CUDA: folded model, channels-last, bf16 autocast",
                                lambda f, inputs: f._torch(f._folded(), inputs, torch.bfloat16, True),
                                cuda_only=True),
    "torch-compile": Mode("bf16", "CUDA: the same through torch.compile (--compile-mode)",
                          ModeFactory._compiled, cuda_only=True),
    "torch-cudagraphs": Mode("bf16", "CUDA: the same captured once as a CUDA graph and replayed",
                             ModeFactory._cudagraph, cuda_only=True),
    "ort-fp32": _ort_mode("ort-fp32", "ONNX Runtime, CPU execution provider, fp32 graph"),
    "ort-fp16": _ort_mode("ort-fp16", "ONNX Runtime, CPU execution provider, fp16 graph"),
    "ort-cuda-fp32": _ort_mode("ort-cuda-fp32", "ONNX Runtime CUDA provider (TF32 off), device-resident I/O"),
    "ort-cuda-fp16": _ort_mode("ort-cuda-fp16", "ONNX Runtime CUDA provider, fp16 graph, device-resident I/O"),
    "ort-trt-fp32": _ort_mode("ort-trt-fp32", "ONNX Runtime TensorRT provider (engine cache in the work folder)"),
    "ort-trt-fp16": _ort_mode("ort-trt-fp16", "ONNX Runtime TensorRT provider, fp16"),
    "torch-reroll": Mode("fp32", "TorchBackend with its label-branch cache warm: a re-roll on an unchanged mask",
                         lambda f, inputs: f._torch_backend("reroll", inputs, reroll=True)),
    "ort-reroll": _ort_mode("ort-reroll", "OnnxBackend (generator-render graph on the cached maps), cache warm"),
    "ort-newmask": _ort_mode("ort-newmask", "OnnxBackend on a new mask: generator-maps (image + its label branch)"),
    "torch-backend-bf16": Mode("bf16", "TorchBackend with bf16 weights (the pipeline's dtype='bfloat16'), new mask",
                               lambda f, inputs: f._torch_backend("backend-bf16", inputs, False, "bfloat16")),
    "torch-reroll-bf16": Mode("bf16", "TorchBackend with bf16 weights, label-branch cache warm: a re-roll",
                              lambda f, inputs: f._torch_backend("reroll-bf16", inputs, True, "bfloat16")),
}
PRECISION = {name: mode.precision for name, mode in MODES.items()}


# ---------------------------------------------------------------------------------------------
# Peak FLOP/s and the measurement loop
# ---------------------------------------------------------------------------------------------

def measure_peak_tflops(device: torch.device, precision: str, seconds: float = 1.0) -> float:
    """Best matmul TFLOP/s over ~``seconds`` (the achievable peak, not the datasheet's)."""
    n = 2048 if device.type == "cpu" else 8192
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cpu" and precision == "fp16":
        return float("nan")
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    best = 0.0
    try:
        a @ b
        _sync(device)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e12)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    return best


def machine_info(device: torch.device, threads: int) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": threads, "cores_visible": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def run_bench(model: GroupDNet, device: torch.device, modes: list[str], batches: list[int], repeats: int,
              warmup: int, threads: int, height: int | None = None, width: int | None = None,
              peak_tflops: float | None = None, workdir: Path | None = None, seed: int = 0,
              compile_mode: str = "max-autotune") -> dict:
    """Measure every mode at every batch size; returns a JSON-able dict (see :func:`markdown`)."""
    config = model.config
    h, w = height or config.height, width or config.width
    gflop = generator_gflop(config, h, w)
    render = render_gflop(config, h, w)
    precisions = sorted({PRECISION[m] for m in modes})
    if peak_tflops:
        peaks = {p: peak_tflops for p in precisions}
    else:  # measured now and again at the end (the best of both: load from others only lowers it)
        peaks = {p: measure_peak_tflops(device, p) for p in precisions}
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="smis-bench-")
        workdir = Path(own_tmp.name)
    factory = ModeFactory(model, device, threads, workdir, compile_mode)
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    try:
        for batch in batches:
            inputs = random_inputs(config, batch, h, w, seed)
            inputs["labels"][:] = inputs["labels"][:1]  # one mask, several codes: as the pipeline renders
            runners: dict[str, tuple[Runner, Runner]] = {}
            for mode in ["torch-eager"] + [m for m in modes if m != "torch-eager"]:
                try:
                    runners[mode] = factory.runner(mode, inputs)
                except Exception as err:  # noqa: BLE001 - a mode this machine cannot run is reported, not fatal
                    skipped[mode] = f"{type(err).__name__}: {err}"
                    logger.warning("skipping %s: %s", mode, skipped[mode])
            reference = runners["torch-eager"][1]()
            errors = {m: float(np.abs(r[1]() - reference).max()) for m, r in runners.items()}
            for _ in range(warmup):
                for call, _check in runners.values():
                    call()
            times: dict[str, list[float]] = {m: [] for m in runners}
            cpu: dict[str, list[float]] = {m: [] for m in runners}
            for _ in tqdm(range(repeats), desc=f"batch {batch}", unit="round", leave=False):
                # Round-robin: contention from other processes hits every mode alike.
                for m, (call, _check) in runners.items():
                    c, t = time.process_time(), time.perf_counter()
                    call()
                    times[m].append(time.perf_counter() - t)
                    cpu[m].append(time.process_time() - c)
            base = float(np.median(times["torch-eager"]))
            for m in runners:  # torch-eager, the baseline, is always measured and reported
                p50, p95 = (float(np.percentile(times[m], q)) for q in (50, 95))
                tflops = (render if m in REROLL_MODES else gflop) * batch / p50 / 1e3
                peak = peaks.get(PRECISION[m])
                rows.append(Row(m, PRECISION[m], batch, 1e3 * p50, 1e3 * p95, 1e3 * float(np.median(cpu[m])),
                                batch / p50, base / p50, errors[m],
                                tflops, tflops / peak if peak and peak == peak else None,
                                factory.providers.get(m, "")))
                logger.info("%-20s batch %d: p50 %.1f ms", m, batch, 1e3 * p50)
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()
    if not peak_tflops:
        for p in precisions:
            peaks[p] = max(peaks[p], measure_peak_tflops(device, p))
        for r in rows:
            peak = peaks.get(r.precision)
            r.peak_fraction = r.tflops / peak if peak and peak == peak else None
    return {"preset": config.name, "size": [h, w], "device": str(device),
            "generator_gflop_per_image": gflop, "render_gflop_per_image": render,
            "encoder_gflop_per_image": encoder_gflop(config, h, w),
            "peak_tflops": peaks, "peak_source": "--peak-tflops" if peak_tflops else "matmul measured in this run",
            "repeats": repeats, "warmup": warmup, "machine": machine_info(device, threads),
            "date": time.strftime("%Y-%m-%d %H:%M"), "rows": [asdict(r) for r in rows], "skipped": skipped}


def train_step_bench(model: GroupDNet, device: torch.device, batches: list[int], repeats: int,
                     height: int | None = None, width: int | None = None) -> list[dict]:
    """Forward + backward + Adam step of G and E (L1 + KL; no discriminator, no VGG), at the model's
    size or ``height`` x ``width`` (the network is fully convolutional)."""
    config = model.config
    net = _owned_copy(model).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.0, 0.9))
    amp, why = choose_amp("auto", device)
    out: list[dict] = []
    auto_row = (f"auto -> {'bf16' if amp == 'bf16' else 'fp32'}", torch.bfloat16 if amp == "bf16" else None)
    for precision, autocast in (auto_row, ("fp32", None), ("bf16", torch.bfloat16)):
        for batch in batches:
            inp = random_inputs(config, batch, height, width, seed=1)
            labels = torch.from_numpy(inp["labels"][:, 0]).to(device)
            photo = torch.from_numpy(inp["photo"]).to(device)

            def step(photo=photo, labels=labels, autocast=autocast):
                ctx = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
                with ctx:
                    mu, logvar = net.encode(photo, labels)
                    fake = net(reparameterize(mu, logvar), labels)
                    loss = (fake.float() - photo).abs().mean() + 0.05 * kl_divergence(mu.float(), logvar.float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _sync(device)

            try:
                step()
            except RuntimeError as err:
                out.append({"precision": precision, "batch": batch, "error": str(err)[:200]})
                continue
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                step()
                ts.append(time.perf_counter() - t)
            p50 = float(np.median(ts))
            out.append({"precision": precision, "batch": batch, "p50_ms": 1e3 * p50, "images_per_s": batch / p50,
                        **({"why": why} if precision.startswith("auto") else {})})
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    where = m.get("gpu") or m.get("cpu", "?")
    peaks = ", ".join(f"{k} {v:.3g}" for k, v in result["peak_tflops"].items() if v == v)
    lines = [
        f"**{result['preset']}** {result['size'][0]}x{result['size'][1]}, "
        f"{result['generator_gflop_per_image']:.1f} GFLOP/image (generator) — {where}, "
        f"{m['threads']} threads, torch {m['torch']}, onnxruntime {m.get('onnxruntime', '-')}, "
        f"{result['date']}, {result['repeats']} round-robin repeats"
        + (f", load average {m['load_average']}" if "load_average" in m else ""),
        f"Peak TFLOP/s ({result['peak_source']}): {peaks}",
        "",
        "| mode | precision | batch | p50 ms | p95 ms | CPU ms | img/s | x eager fp32 | max abs err | TFLOP/s "
        "| % peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        frac = f"{100 * r['peak_fraction']:.0f}" if r["peak_fraction"] is not None else "-"
        lines.append(f"| {r['mode']} | {r['precision']} | {r['batch']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['cpu_ms']:.0f} | "
                     f"{r['images_per_s']:.2f} | {r['speedup_vs_eager_fp32']:.2f} | {r['max_abs_err']:.1e} | "
                     f"{r['tflops']:.3f} | {frac} |")
    lines += ["", "CPU ms: process CPU time per call (all threads; compute cost without the waiting that "
              "other processes cause). *-reroll rows re-render an unchanged mask with the label branch cached; "
              f"their TFLOP/s count the render half only ({result['render_gflop_per_image']:.1f} GFLOP/image)."]
    for mode, why in result.get("skipped", {}).items():
        lines.append(f"\nSkipped {mode}: {why}")
    if result.get("train_step"):
        why = next((f"; {t['why']}" for t in result["train_step"] if "why" in t), "")
        lines += ["", f"Training step (G + E forward/backward + Adam; no D, no VGG){why}:", "",
                  "| precision | batch | ms/step | img/s |", "|---|---:|---:|---:|"]
        for t in result["train_step"]:
            if "error" in t:
                lines.append(f"| {t['precision']} | {t['batch']} | failed: {t['error']} | |")
            else:
                lines.append(f"| {t['precision']} | {t['batch']} | {t['p50_ms']:.1f} | {t['images_per_s']:.2f} |")
    return "\n".join(lines)


def fastest_line(result: dict, budget_ms: float = 1000.0) -> str:
    rows = [r for r in result["rows"] if r["batch"] == 1 and r["mode"] not in REROLL_MODES]
    if not rows:
        return ""
    best = min(rows, key=lambda r: r["p50_ms"])
    eager = next(r for r in rows if r["mode"] == "torch-eager")
    threads = result["machine"]["threads"]
    line = (f"Fastest at batch 1: {best['mode']} {best['p50_ms']:.0f} ms per {result['size'][0]}x{result['size'][1]} "
            f"image ({eager['p50_ms'] / best['p50_ms']:.2f}x torch eager; {best['cpu_ms']:.0f} CPU-ms) on "
            f"{threads} thread{'s' if threads > 1 else ''}")
    if result["preset"] == "demo" and result["size"] == [384, 256]:
        verdict = "met" if best["p50_ms"] <= budget_ms else "NOT met"
        line += f"; the demo's {budget_ms:.0f} ms target is {verdict}"
    rerolls = [r for r in result["rows"] if r["batch"] == 1 and r["mode"] in REROLL_MODES]
    if rerolls:
        line += "\nRe-roll on an unchanged mask: " + ", ".join(
            f"{r['mode']} {r['p50_ms']:.0f} ms ({eager['p50_ms'] / r['p50_ms']:.2f}x torch eager)" for r in rerolls)
    return line


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def size_ratio_markdown(results: Sequence[dict]) -> str:
    """Each mode's p50 and CPU time at every ``--sizes`` entry (or for the ``--baseline`` model and the model),
    as a ratio to the first (same process, same modes, one after the other)."""
    base = results[0]
    first = {(r["mode"], r["batch"]): r for r in base["rows"]}
    sizes = [r.get("label") or f"{r['size'][0]}x{r['size'][1]}" for r in results]
    head = " | ".join(f"{s} p50 ms (CPU ms)" for s in sizes)
    ratios = " | ".join(f"{s} / {sizes[0]}" for s in sizes[1:])
    what = "Models" if any(r.get("label") for r in results) else "Sizes"
    lines = [f"{what} compared in one run ({base['machine'].get('cpu', '?')}, {base['machine']['threads']} threads; "
             "ratio of p50 times, CPU-time ratio in brackets):", "",
             f"| mode | batch | {head} | {ratios} |", "|---|---:|" + "---:|" * (len(sizes) * 2 - 1)]
    for (mode, batch), r0 in first.items():
        rows = [next((r for r in res["rows"] if (r["mode"], r["batch"]) == (mode, batch)), None) for res in results]
        if any(r is None for r in rows):
            continue
        cells = " | ".join(f"{r['p50_ms']:.0f} ({r['cpu_ms']:.0f})" for r in rows)
        ratio = " | ".join(f"{r['p50_ms'] / r0['p50_ms']:.2f} ({r['cpu_ms'] / max(r0['cpu_ms'], 1e-9):.2f})"
                           for r in rows[1:])
        lines.append(f"| {mode} | {batch} | {cells} | {ratio} |")
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 192x128, got {text!r}") from err
    if min(h, w) < 64 or h % 64 or w % 64:
        raise argparse.ArgumentTypeError(f"{text}: height and width must be positive multiples of 64")
    return h, w


def _sizes(text: str) -> list[tuple[int, int]]:
    return [_size(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    modes = "\n".join(f"  {name:21s} {m.precision:5s} {m.description}" for name, m in MODES.items())
    p = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.split("\n\n")[0],
                                epilog=f"modes:\n{modes}", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="architecture (default demo)")
    p.add_argument("--tiny", action="store_true", help="the preset's tiny twin (smoke runs)")
    p.add_argument("--model", help="a model folder or Hub repo id to take weights from (default: random "
                                   "weights with calibrated statistics; speed does not depend on them)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--modes", help="comma-separated modes (default: the device's standard set); 'all' adds extras")
    p.add_argument("--batch", type=_ints, default=[1], help="batch sizes, e.g. 1,4 (default 1)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ORT (default: all cores)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--sizes", type=_sizes,
                   help="several sizes in one run, e.g. 192x128,384x256: every mode at each (the network is fully "
                        "convolutional, so a model's weights run at any size), then each size's times as a ratio "
                        "to the first's (instead of --height / --width)")
    p.add_argument("--baseline", help="another model folder (e.g. the smaller model a model was grown from): every "
                                      "mode runs on it first, at its native size, then on --model, and a table gives "
                                      "--model's times as a ratio to it")
    p.add_argument("--peak-tflops", type=float, help="the device's peak; default: a matmul measured in this run")
    p.add_argument("--train-step", action="store_true", help="also time a G+E training step")
    p.add_argument("--compile-mode", default="max-autotune",
                   help="torch.compile mode for torch-compile (max-autotune can compile for many minutes; "
                        "'default' or 'reduce-overhead' are quicker)")
    p.add_argument("--out", default="runs/bench", help="folder for the JSON and Markdown results")
    p.add_argument("--workdir", help="keep exported graphs / TensorRT engines here (default: a temp folder)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    for side in ("height", "width"):
        v = getattr(args, side)
        if v is not None and (v < 64 or v % 64):
            p.error(f"--{side} must be a positive multiple of 64")
    if args.sizes and (args.height or args.width):
        p.error("--sizes replaces --height / --width; give one or the other")
    if args.baseline and (args.sizes or args.height or args.width or not args.model):
        p.error("--baseline compares two models at their native sizes: give --model, no --sizes / --height / --width")
    try:
        args.torch_device = torch.device(args.device)
    except RuntimeError as err:
        p.error(f"bad --device {args.device!r}: {err}")
    if args.torch_device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA device here")
    standard = CUDA_MODES if args.torch_device.type == "cuda" else CPU_MODES
    if args.modes in (None, ""):
        args.mode_list = list(standard)
    elif args.modes == "all":
        args.mode_list = list(standard) + ([m for m in CPU_EXTRA if m not in standard]
                                           if args.torch_device.type == "cpu" else [])
    else:
        args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
        unknown = [m for m in args.mode_list if m not in MODES]
        if unknown:
            p.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    threads = args.threads or cpu_cores()
    torch.set_num_threads(threads)
    if args.model:
        model = GroupDNet.from_pretrained(args.model)
        if model.config.name != args.preset:
            logger.info("--model is a %s model; benchmarking it (not --preset %s)", model.config.name, args.preset)
    else:
        cfg = get_config(args.preset, tiny=args.tiny)
        model = random_model(cfg, seed=args.seed, batches=1)
    workdir = Path(args.workdir) if args.workdir else None
    sizes = args.sizes or [(args.height, args.width)]
    runs = [(model, h, w) for h, w in sizes]
    if args.baseline:
        runs.insert(0, (GroupDNet.from_pretrained(args.baseline), None, None))
    folders = [workdir / f"model-{i}" if workdir and args.baseline else workdir for i in range(len(runs))]
    results = [run_bench(m, args.torch_device, args.mode_list, args.batch, args.repeats, args.warmup, threads,
                         h, w, args.peak_tflops, folder, args.seed, args.compile_mode)
               for (m, h, w), folder in zip(runs, folders)]
    if args.baseline:
        for res, name in zip(results, (args.baseline, args.model)):
            res["label"] = f"{Path(name).name} {res['size'][0]}x{res['size'][1]}"
    result = results[-1] if len(results) == 1 else {**results[-1], "sizes": results}
    if args.train_step:
        result["train_step"] = train_step_bench(model, args.torch_device, args.batch, args.repeats, *sizes[-1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{result['preset']}{'-tiny' if args.tiny else ''}-{args.torch_device.type}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n\n".join(markdown(r) for r in results)
    if len(results) > 1:
        table += "\n\n" + size_ratio_markdown(results)
    (out / f"{stem}.md").write_text(table + "\n")
    print(table)
    line = fastest_line(result)
    if line:
        print("\n" + line)
    print(f"\nwrote {out / stem}.json and .md", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
