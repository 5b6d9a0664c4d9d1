"""Inference in the visitor's browser: onnxruntime-web (WebGPU or WebAssembly) runs the exported generator.

The server keeps everything that is not the network, so both paths give the same results:

1. a click on *Generate*, *Re-roll*, *Re-roll all unlocked* or *Same codes, new mask* with
   *Run in your browser* ticked (``demo/static/js/page.js``) triggers a browser job instead of the
   server event: the server reads the canvas into class ids (:meth:`LabelCanvas.to_labels`, the same
   code as the server path) and makes the codes (:func:`smis.codes.class_noise`: the same seed gives
   the same codes in both paths, bit for bit), but runs no model (:meth:`BrowserJobs.generate` ...);
2. the page renders the job with the ``generator-maps`` / ``generator-render`` graphs (a re-roll on
   an unchanged mask runs only the render graph) and sends the PNG back: on WebGPU where the browser
   offers an adapter (the first run of each graph checked against the CPU kernels), else WebAssembly;
3. the server checks it (decoded once) and saves it as every result is saved: a PNG with its mask and
   codes (:meth:`BrowserJobs.finish`; the page's compressed pixels kept as they are, not encoded again), so
   downloads, re-opening, the variant strip, mixing and morphing work unchanged. A browser that cannot
   run the model (no WebAssembly SIMD, a runtime or graph that does not load, an error while running)
   says why and the server path takes over.

The routes under ``/smis/`` serve only a fixed list of files, read when the app starts: the page's
modules and the vendored runtime (``demo/static``) and the model's fp32 graphs. A request names a
key of that list; nothing in it is ever joined to a path, so ``..``, absolute paths and links lead
nowhere (404). A vendored file stored gzip-compressed (``NAME.gz``: the WebAssembly files, a quarter of
their size) is listed as ``NAME`` and sent with ``Content-Encoding: gzip`` (decompressed for a client that
does not accept gzip).

The app also makes its pages *cross-origin isolated* (:data:`ISOLATION_HEADERS` on every response,
:class:`CrossOriginIsolation`), which lets onnxruntime-web run on several WebAssembly threads (it needs
``SharedArrayBuffer``): on a quiet 2-core host two threads took 0.69–0.71× the time of one per generate at
384×256 (``python -m devtools.browser_bench``, README). A page embedded in another site's frame that is
not isolated itself (a Space inside huggingface.co) stays on one thread; ``app_kwargs(..., isolate=False)``
(``python app.py --browser-threads 1``) sends no such headers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from smis import ClassCodes, ResultMetadata, SMISConfig, SMISPipeline, SMISResult
from smis.backends.onnx import ensure_graphs, make_session
from smis.onnx_format import GRAPH_KEY, SOURCE_KEY, config_from_metadata, graph_file_name, weights_file_digest

from .handlers import MAX_SEED, DemoHandlers, event
from .uploads import RESULT, UserError, open_image_bytes

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
ORT_WEB_DIR = STATIC_DIR / "vendor" / "onnxruntime-web"
#: Every route of this module starts with it.
PREFIX = "/smis"
#: The graphs the page may load, fp32 (what the browser runs): the cached-mask pair, else the generator;
#: and the preview where the model has a local enhancer (its global generator's smaller image, drawn while
#: the brush moves).
BROWSER_GRAPHS = ("generator_maps", "generator_render", "generator", "generator_preview")
#: The server button each browser job stands in for (the page falls back to it).
SERVER_BUTTONS = {"generate": "generate", "reroll": "reroll", "reroll_unlocked": "reroll-unlocked",
                  "mask_edit": "apply-mask-edit", "live": "", "morph": ""}
#: The WebGPU build of the vendored runtime (devtools/vendor_ort_web.py: WEBGPU_FILES): its module; the page
#: tries it where the browser offers a WebGPU adapter.
WEBGPU_MODULE = "ort.jspi.min.mjs"
WEBGPU_WASM = "ort-wasm-simd-threaded.jspi.wasm"
MEDIA_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
               ".onnx": "application/octet-stream", ".json": "application/json", ".md": "text/markdown",
               ".css": "text/css"}
#: A rendered image is the model's size: far below this.
MAX_RENDERED_BYTES = 16 * 2**20


def _vendored(name: str) -> bool:
    """Whether the vendored runtime has the file ``name``, stored as itself or gzip-compressed (``NAME.gz``)."""
    return (ORT_WEB_DIR / name).is_file() or (ORT_WEB_DIR / (name + ".gz")).is_file()


def ort_web_version() -> str | None:
    """The vendored onnxruntime-web version (``None`` when the files are missing)."""
    version = ORT_WEB_DIR / "VERSION"
    return version.read_text().strip() if version.is_file() and _vendored("ort-wasm-simd-threaded.wasm") else None


def ort_web_webgpu() -> bool:
    """Whether the vendored runtime has its WebGPU build (the module and its WebAssembly)."""
    return _vendored(WEBGPU_MODULE) and _vendored(WEBGPU_WASM)


@dataclass(frozen=True)
class BrowserModel:
    """What the page may run: the model's fp32 graphs by kind (none: browser inference is off, and
    ``reason`` says why, in words for the visitor)."""

    config: SMISConfig
    graphs: Mapping[str, Path] = field(default_factory=dict)
    reason: str = ""

    @property
    def available(self) -> bool:
        return bool(self.graphs)

    @property
    def tag(self) -> str:
        """A short hash of the graphs: in their URLs, so a browser cache never mixes two exports."""
        h = hashlib.sha256()
        for kind in sorted(self.graphs):
            st = self.graphs[kind].stat()
            h.update(f"{kind}:{self.graphs[kind].name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """``/smis/model.json``: URLs relative to it, the runtime, the model's palette and latent layout."""
        cfg = self.config
        return {
            "available": self.available,
            "reason": self.reason,
            "runtime": {"name": "onnxruntime-web", "version": ort_web_version(),
                        "module": "static/vendor/onnxruntime-web/ort.wasm.min.mjs",
                        "webgpu": f"static/vendor/onnxruntime-web/{WEBGPU_MODULE}" if ort_web_webgpu() else None,
                        "folder": "static/vendor/onnxruntime-web/"},
            "graphs": {k: f"model/{self.tag}/{p.name}" for k, p in self.graphs.items()},
            "model": {"name": cfg.name, "height": cfg.height, "width": cfg.width,
                      "preview": list(cfg.global_size()),
                      "num_classes": cfg.num_classes, "z_channels": cfg.z_channels,
                      "grid": list(cfg.latent_grid()), "class_names": list(cfg.class_names),
                      "palette": [list(c) for c in cfg.palette]},
        }


