"""Refresh the vendored onnxruntime-web files the page uses (in-browser inference) from npm.

    python -m devtools.vendor_ort_web                    # the pinned version, ORT_WEB_VERSION
    python -m devtools.vendor_ort_web --version 1.32.0   # another one (then update ORT_WEB_VERSION)

Runs ``npm pack onnxruntime-web@VERSION`` (the npm registry through npm itself), checks the
tarball against the integrity npm reports, and copies only what the page loads into
``demo/static/vendor/onnxruntime-web/``, two builds:

- WASM (every browser with WebAssembly SIMD): the WASM-only ES module (``ort.wasm.min.mjs``, no WebGL /
  WebGPU / JSEP code) and the plain SIMD WebAssembly runtime with its loader
  (``ort-wasm-simd-threaded.mjs`` / ``.wasm``: one thread, or several where the page is cross-origin
  isolated);
- WebGPU (tried first where the browser offers a WebGPU adapter): the smallest of the package's builds
  with the ``webgpu`` execution provider, ``ort.jspi.min.mjs`` with ``ort-wasm-simd-threaded.jspi.mjs`` /
  ``.wasm`` (ONNX Runtime's native WebGPU provider, which waits on the GPU through WebAssembly JSPI;
  its CPU kernels also run the nodes WebGPU does not take). The other builds with it are larger: the
  Asyncify one (``ort.webgpu.min.mjs``, for browsers without JSPI) and the JSEP one (``ort.min.mjs``).

The WebAssembly files (14.2 and 17.1 MiB; the larger one is also above :data:`MAX_FILE_BYTES`) are
stored gzip-compressed as ``NAME.gz`` (3.6 and 4.2 MiB); the app serves each as ``NAME`` with
``Content-Encoding: gzip`` (``demo/browser.py``), so the browser gets the same bytes and downloads a
quarter of them. Beside them it writes ``VERSION``,
``SHA256SUMS`` of the stored files (``sha256sum -c`` checks them; so does
``tests/test_browser_inference.py``), ``LICENSE`` (MIT; the npm package ships the licence in its
files' headers only) and a ``README.md`` naming the source, with each file's size and, for a
compressed one, the SHA-256 of the npm file itself. Nothing is fetched at run time: the page loads
these files from the app's own route.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from base64 import b64encode
from pathlib import Path

#: The version the page is built and tested against.
ORT_WEB_VERSION = "1.31.1"
PACKAGE = "onnxruntime-web"
#: What the page loads, from the package's dist/ folder: the WASM build ...
WASM_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
#: ... and the WebGPU one (JSPI: the smallest build with the webgpu execution provider).
WEBGPU_FILES = ("ort.jspi.min.mjs", "ort-wasm-simd-threaded.jspi.mjs", "ort-wasm-simd-threaded.jspi.wasm")
FILES = WASM_FILES + WEBGPU_FILES
#: A vendored file stays at most this large: a larger one is stored as NAME.gz (served as NAME, gzip-encoded).
MAX_FILE_BYTES = 15 * 2**20
GZIP_SUFFIX = ".gz"
VENDOR_DIR = Path(__file__).resolve().parents[1] / "demo" / "static" / "vendor" / "onnxruntime-web"

MIT = """MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

README = """# onnxruntime-web {version} (vendored)

The files the demo page needs to run GroupDNet in the visitor's browser (`demo/static/js/`),
copied unchanged from the npm package [`{package}@{version}`](https://www.npmjs.com/package/{package}/v/{version})
(tarball integrity `{integrity}`), folder `dist/`:

| file | bytes | stored as | what it is |
|---|---:|---|---|
{rows}

Where the browser offers a WebGPU adapter (and WebAssembly JSPI), the page imports `ort.jspi.min.mjs`
(ONNX Runtime's WebGPU execution provider; the smallest build that has it) and checks its first run of
each graph against the CPU kernels of the same runtime; otherwise, or when that fails, it imports
`ort.wasm.min.mjs` (the WASM-only build: no WebGL, WebGPU or JSEP code). It points
`ort.env.wasm.wasmPaths` at this folder's route, so nothing is fetched from a CDN. The `.wasm` files
are SIMD WebAssembly that runs on one thread, or on several where the page is cross-origin isolated
(`crossOriginIsolated`).

The `.wasm` files, and any file above {limit} MiB, are stored gzip-compressed as `NAME.gz` (a quarter of
the bytes for every visitor; `SHA256SUMS` lists the stored files;
the table gives the SHA-256 of the npm file too); the app serves it as `NAME` with
`Content-Encoding: gzip`, so the browser receives the npm file unchanged (`gunzip -k` restores it).

Licence: MIT, Copyright (c) Microsoft Corporation (`LICENSE`; the package states it in each file's
header). The compiled runtime includes third-party code listed in ONNX Runtime's
`ThirdPartyNotices.txt` at the tag `v{version}` of https://github.com/microsoft/onnxruntime.

Refresh (or change the version): `python -m devtools.vendor_ort_web [--version X]`, which runs
`npm pack`, checks the tarball's integrity, rewrites this folder and `SHA256SUMS`.
"""

