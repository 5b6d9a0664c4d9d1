"""Many visitors re-rolling at once, in their browsers vs on the server: the server's CPU per re-roll (issue 29).

    python -m devtools.load_bench                          # the bundled model: 20 visitors x 2 re-rolls, each mode
    python -m devtools.load_bench --visitors 2 --rerolls 1 --tiny

Launches the app as ``app.py`` does (:func:`demo.launch.create_app`: in-browser inference on, no cached
examples, no parser) in a child process on a free port of 127.0.0.1, and opens ``--visitors`` pages of
it in one headless Chromium (one context each). Each page uploads the first example mask, waits until
its in-browser model is loaded and presses *Generate*. Then:

    browser  every page presses *Re-roll this class* ``--rerolls`` times, all pages at once, with
             *Run in your browser* on: the server makes each job and keeps each PNG, the page runs
             the model (onnxruntime-web, WASM; all pages share this machine's cores)
    server   the same pages untick *Run in your browser* and do the same: the server runs the model

For each mode it reads the server process's CPU time (user + system, every thread) before and after the
burst and counts the server's model calls (the backend's ``generate`` / ``encode``), and each page times
its re-rolls from the click to the new result's link. The server's CPU while the same pages sit idle
(their open connections) is measured over ``--idle`` seconds first and subtracted, per second of burst.
Prints a Markdown table: server model calls, server CPU ms per re-roll, the page's wall time per
re-roll (p50 / p95), the burst's length and the pages' requests to the app per re-roll (events, file
uploads, file downloads); ``--out`` writes it with the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from devtools.browser_bench import CHROMIUM, CHROMIUM_FLAGS
from devtools.common import free_port, tiny_model

MODES = ("browser", "server")
#: Seconds a page may take for one step of its setup or one re-roll (20 pages share 2 cores).
STEP_TIMEOUT_S = 180


# -- the server, in a child process ----------------------------------------------------------------------

def _serve(model: str | None, backend: str, threads: int, max_queue: int, conn) -> None:
    """The app, counting its model calls; answers ``"stats"`` with (CPU seconds, model calls) until ``"stop"``."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch and ONNX Runtime read it
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.WARNING)
    import torch

    from demo import CSS
    from demo.launch import app_kwargs, create_app
    from export.onnx import export_model

    torch.set_num_threads(threads)
    try:
        demo = create_app(model, backend, "cpu", parser="none", cache_examples=False, max_queue=max_queue,
                          exporter=export_model, browser="auto")
    except ValueError as err:  # a model that cannot be loaded (CheckpointError is one)
        conn.send({"error": str(err)})
        return
    calls = [0]
    backend_obj = demo.handlers.pipe.backend
    for name in ("generate", "encode"):
        fn = getattr(backend_obj, name)

        def counted(*args, _fn=fn, **kwargs):
            calls[0] += 1
            return _fn(*args, **kwargs)

        setattr(backend_obj, name, counted)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS,
                ssr_mode=False, app_kwargs=app_kwargs(demo))
    cfg = demo.handlers.config
    conn.send({"url": f"http://127.0.0.1:{port}/", "browser": demo.browser_model.available,
               "reason": demo.browser_model.reason, "model": f"{cfg.name} ({cfg.height}×{cfg.width})",
               "backend": demo.handlers.backend_label()})
    try:
        while conn.recv() == "stats":
            conn.send((time.process_time(), calls[0]))
    except EOFError:
        pass
    finally:
        demo.close()


class Server:
    """The app in a child process: its URL, its CPU seconds so far and its model calls so far."""

    def __init__(self, model: str | None, backend: str, threads: int, max_queue: int):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(model, backend, threads, max_queue, child), daemon=True)
        self.process.start()
        deadline = time.monotonic() + 600
        while not self.conn.poll(1.0):
            if not self.process.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the app did not start (its process: exit code {self.process.exitcode})")
        self.info = self.conn.recv()
        if "error" in self.info:
            self.close()
            raise ValueError(self.info["error"])
        self.url = self.info["url"]

    def stats(self) -> tuple[float, int]:
        self.conn.send("stats")
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)


# -- the pages ------------------------------------------------------------------------------------------

STATE_JS = "document.querySelector('#browser-note-text')?.dataset.state"
LINK = "#result-file a[href]"
#: k re-rolls, one after the other: ms from the click to the new result's link, and the last status line.
REROLLS_JS = """async ([k, timeout]) => {
  const href = () => document.querySelector('#result-file a[href]')?.getAttribute('href');
  const times = [];
  for (let i = 0; i < k; i++) {
    const before = href();
    const t0 = performance.now();
    document.querySelector('#reroll').click();
    while (href() === before) {
      if (performance.now() - t0 > timeout) {
        const status = document.querySelector('#status')?.textContent || '';
        throw new Error(`re-roll ${i + 1}: no new result in ${timeout} ms (status: ${status.trim().slice(0, 200)})`);
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    times.push(performance.now() - t0);
  }
  return { times, status: document.querySelector('#status')?.textContent || '' };
}"""


