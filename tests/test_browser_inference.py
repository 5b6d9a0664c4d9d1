"""In-browser inference (demo/browser.py, demo/static/js): the vendored runtime, the routes that serve it and
the model's graphs (and nothing else), and the page running generate / re-roll with onnxruntime-web.

The app runs in this process (``demo.launch.create_app`` + ``launch``) with the tiny demo model on the ONNX
backend, so the tests can count the server's own model calls: with the browser on they must stay at zero.
The Chromium tests are skipped without Debian's /usr/bin/chromium.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import os
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_demo_app import CHROMIUM, CHROMIUM_FLAGS, SHOES, free_port, open_page
from test_demo_handlers import make_examples

from demo import browser as B
from devtools.vendor_ort_web import FILES, MAX_FILE_BYTES, ORT_WEB_VERSION, WEBGPU_FILES
from smis import ClassCodes, SMISResult, get_config

#: Largest difference (uint8 levels) allowed between the browser's and the server's image for the same mask
#: and codes: the same graphs on onnxruntime-web WASM and ONNX Runtime CPU (measured: 0 on the tiny model).
PIXEL_TOLERANCE = 2
#: Chromium with WebGPU on SwiftShader (Vulkan on the CPU: it shows WebGPU works, not how fast a GPU is).
WEBGPU_FLAGS = [f for f in CHROMIUM_FLAGS if f != "--disable-gpu"] + [
    "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"]
no_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


# -- the vendored runtime ---------------------------------------------------------------------------------

def test_vendored_runtime_is_pinned_licensed_and_intact():
    folder = B.ORT_WEB_DIR
    assert (folder / "VERSION").read_text().strip() == ORT_WEB_VERSION == B.ort_web_version()
    assert (folder / "LICENSE").read_text().startswith("MIT License")
    assert f"onnxruntime-web@{ORT_WEB_VERSION}" in (folder / "README.md").read_text()
    sums = dict(line.split()[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines())
    # each file as itself, or gzip-compressed: the WebAssembly (a quarter of the bytes; the JSPI one is above the limit)
    stored = {n: n if (folder / n).is_file() else n + ".gz" for n in FILES}
    assert sorted(sums) == sorted(stored.values())
    assert {n for n, s in stored.items() if s != n} == {n for n in FILES if n.endswith(".wasm")}
    assert set(WEBGPU_FILES) < set(FILES)
    for name, digest in sums.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
        assert (folder / name).stat().st_size <= MAX_FILE_BYTES, name
    readme = (folder / "README.md").read_text()
    for name in (n for n, s in stored.items() if s != n):  # the npm file's own digest, in the README
        original = gzip.decompress((folder / stored[name]).read_bytes())
        assert original[:4] == b"\0asm" and len(original) > 3 * (folder / stored[name]).stat().st_size
        assert f"{hashlib.sha256(original).hexdigest()}" in readme and f"{len(original):,}" in readme
    # only what the page loads: no other build of the runtime
    assert sorted(p.name for p in folder.iterdir()) == sorted([*stored.values(), "LICENSE", "README.md",
                                                               "SHA256SUMS", "VERSION"])
    # no CDN at run time: the page's modules load only relative or app-given URLs
    for js in (B.STATIC_DIR / "js").glob("*.js"):
        assert not re.search(r"https?://", js.read_text()), js.name


# -- the model the page may run -----------------------------------------------------------------------------

def test_browser_model_from_the_backend_or_why_not(tiny_model_dir, tmp_path, monkeypatch):
    from export.onnx import export_model
    from smis import SMISPipeline

    monkeypatch.setenv("SMIS_CACHE", str(tmp_path / "cache"))
    torch_pipe = SMISPipeline.from_pretrained(tiny_model_dir, device="cpu")
    off = B.find_browser_model(torch_pipe)  # PyTorch and no graphs exported yet: off, and it says how
    assert not off.available and f"python -m export onnx --model {tiny_model_dir}" in off.reason
    assert "--browser off" in B.find_browser_model(torch_pipe, "off").reason

    onnx_pipe = SMISPipeline.from_pretrained(tiny_model_dir, backend="onnx", device="cpu", exporter=export_model)
    on = B.find_browser_model(onnx_pipe)
    assert on.available and sorted(on.graphs) == ["generator_maps", "generator_render"]
    assert all(p.parent == onnx_pipe.backend.generator_path.parent for p in on.graphs.values())
    info = on.describe()
    assert info["model"]["palette"] == [list(c) for c in onnx_pipe.config.palette]
    assert info["model"]["grid"] == list(onnx_pipe.config.latent_grid())
    assert info["runtime"]["version"] == ORT_WEB_VERSION
    assert info["runtime"]["webgpu"] == "static/vendor/onnxruntime-web/ort.jspi.min.mjs"
    # the graphs now in the cache serve PyTorch's page too (checked against the config)
    assert sorted(B.find_browser_model(torch_pipe).graphs) == ["generator_maps", "generator_render"]


def test_page_without_browser_inference_says_why(tiny_model_dir):
    from demo import build_demo
    from smis import SMISPipeline

    pipe = SMISPipeline.from_pretrained(tiny_model_dir, device="cpu")
    model = B.BrowserModel(pipe.config, reason="it is turned off on this server (--browser off)")
    config = build_demo(pipe, references=[], cache_examples=False, browser=model).get_config_file()
    props = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    assert "turned off on this server" in props["browser-note"]["value"]
    assert props["browser-run"]["value"] is False and props["browser-run"]["interactive"] is False
    assert not any("smisBrowser" in str(d.get("js")) for d in config["dependencies"])


# -- the jobs, with a stand-in for the page ----------------------------------------------------------------

def render_like_the_page(pipe, job_text: str) -> str:
    """What page.js does with a job, in Python: decode it, run the graph, answer with the PNG (base64)."""
    import base64
    import io

    from PIL import Image

    job = json.loads(job_text)
    labels = np.frombuffer(base64.b64decode(job["labels"]), np.uint8).reshape(job["height"], job["width"])
    codes = ClassCodes.from_dict(job["codes"])
    rgb = pipe.backend.generate_uint8(labels[None].astype(np.int64), codes.latent()[None])[0]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return json.dumps({**job, "image": base64.b64encode(buf.getvalue()).decode(), "ms": 12.5, "threads": 1})


def test_jobs_run_no_model_and_their_results_match_the_server_path(tiny_model_dir, tmp_path, monkeypatch):
    from test_demo_handlers import LOWER, UPPER, blocky_labels

    from demo.handlers import DemoHandlers
    from export.onnx import export_model
    from smis import SMISPipeline

    monkeypatch.setenv("SMIS_CACHE", str(tmp_path / "cache"))
    pipe = SMISPipeline.from_pretrained(tiny_model_dir, backend="onnx", device="cpu", exporter=export_model)
    h = DemoHandlers(pipe, [], tmp_path / "work")
    jobs = B.BrowserJobs(h)
    counter = Counter(pipe.backend)
    labels = blocky_labels(pipe.config)
    editor = h.canvas.to_editor(labels)

    seed, _, job = jobs.generate(editor, 7, False)
    assert seed == 7 and counter.calls == 0
    assert json.loads(job)["server_button"] == "generate"
    image, path, strip, *_, status = jobs.finish(render_like_the_page(pipe, job), [], None, [])
    first = SMISResult.load(path)
    served = SMISResult.load(h.generate(editor, 7, False, [])[3])  # the server path, same seed
    assert first.codes == served.codes and np.array_equal(first.labels, served.labels) and first.seed == 7
    assert np.array_equal(np.asarray(first.image), np.asarray(served.image))
    assert "generate in your browser (WASM, 1 thread): 0.01 s" in status and strip[-1][1] == "#1 generate · seed 7"

    calls = counter.calls
    job = jobs.reroll(path, "upper clothes", [])
    _, path2, strip, *_ = jobs.finish(render_like_the_page(pipe, job), strip, None, [])
    second = SMISResult.load(path2)
    changed = [c for c in range(10) if not np.array_equal(first.codes.values[c], second.codes.values[c])]
    assert changed == [UPPER] and strip[-1][1].startswith("#2 re-roll upper clothes · seed ")

    job = jobs.reroll_unlocked(path2, ["upper clothes", "background"])
    third = SMISResult.load(jobs.finish(render_like_the_page(pipe, job), strip, None, [])[1])
    changed = [c for c in range(10) if not np.array_equal(second.codes.values[c], third.codes.values[c])]
    assert changed == sorted(set(np.unique(labels)) - {0, UPPER})

    edited = np.where(labels == LOWER, SHOES, labels)
    label_map, job = jobs.mask_edit(h.canvas.to_editor(edited), path)
    fourth = SMISResult.load(jobs.finish(render_like_the_page(pipe, job), strip, None, [])[1])
    assert fourth.codes == first.codes and np.array_equal(fourth.labels, edited)
    # live painting: the canvas with the current result's codes (before any result: the seed's), the current
    # result but not a new variant of the strip
    _, job = jobs.live(h.canvas.to_editor(edited), path2, 0, False)
    live = jobs.finish(render_like_the_page(pipe, job), strip, None, [])
    painted = SMISResult.load(live[1])
    assert painted.codes == second.codes and np.array_equal(painted.labels, edited)
    assert Path(live[1]).name == "smis-live.png" and "live edit in your browser" in live[5]
    assert not isinstance(live[2], list)  # the strip is left as it was
    _, job = jobs.live(editor, None, 5, False)
    assert ClassCodes.from_dict(json.loads(job)["codes"]) == pipe.sample_codes(5)[0]
    ends = json.loads(jobs.morph_ends(path2, "current", "strip:0", strip))  # the drag-to-morph ends
    assert ClassCodes.from_dict(ends["a"]) == second.codes and ClassCodes.from_dict(ends["b"]) == first.codes
    assert counter.calls == calls  # no model call on the server for any job

    # refusals: a locked class, a damaged or foreign answer; an empty answer changes nothing
    with pytest.raises(Exception, match="is locked"):
        jobs.reroll(path, "upper clothes", ["upper clothes"])
    good = json.loads(render_like_the_page(pipe, jobs.generate(editor, 1, False)[2]))
    for bad, message in ((dict(good, image="not base64!"), "damaged"),
                         (dict(good, labels=good["labels"][:40]), "not a 128x64 map"),
                         (dict(good, op="format_disk"), "unknown step"),
                         (dict(good, image="iVBORw0KGgo="), "not an image file")):
        with pytest.raises(Exception, match=message):
            jobs.finish(json.dumps(bad), [], None, [])
    assert all(not isinstance(v, str) for v in jobs.finish("", [], None, []))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk of a PNG file."""
    import struct

    chunks, pos = [], 8
    while pos < len(data):
        size, cid = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((cid, data[pos + 8:pos + 8 + size]))
        pos += 12 + size
    return chunks


