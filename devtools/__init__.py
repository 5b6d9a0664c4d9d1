"""Developer tools around the demo, not part of it (the Space never imports them):

    python -m devtools.memory_bench     server memory under concurrent visitors (starts app.py)
    python -m devtools.photo_bench      latency of "Start from a photo", PyTorch vs ONNX Runtime
    python -m devtools.screenshots      the screenshots in docs/screenshots/ (headless Chromium)
    python -m devtools.browser_bench    in-browser (onnxruntime-web) vs server (ONNX Runtime) inference
    python -m devtools.vendor_ort_web   refresh the vendored onnxruntime-web files from npm
    python -m devtools.person_check     the full-body check on whole and cropped CCP photos (calibration)
"""
