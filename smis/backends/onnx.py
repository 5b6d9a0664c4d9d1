"""The ONNX Runtime backend: the exported graphs behind the same API as the PyTorch backend.

    pipe = SMISPipeline.from_pretrained("path/to/model", backend="onnx")   # CPU, CUDA or TensorRT

A model folder holds the graphs ``python -m export onnx`` writes (file names and metadata:
:mod:`smis.onnx_format`). A folder with only safetensors has its graphs exported on first use
when an ``exporter`` is passed (``export.onnx.export_model``; smis does not import ``export``),
into a cache folder keyed by the weights' hash (``$SMIS_CACHE``, else ``$XDG_CACHE_HOME/smis`` or
``~/.cache/smis``, then ``onnx/<hash>``); without one the error says to run ``python -m export
onnx``. A folder with the .onnx files alone works too: the config comes from their metadata.

Execution providers are tried in the order TensorRT -> CUDA -> CPU among those this onnxruntime
build lists; what a session *actually* got is read back from ``session.get_providers()``
(``get_available_providers()`` lists GPU providers even where their libraries are missing).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import SMISConfig
from ..hub import resolve_model_dir
from ..layers import cgnorm_channels
from ..model import GroupDNet
from ..onnx_format import (
    ALL_GRAPH_KINDS,
    FP16_SUFFIX,
    GENERATOR_FILE,
    GRAPH_KEY,
    SOURCE_KEY,
    config_from_metadata,
    graph_file_name,
    graph_kinds,
    weights_file_digest,
)
from .common import LabelBranchCache, parse_dtype

logger = logging.getLogger(__name__)

#: Environment variable naming the cache folder for exported graphs and TensorRT engines.
CACHE_ENV = "SMIS_CACHE"

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_ORDER = (TENSORRT, CUDA, CPU)


def cache_root() -> Path:
    """``$SMIS_CACHE``, else ``$XDG_CACHE_HOME/smis``, else ``~/.cache/smis``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "smis"


def cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# Sessions and providers
# ---------------------------------------------------------------------------------------------