def test_the_pages_png_is_kept_with_the_metadata_added(tiny_model_dir, tmp_path, monkeypatch):
    """The server keeps the page's PNG (a canvas' RGBA, opaque) as the result's file: its compressed pixels as they
    are, the mask and codes added, its own other chunks (a forged code chunk too) left out; it re-opens as the
    result. A PNG that is not just the image (a transparent pixel, a palette) is encoded again, as before."""
    import base64
    import io
    import zlib

    from PIL import Image, PngImagePlugin
    from test_demo_handlers import blocky_labels

    from demo.handlers import DemoHandlers
    from demo.results import png_with_metadata
    from export.onnx import export_model
    from smis import SMISPipeline

    monkeypatch.setenv("SMIS_CACHE", str(tmp_path / "cache"))
    pipe = SMISPipeline.from_pretrained(tiny_model_dir, backend="onnx", device="cpu", exporter=export_model)
    h = DemoHandlers(pipe, [], tmp_path / "work")
    jobs = B.BrowserJobs(h)
    job = json.loads(jobs.generate(h.canvas.to_editor(blocky_labels(pipe.config)), 3, False)[2])
    rgb = np.asarray(SMISResult.load(h.generate(h.canvas.to_editor(blocky_labels(pipe.config)), 3, False, [])[3])
                     .image)
    forged = PngImagePlugin.PngInfo()
    forged.add_text("smis-codes", "forged")

    def answer(image: Image.Image, **save) -> tuple[str, bytes]:
        buf = io.BytesIO()
        image.save(buf, format="PNG", **save)
        return json.dumps({**job, "image": base64.b64encode(buf.getvalue()).decode(), "ms": 1.0}), buf.getvalue()

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rendered, png = answer(Image.fromarray(rgba, "RGBA"), pnginfo=forged)  # a canvas' PNG, with a chunk of its own
    path = jobs.finish(rendered, [], None, [])[1]
    kept = Path(path).read_bytes()
    idat = lambda data: [c for c in png_chunks(data) if c[0] == b"IDAT"]  # noqa: E731
    assert idat(kept) == idat(png) and len(kept) < len(png) + 2000  # not encoded again
    assert [c for c, _ in png_chunks(kept)][0] == b"IHDR" and b"forged" not in kept
    result = SMISResult.load(path)  # re-opens with the server's mask and codes
    assert result.seed == 3 and result.codes == pipe.sample_codes(3)[0]
    assert np.array_equal(result.labels, blocky_labels(pipe.config)) and np.array_equal(np.asarray(result.image), rgb)
    assert h.files.load(path).codes == result.codes

    rgba[0, 0, 3] = 128  # not just the image: encoded again (RGB), as the server path does
    path = jobs.finish(answer(Image.fromarray(rgba, "RGBA"))[0], [], None, [])[1]
    assert Image.open(path).mode == "RGB" and SMISResult.load(path).codes == result.codes
    info = result.pnginfo()
    assert png_with_metadata(answer(Image.fromarray(rgb).quantize(16))[1], info) is None  # a palette
    assert png_with_metadata(png + b"trailing", info) is None
    broken = bytearray(png)
    broken[-20] ^= 1  # in the last IDAT: its CRC no longer holds
    assert png_with_metadata(bytes(broken), info) is None
    assert png_with_metadata(png[:-12], info) is None  # no IEND
    assert zlib.crc32(kept[12:29]) == int.from_bytes(kept[29:33], "big")  # the header as it was