async def open_visitor(browser, url: str, mask: Path, limit: asyncio.Semaphore):
    """A page with the example mask on its canvas, its model loaded in the browser, and a generated result."""
    timeout = STEP_TIMEOUT_S * 1000
    async with limit:  # a few pages load at a time: 20 at once starve each other
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        await page.goto(url, timeout=timeout)
        await page.locator("#canvas canvas").first.wait_for(timeout=timeout)
        await page.wait_for_function(f"{STATE_JS} && {STATE_JS} !== 'loading'", timeout=timeout)
        state = await page.evaluate(STATE_JS)
        if state != "ready":
            note = await page.locator("#browser-note-text").text_content()
            raise RuntimeError(f"the page does not run the model itself: {note}")
        label_map = page.locator("#label-map img")
        before = await label_map.get_attribute("src") if await label_map.count() else None
        await page.locator("#mask-upload input[type=file]").set_input_files(str(mask))
        await page.wait_for_function(
            "(before) => { const img = document.querySelector('#label-map img');"
            " return img && img.getAttribute('src') && img.getAttribute('src') !== before; }",
            arg=before, timeout=timeout)
        await page.click("#generate")
        await page.wait_for_function(
            "() => (document.querySelector('#result-file a[href]')?.getAttribute('download') || '')"
            ".includes('generate')", timeout=timeout)
    return context, page


async def set_mode(page, mode: str) -> None:
    box = page.locator("#browser-run input")
    if mode == "browser":
        await box.check()
    else:
        await box.uncheck()
    await page.wait_for_function(f"{STATE_JS} === '{'ready' if mode == 'browser' else 'server'}'",
                                 timeout=STEP_TIMEOUT_S * 1000)


@dataclass
class Burst:
    """One mode's burst: N visitors x k re-rolls at once."""

    mode: str
    visitors: int
    rerolls: int
    model_calls: int
    cpu_s: float  # the server's CPU time over the burst
    idle_cpu_s: float  # what the same pages cost it idle, for as long as the burst
    wall_s: float
    page_ms: list[float]
    statuses: list[str]
    requests: dict[str, int]  # the pages' requests to the app during the burst, by kind (see request_kind)

    @property
    def raw_cpu_ms_per_reroll(self) -> float:
        return self.cpu_s * 1e3 / (self.visitors * self.rerolls)

    @property
    def cpu_ms_per_reroll(self) -> float:
        return max(0.0, self.cpu_s - self.idle_cpu_s) * 1e3 / (self.visitors * self.rerolls)


def request_kind(url: str) -> str:
    """What a page's request to the app is: an event, an upload, a file download or something else."""
    if "/gradio_api/upload" in url:
        return "uploads"
    if "/gradio_api/file=" in url:
        return "downloads"
    if "/gradio_api/run/" in url or "/gradio_api/queue/join" in url:
        return "events"
    return "other"


async def burst(server: Server, pages: list, mode: str, rerolls: int, idle_cpu_per_s: float) -> Burst:
    await asyncio.gather(*(set_mode(p, mode) for p in pages))
    requests = dict.fromkeys(("events", "uploads", "downloads", "other"), 0)

    def count(request) -> None:
        requests[request_kind(request.url)] += 1

    for p in pages:
        p.on("request", count)
    cpu0, calls0 = server.stats()
    t0 = time.perf_counter()
    results = await asyncio.gather(*(p.evaluate(REROLLS_JS, [rerolls, STEP_TIMEOUT_S * 1000]) for p in pages))
    wall = time.perf_counter() - t0
    cpu1, calls1 = server.stats()
    for p in pages:
        p.remove_listener("request", count)
    times = [ms for r in results for ms in r["times"]]
    return Burst(mode, len(pages), rerolls, calls1 - calls0, cpu1 - cpu0, idle_cpu_per_s * wall, wall, times,
                 [r["status"] for r in results], requests)


