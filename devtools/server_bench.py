"""What a served click costs (issue 29, item 7): the API, the handler, the model and the framework's floor.

    python -m devtools.server_bench --model smis/assets/ccp-demo   # 20 rounds, then 20 visitors x 3 generates
    python -m devtools.server_bench --repeats 30 --visitors 0      # no load part
    python -m devtools.server_bench --tiny                         # a tiny untrained model (seconds)

Builds the app as ``app.py`` does (:func:`demo.launch.create_app`, server inference, no cached
examples), adds one hidden endpoint, ``/floor``, that takes an image and returns it (the least any
Gradio image round trip costs: upload, queue, postprocess, download), and serves it in this process
on a free port of 127.0.0.1. Then, for *generate* (a new seed on the canvas) and *re-roll* (one
class of the current result), on the same mask, it times in turn, round after round:

    API      the endpoint through gradio_client, the way a visitor's call travels: the canvas layers
             uploaded (generate), the current result and the strip passed as the server's own files
             (as the page does), the queue, the handler, the outputs' postprocess, and the download
             of every image the page shows that it has not fetched before
    handler  the :class:`demo.handlers.DemoHandlers` method on the values Gradio would hand it
    model    the pipeline call alone (``generate`` / ``reroll``; the mask's label branch cached)
    floor    ``/floor`` with one canvas-sized PNG, through gradio_client, downloaded back

and prints medians and IQRs (ms), and the check *API <= floor + 2 x model*. The strip holds
``--strip`` variants in every call (a visitor's strip grows to 24). With ``--visitors N``, N
gradio_client visitors then generate ``--calls`` times each at once (each with its own strip), and
the p50 / p95 of their calls and the calls served per second are printed. Everything runs in one
process, interleaved, so load from other processes hits all alike: compare ratios, not absolute
times. ``--out`` writes the table and the raw times.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from devtools.common import free_port, tiny_model

CLASS = "upper clothes"
OPS = ("generate", "re-roll")
PARTS = ("API", "handler", "model", "floor")


def canvas_labels(height: int, width: int) -> np.ndarray:
    """A person-shaped mask: head, torso, legs, shoes (model size)."""
    labels = np.zeros((height, width), np.int64)
    labels[height // 10: height // 4, width // 3: 2 * width // 3] = 2  # skin
    labels[height // 4: height // 2, width // 5: 4 * width // 5] = 3  # upper clothes
    labels[height // 2: 9 * height // 10, width // 4: 3 * width // 4] = 5  # lower clothes
    labels[9 * height // 10:, width // 4: 3 * width // 4] = 7  # shoes
    return labels


def launch(model: str | None, backend: str, threads: int, folder: Path, max_queue: int = 64) -> tuple[Any, str]:
    """The app (server inference) with the ``/floor`` endpoint, served here; returns (demo, base URL)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # ONNX Runtime's sessions read it
    import gradio as gr
    import torch

    from demo.launch import app_kwargs, create_app
    from export.onnx import export_model

    torch.set_num_threads(threads)
    demo = create_app(model, backend, "cpu", parser="none", cache_examples=False, max_queue=max_queue,
                      exporter=export_model, browser="off")
    with demo:  # the floor: an image in, the same image out
        given = gr.Image(type="filepath", format="png", visible=False)
        back = gr.Image(type="filepath", format="png", visible=False)
        button = gr.Button(visible=False)
        button.click(lambda path: path, given, back, api_name="floor")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True,
                ssr_mode=False, app_kwargs=app_kwargs(demo))
    return demo, f"http://127.0.0.1:{port}/"


@dataclass
class Inputs:
    """The canvas as the page sends it (an opaque background + one layer, canvas-sized PNGs), its value
    as Gradio hands it to the handler, and its class ids."""

    background: Path
    layer: Path
    editor: dict
    labels: np.ndarray


def make_inputs(h, folder: Path) -> Inputs:
    cfg = h.config
    labels = canvas_labels(cfg.height, cfg.width)
    value = h.canvas.to_editor(labels)
    paths = {"background": folder / "background.png", "layer": folder / "layer.png"}
    Image.fromarray(value["background"]).save(paths["background"])
    Image.fromarray(value["layers"][0]).save(paths["layer"])
    editor = {"background": value["background"], "layers": value["layers"], "composite": None}
    return Inputs(paths["background"], paths["layer"], editor, labels)


def server_file(value: dict) -> dict:
    """An output file as the page sends it back (the server's own file: :class:`Visitor` uploads nothing
    that has a URL)."""
    return value


def _no_reupload(client) -> None:
    """gradio_client uploads every file it is given; the page sends the server's own files back as they
    are (path and URL), so files that came from the server (they have a URL) go back as they are."""
    for endpoint in client.endpoints.values():
        upload = endpoint._upload_file
        endpoint._upload_file = lambda f, data_index, upload=upload: f if f.get("url") else upload(f, data_index)


