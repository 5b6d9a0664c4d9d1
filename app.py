"""GroupDNet demo: the Hugging Face Space entry point (``python app.py``).

Loads the pipeline once, builds the UI from ``demo/`` and serves it with a bounded queue.

Options (command line, or the environment variable in brackets):

    --model    [SMIS_MODEL]    model folder or Hub repo id (default: the bundled CCP model)
    --backend  [SMIS_BACKEND]  auto | torch | onnx (default auto: ONNX Runtime on a CPU, PyTorch on CUDA)
    --device   [SMIS_DEVICE]   cpu, cuda, ... (default: auto)
    --parser   [SMIS_PARSER]   human-parser folder or Hub repo id for "Start from a photo"
                               (default: the bundled smis/assets/ccp-parser; "none" turns it off)
    --host     [GRADIO_SERVER_NAME]  default 0.0.0.0 on a Space, else 127.0.0.1
    --port     [GRADIO_SERVER_PORT]  default 7860

If no model is given and the bundled one is missing, an *untrained* GroupDNet is built so the UI
still works, and a banner says so on every page — never silently. If no parser is given and the
bundled one is missing, the demo runs without mask prediction and "Start from a photo" says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

import gradio as gr

from demo import CSS, build_demo, load_references
from smis import SMISPipeline
from smis.hub import BUNDLED_MODEL_DIR, MODEL_ENV, measured_class_control
from smis.parsing import BUNDLED_PARSER_DIR, PARSER_ENV

logger = logging.getLogger("smis.app")

FALLBACK_BANNER = ("Untrained fallback model — the trained CCP weights are not bundled yet; "
                   "images will look like noise/blobs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    on_space = bool(env.get("SPACE_ID"))
    p = argparse.ArgumentParser(description="GroupDNet demo (Gradio)")
    p.add_argument("--model", default=env.get(MODEL_ENV) or None,
                   help=f"model folder or Hub repo id (env {MODEL_ENV}; default: the bundled CCP model)")
    p.add_argument("--backend", default=env.get("SMIS_BACKEND", "auto"), choices=["auto", "torch", "onnx"],
                   help="inference backend (env SMIS_BACKEND); auto: ONNX Runtime on a CPU (the fastest there, "
                        "see the README's speed table), PyTorch on CUDA")
    p.add_argument("--device", default=env.get("SMIS_DEVICE") or None, help="cpu, cuda, ... (default: auto)")
    p.add_argument("--parser", default=env.get(PARSER_ENV) or None,
                   help=f"human-parser folder or Hub repo id (env {PARSER_ENV}; default: the bundled one if "
                        "present; 'none': no mask prediction)")
    p.add_argument("--host", default=env.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space else "127.0.0.1"),
                   help="address to serve on (env GRADIO_SERVER_NAME; 0.0.0.0 on a Space)")
    p.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", 7860)),
                   help="port (env GRADIO_SERVER_PORT; default 7860)")
    p.add_argument("--examples", default=None, help="folder with examples.json (default: the shipped examples)")
    p.add_argument("--max-queue", type=int, default=32, help="requests waiting at most (more are refused)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="requests run at once (default: 1 on CPU, 4 on GPU)")
    p.add_argument("--max-file-size", default="10mb", help="largest upload, e.g. 10mb")
    p.add_argument("--no-cache-examples", action="store_true", help="compute examples on click instead")
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        p.error(f"--port must be 1..65535, got {args.port}")
    if args.max_queue < 1 or (args.concurrency is not None and args.concurrency < 1):
        p.error("--max-queue and --concurrency must be at least 1")
    return args


def build_fallback_model(backend: str, device: str | None) -> SMISPipeline:
    """An untrained ``demo`` GroupDNet (fixed seed) in a temp folder, loaded like a real one."""
    import torch

    from smis import GroupDNet, get_config

    logger.warning(FALLBACK_BANNER)
    with tempfile.TemporaryDirectory(prefix="smis-untrained-") as folder:  # loaded, then deleted
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            GroupDNet(get_config("demo")).save_pretrained(folder, metadata={"trained": "false"})
        return SMISPipeline.from_pretrained(folder, backend=backend, device=device, **_backend_kwargs(backend))


def _backend_kwargs(backend: str) -> dict:
    """ONNX Runtime: a model folder without .onnx graphs gets them exported once, into the cache."""
    if backend != "onnx":
        return {}
    from export.onnx import export_model

    return {"exporter": export_model}


def resolve_backend(backend: str, device: str | None) -> str:
    """``auto`` -> ``onnx`` on a CPU (the fastest there, see the README's speed table), ``torch`` on CUDA."""
    if backend != "auto":
        return backend
    if device is not None:
        return "torch" if device.startswith("cuda") else "onnx"
    import torch

    return "torch" if torch.cuda.is_available() else "onnx"


def load_pipeline(model: str | None, backend: str = "auto",
                  device: str | None = None) -> tuple[SMISPipeline, str | None]:
    """The pipeline, and the banner to show (``None`` for a real model).

    Only the *default* model may fall back: a model you named that cannot be loaded is an error.
    """
    backend = resolve_backend(backend, device)
    if model is None and not os.environ.get(MODEL_ENV) and not BUNDLED_MODEL_DIR.is_dir():
        return build_fallback_model(backend, device), FALLBACK_BANNER
    return SMISPipeline.from_pretrained(model, backend=backend, device=device, **_backend_kwargs(backend)), None


NO_PARSER_NOTE = ("The trained human parser is not bundled yet (smis/assets/ccp-parser), so masks cannot be "
                  "predicted from photos")


def load_parser(name: str | None, device: str | None = None):
    """The human parser for "Start from a photo", and a note when there is none.

    Only the *default* parser may be missing: one you named that cannot be loaded is an error.
    """
    from smis.parsing import HumanParser

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


def create_app(args: argparse.Namespace) -> gr.Blocks:
    pipe, banner = load_pipeline(args.model, args.backend, args.device)
    parser, parser_note = load_parser(args.parser, args.device)
    try:
        refs = load_references(args.examples, class_names=pipe.config.class_names)
    except ValueError as err:
        logger.error("examples not loaded: %s", err)
        refs = []
    demo = build_demo(pipe, references=refs, banner=banner, cache_examples=not args.no_cache_examples,
                      max_upload_bytes=_parse_size(args.max_file_size), parser=parser, parser_note=parser_note,
                      class_control={} if banner else model_class_control(pipe))
    on_gpu = not str(pipe.backend.device).lower().startswith("cpu")
    concurrency = args.concurrency or (4 if on_gpu else 1)
    return demo.queue(max_size=args.max_queue, default_concurrency_limit=concurrency)


def _parse_size(text: str) -> int:
    t = text.strip().lower()
    for suffix, mult in (("gb", 2**30), ("mb", 2**20), ("kb", 2**10), ("b", 1)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        demo = create_app(args)
    except ValueError as err:  # CheckpointError and friends: say what to do, no traceback
        sys.exit(f"error: {err}")
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=args.max_file_size,
                css=CSS, ssr_mode=False, show_error=True)


if __name__ == "__main__":
    main()