def _graph_meta(path: Path) -> dict[str, str]:
    return make_session(path).get_modelmeta().custom_metadata_map


def find_browser_model(pipe: SMISPipeline, mode: str = "auto") -> BrowserModel:
    """The fp32 graphs the page may run for ``pipe``'s model, or why there are none.

    The ONNX backend's own graphs when it runs fp32; otherwise (PyTorch, fp16) fp32 graphs that
    already exist for the model folder, in it or in the export cache, exported from its current
    weights. Nothing is exported here: a folder without graphs leaves browser inference off.
    """
    cfg = pipe.config
    if mode == "off":
        return BrowserModel(cfg, reason="it is turned off on this server (--browser off)")
    if ort_web_version() is None:
        return BrowserModel(cfg, reason="this server lacks the onnxruntime-web files "
                                        "(python -m devtools.vendor_ort_web)")
    backend = pipe.backend
    own = getattr(backend, "generator_path", None)
    if own is not None and not getattr(backend, "fp16", False):
        folder = Path(own).parent
        graphs = {k: folder / graph_file_name(k) for k in BROWSER_GRAPHS if (folder / graph_file_name(k)).is_file()}
        return _checked(cfg, graphs, check=False)
    folder = pipe.model_dir
    if folder is None:
        return BrowserModel(cfg, reason="the model was not loaded from a folder with ONNX graphs")
    for use_folder in (True, False):
        try:
            found = ensure_graphs(Path(folder), fp16=False, use_folder=use_folder)
        except (ValueError, OSError):  # no graphs; or a folder gone (the untrained fallback's)
            return BrowserModel(cfg, reason="this model has no exported ONNX graphs yet "
                                            f"(python -m export onnx --model {folder})")
        graphs = {k: found[k] for k in BROWSER_GRAPHS if k in found}
        if not use_folder or not graphs or graphs["generator"].parent != Path(folder) \
                or not any(Path(folder).glob("model*.safetensors")):
            break
        source = _graph_meta(graphs["generator"]).get(SOURCE_KEY)
        if not source or source == weights_file_digest(Path(folder)):
            break
    return _checked(cfg, graphs, check=True)