class Visitor:
    """One gradio_client session that fetches, like a browser with a cache, each shown image once."""

    #: Outputs of /generate and /reroll that the page shows (the download file is fetched only when clicked).
    SHOWN = {"generate": (1, 2, 4), "reroll": (0, 2)}

    def __init__(self, url: str, inputs: Inputs):
        from gradio_client import Client, handle_file

        self.client = Client(url, verbose=False, download_files=False)
        _no_reupload(self.client)
        self.http = httpx.Client(base_url=url, timeout=60)
        self.canvas = {"background": handle_file(str(inputs.background)),
                       "layers": [handle_file(str(inputs.layer))], "composite": None}
        self.layer = handle_file(str(inputs.layer))
        self.seen: set[str] = set()

    def _fetch(self, value: Any) -> None:
        items = value if isinstance(value, list) else [value]
        for item in items:
            f = item.get("image", item) if isinstance(item, dict) else None
            url = (f or {}).get("url")
            if url and url not in self.seen:
                self.seen.add(url)
                self.http.get(url).raise_for_status()

    def generate(self, strip: list) -> tuple:
        out = self.client.predict(self.canvas, 0, True, [server_file_item(i) for i in strip], None, [],
                                  api_name="/generate")
        for i in self.SHOWN["generate"]:
            self._fetch(out[i])
        return out

    def reroll(self, result_file: dict, strip: list) -> tuple:
        out = self.client.predict(server_file(result_file), CLASS, [], [server_file_item(i) for i in strip],
                                  api_name="/reroll")
        for i in self.SHOWN["reroll"]:
            self._fetch(out[i])
        return out

    def floor(self) -> None:
        self._fetch_always(self.client.predict(self.layer, api_name="/floor"))

    def _fetch_always(self, value: dict) -> None:
        self.http.get(value["url"]).raise_for_status()


def server_file_item(item: dict) -> dict:
    return {"image": server_file(item["image"]), "caption": item.get("caption")}


def _strip_paths(strip: list) -> list[tuple[str, str]]:
    return [(item["image"]["path"], item.get("caption") or "") for item in strip]


def timers(demo, visitor: Visitor, inputs: Inputs, strip_len: int) -> dict[str, dict[str, Callable[[], Any]]]:
    """Per operation, per part, a call to time. Makes a strip of ``strip_len`` variants first."""
    h, pipe = demo.handlers, demo.handlers.pipe
    strip: list = []
    out = None
    for _ in range(max(1, strip_len)):
        out = visitor.generate(strip)
        strip = out[4]
    strip = strip[-strip_len:] if strip_len else []
    current = out[3]
    result = h.files.load(current["path"])
    paths = _strip_paths(strip)
    rng = np.random.default_rng(0)

    def seed() -> int:
        return int(rng.integers(0, 2**31 - 1))

    return {
        "generate": {
            "API": lambda: visitor.generate(strip),
            "handler": lambda: h.generate(inputs.editor, 0, True, paths, None, []),
            "model": lambda: pipe.generate(inputs.labels, seed=seed()),
            "floor": visitor.floor,
        },
        "re-roll": {
            "API": lambda: visitor.reroll(current, strip),
            "handler": lambda: h.reroll(current["path"], CLASS, [], paths),
            "model": lambda: pipe.reroll(result.labels, result.codes, [CLASS], seed=seed()),
            "floor": visitor.floor,
        },
    }


