"""GroupDNet demo, the Hugging Face Space entry point: ``python app.py [options]`` (``--help`` lists them).

Every option has an environment variable (SMIS_MODEL, SMIS_BACKEND, SMIS_DEVICE, SMIS_DTYPE, SMIS_PARSER,
SMIS_BROWSER, GRADIO_SERVER_NAME, GRADIO_SERVER_PORT); SMIS_REFINE_STEPS sets how many gradient steps fit a
visitor's photo's codes to its colours (default 20, 0: off). The demo is loaded once by
:func:`demo.launch.create_app` and served with a bounded queue.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from demo import CSS
from demo.launch import app_kwargs, create_app, parse_size
from export.onnx import export_model
from smis.hub import MODEL_ENV
from smis.parsing import PARSER_ENV


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
    p.add_argument("--dtype", default=env.get("SMIS_DTYPE", "auto"), choices=["auto", "float32", "bfloat16", "float16"],
                   help="PyTorch backend precision (env SMIS_DTYPE); bf16 where it is not native warns with the "
                        "measured slowdown")
    p.add_argument("--parser", default=env.get(PARSER_ENV) or None,
                   help=f"human-parser folder or Hub repo id (env {PARSER_ENV}; default: the bundled one if "
                        "present; 'none': no mask prediction)")
    p.add_argument("--browser", default=env.get("SMIS_BROWSER", "auto"), choices=["auto", "off"],
                   help="in-browser inference (env SMIS_BROWSER): auto lets the page run generate and re-roll "
                        "with onnxruntime-web where it can (the model's ONNX graphs), off keeps it on the server")
    p.add_argument("--browser-threads", default=env.get("SMIS_BROWSER_THREADS", "auto"), choices=["auto", "1"],
                   help="WebAssembly threads of in-browser inference (env SMIS_BROWSER_THREADS): auto makes the "
                        "page cross-origin isolated (COOP/COEP headers) so it may use up to 4; 1 sends no such "
                        "headers (for a page that must load other sites' resources)")
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


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        demo = create_app(args.model, args.backend, args.device, parser=args.parser, examples=args.examples,
                          cache_examples=not args.no_cache_examples, max_upload_bytes=parse_size(args.max_file_size),
                          max_queue=args.max_queue, concurrency=args.concurrency, exporter=export_model,
                          browser=args.browser, dtype=args.dtype)
    except ValueError as err:  # CheckpointError and friends: say what to do, no traceback
        sys.exit(f"error: {err}")
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=args.max_file_size,
                css=CSS, ssr_mode=False, show_error=True,
                app_kwargs=app_kwargs(demo, isolate=args.browser_threads == "auto"))


if __name__ == "__main__":
    main()