def _checked(cfg: SMISConfig, graphs: dict[str, Path], check: bool) -> BrowserModel:
    """The pair (maps + render) or the generator alone; with ``check``, each graph's own metadata
    must name this model's config and its kind."""
    preview = {"generator_preview": graphs["generator_preview"]} if "generator_preview" in graphs else {}
    if "generator_maps" in graphs and "generator_render" in graphs:
        graphs = {k: graphs[k] for k in ("generator_maps", "generator_render")} | preview
    elif "generator" in graphs:
        graphs = {"generator": graphs["generator"]} | preview
    else:
        return BrowserModel(cfg, reason="this model has no fp32 generator graph")
    if check:
        for kind, path in graphs.items():
            meta = _graph_meta(path)
            if meta.get(GRAPH_KEY) != kind or config_from_metadata(meta, str(path)) != cfg:
                return BrowserModel(cfg, reason=f"{path.name} was exported from another model "
                                                "(python -m export onnx --model <folder>)")
    return BrowserModel(cfg, graphs)


# -- the routes -----------------------------------------------------------------------------------

def static_files(root: Path = STATIC_DIR) -> dict[str, Path]:
    """Every plain file under ``root`` by its relative POSIX path; links (and what lies behind them)
    are left out. A vendored ``NAME.gz`` is listed as ``NAME`` (see :func:`_gzipped`)."""
    root = root.resolve()
    files: dict[str, Path] = {}
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
        for name in names:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            if path.resolve().is_relative_to(root):
                files[path.relative_to(root).as_posix()] = path
    for key in [k for k in files if k.startswith("vendor/") and k.endswith(".gz")]:
        if key[:-3] not in files:
            files[key[:-3]] = files.pop(key)
    return files


def _gzipped(key: str, path: Path) -> bool:
    """Whether ``path`` holds the gzip-compressed bytes of the file ``key`` names."""
    return path.suffix == ".gz" and not key.endswith(".gz")


def _accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").lower().split(","):
        coding, _, params = part.partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            try:
                return params.strip() == "" or float(q) > 0
            except ValueError:
                return False
    return False


