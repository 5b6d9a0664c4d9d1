"""Loading the demo once: the model (backend choice, the untrained fallback), the human parser, the
references, and the queued page. ``app.py`` parses the options and launches what :func:`create_app` builds.

If no model is given and the bundled one is missing, an *untrained* GroupDNet is built so the UI
still works, and a banner says so on every page — never silently. If no parser is given and the
bundled one is missing, the demo runs without mask prediction and "Start from a photo" says so.
A model folder without ONNX graphs gets them from ``exporter`` (``export.onnx.export_model``, passed
in by the caller: ``demo/`` does not import ``export/``).
"""

from __future__ import annotations

import logging
import os
import tempfile

import gradio as gr
import torch

from smis import GroupDNet, SMISPipeline, get_config
from smis.backends import auto_device
from smis.backends.onnx import Exporter
from smis.hub import BUNDLED_MODEL_DIR, MODEL_ENV, measured_class_control
from smis.parsing import BUNDLED_PARSER_DIR, HumanParser
from smis.precision import choose_dtype

from .browser import BrowserModel, find_browser_model
from .browser import app_kwargs as browser_app_kwargs
from .references import load_references
from .ui import build_demo

logger = logging.getLogger(__name__)

FALLBACK_BANNER = ("Untrained fallback model — the trained CCP weights are not bundled yet; "
                   "images will look like noise/blobs")
NO_PARSER_NOTE = ("The trained human parser is not bundled yet (smis/assets/ccp-parser), so masks cannot be "
                  "predicted from photos")


def resolve_backend(backend: str, device: str | None) -> str:
    """``auto`` -> ``onnx`` on a CPU (the fastest there, see the README's speed table), ``torch`` on CUDA."""
    if backend != "auto":
        return backend
    if device is not None:
        return "torch" if device.startswith("cuda") else "onnx"
    return "torch" if torch.cuda.is_available() else "onnx"


def resolve_dtype(dtype: str | None, backend: str, device: str | None) -> str | None:
    """``--dtype``: ``auto`` (or none) -> float32 on a CPU, bf16 on a CUDA GPU that has it
    (:func:`smis.precision.choose_dtype`; an explicit bf16 where it is not native warns with the measured
    slowdown). The ONNX backend picks its graphs itself: only an explicit name is passed on."""
    if backend == "onnx":
        return None if dtype in (None, "auto") else dtype
    name, why = choose_dtype(dtype or "auto", device or auto_device())
    logger.info("precision: %s", why)
    return name


