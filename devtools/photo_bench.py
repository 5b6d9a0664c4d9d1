"""Latency of "Start from a photo" (issue 15): decode + letterbox, parse, encode, generate.

    python -m devtools.photo_bench --threads 2                      # the bundled model and parser
    python -m devtools.photo_bench --model M --parser P --repeats 30 --out runs/bench-photo

Times the demo's own path (``demo.handlers``: ``prepare_photo`` -> ``HumanParser.predict`` ->
``SMISPipeline.encode`` -> ``SMISPipeline.generate``) on the shipped example photos, for PyTorch
and for ONNX Runtime (parser and model alike; what ``app.py --backend auto`` uses on a CPU).
The two run round-robin (one photo through each per round), so load from other processes hits
both alike: compare the ratios, not the absolute times. Prints a Markdown table (p50 per stage
in ms, the total, and the speed-up over PyTorch) and writes it with the raw times to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from demo.launch import load_pipeline
from demo.references import DEFAULT_EXAMPLES_DIR
from export.onnx import export_model
from smis.hub import CheckpointError
from smis.parsing import HumanParser

EXAMPLE_PHOTOS = DEFAULT_EXAMPLES_DIR / "images"
STAGES = ("decode + letterbox", "parse", "encode", "generate")


def build_flows(model: str | None, parser: str | None, threads: int) -> dict[str, Callable[[Path], dict[str, float]]]:
    """``{"PyTorch": flow, "ONNX Runtime": flow}``; a flow times one photo's stages (seconds)."""
    torch.set_num_threads(threads)
    flows = {}
    for name, kind in (("PyTorch", "torch"), ("ONNX Runtime", "onnx")):
        # the app's own loading (ONNX graphs exported once into the cache)
        pipe, _ = load_pipeline(model, backend=kind, device="cpu", exporter=export_model)
        net = HumanParser.from_pretrained(parser, device="cpu", backend=kind, threads=threads)
        flows[name] = _flow(pipe, net)
    return flows


def _flow(pipe, parser) -> Callable[[Path], dict[str, float]]:
    def run(path: Path) -> dict[str, float]:
        t = [time.perf_counter()]
        rgb = pipe.prepare_photo(path)
        t.append(time.perf_counter())
        labels = parser.predict(rgb, check=False).labels
        t.append(time.perf_counter())
        codes = pipe.encode(rgb, labels)
        t.append(time.perf_counter())
        pipe.generate(labels, codes=codes)
        t.append(time.perf_counter())
        return {s: b - a for s, a, b in zip(STAGES, t, t[1:])}
    return run


def run_bench(flows: dict[str, Callable[[Path], dict[str, float]]], photos: list[Path], repeats: int,
              warmup: int = 2, progress: bool = True) -> dict[str, dict[str, list[float]]]:
    """Raw seconds per flow and stage (and ``total``), round-robin over flows and photos."""
    for _ in range(warmup):
        for flow in flows.values():
            flow(photos[0])
    times = {name: {s: [] for s in (*STAGES, "total")} for name in flows}
    for i in tqdm(range(repeats), desc="photo flow", disable=not progress):
        photo = photos[i % len(photos)]
        for name, flow in flows.items():
            stages = flow(photo)
            for s, v in stages.items():
                times[name][s].append(v)
            times[name]["total"].append(sum(stages.values()))
    return times


def markdown(times: dict[str, dict[str, list[float]]], threads: int, repeats: int) -> str:
    names = list(times)
    base = float(np.median(times[names[0]]["total"]))
    lines = [f"Start from a photo, {threads} threads, p50 of {repeats} photos "
             "(ms; `python -m devtools.photo_bench`):", "",
             "| backend | " + " | ".join(STAGES) + " | total | × " + names[0] + " |",
             "|---|" + "---:|" * (len(STAGES) + 2)]
    for name in names:
        p50 = {s: float(np.median(v)) for s, v in times[name].items()}
        lines.append(f"| {name} | " + " | ".join(f"{p50[s] * 1e3:.0f}" for s in STAGES)
                     + f" | {p50['total'] * 1e3:.0f} | {base / p50['total']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.photo_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="GroupDNet folder or Hub id (default: the bundled model)")
    p.add_argument("--parser", help="human-parser folder or Hub id (default: the bundled parser)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of PyTorch and ONNX Runtime")
    p.add_argument("--repeats", type=int, default=20, help="photos timed per backend (after 2 warm-up calls)")
    p.add_argument("--photos", default=str(EXAMPLE_PHOTOS), help="folder of photos to cycle through")
    p.add_argument("--out", help="folder for photo-bench.json and photo-bench.md")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    if a.threads < 1 or a.repeats < 1:
        p.error("--threads and --repeats must be at least 1")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # ONNX Runtime sessions of the model read it
    photos = sorted(q for q in Path(a.photos).glob("*") if q.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        p.error(f"--photos {a.photos}: no .jpg/.png photos there")
    try:
        flows = build_flows(a.model, a.parser, a.threads)
    except CheckpointError as err:
        p.error(str(err))
    times = run_bench(flows, photos, a.repeats, progress=a.progress)
    table = markdown(times, a.threads, a.repeats)
    print(table)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "photo-bench.md").write_text(table)
        (out / "photo-bench.json").write_text(json.dumps({"threads": a.threads, "repeats": a.repeats,
                                                          "seconds": times}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
