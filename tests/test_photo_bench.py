"""devtools.photo_bench: the round-robin timing and its table (fake flows; no timing is asserted)."""

from __future__ import annotations

import pytest

from devtools import photo_bench as pb


def _fake(seconds: dict[str, float]):
    calls = []

    def flow(path):
        calls.append(path)
        return dict(seconds)
    flow.calls = calls
    return flow


def test_round_robin_and_table(tmp_path):
    slow = _fake({"decode + letterbox": 0.01, "parse": 0.2, "encode": 0.1, "generate": 0.3})
    fast = _fake({"decode + letterbox": 0.01, "parse": 0.04, "encode": 0.04, "generate": 0.11})
    photos = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    times = pb.run_bench({"PyTorch": slow, "ONNX Runtime": fast}, photos, repeats=3, warmup=1, progress=False)
    # One warm-up on the first photo, then each photo in turn through both flows.
    assert slow.calls == fast.calls == [photos[0], photos[0], photos[1], photos[0]]
    assert times["PyTorch"]["total"] == pytest.approx([0.61] * 3)
    table = pb.markdown(times, threads=2, repeats=3)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["PyTorch"].endswith("| 610 | 1.00 |")
    assert rows["ONNX Runtime"].endswith("| 200 | 3.05 |")
    assert "| 40 | 40 | 110 |" in rows["ONNX Runtime"]


def test_cli_refuses_an_empty_photo_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pb.main(["--photos", str(tmp_path), "--repeats", "1"])
    assert "no .jpg/.png photos" in capsys.readouterr().err