# -- the app, in this process -------------------------------------------------------------------------------

class Counter:
    """Wraps the server backend's model calls."""

    def __init__(self, backend):
        self.calls = 0
        for name in ("generate", "encode"):
            setattr(backend, name, self._counted(getattr(backend, name)))

    def _counted(self, fn):
        def wrapper(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)
        return wrapper


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    """``create_app`` on the tiny model (ONNX backend, graphs exported into a temporary cache), launched."""

    tmp = tmp_path_factory.mktemp("browser-app")
    make_examples(tmp / "examples")
    with _launched(tiny_model_dir, tmp, tmp / "examples") as info:
        yield {**info, "tmp": tmp}


@contextlib.contextmanager
def _launched(model_dir: Path, tmp: Path, examples: Path):
    """``create_app`` on ``model_dir`` (ONNX backend, graphs exported into ``tmp/cache``), launched on a free port;
    yields url, port, demo and the backend's call counter, and restores the environment after."""
    from demo import CSS
    from demo.launch import app_kwargs, create_app
    from export.onnx import export_model

    saved = {k: os.environ.get(k) for k in ("SMIS_CACHE", "GRADIO_TEMP_DIR")}
    os.environ.update(SMIS_CACHE=str(tmp / "cache"), GRADIO_TEMP_DIR=str(tmp / "gradio"))
    demo = create_app(str(model_dir), backend="onnx", device="cpu", parser="none", examples=str(examples),
                      cache_examples=False, exporter=export_model)
    counter = Counter(demo.handlers.pipe.backend)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS,
                ssr_mode=False, app_kwargs=app_kwargs(demo))
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "port": port, "demo": demo, "counter": counter}
    finally:
        demo.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def raw_get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..`` or ``%2e``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def test_routes_serve_the_runtime_and_graphs_and_nothing_else(app, tiny_model_dir):
    port = app["port"]
    status, body, _ = raw_get(port, "/smis/model.json")
    info = json.loads(body)
    assert status == 200 and info["available"]
    # the .wasm files, stored gzipped: sent gzip-encoded to a browser (a quarter of the bytes), decompressed to
    # other clients
    for wasm in ("ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.jspi.wasm"):
        url = "/smis/static/vendor/onnxruntime-web/" + wasm
        status, body, headers = raw_get(port, url, {"Accept-Encoding": "gzip, deflate, br"})
        assert status == 200 and headers["content-type"] == "application/wasm" and headers["content-encoding"] == "gzip"
        assert int(headers["content-length"]) == len(body) < 5 * 2**20 and headers["vary"] == "Accept-Encoding"
        original = gzip.decompress(body)
        assert original[:4] == b"\0asm" and len(original) > 3 * len(body), wasm
        for accept in ({}, {"Accept-Encoding": "gzip;q=0, identity"}):
            status, body, headers = raw_get(port, url, accept)
            assert status == 200 and "content-encoding" not in headers and body == original, (wasm, accept)
        assert raw_get(port, url + ".gz")[0] == 404  # one name only
    status, _, headers = raw_get(port, "/smis/static/js/page.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    # every response makes the page cross-origin isolated (several WebAssembly threads): the page, the runtime
    for path in ("/", "/smis/static/js/page.js", "/smis/model.json"):
        headers = {k.lower(): v for k, v in raw_get(port, path)[2].items()}
        assert {k.lower(): v for k, v in B.ISOLATION_HEADERS.items()}.items() <= headers.items(), path
    graph = app["demo"].browser_model.graphs["generator_maps"]
    status, body, headers = raw_get(port, "/smis/" + info["graphs"]["generator_maps"])
    assert status == 200 and body == graph.read_bytes() and headers["content-type"] == "application/octet-stream"

    tag = app["demo"].browser_model.tag
    sibling = graph.parent / "encoder.onnx"  # in the graphs' folder, but not a browser graph
    assert sibling.is_file()
    for path in ["/smis/static/../browser.py", "/smis/static/../../app.py", "/smis/static/%2e%2e/browser.py",
                 "/smis/static/%2E%2E%2Fbrowser.py", "/smis/static/js/../../browser.py",
                 "/smis/static//etc/passwd", "/smis/static/%2Fetc%2Fpasswd", "/smis/static/js/",
                 f"/smis/static/{B.STATIC_DIR}/js/page.js", "/smis/static/..%5c..%5capp.py",
                 f"/smis/model/{tag}/encoder.onnx", f"/smis/model/{tag}/config.json",
                 f"/smis/model/{tag}/../{tag}/encoder.onnx", f"/smis/model/{tag}/%2e%2e%2fencoder.onnx",
                 "/smis/model/0000000000000000/generator-maps.onnx", f"/smis/model/{tag}/{graph}",
                 f"/smis/model/{tag}/..%2f..%2fmodel.safetensors", "/smis/model.json/../app.py"]:
        status, body, _ = raw_get(port, path)
        assert status in (403, 404), (path, status, body[:200])
        assert b"import " not in body and b"\0asm" not in body and b"ONNX" not in body, path
    # Gradio's own file route does not open the model folder or the graphs either
    for target in (tiny_model_dir / "config.json", sibling, Path("/etc/passwd")):
        status, _, _ = raw_get(port, f"/gradio_api/file={target}")
        assert status in (403, 404), target


def test_isolation_headers_follow_the_switch(tmp_path):
    """COOP/COEP on every response only with browser inference on and ``isolate`` (``--browser-threads auto``)."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    import app as app_module

    (tmp_path / "generator-maps.onnx").write_bytes(b"not read here")
    model = B.BrowserModel(get_config("demo", tiny=True), graphs={"generator_maps": tmp_path / "generator-maps.onnx"})
    assert model.available
    for isolate, expected in ((True, B.ISOLATION_HEADERS), (False, {})):
        with TestClient(Starlette(**B.app_kwargs(model, isolate=isolate))) as client:
            for path in ("/smis/model.json", "/no-such-page"):
                headers = client.get(path).headers
                assert {k: headers.get(k) for k in B.ISOLATION_HEADERS} == {
                    k: expected.get(k) for k in B.ISOLATION_HEADERS}, (isolate, path)
    assert "middleware" not in B.app_kwargs(B.BrowserModel(get_config("demo", tiny=True)))  # browser inference off
    assert app_module.parse_args([]).browser_threads == "auto" or "SMIS_BROWSER_THREADS" in os.environ
    assert app_module.parse_args(["--browser-threads", "1"]).browser_threads == "1"


def test_static_files_leave_links_out(tmp_path):
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    root, outside = tmp_path / "static", tmp_path / "secret"
    (root / "js").mkdir(parents=True)
    outside.mkdir()
    (root / "js" / "page.js").write_text("export {};")
    (outside / "key.txt").write_text("secret")
    (root / "js" / "link.js").symlink_to(outside / "key.txt")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    assert sorted(B.static_files(root)) == ["js/page.js"]
    model = B.BrowserModel(get_config("demo", tiny=True))
    with TestClient(Starlette(routes=B.routes(model, static_root=root))) as client:
        assert client.get("/smis/static/js/page.js").text == "export {};"
        for path in ("/smis/static/js/link.js", "/smis/static/linked/key.txt"):
            assert client.get(path).status_code == 404


# -- a real browser ---------------------------------------------------------------------------------------

def wait_for_state(page, *states: str, timeout: int = 60_000) -> str:
    """The page's in-browser inference state once it left 'loading' (ready, off or server)."""
    page.wait_for_function("document.querySelector('#browser-note-text')?.dataset.state !== 'loading'",
                           timeout=timeout)
    state = page.locator("#browser-note-text").get_attribute("data-state")
    assert state in states, page.locator("#browser-note-text").text_content()
    return state


def paint_shoes(page) -> None:
    page.click("#canvas button[aria-label='Color']")
    page.locator("#canvas button.color").nth(SHOES).click()
    page.mouse.click(5, 5)  # the colour popup swallows strokes until it is closed
    stroke(page, 0.6)


def stroke(page, height: float) -> None:
    """A short stroke at ``height`` (0..1) of the canvas (few mouse steps: each one redraws the editor, slow on
    a busy software GL)."""
    surface = page.locator("#canvas canvas").first
    surface.scroll_into_view_if_needed()  # the mouse works in the viewport's coordinates
    box = surface.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] * height
    page.mouse.move(x - 40, y)
    page.mouse.down()
    page.mouse.move(x + 40, y + 6, steps=4)
    page.mouse.up()