def _ort():
    """``onnxruntime``, imported on first use: the PyTorch backend works without it."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("the ONNX backend needs onnxruntime: pip install onnxruntime "
                          "(or onnxruntime-gpu on a CUDA machine, never both)") from err
    return ort


def provider_candidates(device: str | None = None, fp16: bool = False,
                        trt_cache: str | os.PathLike | None = None) -> list[str | tuple[str, dict]]:
    """The providers to ask for, best first, among those this onnxruntime build lists.

    ``device``: ``None`` / ``"auto"`` (TensorRT -> CUDA -> CPU), ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` (CUDA -> CPU) or ``"tensorrt"`` / ``"tensorrt:N"`` (TensorRT -> CUDA -> CPU).
    """
    ort = _ort()
    kind, _, index = (device or "auto").lower().partition(":")
    if index and not index.isdigit():
        raise ValueError(f"bad device {device!r}; use auto, cpu, cuda, cuda:N or tensorrt")
    device_id = int(index or 0)
    wanted = {"auto": PROVIDER_ORDER, "cpu": (CPU,), "cuda": (CUDA, CPU), "gpu": (CUDA, CPU),
              "tensorrt": PROVIDER_ORDER, "trt": PROVIDER_ORDER}.get(kind)
    if wanted is None:
        raise ValueError(f"the ONNX backend runs on auto, cpu, cuda, cuda:N or tensorrt, not {device!r}")
    available = set(ort.get_available_providers())
    out: list[str | tuple[str, dict]] = []
    for p in wanted:
        if p not in available:
            continue
        if p == TENSORRT:
            cache = Path(trt_cache) if trt_cache else cache_root() / "tensorrt"
            cache.mkdir(parents=True, exist_ok=True)
            out.append((p, {"device_id": device_id, "trt_fp16_enable": bool(fp16),
                            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}))
        elif p == CUDA:
            # TF32 off for fp32 graphs: "fp32" stays within the 1e-4 parity bound with PyTorch.
            out.append((p, {"device_id": device_id, "use_tf32": 0 if not fp16 else 1}))
        else:
            out.append(p)
    if CPU not in out:
        out.append(CPU)
    return out


def session_options(threads: int | None = None, quiet: bool = False):
    """Graph optimisation level "all", intra-op threads = cores (or ``threads``), one inter-op, and
    no spin-waiting between runs.

    ONNX Runtime's worker threads spin for a while after each run by default. The app alternates
    sessions (parser -> encoder -> generator for a photo; maps -> render graphs for a mask), and the
    previous session's spinning threads then take the cores from the next one. On 2 cores, in the
    round-robin ``python -m export.bench --preset ccp-cpu`` (README), spinning made a new mask through
    ONNX Runtime 79 instead of 50 ms and PyTorch eager 124 instead of 87 ms; a session run on its own,
    repeatedly, loses nothing measurable without it.
    """
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    so.intra_op_num_threads = int(threads) if threads else cpu_cores()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if quiet:
        # A GPU provider whose libraries are missing logs an [E] line and falls back to CPU; we
        # read back and log what the session got instead.
        so.log_severity_level = 4
    return so


def make_session(path: str | os.PathLike, providers: list | None = None, threads: int | None = None):
    """An ``InferenceSession`` on ``path`` with a clear error for missing or corrupt files."""
    ort = _ort()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX graph at {path}; export one with `python -m export onnx`")
    providers = providers or [CPU]
    names = [p if isinstance(p, str) else p[0] for p in providers]
    if any(n != CPU for n in names):
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            try:  # CUDA / cuDNN from the pip wheels or torch, where present
                preload()
            except Exception:  # noqa: BLE001 - best effort; the session reports what it got
                pass
    while True:
        try:
            return ort.InferenceSession(str(path), session_options(threads, quiet=len(names) > 1),
                                        providers=providers)
        except Exception as err:  # onnxruntime raises its own pybind classes (InvalidProtobuf, Fail...)
            if len(providers) > 1:  # a GPU provider that cannot start: try the next one
                logger.warning("ONNX Runtime could not start %s (%s); trying %s", names[0],
                               str(err).strip()[:200], names[1])
                providers, names = providers[1:], names[1:]
                continue
            raise ValueError(
                f"{path} is not a loadable ONNX graph ({type(err).__name__}: {str(err).strip()[:300]}); "
                "delete it and export again with `python -m export onnx --model <model folder>`") from err


# ---------------------------------------------------------------------------------------------
# Finding or making the graphs
# ---------------------------------------------------------------------------------------------

#: Writes a model's graphs into a folder: ``export.onnx.export_model`` (model, folder, fp16=, metadata=).
Exporter = Callable[..., object]


def _resolve_folder(name_or_path: str | os.PathLike | None, revision: str | None) -> Path:
    """A local folder with exported graphs as it is; anything else through the Hub resolver."""
    if name_or_path is not None:
        p = Path(name_or_path).expanduser()
        if p.is_dir() and ((p / GENERATOR_FILE).is_file() or (p / graph_file_name("generator", True)).is_file()):
            return p
    return resolve_model_dir(name_or_path, revision)


def _graphs_in(folder: Path, fp16: bool) -> dict[str, Path]:
    found = {k: folder / graph_file_name(k, fp16) for k in ALL_GRAPH_KINDS}
    return {k: p for k, p in found.items() if p.is_file()}


def ensure_graphs(folder: Path, fp16: bool = False, cache_dir: str | os.PathLike | None = None,
                  use_folder: bool = True, exporter: Exporter | None = None) -> dict[str, Path]:
    """The exported graphs of a model folder by kind (``generator``, ``encoder``, and the optional
    pair ``generator_maps`` / ``generator_render``), exporting them if the folder has none.

    Graphs in the folder itself win; else the cache (``cache_dir``, default :func:`cache_root` /
    onnx, then a folder named by the hash of the weights) is used, filled from the safetensors on
    first use by ``exporter``; without one, a missing export is an error saying how to make it.
    """
    found = _graphs_in(folder, fp16) if use_folder else {}
    if "generator" in found:
        old_label_graph = folder / f"generator-label{FP16_SUFFIX if fp16 else ''}.onnx"
        if "generator_maps" not in found and old_label_graph.is_file():
            logger.warning("%s holds graphs exported before generator-maps.onnx: re-rolls run the whole "
                           "generator; `python -m export onnx --model %s` re-exports them", folder, folder)
        return found
    digest = weights_file_digest(folder)
    target = (Path(cache_dir) if cache_dir else cache_root() / "onnx") / digest[:24]
    found = _graphs_in(target, fp16)
    if set(found) != set(graph_kinds(SMISConfig.load(folder / "config.json"))):
        name = graph_file_name("generator", fp16)
        if exporter is None:
            raise ValueError(
                f"no up-to-date {name} for {folder}: export the graphs with `python -m export onnx --model "
                f"{folder}{' --fp16' if fp16 else ''}`, or pass exporter=export.onnx.export_model to export "
                "them on first use")
        logger.info("no %s in %s: exporting it once into %s", name, folder, target)
        exporter(GroupDNet.from_pretrained(folder), target, fp16=fp16, metadata={SOURCE_KEY: digest})
        found = _graphs_in(target, fp16)
    return found


