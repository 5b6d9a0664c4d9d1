"""Resident memory of the demo server under concurrent visitors (issue 12).

    python -m devtools.memory_bench                     # the app's default model, 20 clients x 3 rounds
    python -m devtools.memory_bench --tiny --clients 8  # a tiny untrained model (quick)
    python -m devtools.memory_bench --max-growth-mb 600 # exit 1 if RSS grew by more than that

Starts ``python app.py`` on a free port of 127.0.0.1, lets ``--clients`` gradio_client sessions
run ``--rounds`` rounds at once (generate, re-roll, a refused upload, re-open), and prints one
JSON line with the server's resident memory (``VmRSS``) after launch, after one warm-up call and
after the burst, its peak (``VmHWM``), and the calls that failed. Linux only (reads ``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

from devtools.common import free_port, tiny_model
from smis import SMISConfig, get_config
from smis.hub import BUNDLED_MODEL_DIR, MODEL_ENV

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB (its children are not counted)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def _inputs(folder: Path, height: int, width: int, palette) -> dict[str, Path]:
    """A canvas (opaque background + a layer with a torso and legs) and a corrupt upload."""
    labels = np.zeros((height, width), np.int64)
    labels[height // 4: height // 2, width // 5: 4 * width // 5] = 3
    labels[height // 2: 9 * height // 10, width // 4: 3 * width // 4] = 5
    rgb = np.asarray(palette, np.uint8)[labels]
    layer = np.dstack([rgb, np.where(labels > 0, 255, 0).astype(np.uint8)])
    background = np.zeros((height, width, 4), np.uint8)
    background[..., 3] = 255
    files = {"background": folder / "background.png", "layer": folder / "layer.png",
             "corrupt": folder / "corrupt.png"}
    Image.fromarray(background).save(files["background"])
    Image.fromarray(layer).save(files["layer"])
    files["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    return files


def _visitor(url: str, files: dict[str, Path], rounds: int, errors: list[str]) -> None:
    client = Client(url, verbose=False)
    canvas = {"background": handle_file(str(files["background"])),
              "layers": [handle_file(str(files["layer"]))], "composite": None}
    for _ in range(rounds):
        try:
            out = client.predict(canvas, 0, True, [], None, [], api_name="/generate")
            path, strip = out[3], [{"image": handle_file(d["image"]), "caption": d["caption"]} for d in out[4]]
            client.predict(handle_file(path), "upper clothes", [], strip, api_name="/reroll")
            client.predict(handle_file(path), [], None, [], api_name="/reopen")
        except Exception as err:  # noqa: BLE001 - counted and reported, the burst goes on
            errors.append(f"{type(err).__name__}: {err}"[:200])
        try:
            client.predict(handle_file(str(files["corrupt"])), canvas, None, api_name="/upload_mask")
            errors.append("a corrupt upload was accepted")
        except Exception:  # noqa: BLE001 - refused, as it should be
            pass


def run(model: str | None, clients: int, rounds: int, tiny: bool, extra_args: list[str]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="smis-membench-"))
    if tiny:
        model = str(tiny_model(tmp / "model"))
    folder = Path(model or os.environ.get(MODEL_ENV) or BUNDLED_MODEL_DIR)
    # what app.py will load: a model folder, else (no model anywhere) its untrained "demo" fallback
    cfg = SMISConfig.load(folder / "config.json") if (folder / "config.json").is_file() else get_config("demo")
    files = _inputs(tmp, cfg.height, cfg.width, cfg.palette)
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(tmp / "gradio"), "GRADIO_EXAMPLES_CACHE": str(tmp / "examples-cache")}
    cmd = [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), "--no-cache-examples",
           "--max-queue", str(max(64, 4 * clients)), *extra_args]
    if model:
        cmd += ["--model", model]
    log_path = tmp / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.time() + 300
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(url + "gradio_api/info", timeout=5):
                        break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError("app.py did not answer within 300 s") from None
                    time.sleep(0.5)
            launched = rss_mb(proc.pid)["VmRSS"]
            errors: list[str] = []
            _visitor(url, files, 1, errors)
            warm = rss_mb(proc.pid)["VmRSS"]
            t0 = time.perf_counter()
            threads = [threading.Thread(target=_visitor, args=(url, files, rounds, errors)) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            burst_s = time.perf_counter() - t0
            time.sleep(2)
            after = rss_mb(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    log = log_path.read_text()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"model": f"{cfg.name} (tiny)" if tiny else cfg.name, "size": f"{cfg.height}x{cfg.width}",
            "clients": clients, "rounds": rounds, "calls": clients * rounds * 4,
            "rss_launch_mb": round(launched), "rss_warm_mb": round(warm), "rss_after_mb": round(after["VmRSS"]),
            "rss_peak_mb": round(after["VmHWM"]), "growth_mb": round(after["VmRSS"] - warm),
            "burst_s": round(burst_s, 1), "errors": len(errors), "first_errors": errors[:3],
            "log_tracebacks": log.count("Traceback (most recent call last)"), "log_lines": len(log.splitlines())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: what app.py loads)")
    p.add_argument("--tiny", action="store_true", help="a tiny untrained model instead (quick)")
    p.add_argument("--clients", type=int, default=20, help="concurrent gradio_client sessions")
    p.add_argument("--rounds", type=int, default=3, help="rounds per client (4 calls each)")
    p.add_argument("--max-growth-mb", type=float, default=None,
                   help="exit 1 if RSS after the burst exceeds the warm RSS by more than this")
    p.add_argument("app_args", nargs="*", help="extra app.py arguments (after --)")
    args = p.parse_args(argv)
    if args.clients < 1 or args.rounds < 1:
        p.error("--clients and --rounds must be at least 1")
    report = run(args.model, args.clients, args.rounds, args.tiny, args.app_args)
    print(json.dumps(report))
    if args.max_growth_mb is not None and report["growth_mb"] > args.max_growth_mb:
        sys.exit(f"memory grew by {report['growth_mb']} MB > {args.max_growth_mb} MB")


if __name__ == "__main__":
    main()