def _gunzipped(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            yield inflate.decompress(block)
    yield inflate.flush()


def _file(path: Path, cache: str, key: str | None = None, request: Request | None = None) -> Response:
    """``path`` as the file ``key`` (default: its own name) names; a gzipped one is sent gzip-encoded, or
    decompressed for a client that does not accept gzip."""
    name = Path(key or path.name)
    media = MEDIA_TYPES.get(name.suffix, "text/plain; charset=utf-8")
    headers = {"Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    if not _gzipped(name.as_posix(), path):
        return FileResponse(path, media_type=media, headers=headers)
    headers["Vary"] = "Accept-Encoding"
    if request is not None and _accepts_gzip(request):
        return FileResponse(path, media_type=media, headers=headers | {"Content-Encoding": "gzip"})
    return StreamingResponse(_gunzipped(path), media_type=media, headers=headers)


def routes(model: BrowserModel, static_root: Path = STATIC_DIR) -> list[BaseRoute]:
    """``/smis/model.json``, ``/smis/static/<file>`` (the page's modules, the runtime) and
    ``/smis/model/<tag>/<graph file>``; any other name is a 404."""
    statics = static_files(static_root)
    graphs = {p.name: p for p in model.graphs.values()}
    tag = model.tag if model.available else None
    info = model.describe()
    not_found = Response("Not Found", status_code=404, media_type="text/plain")

    async def model_json(request: Request) -> Response:
        return JSONResponse(info, headers={"Cache-Control": "no-cache"})

    async def static(request: Request) -> Response:
        key = request.path_params["path"]
        path = statics.get(key)
        return _file(path, "no-cache", key, request) if path is not None else not_found

    async def graph(request: Request) -> Response:
        path = graphs.get(request.path_params["name"])
        if path is None or request.path_params["tag"] != tag or not path.is_file():
            return not_found
        return _file(path, "public, max-age=86400, immutable")

    methods = ["GET", "HEAD"]
    return [Route(f"{PREFIX}/model.json", model_json, methods=methods),
            Route(f"{PREFIX}/static/{{path:path}}", static, methods=methods),
            Route(f"{PREFIX}/model/{{tag}}/{{name}}", graph, methods=methods)]


#: What makes a page cross-origin isolated (``crossOriginIsolated``, ``SharedArrayBuffer``: several
#: WebAssembly threads). Gradio's page loads nothing from other origins, so ``require-corp`` blocks nothing.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


class CrossOriginIsolation:
    """ASGI middleware: :data:`ISOLATION_HEADERS` on every HTTP response (a header already set stays)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_isolated(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in ISOLATION_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_isolated)


def app_kwargs(model: BrowserModel, isolate: bool = True) -> dict[str, Any]:
    """What ``Blocks.launch(app_kwargs=...)`` needs: the routes, ahead of Gradio's own, and (``isolate``,
    with browser inference on) the cross-origin isolation that lets the page use several threads."""
    kwargs: dict[str, Any] = {"routes": routes(model)}
    if isolate and model.available:
        kwargs["middleware"] = [Middleware(CrossOriginIsolation)]
    return kwargs


# -- the jobs -------------------------------------------------------------------------------------

def _labels_b64(labels: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(labels, dtype=np.uint8).tobytes()).decode()


class BrowserJobs:
    """The server's half of an event the browser renders: the job (class ids, codes, seed; no model),
    then :meth:`finish` saves the page's image as a result PNG, as the server path does.

    A job is JSON: ``op`` (a key of :data:`SERVER_BUTTONS`), ``seed``, ``classes`` (re-rolled ones),
    ``height`` / ``width``, ``labels`` (uint8 class ids, base64, row-major) and ``codes``
    (:meth:`ClassCodes.to_dict`, float32 little-endian). The page sends it back with ``image`` (a PNG,
    base64) and ``ms`` (its inference time); the labels, codes and image are checked again there.
    """

    def __init__(self, handlers: DemoHandlers):
        self.h = handlers
        self.config = handlers.config

    def _job(self, op: str, labels: np.ndarray, codes: ClassCodes, seed: int | None,
             classes: list[str] | None = None) -> str:
        if self.config.num_classes > 256:
            raise UserError("In-browser inference handles at most 256 classes; untick 'Run in your browser'.")
        return json.dumps({"op": op, "seed": seed, "classes": classes or [], "height": int(labels.shape[0]),
                           "width": int(labels.shape[1]), "labels": _labels_b64(labels), "codes": codes.to_dict(),
                           "server_button": SERVER_BUTTONS[op]})

    @event
    def generate(self, editor: Any, seed: Any, randomize: bool) -> tuple:
        """Generate's job: the canvas' class ids and the seed's codes. Returns (seed used, label map, job)."""
        seed = self.h.parse_seed(seed, randomize)
        labels = self.h.canvas.to_labels(editor)
        codes, _ = self.h.pipe.sample_codes(seed)
        return seed, self.h.canvas.colorize(labels), self._job("generate", labels, codes, seed)

    @event
    def reroll(self, result_file: Any, class_name: str | None, locked: list[str] | None) -> str:
        result = self.h.files.load_metadata(result_file)
        name = self.h._class_to_reroll(result, class_name, locked)
        return self._reroll_job("reroll", result, [name])

    @event
    def reroll_unlocked(self, result_file: Any, locked: list[str] | None) -> str:
        result = self.h.files.load_metadata(result_file)
        classes = [n for n in self.h.present(result.labels) if n not in (locked or [])]
        if not classes:
            raise UserError("Every class in this mask is locked; untick one under 'Locked classes'.")
        return self._reroll_job("reroll_unlocked", result, classes)

    def _reroll_job(self, op: str, result: ResultMetadata, classes: list[str]) -> str:
        seed = secrets.randbelow(MAX_SEED + 1)
        codes = result.codes.resample(self.h.pipe.class_ids(classes), seed)
        return self._job(op, result.labels, codes, seed, classes)

    @event
    def mask_edit(self, editor: Any, result_file: Any) -> tuple:
        """*Same codes, new mask*: the canvas with the current result's codes. Returns (label map, job)."""
        result = self.h.files.load_metadata(result_file)
        labels = self.h.canvas.to_labels(editor)
        return self.h.canvas.colorize(labels), self._job("mask_edit", labels, result.codes, result.seed)

    @event
    def live(self, editor: Any, result_file: Any, seed: Any, randomize: bool) -> tuple:
        """Live painting, after a stroke: the canvas with the current result's codes (before the first
        result: the seed's). Returns (label map, job)."""
        labels = self.h.canvas.to_labels(editor)
        try:
            current = self.h.files.load_metadata(result_file) if result_file else None
        except UserError:  # expired or foreign: start again from the seed
            current = None
        if current is not None:
            codes, seed = current.codes, current.seed
        else:
            codes, seed = self.h.pipe.sample_codes(self.h.parse_seed(seed, randomize))
        return self.h.canvas.colorize(labels), self._job("live", labels, codes, seed)

    @event(model=True)
    def morph_ends(self, result_file: Any, source_a: str, source_b: str, strip: Any, photo: Any = None,
                   mask: Any = None) -> str:
        """The browser morph's ends: the current mask and the codes of A and B (a reference or your photo
        is encoded here, on the server: the page runs only the generator). Returns the job: the mask,
        ``a`` and ``b`` (codes as :meth:`ClassCodes.to_dict`)."""
        if not source_a or not source_b:
            raise UserError("Choose both ends of the morph (A and B).")
        current = self.h.files.load_metadata(result_file)
        a, b = (self.h._source(s, current, strip, photo, mask).codes() for s in (source_a, source_b))
        if a == b:
            gr.Warning("A and B have the same codes, so every frame is the same; choose two different states.")
        return json.dumps({"op": "morph", "height": int(current.labels.shape[0]),
                           "width": int(current.labels.shape[1]), "labels": _labels_b64(current.labels),
                           "a": a.to_dict(), "b": b.to_dict()})

    # -- the page's image back -------------------------------------------------------------------
    def read_rendered(self, rendered: str) -> tuple[SMISResult, dict]:
        """The page's answer -> the result it describes (checked: the model's size, classes and codes)."""
        cfg = self.config
        try:
            d = json.loads(rendered)
            op, seed, classes = d["op"], d["seed"], list(d["classes"])
            raw = np.frombuffer(base64.b64decode(d["labels"], validate=True), np.uint8)
            png = base64.b64decode(d["image"], validate=True)
            codes = ClassCodes.from_dict(d["codes"])
            ms = float(d["ms"])
            t = float(d.get("t", 0.0))
        except (KeyError, TypeError, ValueError, binascii.Error) as err:
            raise UserError(f"The browser's result is damaged ({err}); generate again.") from err
        if op not in SERVER_BUTTONS or not (seed is None or (isinstance(seed, int) and 0 <= seed <= MAX_SEED)) \
                or not 0.0 <= t <= 1.0:
            raise UserError("The browser's result names an unknown step; generate again.")
        if raw.size != cfg.height * cfg.width or int(raw.max(initial=0)) >= cfg.num_classes:
            raise UserError(f"The browser's mask is not a {cfg.height}x{cfg.width} map of this model's classes.")
        if not self.h.pipe.codes_fit(codes) or any(c not in cfg.class_names for c in classes):
            raise UserError("The browser's codes were not made for this model; generate again.")
        if len(png) > MAX_RENDERED_BYTES:
            raise UserError("The browser's image is too large; generate again.")
        image = open_image_bytes(png, "browser's image", RESULT, MAX_RENDERED_BYTES)
        if image.size != (cfg.width, cfg.height):
            raise UserError(f"The browser's image is {image.size[0]}x{image.size[1]}, not the model's "
                            f"{cfg.width}x{cfg.height}; generate again.")
        labels = raw.reshape(cfg.height, cfg.width).astype(np.int64)
        result = SMISResult(image.convert("RGB"), labels, codes, seed, cfg.name)
        runtime = "webgpu" if d.get("runtime") == "webgpu" else "wasm"
        # the page's PNG is kept as the result's file (with the metadata added) when it shows just that image:
        # RGB, or RGBA with every pixel opaque (a canvas' PNG)
        opaque = image.mode == "RGB" or (image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255))
        return result, {"op": op, "classes": classes, "ms": ms, "threads": d.get("threads"), "t": t,
                        "runtime": runtime, "png": png if opaque else None}

    @event
    def finish(self, rendered: str, strip: Any, chosen: str | None = None,
               locked: list[str] | None = None) -> tuple:
        """The rendered job becomes the current result (saved, in the strip). Returns the result outputs.

        An empty answer (the page fell back to the server) changes nothing.
        """
        if not rendered:
            return (gr.update(),) * 6
        result, info = self.read_rendered(rendered)
        op, classes = info["op"], info["classes"]
        seed = result.seed
        threads = info["threads"] or 1
        where = "in your browser (WebGPU)" if info["runtime"] == "webgpu" else \
            f"in your browser (WASM, {threads} thread{'s' if threads > 1 else ''})"
        note = ""
        if op == "live":  # the current result (and download), not a new variant of the strip
            path = self.h.files.save(result, "smis-live", info["png"])
            return self.h._outputs(result, strip, "live", f"live edit {where}", info["ms"] / 1000.0, chosen,
                                   locked, path=path)
        if op == "generate":
            caption, label = f"generate · seed {seed}", "generate"
        elif op == "reroll":
            name = classes[0] if classes else "?"
            caption, label, chosen = f"re-roll {name} · seed {seed}", "re-roll", name
            note = self.h.weak_code_note(name)
            if note:
                gr.Info(note)
        elif op == "morph":
            caption, label = f"morph frame · t = {info['t']:.2f}", "morph frame"
        elif op == "reroll_unlocked":
            caption, label = f"re-roll unlocked · seed {seed}", "re-roll unlocked"
        else:
            caption, label = "mask edit · same codes", "mask edit"
        return self.h._outputs(result, strip, caption, f"{label} {where}", info["ms"] / 1000.0, chosen, locked,
                               note=note, encoded=info["png"])