def label_branch_bytes(config: SMISConfig, height: int, width: int, fp16: bool = False) -> int:
    """Memory of one mask's label-branch maps (every CG-Norm's scale and shift), in bytes."""
    h, w = config.base_grid(height, width)
    total = 0
    for i, (fin, fout, _) in enumerate(config.generator.blocks):  # block i runs after i x2 upsamplings
        total += 2 * sum(cgnorm_channels(fin, fout).values()) * (h << i) * (w << i)
    return total * (2 if fp16 else 4)


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------

class OnnxBackend:
    """GroupDNet through ONNX Runtime; implements :class:`smis.backends.Backend`.

    Like the PyTorch backend, it keeps the label branch of the last mask (every CG-Norm's scale
    and shift, which do not depend on the codes) when the pair ``generator-maps.onnx`` /
    ``generator-render.onnx`` is there: a new mask runs the first, which returns the image and those
    maps in one pass, and a re-roll, mix or morph on an unchanged mask then runs only the render
    graph. The maps stay in ONNX Runtime's memory (on the GPU with CUDA/TensorRT); masks whose maps
    would exceed ``label_cache_mib`` take the one-graph path.
    """

    name = "onnxruntime"
    #: The model folder it was loaded from (``None``: built from graph files directly).
    model_dir: Path | None = None

    def __init__(self, generator_path: str | os.PathLike, encoder_path: str | os.PathLike | None = None,
                 config: SMISConfig | None = None, device: str | None = None, fp16: bool = False,
                 threads: int | None = None, trt_cache: str | os.PathLike | None = None,
                 maps_path: str | os.PathLike | None = None, render_path: str | os.PathLike | None = None,
                 label_cache_mib: float = 1024.0):
        self.generator_path = Path(generator_path)
        self.encoder_path = Path(encoder_path) if encoder_path else None
        self.fp16 = fp16
        self.threads = threads
        self.providers = provider_candidates(device, fp16, trt_cache)
        self.requested_device = device or "auto"
        self.session = make_session(self.generator_path, self.providers, threads)
        self.config = self._check_graph(self.session, self.generator_path, "generator", config)
        got = self.session.get_providers()
        self.device = got[0]
        asked = [p if isinstance(p, str) else p[0] for p in self.providers]
        if asked[0] != got[0]:
            logger.warning("ONNX Runtime could not use %s here (missing libraries?): running on %s",
                           asked[0], got[0])
        elif got[0] == CPU and self.requested_device.split(":")[0] not in ("auto", "cpu"):
            logger.warning("device=%r asked for, but this onnxruntime build has no GPU provider "
                           "(install onnxruntime-gpu instead of onnxruntime): running on CPU", device)
        # The other sessions ask only for what this one got (no second failed GPU start).
        self.providers = [p for p, name in zip(self.providers, asked) if name in got] or [CPU]
        logger.info("ONNX backend: %s on %s (%s, %d threads)", self.generator_path.name, self.device,
                    "fp16" if fp16 else "fp32", self.session.get_session_options().intra_op_num_threads)
        self._encoder = None
        # The pair for re-rendering one mask (optional).
        self.label_cache_bytes = int(label_cache_mib * 2**20)
        self._maps = self._render = None
        if maps_path and render_path and Path(maps_path).is_file() and Path(render_path).is_file():
            self._maps = make_session(maps_path, self.providers, threads)
            self._check_graph(self._maps, Path(maps_path), "generator_maps", self.config)
            self._render = make_session(render_path, self.providers, threads)
            self._check_graph(self._render, Path(render_path), "generator_render", self.config)
        self.label_cache: LabelBranchCache[list] = LabelBranchCache()
        # Where the cached maps live: on the GPU for the CUDA / TensorRT providers.
        options = self.session.get_provider_options().get(self.device, {})
        self._maps_device = ("cpu", 0) if self.device == CPU else ("cuda", int(options.get("device_id", 0)))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, device: str | None = None,
                        dtype: Any = None, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, threads: int | None = None,
                        trt_cache: str | os.PathLike | None = None, label_cache_mib: float = 1024.0,
                        exporter: Exporter | None = None) -> OnnxBackend:
        """A model folder (with ``generator.onnx`` or only safetensors), a Hub repo id, or ``None``
        (``$SMIS_MODEL`` / the bundled model). ``dtype``: float32 (default) or float16 (fp16 graphs).
        ``device``: auto (TensorRT -> CUDA -> CPU), cpu, cuda[:N] or tensorrt. ``threads``: CPU
        intra-op threads (default: the cores). ``exporter`` (``export.onnx.export_model``) exports
        a folder without graphs on first use, into ``cache_dir``.
        """
        fp16 = parse_dtype(dtype) == torch.float16
        if not fp16 and parse_dtype(dtype) != torch.float32:
            raise ValueError(f"the ONNX backend runs float32 or float16 graphs, not {dtype!r}")
        folder = _resolve_folder(name_or_path, revision)
        config_file = folder / "config.json"
        config = SMISConfig.load(config_file) if config_file.is_file() else None
        for use_folder in (True, False):
            graphs = ensure_graphs(folder, fp16, cache_dir, use_folder, exporter)
            backend = cls(graphs["generator"], graphs.get("encoder"), config, device, fp16, threads, trt_cache,
                          graphs.get("generator_maps"), graphs.get("generator_render"), label_cache_mib)
            source = backend.session.get_modelmeta().custom_metadata_map.get(SOURCE_KEY)
            if not (source and graphs["generator"].parent == folder and any(folder.glob("model*.safetensors"))
                    and source != weights_file_digest(folder)):
                break
            logger.warning("%s was exported from other weights than the safetensors now in %s; using a "
                           "fresh export instead (run `python -m export onnx --model %s` to replace it)",
                           graphs["generator"].name, folder, folder)
        backend.model_dir = folder
        return backend

    # -- the Backend protocol --------------------------------------------------------------
    def generate(self, labels: np.ndarray, z: np.ndarray) -> np.ndarray:
        """labels (N, H, W) int class ids, z (N, 8C, H/64, W/64) -> (N, 3, H, W) float32 in [-1, 1]."""
        return self._generate(labels, z, "image")

    def generate_uint8(self, labels: np.ndarray, z: np.ndarray) -> np.ndarray:
        """As :meth:`generate`, but (N, H, W, 3) uint8 RGB straight from the graph."""
        return self._generate(labels, z, "image_uint8")

    def encode(self, photos: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """photos (N, 3, H, W) float32 in [-1, 1], labels (N, H, W) -> (mu, logvar)."""
        photos = np.ascontiguousarray(photos, dtype=np.float32)
        lab = self._labels(labels)
        if photos.ndim != 4 or photos.shape[1] != 3 or photos.shape[0] != lab.shape[0] \
                or photos.shape[2:] != lab.shape[2:]:
            raise ValueError(f"photos must be (N, 3, H, W) matching labels {lab.shape[:1] + lab.shape[2:]}, "
                             f"got {photos.shape}")
        mu, logvar = self.encoder_session.run(["mu", "logvar"], {"photo": photos, "labels": lab})
        return mu, logvar

    # -- helpers ---------------------------------------------------------------------------
    def _generate(self, labels: np.ndarray, z: np.ndarray, output: str) -> np.ndarray:
        lab, zz = self._check(labels, z)
        h, w = lab.shape[2:]
        if self._render is None or not self.label_cache.one_mask(lab) or \
                label_branch_bytes(self.config, h, w, self.fp16) > self.label_cache_bytes:
            return self.session.run([output], {"labels": lab, "z": zz})[0]
        first: list[np.ndarray] = []

        def render_new_mask() -> list:  # a new mask: the image and its maps in one pass, the maps kept
            image, maps = self._render_new_mask(lab[:1], zz, output)
            first.append(image)
            return maps

        maps = self.label_cache.get(lab[0], render_new_mask)
        if first:
            return first[0]
        binding = self._render.io_binding()
        binding.bind_cpu_input("z", zz)
        for inp, value in zip(self._render.get_inputs()[1:], maps):
            binding.bind_ortvalue_input(inp.name, value)
        binding.bind_output(output, "cpu")
        self._render.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _render_new_mask(self, lab: np.ndarray, z: np.ndarray, output: str) -> tuple[np.ndarray, list]:
        """The maps graph on one mask (1, 1, H, W) and N codes: (the image output on the host, the
        label-branch maps left where the provider runs)."""
        kind, index = self._maps_device
        binding = self._maps.io_binding()
        binding.bind_cpu_input("labels", np.ascontiguousarray(lab))
        binding.bind_cpu_input("z", z)
        binding.bind_output(output, "cpu")
        names = [o.name for o in self._maps.get_outputs() if o.name not in ("image", "image_uint8")]
        for name in names:
            binding.bind_output(name, kind, index)
        self._maps.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), outputs[1:]

    @staticmethod
    def _check_graph(session, path: Path, kind: str, config: SMISConfig | None) -> SMISConfig:
        meta = session.get_modelmeta().custom_metadata_map
        own = config_from_metadata(meta, str(path))
        if config is not None and own != config:
            raise ValueError(
                f"{path} was exported from another model than its folder's config.json "
                f"({own.name}, {own.num_classes} classes, {own.height}x{own.width} vs {config.name}, "
                f"{config.num_classes} classes, {config.height}x{config.width}); export it again with "
                "`python -m export onnx --model <folder>` or delete the stale .onnx files")
        if meta.get(GRAPH_KEY) != kind:
            raise ValueError(f"{path} holds the {meta.get(GRAPH_KEY)!r} graph, not the {kind}")
        return own

    @property
    def encoder_session(self):
        if self._encoder is None:
            if self.encoder_path is None or not self.encoder_path.is_file():
                raise ValueError(f"no {graph_file_name('encoder', self.fp16)} next to {self.generator_path}; "
                                 "export the encoder too (`python -m export onnx` without --no-encoder)")
            session = make_session(self.encoder_path, self.providers, self.threads)
            self._check_graph(session, self.encoder_path, "encoder", self.config)
            self._encoder = session
        return self._encoder

    def _labels(self, labels: np.ndarray) -> np.ndarray:
        lab = np.asarray(labels)
        if lab.ndim == 3:
            lab = lab[:, None]
        if lab.ndim != 4 or lab.shape[1] != 1:
            raise ValueError(f"labels must be (N, H, W) class ids, got shape {np.shape(labels)}")
        h, w = lab.shape[2:]
        m = self.config.size_multiple
        if h % m or w % m or h == 0 or w == 0:
            raise ValueError(f"height and width must be positive multiples of {m}, got {h}x{w}")
        return np.ascontiguousarray(lab, dtype=np.int64)

    def _check(self, labels: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lab = self._labels(labels)
        zz = np.ascontiguousarray(z, dtype=np.float32)
        n, _, h, w = lab.shape
        want = (n, *self.config.latent_shape(h, w))
        if zz.shape != want:
            raise ValueError(f"z must be {want} for {n} label maps of {h}x{w}, got {zz.shape}")
        return lab, zz

