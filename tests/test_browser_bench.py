"""devtools.browser_bench: the round-robin and its table (fake rounds; no timing is asserted)."""

from __future__ import annotations

import pytest

from devtools import browser_bench as bb


def test_round_robin_and_table():
    order = []

    def fake(name, generate, reroll):
        def run():
            order.append(name)
            return generate, reroll
        return run

    rounds = {"server, 1 thread": fake("s", 200.0, 50.0), "browser, 1 thread": fake("b", 600.0, 150.0)}
    times = bb.run_rounds(rounds, repeats=3, warmup=1, progress=False)
    assert order == ["s", "b"] * 4  # one warm-up round, then each row in turn
    assert times["browser, 1 thread"] == {"generate": [600.0] * 3, "reroll": [150.0] * 3}
    table = bb.markdown(times, {"server, 1 thread": "ONNX Runtime", "browser, 1 thread": "onnxruntime-web"},
                        "server, 1 thread", "tiny (128×64)", 3, pixel_diff=0)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["server, 1 thread"].endswith("| 200 | 50 | 1.00 / 1.00 |")
    assert rows["browser, 1 thread"].endswith("| 600 | 150 | 3.00 / 3.00 |")
    assert table.endswith("(same mask and codes): 0 of 255.")
    table = bb.markdown(times, {"server, 1 thread": "ONNX Runtime", "browser, 1 thread": "onnxruntime-web"},
                        "server, 1 thread", "tiny (128×64)", 3, pixel_diff={"browser, 1 thread": 0, "WebGPU": 1})
    assert table.endswith("(same mask and codes): 0 of 255 (browser, 1 thread), 1 of 255 (WebGPU).")


def test_cli_refuses_bad_rounds_and_a_missing_chromium(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bb.main(["--webgpu", "cuda"])  # swiftshader or hardware
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--rounds must be at least 1"):
        bb.main(["--rounds", "0"])
    with pytest.raises(SystemExit, match="no Chromium at"):
        bb.main(["--chromium", str(tmp_path / "nope")])