def download(url: str) -> SMISResult:
    with urllib.request.urlopen(url, timeout=30) as r:
        return SMISResult.load(r.read())


def max_pixel_difference(pipe, result: SMISResult) -> int:
    """The browser's image against the server's (ONNX Runtime, same graphs) for its mask and codes."""
    server = np.asarray(pipe.render(result.labels, [result.codes])[0], np.int16)
    return int(np.abs(server - np.asarray(result.image, np.int16)).max())


@pytest.mark.browser
@no_chromium
def test_browser_generates_and_rerolls_in_the_page(app):
    """Paint a stroke, Generate, Re-roll that class, paint live, drag a morph: the page runs the model, the
    server runs none; the PNGs carry the mask and the seed's codes, and the image equals the server's within the
    tolerance. With the switch off the same click runs on the server as before. This Chromium offers no WebGPU
    adapter (--disable-gpu): the page runs WebAssembly and says why not WebGPU."""
    sync_api = pytest.importorskip("playwright.sync_api")
    counter, pipe = app["counter"], app["demo"].handlers.pipe
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = open_page(browser, app["url"], settle_ms=500)
            wait_for_state(page, "ready")
            note = page.locator("#browser-note-text")
            assert "run in your browser" in note.text_content()
            assert note.get_attribute("data-runtime") == "wasm"
            # the app makes the page cross-origin isolated, so the runtime may use several threads (up to 4)
            threads = page.evaluate("crossOriginIsolated && window.smisBrowser.runtime.threads")
            assert threads == min(4, page.evaluate("navigator.hardwareConcurrency")), threads
            plural = "s" if threads > 1 else ""
            assert (f"WebAssembly, {threads} thread{plural}; not WebGPU: this browser offers no WebGPU adapter"
                    in note.text_content())
            wasm = f"WASM, {threads} thread{plural}"
            paint_shoes(page)
            before = counter.calls
            link = page.locator("#result-file a[href]").first
            page.click("#generate")
            sync_api.expect(link).to_have_attribute("download", re.compile("generate"), timeout=60_000)
            generated = link.get_attribute("href")
            page.locator("#reroll-class input").click()
            page.get_by_role("option", name="shoes").click()
            page.click("#reroll")
            sync_api.expect(link).to_have_attribute("download", re.compile("re-roll-shoes"), timeout=60_000)
            rerolled = link.get_attribute("href")
            sync_api.expect(page.locator("#status")).to_contain_text(f"re-roll in your browser ({wasm})")
            assert counter.calls == before, "the server ran the model while the browser was on"
            assert page.evaluate("window.smisBrowser.renders") == 2
            seed_box = int(page.locator("#seed input").input_value())

            # live painting: after a stroke the result is the canvas with the current codes (not a new variant)
            page.locator("#browser-live input").check()
            stroke(page, 0.3)
            sync_api.expect(link).to_have_attribute("download", re.compile("live"), timeout=60_000)
            # a burst of strokes: one job runs, one waits for the newest canvas, nothing queues up
            done = page.evaluate("window.smisBrowser.lives")
            page.evaluate("for (let i = 0; i < 5; i++) window.smisBrowser.strokeEnded()")
            page.wait_for_function(f"window.smisBrowser.lives >= {done + 2} && !window.smisBrowser.liveBusy",
                                   timeout=60_000)
            page.wait_for_timeout(500)
            assert page.evaluate("window.smisBrowser.lives") == done + 2
            page.locator("#browser-live input").uncheck()
            sync_api.expect(page.locator("#strip .caption-label")).to_have_count(2)
            assert counter.calls == before, "the server ran the model for live painting"
            live = link.get_attribute("href")

            # drag to morph: A = the current (live) result, B = variant #1; the page renders each position
            page.get_by_role("tab", name="Style morphing").click()
            page.locator("#morph-b input").click()  # (a reference would be encoded on the server)
            # the page made the choices for the new strip itself, as the server's handler makes them
            captions = page.locator("#strip .caption-label").all_text_contents()
            expected = [label for label, _ in app["demo"].handlers.morph_choices([("v.png", c) for c in captions])]
            options = [t.replace("✓", "").strip() for t in page.get_by_role("option").all_text_contents()]
            assert len(captions) == 2 and options == expected
            page.get_by_role("option", name=re.compile("^#1 generate")).click()
            page.click("#browser-morph-load")
            page.wait_for_function("window.smisBrowser.morphFrames >= 1 && !window.smisBrowser.morphBusy",
                                   timeout=60_000)
            page.locator("#browser-morph-t input[type=range]").evaluate(
                "(el) => { for (const v of [0.1, 0.25, 0.5]) { el.value = v;"
                " el.dispatchEvent(new Event('input', {bubbles: true})); } }")
            page.wait_for_function("window.smisBrowser.morph.t === 0.5 && !window.smisBrowser.morphBusy",
                                   timeout=60_000)
            assert 3 <= page.evaluate("window.smisBrowser.morphFrames") <= 4  # 0.25 may be skipped, never queued
            page.click("#browser-morph-keep")
            sync_api.expect(link).to_have_attribute("download", re.compile("morph"), timeout=60_000)
            kept = link.get_attribute("href")
            assert counter.calls == before, "the server ran the model for the morph"

            page.locator("#browser-run input").uncheck()  # the server path, as before
            sync_api.expect(page.locator("#browser-note-text")).to_have_attribute("data-state", "server")
            page.click("#generate")
            sync_api.expect(link).to_have_attribute("download", re.compile("generate"), timeout=60_000)
            sync_api.expect(page.locator("#status")).not_to_contain_text("in your browser")
            assert counter.calls == before + 1
            server_made = link.get_attribute("href")
        finally:
            browser.close()
    first, second = download(generated), download(rerolled)
    classes, counts = np.unique(first.labels, return_counts=True)
    assert classes.tolist() == [0, SHOES] and 20 < counts[1] < 2000
    assert first.seed == seed_box
    assert first.codes == ClassCodes.sample(pipe.class_names, pipe.config.z_channels, pipe.config.latent_grid(),
                                            first.seed)  # the same seed gives the same codes as the server's
    changed = [c for c in range(10) if not np.array_equal(first.codes.values[c], second.codes.values[c])]
    assert changed == [SHOES] and np.array_equal(first.labels, second.labels)
    assert max_pixel_difference(pipe, first) <= PIXEL_TOLERANCE
    assert max_pixel_difference(pipe, second) <= PIXEL_TOLERANCE
    painted, frame = download(live), download(kept)
    assert frame.codes == painted.codes.lerp(first.codes, 0.5)  # bit for bit: ClassCodes.lerp's float32 steps
    assert np.array_equal(frame.labels, painted.labels) and max_pixel_difference(pipe, frame) <= PIXEL_TOLERANCE
    assert painted.codes == second.codes and (painted.labels == SHOES).sum() > (first.labels == SHOES).sum()
    assert max_pixel_difference(pipe, painted) <= PIXEL_TOLERANCE
    assert np.array_equal(download(server_made).labels, painted.labels)