DESCRIPTIONS = {
    "ort.wasm.min.mjs": "the JavaScript API, WASM execution provider only (ES module)",
    "ort-wasm-simd-threaded.mjs": "the loader of the WebAssembly runtime (ES module)",
    "ort-wasm-simd-threaded.wasm": "the ONNX Runtime CPU kernels, WebAssembly with SIMD",
    "ort.jspi.min.mjs": "the JavaScript API with the WebGPU execution provider (JSPI build, ES module)",
    "ort-wasm-simd-threaded.jspi.mjs": "the loader of the WebGPU build's runtime (ES module)",
    "ort-wasm-simd-threaded.jspi.wasm": "ONNX Runtime with its WebGPU execution provider and CPU kernels, "
                                        "WebAssembly with SIMD and JSPI",
}


def stored_name(name: str, size: int) -> str:
    """How a file of ``size`` bytes is stored in the vendor folder: itself, or gzip-compressed when it is
    WebAssembly (a quarter of the bytes to every visitor: 14.2 MiB -> 3.6 MiB) or above the limit."""
    return name + GZIP_SUFFIX if size > MAX_FILE_BYTES or name.endswith(".wasm") else name


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def npm_pack(version: str, dest: Path) -> tuple[Path, str]:
    """``npm pack PACKAGE@version`` into ``dest``: (the tarball, its sha512 integrity string)."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("error: npm is not installed (Node.js 18+ brings it); it fetches the package")
    out = subprocess.run([npm, "pack", f"{PACKAGE}@{version}", "--json", "--pack-destination", str(dest)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"error: npm pack {PACKAGE}@{version} failed:\n{out.stderr.strip()[-2000:]}")
    info = json.loads(out.stdout)[0]
    tarball = dest / info["filename"]
    integrity = info["integrity"]
    algo, _, digest = integrity.partition("-")
    h = hashlib.new(algo)
    h.update(tarball.read_bytes())
    if b64encode(h.digest()).decode() != digest:
        raise SystemExit(f"error: {tarball.name} does not match the integrity npm reported ({integrity})")
    return tarball, integrity


def vendor(version: str = ORT_WEB_VERSION, target: Path = VENDOR_DIR) -> dict[str, int]:
    """Replace ``target`` with the files of ``onnxruntime-web@version``; returns the stored files' sizes in bytes."""
    with tempfile.TemporaryDirectory(prefix="ort-web-") as tmp:
        tarball, integrity = npm_pack(version, Path(tmp))
        with tarfile.open(tarball) as tar:
            meta = json.load(tar.extractfile("package/package.json"))
            if meta.get("version") != version or meta.get("license") != "MIT":
                raise SystemExit(f"error: expected {PACKAGE} {version} under MIT, got {meta.get('version')} "
                                 f"under {meta.get('license')}")
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            sizes, stored, digests = {}, {}, {}
            for name in FILES:
                member = tar.getmember(f"package/dist/{name}")
                if not member.isfile():
                    raise SystemExit(f"error: dist/{name} is not a plain file in the tarball")
                data = tar.extractfile(member).read()
                sizes[name], stored[name] = len(data), stored_name(name, len(data))
                if stored[name] != name:  # mtime=0: the same bytes on every refresh
                    digests[name] = hashlib.sha256(data).hexdigest()
                    data = gzip.compress(data, compresslevel=9, mtime=0)
                    if len(data) > MAX_FILE_BYTES:
                        raise SystemExit(f"error: dist/{name} is {len(data) / 2**20:.1f} MiB even gzip-compressed")
                (target / stored[name]).write_bytes(data)
    (target / "VERSION").write_text(version + "\n")
    (target / "LICENSE").write_text(MIT)
    (target / "SHA256SUMS").write_text("".join(f"{sha256(target / stored[n])}  {stored[n]}\n" for n in FILES))

    def kept(n: str) -> str:
        if n not in digests:
            return "itself"
        return f"`{stored[n]}`, {(target / stored[n]).stat().st_size:,} bytes (npm file's SHA-256 `{digests[n]}`)"

    rows = "\n".join(f"| `{n}` | {sizes[n]:,} | {kept(n)} | {DESCRIPTIONS[n]} |" for n in FILES)
    (target / "README.md").write_text(README.format(version=version, package=PACKAGE, integrity=integrity,
                                                    rows=rows, limit=MAX_FILE_BYTES // 2**20))
    return {stored[n]: (target / stored[n]).stat().st_size for n in FILES}


def build_arg_parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m devtools.vendor_ort_web",
                                  description=f"Refresh the vendored {PACKAGE} files from npm (npm pack).")
    cli.add_argument("--version", default=ORT_WEB_VERSION, help=f"package version (default {ORT_WEB_VERSION})")
    cli.add_argument("--out", type=Path, default=VENDOR_DIR, help="target folder (replaced)")
    return cli


def main(argv: list[str] | None = None) -> None:
    args = build_arg_parser().parse_args(argv)
    sizes = vendor(args.version, args.out)
    for name, size in sizes.items():
        print(f"{size / 2**20:8.2f} MiB  {args.out / name}")
    if args.version != ORT_WEB_VERSION:
        print(f"note: ORT_WEB_VERSION in {__file__} still says {ORT_WEB_VERSION}", file=sys.stderr)


if __name__ == "__main__":
    main()