async def run(server: Server, visitors: int, rerolls: int, idle_s: float, mask: Path, chromium: str,
              progress: bool = True) -> tuple[float, dict[str, Burst]]:
    """Open the pages, measure their idle cost, then one burst per mode: (idle CPU s per s, bursts)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            limit = asyncio.Semaphore(4)
            t0 = time.perf_counter()
            opened = await asyncio.gather(*(open_visitor(browser, server.url, mask, limit) for _ in range(visitors)))
            pages = [page for _, page in opened]
            if progress:
                print(f"{visitors} pages ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            await asyncio.sleep(1.0)  # let the last page settle
            cpu0, _ = server.stats()
            t0 = time.perf_counter()
            await asyncio.sleep(idle_s)
            cpu1, _ = server.stats()
            idle = (cpu1 - cpu0) / (time.perf_counter() - t0)
            bursts = {}
            for mode in MODES:
                bursts[mode] = await burst(server, pages, mode, rerolls, idle)
                if progress:
                    print(f"{mode}: {bursts[mode].wall_s:.1f} s", file=sys.stderr)
        finally:
            await browser.close()
    return idle, bursts


# -- the report ---------------------------------------------------------------------------------------

def markdown(bursts: dict[str, Burst], idle_cpu_per_s: float, title: str) -> str:
    """The table: per mode the server's model calls and CPU per re-roll, the page's wall time, the burst."""
    lines = [title, "",
             "| mode | server model calls | server CPU per re-roll, ms: all / less idle | × server mode (less idle) "
             "| page: re-roll p50 / p95, ms "
             "| burst, s | the page's requests per re-roll: events / uploads / file downloads |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = bursts["server"].cpu_ms_per_reroll if "server" in bursts else None
    for mode, b in bursts.items():
        n = b.visitors * b.rerolls
        p50, p95 = (float(np.percentile(b.page_ms, q)) for q in (50, 95))
        ratio = f"{b.cpu_ms_per_reroll / base:.2f}" if base else "–"
        label = "in the browser (Run in your browser on)" if mode == "browser" else "on the server (switch off)"
        cpu = f"{b.raw_cpu_ms_per_reroll:.0f} / {b.cpu_ms_per_reroll:.0f}"
        lines.append(f"| {label} | {b.model_calls} of {n} | {cpu} | {ratio} | {p50:.0f} / {p95:.0f} | {b.wall_s:.1f} | "
                     + " / ".join(f"{b.requests[k] / n:.1f}" for k in ("events", "uploads", "downloads")) + " |")
    lines += ["", f"The server's CPU with the same pages open and idle: {idle_cpu_per_s * 1e3:.0f} ms per second "
                  "(\"less idle\": that much less for the length of each burst)."]
    return "\n".join(lines) + "\n"


def first_example_mask() -> Path:
    from demo.references import DEFAULT_EXAMPLES_DIR

    masks = sorted((DEFAULT_EXAMPLES_DIR / "labels").glob("*.png"))
    if not masks:
        raise FileNotFoundError(f"no example masks in {DEFAULT_EXAMPLES_DIR / 'labels'}")
    return masks[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.load_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="GroupDNet folder or Hub id (default: the bundled model)")
    p.add_argument("--tiny", action="store_true", help="a tiny untrained model instead (for tests)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                   help="the server's inference backend (auto: ONNX Runtime on a CPU, as the app)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the server's model")
    p.add_argument("--visitors", type=int, default=20, help="pages re-rolling at once (default 20)")
    p.add_argument("--rerolls", type=int, default=2, help="re-rolls per page and mode (default 2)")
    p.add_argument("--idle", type=float, default=3.0, help="seconds the idle pages are measured (default 3)")
    p.add_argument("--chromium", default=CHROMIUM, help=f"Chromium executable (default {CHROMIUM})")
    p.add_argument("--out", help="folder for load-bench.md and load-bench.json")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    if a.visitors < 1 or a.rerolls < 1 or a.threads < 1 or a.idle <= 0:
        p.error("--visitors, --rerolls, --threads must be at least 1 and --idle above 0")
    if a.tiny and a.model:
        p.error("--tiny builds its own model; leave out --model")
    if not Path(a.chromium).exists():
        p.error(f"no Chromium at {a.chromium} (apt-get install chromium, or pass --chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        p.error("the load bench needs playwright (pip install -r requirements-dev.txt)")
    tmp = Path(tempfile.mkdtemp(prefix="smis-loadbench-"))
    model = str(tiny_model(tmp / "model")) if a.tiny else a.model
    try:
        server = Server(model, a.backend, a.threads, max_queue=max(64, 4 * a.visitors))
    except ValueError as err:
        p.error(str(err))
    try:
        if not server.info["browser"]:
            p.error(f"the page cannot run this model itself: {server.info['reason']}")
        idle, bursts = asyncio.run(run(server, a.visitors, a.rerolls, a.idle, first_example_mask(), a.chromium,
                                       a.progress))
    finally:
        server.close()
    title = (f"{a.visitors} visitors × {a.rerolls} re-rolls at once, the `{server.info['model']}` model "
             f"(server: {server.info['backend']}, {a.threads} thread{'s' if a.threads > 1 else ''}; pages: "
             "headless Chromium, one context each) (`python -m devtools.load_bench`):")
    table = markdown(bursts, idle, title)
    print(table)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "load-bench.md").write_text(table)
        (out / "load-bench.json").write_text(json.dumps(
            {"idle_cpu_s_per_s": idle, "bursts": {m: {**asdict(b), "cpu_ms_per_reroll": b.cpu_ms_per_reroll,
                                                  "raw_cpu_ms_per_reroll": b.raw_cpu_ms_per_reroll}
                                                  for m, b in bursts.items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