def test_no_server_event_reads_the_canvas(app):
    """The events that need the canvas read its hidden twin (a JSON value in the page), which the page fills just
    before; none reads the editor or shows progress on it, or the page would upload its images again on every
    status change (see test_browser_reroll_uploads_nothing)."""
    config = app["demo"].get_config_file()
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
    types = {c["id"]: c["type"] for c in config["components"]}
    editor, twin = ids["canvas"], ids["canvas-value"]
    assert types[editor] == "imageeditor" and types[twin] == "json"
    server = [d for d in config["dependencies"] if d["backend_fn"]]
    assert not [d["api_name"] for d in server if editor in d["inputs"]]
    assert not [d["api_name"] for d in server if editor in (d["show_progress_on"] or d["outputs"])]
    readers = {d["api_name"] for d in server if twin in d["inputs"]}
    assert {"generate", "apply_mask_edit", "fill", "upload_mask", "clear_mask", "generate_1", "live"} <= readers
    copies = [d for d in config["dependencies"] if d["inputs"] == [editor] and d["outputs"] == [twin]]
    assert copies and all(not d["backend_fn"] and d["js"] for d in copies)


def test_new_variants_update_the_morph_choices_in_the_page(app):
    """A new strip sets the morph ends' choices with a page-only step (no server call per re-roll); the
    handler stays in the API as /morph_choices, with no trigger in the page."""
    config = app["demo"].get_config_file()
    strip = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == "strip")
    on_strip = [d for d in config["dependencies"] if [strip, "change"] in [list(t) for t in d["targets"]]]
    assert on_strip and all(not d["backend_fn"] and d["js"] for d in on_strip)
    api = [d for d in config["dependencies"] if d["api_name"] == "morph_choices"]
    assert len(api) == 1 and api[0]["backend_fn"] and not api[0]["targets"]


