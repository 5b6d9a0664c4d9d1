"""In-browser vs server inference (issue 29): ms per generate, re-roll or morph frame, preview; one run.

    python -m devtools.browser_bench                     # the bundled model, 20 rounds
    python -m devtools.browser_bench --model M --rounds 50 --out runs/bench-browser
    python -m devtools.browser_bench --webgpu swiftshader --rounds 3   # and a WebGPU row (see below)

The page's own code (``demo/static/js/runtime.js``: the vendored onnxruntime-web, WASM SIMD) runs in
headless Chromium, loaded from the demo's routes (``demo.browser.routes``) on 127.0.0.1, on the same
fp32 graphs the server's ONNX Runtime backend runs (``generator-maps`` / ``generator-render``). A
*generate* is a new mask (the maps graph: image + every CG-Norm's maps), a *re-roll* the same mask
with other codes (the render graph alone, exactly what a drag-to-morph frame runs: the kept mask, the
slider's codes) — the two calls of the demo; for a model with a local
enhancer also a *preview* (``generator-preview``: the global generator's smaller image, what live
painting draws while the brush moves; the full image follows when it rests). Rows: ONNX Runtime (CPU) at
1 thread and at every core, the browser on a plain page (1 thread) and on a cross-origin isolated
one (COOP/COEP: onnxruntime-web may use several threads). They run round-robin, one round of each
in turn after warm-up rounds, so load from other processes hits all alike: compare ratios, not
absolute times. Times are the model calls alone (the page's PNG encoding and the server round trips
are not in them). Prints a Markdown table (median ms) with the largest pixel difference between the
browser's and the server's image, and writes it with the raw times to ``--out``.

``--webgpu swiftshader`` adds a row for the page on WebGPU (the runtime asked for it, ``runtime: 'webgpu'``)
in a second Chromium whose WebGPU adapter is SwiftShader: Vulkan emulated on the CPU, so the row shows that
WebGPU runs and matches, not a GPU's speed (on a 2-core machine it is far slower than WebAssembly).
``--webgpu hardware`` asks Chromium for the machine's own GPU instead (where it has one and drivers for it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from demo.browser import ISOLATION_HEADERS, BrowserModel, find_browser_model, ort_web_version, routes
from demo.launch import load_pipeline
from demo.references import DEFAULT_EXAMPLES_DIR
from devtools.common import free_port
from export.onnx import export_model
from smis.backends.onnx import OnnxBackend, cpu_cores, make_session
from smis.hub import CheckpointError

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
#: Chromium flags for a WebGPU adapter: the machine's GPU, or SwiftShader (WebGPU on the CPU).
WEBGPU_FLAGS = {"hardware": ["--enable-unsafe-webgpu", "--enable-features=Vulkan"],
                "swiftshader": ["--enable-unsafe-webgpu", "--enable-features=Vulkan",
                                "--use-webgpu-adapter=swiftshader"]}
#: A round: () -> (generate ms, re-roll ms) or (generate ms, re-roll ms, preview ms or None).
Round = Callable[[], tuple[float, ...]]


@contextlib.contextmanager
def serve(model: BrowserModel) -> Iterator[str]:
    """The demo's /smis routes on 127.0.0.1 with two empty pages: ``/`` and ``/isolated`` (COOP/COEP;
    every response carries COEP, so the isolated page may load them). Yields the base URL."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def page(request):
        headers = ISOLATION_HEADERS if request.url.path == "/isolated" else {}
        return HTMLResponse("<!doctype html><meta charset=utf-8><title>browser bench</title>", headers=headers)

    class Embeddable(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            response = await call_next(request)
            response.headers.setdefault("Cross-Origin-Embedder-Policy", "require-corp")
            response.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
            return response

    app = Starlette(routes=[Route("/", page), Route("/isolated", page), *routes(model)],
                    middleware=[Middleware(Embeddable)])

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


LOAD_JS = """async ([infoUrl, labels, codes, runtimeName]) => {
  const rt = await import(new URL('static/js/runtime.js', infoUrl).href);
  const t = await import(new URL('static/js/tensors.js', infoUrl).href);
  const info = await (await fetch(infoUrl)).json();
  const runtime = await rt.ModelRuntime.load(info, infoUrl, { runtime: runtimeName });
  window.bench = { rt, runtime, labels: t.fromBase64(labels), codes: t.jobCodes({ codes }, info.model) };
  let adapter = null;
  if (runtime.backend === 'webgpu') {
    const a = await navigator.gpu.requestAdapter();
    adapter = a.info ? [a.info.vendor, a.info.architecture, a.info.description].filter(Boolean).join(' ') : '?';
  }
  return { threads: runtime.threads, isolated: globalThis.crossOriginIsolated, agent: navigator.userAgent,
           backend: runtime.backend, why: runtime.webgpuReason, adapter };
}"""
ROUND_JS = """async (image) => {
  const b = window.bench;
  const r = await b.rt.timeRound(b.runtime, b.labels, b.codes);
  return { generate: r.generate, reroll: r.reroll, preview: r.preview, image: image ? Array.from(r.image) : null };
}"""


def browser_round(page) -> Round:
    return lambda: tuple(page.evaluate(ROUND_JS, False)[k] for k in ("generate", "reroll", "preview"))


def server_round(backend: OnnxBackend, labels: np.ndarray, z: np.ndarray, preview=None) -> Round:
    """The server's round; ``preview``: an ONNX Runtime session of the preview graph (or None)."""
    other = -z

    def run() -> tuple[float, float, float | None]:
        backend.label_cache.clear()  # a new mask
        t0 = time.perf_counter()
        backend.generate_uint8(labels, z)
        t1 = time.perf_counter()
        backend.generate_uint8(labels, other)  # the same mask, other codes
        t2 = time.perf_counter()
        if preview is None:
            return (t1 - t0) * 1e3, (t2 - t1) * 1e3, None
        preview.run(["image_uint8"], {"labels": labels[:, None], "z": z})
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (time.perf_counter() - t2) * 1e3

    return run


def run_rounds(rounds: dict[str, Round], repeats: int, warmup: int = 2,
               progress: bool = True) -> dict[str, dict[str, list[float]]]:
    """``warmup`` untimed rounds of each, then ``repeats`` rounds of each in turn: ms per row and call
    (``preview`` only for rows that time one)."""
    times = {name: {"generate": [], "reroll": []} for name in rounds}
    for i in tqdm(range(warmup + repeats), disable=not progress, desc="rounds"):
        for name, run in rounds.items():
            generate, reroll, *rest = run()
            if i >= warmup:
                times[name]["generate"].append(generate)
                times[name]["reroll"].append(reroll)
                if rest and rest[0] is not None:
                    times[name].setdefault("preview", []).append(rest[0])
    return times


def markdown(times: dict[str, dict[str, list[float]]], rows: dict[str, str], baseline: str,
             model: str, repeats: int, pixel_diff: int | dict[str, int] | None = None) -> str:
    """The table: per row its runtime, median ms per generate and re-roll (and preview, where timed), and their
    ratios to ``baseline``; with previews also each row's preview / generate. ``pixel_diff``: one figure, or one
    per browser row."""
    calls = ["generate", "reroll"] + (["preview"] if all("preview" in times[n] for n in rows) else [])
    base = {k: statistics.median(times[baseline][k]) for k in calls}
    head = (f"| {model}, median of {repeats} rounds | runtime | generate (new mask), ms "
            "| re-roll or morph frame (same mask), ms")
    if len(calls) == 2:
        out = [f"{head} | × {baseline} (generate / re-roll) |", "|---|---|---:|---:|---:|"]
    else:
        out = [f"{head} | preview (live painting), ms | × {baseline} (generate / re-roll / preview) "
               "| preview / generate |",
               "|---|---|---:|---:|---:|---:|---:|"]
    for name, runtime in rows.items():
        m = {k: statistics.median(times[name][k]) for k in calls}
        ratio = " / ".join(f"{m[k] / base[k]:.2f}" for k in calls)
        cells = " | ".join(f"{m[k]:.0f}" for k in calls)
        own = f" {m['preview'] / m['generate']:.2f} |" if "preview" in m else ""
        out.append(f"| {name} | {runtime} | {cells} | {ratio} |{own}")
    if isinstance(pixel_diff, dict):
        pixel_diff = ", ".join(f"{d} of 255 ({name})" for name, d in pixel_diff.items()).removesuffix(".")
    elif pixel_diff is not None:
        pixel_diff = f"{pixel_diff} of 255"
    if pixel_diff is not None:
        out.append("")
        out.append(f"Largest difference between the browser's and the server's image (same mask and codes): "
                   f"{pixel_diff}.")
    return "\n".join(out)


def example_labels(pipe) -> np.ndarray:
    """The first shipped example mask at the model's size (a blank mask when there are none)."""
    masks = sorted((DEFAULT_EXAMPLES_DIR / "labels").glob("*.png"))
    if not masks:
        return np.zeros((pipe.config.height, pipe.config.width), np.int64)
    return pipe.prepare_mask(masks[0])


def build_arg_parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m devtools.browser_bench", description=__doc__.split("\n\n")[0])
    cli.add_argument("--model", default=None, help="model folder or Hub repo id (default: the bundled model)")
    cli.add_argument("--rounds", type=int, default=20, help="timed rounds of each row (default 20)")
    cli.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    cli.add_argument("--seed", type=int, default=0, help="the codes' seed")
    cli.add_argument("--chromium", default=CHROMIUM, help=f"Chromium executable (default {CHROMIUM})")
    cli.add_argument("--webgpu", choices=sorted(WEBGPU_FLAGS), default=None,
                     help="add a row for the page on WebGPU, in a Chromium whose adapter is SwiftShader (WebGPU "
                          "emulated on the CPU: it shows WebGPU works, not a GPU's speed) or the machine's GPU")
    cli.add_argument("--out", type=Path, default=None, help="folder for table.md and times.json")
    return cli


def main(argv: list[str] | None = None) -> None:
    args = build_arg_parser().parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        sys.exit("error: --rounds must be at least 1 and --warmup at least 0")
    if not Path(args.chromium).exists():
        sys.exit(f"error: no Chromium at {args.chromium} (apt-get install chromium, or pass --chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("error: the browser bench needs playwright (pip install -r requirements-dev.txt)")
    try:
        pipe, _ = load_pipeline(args.model, backend="onnx", device="cpu", exporter=export_model)
    except (ValueError, CheckpointError) as err:
        sys.exit(f"error: {err}")
    model = find_browser_model(pipe)
    if not model.available:
        sys.exit(f"error: the browser cannot run this model: {model.reason}")
    cfg = pipe.config
    labels = example_labels(pipe)
    codes, _ = pipe.sample_codes(args.seed)
    z = codes.latent()[None]
    lab = labels[None].astype(np.int64)
    cores = cpu_cores()
    backends = {t: OnnxBackend.from_pretrained(pipe.model_dir, device="cpu", threads=t, exporter=export_model)
                for t in sorted({1, cores})}
    preview_graph = model.graphs.get("generator_preview")
    previews = {t: make_session(preview_graph, providers=["CPUExecutionProvider"], threads=t) if preview_graph else None
                for t in backends}
    ort_version = __import__("onnxruntime").__version__
    rows: dict[str, str] = {}
    rounds: dict[str, Round] = {}
    for t, backend in backends.items():
        name = f"server, {t} thread{'s' if t > 1 else ''}"
        rows[name] = f"ONNX Runtime {ort_version} (CPU)"
        rounds[name] = server_round(backend, lab, z, previews[t])
    server = backends[1].generate_uint8(lab, z)[0].astype(np.int16).reshape(-1)
    pixel_diff: dict[str, int] = {}
    with serve(model) as url, sync_playwright() as p:
        job = [url + "smis/model.json", base64.b64encode(labels.astype(np.uint8)).decode(), codes.to_dict()]
        browsers = [p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)]
        try:
            pages = {}
            for path in ("", "isolated"):
                page = browsers[0].new_page()
                page.goto(url + path)
                info = page.evaluate(LOAD_JS, [*job, "wasm"])
                t = info["threads"]
                agent = info["agent"].split("HeadlessChrome/")[-1].split(" ")[0]
                isolated = ", cross-origin isolated" if info["isolated"] else ""
                name = f"browser{isolated}, {t} thread{'s' if t > 1 else ''}"
                rows[name] = f"onnxruntime-web {ort_web_version()} (WASM SIMD), Chromium {agent}"
                rounds[name] = browser_round(page)
                pages[name] = page
            if args.webgpu:
                flags = [f for f in CHROMIUM_FLAGS if f != "--disable-gpu"] + WEBGPU_FLAGS[args.webgpu]
                browsers.append(p.chromium.launch(executable_path=args.chromium, args=flags))
                page = browsers[-1].new_page()
                page.goto(url)
                info = page.evaluate(LOAD_JS, [*job, "webgpu"])
                if info["backend"] != "webgpu":
                    sys.exit(f"error: the page does not run WebGPU here: {info['why']}")
                agent = info["agent"].split("HeadlessChrome/")[-1].split(" ")[0]
                name = f"browser, WebGPU ({info['adapter']})"
                rows[name] = f"onnxruntime-web {ort_web_version()} (WebGPU), Chromium {agent}"
                rounds[name] = browser_round(page)
                pages[name] = page
            for name in (n for n in pages if "isolated" not in n):
                image = np.asarray(pages[name].evaluate(ROUND_JS, True)["image"], np.int16)
                pixel_diff[name] = int(np.abs(image - server).max())
                backend = pages[name].evaluate("[window.bench.runtime.backend, window.bench.runtime.webgpuReason]")
                if "WebGPU" in name and backend[0] != "webgpu":  # its first run disagreed with the CPU kernels
                    sys.exit(f"error: the page left WebGPU: {backend[1]}")
            times = run_rounds(rounds, args.rounds, args.warmup)
        finally:
            for browser in browsers:
                browser.close()
    if len(pixel_diff) == 1:
        pixel_diff = next(iter(pixel_diff.values()))
    name = args.model or "the bundled model"
    table = markdown(times, rows, "server, 1 thread", f"{name} ({cfg.height}×{cfg.width})", args.rounds, pixel_diff)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(table + "\n")
        (args.out / "times.json").write_text(json.dumps({"rows": rows, "times": times, "pixel_diff": pixel_diff,
                                                         "cores": cores}, indent=1))


if __name__ == "__main__":
    main()