def run_rounds(calls: dict[str, dict[str, Callable[[], Any]]], repeats: int, warmup: int = 2,
               progress: bool = True) -> dict[str, dict[str, list[float]]]:
    """Seconds per operation and part: each round runs every part once, in a rotating order."""
    flat = [(op, part) for op in calls for part in calls[op]]
    for _ in range(warmup):
        for op, part in flat:
            calls[op][part]()
    times = {op: {part: [] for part in calls[op]} for op in calls}
    for r in range(repeats):
        order = flat[r % len(flat):] + flat[:r % len(flat)]
        for op, part in order:
            t0 = time.perf_counter()
            calls[op][part]()
            times[op][part].append(time.perf_counter() - t0)
        if progress:
            print(f"\rround {r + 1}/{repeats}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(p25, median, p75)."""
    q = np.percentile(np.asarray(values), [25, 50, 75])
    return float(q[0]), float(q[1]), float(q[2])


def verdict(times: dict[str, list[float]]) -> tuple[float, bool]:
    """(floor + 2 x model, API <= that) on medians."""
    med = {p: statistics.median(v) for p, v in times.items()}
    bound = med["floor"] + 2 * med["model"]
    return bound, med["API"] <= bound


def markdown(times: dict[str, dict[str, list[float]]], title: str) -> str:
    def cell(v: list[float]) -> str:
        lo, mid, hi = quartiles(v)
        return f"{mid * 1e3:.0f} ({lo * 1e3:.0f}–{hi * 1e3:.0f})"

    lines = [title, "",
             "| click | API (gradio_client), ms | handler, ms | model, ms | floor (image round trip), ms "
             "| floor + 2 × model, ms | API / floor | API ≤ floor + 2 × model |",
             "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for op, parts in times.items():
        bound, ok = verdict(parts)
        ratio = statistics.median(parts["API"]) / statistics.median(parts["floor"])
        lines.append(f"| {op} | " + " | ".join(cell(parts[p]) for p in PARTS)
                     + f" | {bound * 1e3:.0f} | {ratio:.2f} | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


def run_load(url: str, inputs: Inputs, visitors: int, calls: int) -> dict[str, Any]:
    """``visitors`` sessions at once, ``calls`` generates each (their own strips): latencies and calls/s."""
    clients = [Visitor(url, inputs) for _ in range(visitors)]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(visitors + 1)

    def visit(v: Visitor) -> None:
        strip: list = []
        start.wait()
        for _ in range(calls):
            t0 = time.perf_counter()
            try:
                strip = v.generate(strip)[4]
            except Exception as err:  # noqa: BLE001 - counted and reported, the burst goes on
                with lock:
                    errors.append(f"{type(err).__name__}: {err}"[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=visit, args=(v,)) for v in clients]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    p50, p95 = (float(np.percentile(latencies, q)) if latencies else float("nan") for q in (50, 95))
    return {"visitors": visitors, "calls": calls, "served": len(latencies), "errors": len(errors),
            "first_errors": errors[:3], "p50_s": p50, "p95_s": p95, "wall_s": wall,
            "calls_per_s": len(latencies) / wall}


def load_markdown(load: dict[str, Any]) -> str:
    return (f"Load: {load['visitors']} visitors × {load['calls']} generates at once: {load['served']}/"
            f"{load['visitors'] * load['calls']} served, p50 {load['p50_s']:.2f} s, p95 {load['p95_s']:.2f} s, "
            f"{load['calls_per_s']:.2f} calls/s served.\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.server_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="GroupDNet folder or Hub id (default: the bundled model)")
    p.add_argument("--tiny", action="store_true", help="a tiny untrained model instead (seconds; for tests)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                   help="inference backend (auto: ONNX Runtime on a CPU, as the app)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the model")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (each part once per round)")
    p.add_argument("--warmup", type=int, default=2, help="rounds before the timed ones")
    p.add_argument("--strip", type=int, default=8, help="variants in the strip of every timed call")
    p.add_argument("--visitors", type=int, default=20, help="concurrent visitors of the load part (0: none)")
    p.add_argument("--calls", type=int, default=3, help="generates per visitor in the load part")
    p.add_argument("--out", help="folder for server-bench.md and server-bench.json")
    p.add_argument("--check", action="store_true", help="exit 1 when a click's API time is over floor + 2 × model")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    if a.threads < 1 or a.repeats < 1 or a.warmup < 0 or a.strip < 0 or a.visitors < 0 or a.calls < 1:
        p.error("--threads, --repeats, --calls must be at least 1; --warmup, --strip, --visitors at least 0")
    if a.tiny and a.model:
        p.error("--tiny builds its own model; leave out --model")
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="smis-serverbench-"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    model = str(tiny_model(tmp / "model")) if a.tiny else a.model
    from smis.hub import CheckpointError

    try:
        demo, url = launch(model, a.backend, a.threads, tmp, max_queue=max(64, 2 * a.visitors))
    except CheckpointError as err:
        p.error(str(err))
    try:
        h = demo.handlers
        inputs = make_inputs(h, tmp)
        visitor = Visitor(url, inputs)
        calls = timers(demo, visitor, inputs, a.strip)
        times = run_rounds(calls, a.repeats, a.warmup, a.progress)
        cfg = h.config
        title = (f"One click, the `{cfg.name}` model ({cfg.height}×{cfg.width}, {h.backend_label()}, "
                 f"{a.threads} thread{'s' if a.threads > 1 else ''}), same mask, {a.strip} variants in the strip; "
                 f"median (IQR) of {a.repeats} interleaved rounds "
                 "(`python -m devtools.server_bench`):")
        table = markdown(times, title)
        print(table)
        load = run_load(url, inputs, a.visitors, a.calls) if a.visitors else None
        if load:
            print(load_markdown(load))
    finally:
        demo.close()
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "server-bench.md").write_text(table + ("\n" + load_markdown(load) if load else ""))
        (out / "server-bench.json").write_text(json.dumps({"repeats": a.repeats, "strip": a.strip,
                                                           "threads": a.threads, "seconds": times, "load": load},
                                                          indent=1) + "\n")
    return 1 if a.check and not all(verdict(parts)[1] for parts in times.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