#: The page's WebGPU render graph answers a wrong image (a broken kernel as the check sees it: the CPU kernels'
#: image, 40 levels off; it stands in for a SwiftShader run, which takes seconds).
BREAK_RENDER_JS = """() => {
  const rt = window.smisBrowser.runtime;
  rt.sessions.generator_render.run = async (feeds, names) => {
    const cpu = await rt.ort.InferenceSession.create(rt.graphs.generator_render, { executionProviders: ['wasm'] });
    const out = await cpu.run(feeds, names);
    const data = out.image_uint8.data;
    for (let i = 0; i < data.length; i++) data[i] = data[i] > 127 ? data[i] - 40 : data[i] + 40;
    return out;
  };
}"""


# Slow (-m slow): WebGPU on SwiftShader emulates the GPU on the CPU (30-40 s here, far more on a loaded 2-core
# machine, where it once ran past its waits); the default run keeps the no-WebGPU path (WASM, and the reason said).
@pytest.mark.slow
@pytest.mark.browser
@no_chromium
def test_browser_runs_webgpu_where_the_browser_offers_it(app):
    """Chromium with WebGPU on SwiftShader (a software adapter, so the page is asked for WebGPU: ?runtime=webgpu;
    left to choose, it keeps WebAssembly and says so): the page runs Generate on WebGPU, checked against the CPU
    kernels on the first run, and says so; the image equals the server's within the tolerance, with no model call
    on the server. A WebGPU run that disagrees with the CPU kernels moves the page to WebAssembly, which says why,
    and the result is the CPU kernels' (still the server's image)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    counter, pipe = app["counter"], app["demo"].handlers.pipe
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=WEBGPU_FLAGS)
        try:
            page = open_page(browser, app["url"] + "?runtime=webgpu", settle_ms=500)
            if not page.evaluate("async () => Boolean(navigator.gpu && await navigator.gpu.requestAdapter())"):
                pytest.skip("this Chromium offers no WebGPU adapter on SwiftShader")
            wait_for_state(page, "ready", timeout=120_000)
            note = page.locator("#browser-note-text")
            assert note.get_attribute("data-runtime") == "webgpu", note.text_content()
            assert f"(onnxruntime-web {ORT_WEB_VERSION}, WebGPU)" in note.text_content()
            auto = page.evaluate("async () => (await import('/smis/static/js/runtime.js')).webgpuAdapter()")
            assert auto == {"reason": "its only WebGPU adapter is a software one (slower than WebAssembly)"}
            paint_shoes(page)
            before = counter.calls
            link = page.locator("#result-file a[href]").first
            page.click("#generate")
            sync_api.expect(link).to_have_attribute("download", re.compile("generate"), timeout=120_000)
            sync_api.expect(page.locator("#status")).to_contain_text("generate in your browser (WebGPU)")
            generated = link.get_attribute("href")
            checks = page.evaluate("window.smisBrowser.runtime.checks")
            assert list(checks) == ["generator_maps"] and checks["generator_maps"] <= PIXEL_TOLERANCE

            page.evaluate(BREAK_RENDER_JS)
            page.click("#reroll")
            sync_api.expect(link).to_have_attribute("download", re.compile("re-roll"), timeout=120_000)
            sync_api.expect(note).to_have_attribute("data-runtime", "wasm")
            assert "not WebGPU: WebGPU's image differed from WebAssembly's by 40 of 255" in note.text_content()
            wasm_status = re.compile(r"in your browser \(WASM, \d threads?\)")
            sync_api.expect(page.locator("#status")).to_contain_text(wasm_status)
            rerolled = link.get_attribute("href")
            assert counter.calls == before, "the server ran the model while the browser was on"
        finally:
            browser.close()
    first, second = download(generated), download(rerolled)
    assert (first.labels == SHOES).sum() > 20 and np.array_equal(first.labels, second.labels)
    assert first.codes == pipe.sample_codes(first.seed)[0] and first.codes != second.codes
    assert max_pixel_difference(pipe, first) <= PIXEL_TOLERANCE
    assert max_pixel_difference(pipe, second) <= PIXEL_TOLERANCE


@pytest.mark.browser
@no_chromium
def test_browser_reroll_uploads_nothing(app):
    """A re-roll sends nothing the server already has: no file upload (with Gradio's ImageEditor read by an event,
    the page re-uploaded its three images on every status change of every event: ~30 uploads per re-roll);
    Generate uploads the painted canvas once. In the browser and on the server."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = open_page(browser, app["url"], settle_ms=500)
            wait_for_state(page, "ready")
            paint_shoes(page)
            sent: list[str] = []
            page.on("request", lambda r: sent.append(r.url))
            uploads = lambda: sum("/gradio_api/upload" in url for url in sent)  # noqa: E731
            events = lambda: sum("/gradio_api/run/" in url or "/queue/join" in url for url in sent)  # noqa: E731
            link = page.locator("#result-file a[href]").first
            page.click("#generate")
            sync_api.expect(link).to_have_attribute("download", re.compile("generate"), timeout=60_000)
            page.wait_for_timeout(500)  # the status changes after the result
            assert 1 <= uploads() <= 3, sent  # the canvas' background, layer and composite, once
            for mode in ("ready", "server"):
                if mode == "server":
                    page.locator("#browser-run input").uncheck()
                    sync_api.expect(page.locator("#browser-note-text")).to_have_attribute("data-state", "server")
                for _ in range(2):
                    before, (n_up, n_ev) = link.get_attribute("href"), (uploads(), events())
                    page.click("#reroll")
                    sync_api.expect(link).not_to_have_attribute("href", before, timeout=60_000)
                    page.wait_for_timeout(500)
                    assert uploads() == n_up, (mode, [u for u in sent if "/upload" in u])
                    # the job and the PNG back (or the served re-roll); the morph tab's choices for the new strip
                    # are made in the page
                    assert events() - n_ev <= (2 if mode == "ready" else 1), mode
            assert "re-roll" in page.locator("#status").text_content()
        finally:
            browser.close()


