"""TensorRT engines from the exported ONNX graphs (fp16 or fp32), where TensorRT is installed.

Two routes, whichever this machine has:

- ``tensorrt``: the TensorRT Python API parses the ONNX file and writes a serialized engine
  (``generator-fp16.engine``) with one optimisation profile (batch 1..max at the native size),
  for deployers that run TensorRT directly (Triton, trtexec, C++);
- ``onnxruntime``: ONNX Runtime's ``TensorrtExecutionProvider`` builds the engine into its engine
  cache on the first run; :class:`smis.backends.OnnxBackend` then reuses that cache.

TensorRT cannot be installed from PyPI here (the ``tensorrt`` wheel is a stub that downloads the
real one from NVIDIA), so where neither route works :class:`TensorRTUnavailable` says so and what
to do instead.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from smis.backends.onnx import CPU, CUDA, TENSORRT, cache_root, make_session
from smis.onnx_format import config_from_metadata

logger = logging.getLogger(__name__)

ROUTES = ("auto", "tensorrt", "onnxruntime")


class TensorRTUnavailable(RuntimeError):
    """Neither the TensorRT Python API nor ONNX Runtime's TensorRT provider works here."""


@dataclass
class EngineResult:
    route: str
    path: Path
    precision: str
    seconds: float


def _import_tensorrt():
    """The ``tensorrt`` module, or the reason it cannot be used."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional, heavy
    except Exception as err:  # the PyPI stub raises at import or install time, not ImportError only
        return None, f"`import tensorrt` failed ({type(err).__name__}: {err})"
    if not hasattr(trt, "Builder"):
        return None, "the installed `tensorrt` package is a stub without the TensorRT libraries"
    return trt, ""


def _probe_model_bytes() -> bytes:
    """A one-op ONNX model (Relu on a 1x8 tensor) for asking a provider whether it really runs."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _ort_tensorrt() -> tuple[bool, str]:
    """Whether ONNX Runtime's TensorRT provider actually runs (``get_available_providers`` lies)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    if TENSORRT not in ort.get_available_providers():
        return False, (f"this onnxruntime build ({ort.__version__}, {ort.get_device()}) has no "
                       f"{TENSORRT} (it needs onnxruntime-gpu and the TensorRT libraries)")
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        session = ort.InferenceSession(_probe_model_bytes(), so, providers=[TENSORRT, CPU])
    except Exception as err:  # noqa: BLE001 - any failure means "not usable"
        return False, f"{TENSORRT} is listed but failed to start ({type(err).__name__}: {err})"
    got = session.get_providers()
    if got[0] != TENSORRT:
        return False, (f"{TENSORRT} is listed but a session fell back to {got[0]} "
                       "(TensorRT or CUDA libraries missing, or no GPU)")
    return True, ""


def tensorrt_status() -> dict[str, str]:
    """``{"tensorrt": "ok" | why not, "onnxruntime": "ok" | why not}``."""
    trt, why = _import_tensorrt()
    ok, why_ort = _ort_tensorrt()
    return {"tensorrt": f"ok (TensorRT {trt.__version__})" if trt else why,
            "onnxruntime": "ok" if ok else why_ort}


def unavailable_message(status: dict[str, str]) -> str:
    return (
        "TensorRT is not available on this machine:\n"
        f"  - TensorRT Python API: {status['tensorrt']}\n"
        f"  - ONNX Runtime TensorRT provider: {status['onnxruntime']}\n"
        "Build engines on a CUDA machine that has TensorRT (an NVIDIA TensorRT container, or "
        "`pip install tensorrt` from NVIDIA's index together with onnxruntime-gpu). Without it, run "
        "the ONNX graphs as they are: `SMISPipeline.from_pretrained(..., backend=\"onnx\")` uses CUDA "
        "or CPU, and the .onnx files work with any ONNX runtime.")


def resolve_route(route: str = "auto") -> str:
    """The route to use (``tensorrt`` preferred), or :class:`TensorRTUnavailable`."""
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    status = tensorrt_status()
    usable = [r for r in ("tensorrt", "onnxruntime") if status[r].startswith("ok")]
    if route != "auto":
        if route not in usable:
            raise TensorRTUnavailable(unavailable_message(status))
        return route
    if not usable:
        raise TensorRTUnavailable(unavailable_message(status))
    return usable[0]


def _profile_shapes(meta: dict[str, str], opt_batch: int, max_batch: int,
                    height: int | None, width: int | None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape per input name, batch 1..max at one image size."""
    config = config_from_metadata(meta)
    h, w = height or config.height, width or config.width
    per_image = {"labels": (1, h, w), "photo": (3, h, w), "z": config.latent_shape(h, w)}
    names = ("labels", "z") if meta.get("smis.graph") == "generator" else ("photo", "labels")
    return {n: ((1, *per_image[n]), (opt_batch, *per_image[n]), (max_batch, *per_image[n])) for n in names}


def build_engine(onnx_path: str | os.PathLike, out_dir: str | os.PathLike | None = None, fp16: bool = True,
                 route: str = "auto", opt_batch: int = 1, max_batch: int = 8, height: int | None = None,
                 width: int | None = None, workspace_gib: float = 4.0) -> EngineResult:
    """Build a TensorRT engine for one exported graph; raises :class:`TensorRTUnavailable`."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX graph at {onnx_path}; export one with `python -m export onnx`")
    route = resolve_route(route)
    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    shapes = _profile_shapes(meta, opt_batch, max_batch, height, width)
    out_dir = Path(out_dir) if out_dir else onnx_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    precision = "fp16" if fp16 else "fp32"
    start = time.perf_counter()
    if route == "tensorrt":
        path = _build_with_tensorrt(onnx_path, out_dir / f"{onnx_path.stem}-{precision}.engine", fp16, shapes,
                                    workspace_gib)
    else:
        path = _build_with_onnxruntime(onnx_path, out_dir, fp16, shapes)
    result = EngineResult(route, path, precision, time.perf_counter() - start)
    logger.info("TensorRT %s engine for %s built in %.0f s via %s: %s", precision, onnx_path.name,
                result.seconds, route, path)
    return result


def _build_with_tensorrt(onnx_path: Path, engine_path: Path, fp16: bool, shapes: dict,
                         workspace_gib: float) -> Path:
    trt, _ = _import_tensorrt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # TensorRT < 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} (see its log above)")
    engine_path.write_bytes(bytes(serialized))
    return engine_path


def _build_with_onnxruntime(onnx_path: Path, cache: Path, fp16: bool, shapes: dict) -> Path:
    def fmt(i: int) -> str:
        return ",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in shapes.items())

    options = {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
               "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
               "trt_profile_min_shapes": fmt(0), "trt_profile_opt_shapes": fmt(1), "trt_profile_max_shapes": fmt(2)}
    session = make_session(onnx_path, [(TENSORRT, options), CUDA, CPU])
    if session.get_providers()[0] != TENSORRT:
        raise TensorRTUnavailable(unavailable_message(tensorrt_status()))
    feed = {}
    for inp in session.get_inputs():
        shape = shapes[inp.name][1]
        feed[inp.name] = (np.zeros(shape, np.int64) if "int64" in inp.type else np.zeros(shape, np.float32))
    session.run(None, feed)  # the engine is built (and cached) on the first run
    return cache


def default_engine_cache() -> Path:
    return cache_root() / "tensorrt"
