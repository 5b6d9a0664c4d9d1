"""What re-opening the current result costs the server per click (issue 29: a browser job's server step).

    python -m devtools.result_read_bench                      # the bundled model(s), 60 alternated calls
    python -m devtools.result_read_bench --model smis/assets/ccp-demo-384 --calls 100

Saves one result of each model as the demo does (:meth:`demo.results.ResultFiles.save`) and times, in
turn, :meth:`~demo.results.ResultFiles.load` (the pixels decoded: re-open, back to a variant) and
:meth:`~demo.results.ResultFiles.load_metadata` (the mask and codes only: re-roll, mask edit, mix, morph
and every browser job). Medians in ms; one process, alternated calls, so compare the two, not the
absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from demo.references import DEFAULT_EXAMPLES_DIR as EXAMPLES
from demo.results import ResultFiles
from smis import SMISPipeline


def bench(model: str, calls: int) -> tuple[str, float, float]:
    pipe = SMISPipeline.from_pretrained(model, device="cpu")
    with tempfile.TemporaryDirectory(prefix="smis-read-bench-") as workdir:
        return _bench(pipe, ResultFiles(pipe, workdir=workdir), calls)


def _bench(pipe: SMISPipeline, files: ResultFiles, calls: int) -> tuple[str, float, float]:
    example = json.loads((EXAMPLES / "examples.json").read_text())["examples"][0]
    out = pipe.generate(pipe.prepare_mask(EXAMPLES / example["mask"]), seed=1)
    path = files.save(out, "result")
    full, meta = [], []
    for _ in range(calls):
        for read, times in ((files.load, full), (files.load_metadata, meta)):
            t0 = time.perf_counter()
            read(path)
            times.append(time.perf_counter() - t0)
    size = f"{out.image.height}x{out.image.width}, PNG {Path(path).stat().st_size / 1024:.0f} KiB"
    return size, 1e3 * statistics.median(full), 1e3 * statistics.median(meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.result_read_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="model folder or bundled name (repeatable; default: both "
                                                     "bundled CCP models)")
    p.add_argument("--calls", type=int, default=60, help="calls of each, alternated (default 60)")
    args = p.parse_args(argv)
    print("| model | result | load (pixels decoded), ms | load_metadata, ms | ratio |\n|---|---|---:|---:|---:|")
    for model in args.model or ["ccp-demo", "ccp-demo-384"]:
        size, full, meta = bench(model, args.calls)
        print(f"| {model} | {size} | {full:.2f} | {meta:.2f} | {full / meta:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