@pytest.mark.browser
@no_chromium
def test_browser_falls_back_to_the_server_when_the_runtime_cannot_load(app):
    """A missing (404) and a corrupt WebAssembly file: the page says why and Generate (here on the blank
    canvas) runs on the server."""
    sync_api = pytest.importorskip("playwright.sync_api")
    counter = app["counter"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            for name, answer in (("missing", {"status": 404, "body": "gone"}),
                                 ("corrupt", {"status": 200, "body": b"\0asm" + b"\x01" * 64,
                                              "content_type": "application/wasm"})):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.route("**/*.wasm", lambda route, _request, answer=answer: route.fulfill(**answer))
                page.goto(app["url"])
                page.locator("#canvas canvas").first.wait_for(timeout=60_000)
                wait_for_state(page, "off")
                note = page.locator("#browser-note-text").text_content()
                assert "did not load" in note and "runs on the server" in note, (name, note)
                assert not page.locator("#browser-run input").is_checked()
                if name == "corrupt":  # the same server path as for the missing one
                    page.close()
                    continue
                before = counter.calls
                link = page.locator("#result-file a[href]").first
                page.click("#generate")
                sync_api.expect(link).to_have_attribute("download", re.compile("generate"), timeout=60_000)
                assert counter.calls == before + 1, name
                assert not download(link.get_attribute("href")).labels.any()  # the blank canvas
                page.close()
        finally:
            browser.close()


# -- live painting with a preview graph (a model with a local enhancer) ------------------------------------

@pytest.fixture(scope="module")
def enhancer_app(tmp_path_factory):
    """``create_app`` on a tiny model grown to 256x128 with a local enhancer (its graphs include
    generator-preview.onnx: the 128x64 global generator's image), launched."""
    import dataclasses

    import torch
    from conftest import calibrate_batchnorm

    from smis import GroupDNet

    tmp = tmp_path_factory.mktemp("browser-enhancer")
    small = get_config("demo", tiny=True)
    cfg = small.replace(height=small.height * 2, width=small.width * 2,
                        generator=dataclasses.replace(small.generator, enhancer_channels=(8,)))
    torch.manual_seed(0)
    model = GroupDNet(cfg)
    calibrate_batchnorm(model)
    with torch.no_grad():  # the enhancer draws something of its own: the full image is not the preview upscaled
        model.generator.conv_img_hd.weight.normal_(0, 0.1)
    model.save_pretrained(tmp / "model")
    with _launched(tmp / "model", tmp, tmp / "none") as info:
        yield info


#: Logs the page's model calls in order (``window.liveOrder``) and keeps the last preview's RGB bytes.
SPY_JS = """() => {
  const rt = window.smisBrowser.runtime;
  window.liveOrder = [];
  for (const name of ['preview', 'run']) {
    const fn = rt[name].bind(rt);
    rt[name] = (labels, codes) => {
      window.liveOrder.push(name);
      return fn(labels, codes).then((rgb) => {
        if (name === 'preview') window.lastPreview = Array.from(rgb);
        return rgb;
      });
    };
  }
}"""


@pytest.mark.browser
@no_chromium
def test_live_painting_previews_then_renders_the_full_image(enhancer_app):
    """With a preview graph a stroke draws the preview (the global generator's image, scaled up over the result)
    and, once the brush rests, the full image, which the server keeps; a burst of strokes previews the first and
    renders only the newest in full. Same codes in both, no model call on the server."""
    import onnxruntime as ort

    sync_api = pytest.importorskip("playwright.sync_api")
    demo, counter = enhancer_app["demo"], enhancer_app["counter"]
    pipe = demo.handlers.pipe
    assert pipe.config.height == 256 and "generator_preview" in demo.browser_model.graphs
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = open_page(browser, enhancer_app["url"], settle_ms=500)
            wait_for_state(page, "ready")
            assert "a 128×64 preview while you paint" in page.locator("#browser-note-text").text_content()
            page.evaluate(SPY_JS)
            before = counter.calls
            page.locator("#browser-live input").check()
            link = page.locator("#result-file a[href]").first
            paint_shoes(page)
            sync_api.expect(link).to_have_attribute("download", re.compile("live"), timeout=60_000)
            page.wait_for_function("!window.smisBrowser.liveBusy", timeout=60_000)
            assert page.evaluate("window.liveOrder") == ["preview", "run"]
            assert page.evaluate("[window.smisBrowser.previews, window.smisBrowser.renders]") == [1, 1]
            # the preview was drawn over the result; it goes once the full image is on show
            page.wait_for_function("document.querySelector('#browser-live-preview')?.style.display === 'none'",
                                   timeout=10_000)
            first = link.get_attribute("href")

            # a burst: the first job previews, sees a newer stroke and stops; the newest previews, then renders
            done = page.evaluate("window.smisBrowser.lives")
            events = []  # the page's server events: each live job is one, keeping the full image one more
            page.on("request", lambda r: events.append(r.url) if "/gradio_api/run/" in r.url
                    or "/gradio_api/queue/join" in r.url else None)
            page.evaluate("window.liveOrder = []; for (let i = 0; i < 5; i++) window.smisBrowser.strokeEnded()")
            page.wait_for_function(f"window.smisBrowser.lives >= {done + 2} && !window.smisBrowser.liveBusy",
                                   timeout=60_000)
            page.wait_for_timeout(500)
            assert page.evaluate("window.smisBrowser.lives") == done + 2
            assert page.evaluate("window.liveOrder") == ["preview", "preview", "run"]
            assert len(events) == 3, events  # job (preview only) · job (preview, then the full image) · keep
            sync_api.expect(link).not_to_have_attribute("href", first, timeout=30_000)
            preview = np.asarray(page.evaluate("window.lastPreview"), np.int16)
            live = link.get_attribute("href")
            assert counter.calls == before, "the server ran the model for live painting"
        finally:
            browser.close()
    painted = download(live)
    assert painted.image.size == (128, 256) and (painted.labels == SHOES).sum() > 20
    assert painted.codes == pipe.sample_codes(painted.seed)[0]  # before any result: the seed's codes
    assert max_pixel_difference(pipe, painted) <= PIXEL_TOLERANCE  # the full image, as the server renders it
    # the preview: the same mask and codes through the preview graph, 128x64
    session = ort.InferenceSession(str(demo.browser_model.graphs["generator_preview"]),
                                   providers=["CPUExecutionProvider"])
    server = session.run(["image_uint8"], {"labels": painted.labels[None, None].astype(np.int64),
                                           "z": painted.codes.latent()[None]})[0][0]
    assert server.shape == (128, 64, 3) and preview.size == server.size
    assert int(np.abs(preview - server.reshape(-1).astype(np.int16)).max()) <= PIXEL_TOLERANCE
