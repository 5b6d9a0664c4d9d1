"""devtools.server_bench at tiny size: the app served in-process, every part timed, the table and the load line."""

from __future__ import annotations

import json

from devtools import server_bench as sb


def test_tables_and_verdict():
    times = {"generate": {"API": [0.30, 0.32, 0.34], "handler": [0.06] * 3, "model": [0.05] * 3,
                          "floor": [0.15] * 3},
             "re-roll": {"API": [0.20] * 3, "handler": [0.06] * 3, "model": [0.05] * 3, "floor": [0.15] * 3}}
    assert sb.verdict(times["generate"]) == (0.25, False)
    assert sb.verdict(times["re-roll"])[1]
    table = sb.markdown(times, "title")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["generate"].endswith("| 250 | 2.13 | no |") and "| 320 (310–330) |" in rows["generate"]
    assert rows["re-roll"].endswith("| 250 | 1.33 | yes |")


def test_tiny_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the bench sets it for its model; restored afterwards
    rc = sb.main(["--tiny", "--backend", "torch", "--repeats", "2", "--warmup", "1", "--strip", "2",
                  "--visitors", "2", "--calls", "1", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| generate |" in out and "| re-roll |" in out and "2 visitors × 1 generates" in out
    data = json.loads((tmp_path / "server-bench.json").read_text())
    for op in ("generate", "re-roll"):
        assert set(data["seconds"][op]) == {"API", "handler", "model", "floor"}
        assert all(len(v) == 2 and min(v) > 0 for v in data["seconds"][op].values())
    assert data["load"]["served"] == 2 and data["load"]["errors"] == 0


def test_result_read_bench_times_both_reads(tiny_model_dir, capsys):
    from devtools import result_read_bench

    assert result_read_bench.main(["--model", str(tiny_model_dir), "--calls", "3"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")
    assert row[1].strip() == str(tiny_model_dir) and row[2].strip().startswith("128x64, PNG")
    assert float(row[3]) > 0 and float(row[4]) > 0 and row[5].strip().endswith("x")