def parse_size(text: str) -> int:
    """``10mb``, ``512kb``, ``1gb`` or a byte count -> bytes."""
    t = text.strip().lower()
    for suffix, mult in (("gb", 2**30), ("mb", 2**20), ("kb", 2**10), ("b", 1)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def _backend_kwargs(backend: str, exporter: Exporter | None) -> dict:
    """ONNX Runtime: a model folder without .onnx graphs gets them exported once, into the cache."""
    return {"exporter": exporter} if backend == "onnx" and exporter is not None else {}


def build_fallback_model(backend: str, device: str | None, exporter: Exporter | None = None) -> SMISPipeline:
    """An untrained ``demo`` GroupDNet (fixed seed) in a temp folder, loaded like a real one."""
    logger.warning(FALLBACK_BANNER)
    with tempfile.TemporaryDirectory(prefix="smis-untrained-") as folder:  # loaded, then deleted
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            GroupDNet(get_config("demo")).save_pretrained(folder, metadata={"trained": "false"})
        return SMISPipeline.from_pretrained(folder, backend=backend, device=device,
                                            **_backend_kwargs(backend, exporter))


def load_pipeline(model: str | None, backend: str = "auto", device: str | None = None,
                  exporter: Exporter | None = None, dtype: str | None = None) -> tuple[SMISPipeline, str | None]:
    """The pipeline, and the banner to show (``None`` for a real model).

    Only the *default* model may fall back: a model you named that cannot be loaded is an error.
    """
    backend = resolve_backend(backend, device)
    if model is None and not os.environ.get(MODEL_ENV) and not BUNDLED_MODEL_DIR.is_dir():
        return build_fallback_model(backend, device, exporter), FALLBACK_BANNER
    dtype = resolve_dtype(dtype, backend, device)
    pipe = SMISPipeline.from_pretrained(model, backend=backend, device=device, dtype=dtype,
                                        **_backend_kwargs(backend, exporter))
    return pipe, None


def load_parser(name: str | None, device: str | None = None) -> tuple[HumanParser | None, str | None]:
    """The human parser for "Start from a photo", and a note when there is none.

    Only the *default* parser may be missing: one you named that cannot be loaded is an error.
    """
    if name is not None and name.strip().lower() == "none":
        return None, "Mask prediction is turned off on this server (--parser none)"
    if name is None and not (BUNDLED_PARSER_DIR / "config.json").is_file():
        logger.warning("%s; \"Start from a photo\" needs masks drawn by hand", NO_PARSER_NOTE)
        return None, NO_PARSER_NOTE
    parser = HumanParser.from_pretrained(name, device=device)
    logger.info("human parser: %s (%s)", name or BUNDLED_PARSER_DIR, parser.backend)
    return parser, None


def model_class_control(pipe: SMISPipeline) -> dict[str, float]:
    """The per-class re-roll strength measured on val, from the model folder's metrics.json ({} if none)."""
    return measured_class_control(pipe.model_dir, pipe.class_names) if pipe.model_dir else {}


def create_app(model: str | None = None, backend: str = "auto", device: str | None = None,
               parser: str | None = None, examples: str | None = None, cache_examples: bool = True,
               max_upload_bytes: int | None = None, max_queue: int = 32, concurrency: int | None = None,
               exporter: Exporter | None = None, browser: str = "auto", dtype: str | None = None) -> gr.Blocks:
    """The whole demo, loaded once and queued: ``max_queue`` requests wait at most, ``concurrency``
    run at once (default: 1 on CPU, 4 on GPU). ``browser``: ``auto`` lets the page run generate and
    re-roll itself where it can (the model's fp32 ONNX graphs, served by the routes of
    :func:`app_kwargs`), ``off`` keeps everything on the server. Raises ``ValueError`` for a model or
    parser that cannot be loaded. ``dtype``: see :func:`resolve_dtype`."""
    pipe, banner = load_pipeline(model, backend, device, exporter, dtype)
    human_parser, parser_note = load_parser(parser, device)
    try:
        refs = load_references(examples, class_names=pipe.config.class_names)
    except ValueError as err:
        logger.error("examples not loaded: %s", err)
        refs = []
    browser_model = find_browser_model(pipe, browser)
    logger.info("in-browser inference: %s", ", ".join(p.name for p in browser_model.graphs.values())
                if browser_model.available else f"off ({browser_model.reason})")
    demo = build_demo(pipe, references=refs, banner=banner, cache_examples=cache_examples,
                      max_upload_bytes=max_upload_bytes, parser=human_parser, parser_note=parser_note,
                      class_control={} if banner else model_class_control(pipe), browser=browser_model)
    demo.browser_model = browser_model  # for app_kwargs and tests
    on_gpu = not str(pipe.backend.device).lower().startswith("cpu")
    return demo.queue(max_size=max_queue, default_concurrency_limit=concurrency or (4 if on_gpu else 1))


def app_kwargs(demo: gr.Blocks, isolate: bool = True) -> dict:
    """``demo.launch(app_kwargs=...)`` for a demo of :func:`create_app`: the routes the page's in-browser
    inference loads its script, runtime and graphs from (``/smis/...``, :mod:`demo.browser`), and with
    ``isolate`` the headers that let it run on several threads (:class:`demo.browser.CrossOriginIsolation`)."""
    model: BrowserModel | None = getattr(demo, "browser_model", None)
    return browser_app_kwargs(model, isolate=isolate) if model is not None else {}
