"""devtools.load_bench: the table from known figures, and a real run (2 pages of the tiny model in Chromium)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools import load_bench as lb


def test_table_subtracts_the_idle_cost_and_compares_with_the_server():
    bursts = {"browser": lb.Burst("browser", 4, 2, 0, cpu_s=0.30, idle_cpu_s=0.10, wall_s=2.0,
                                  page_ms=[900.0, 1000.0, 1100.0, 1200.0] * 2, statuses=[],
                                  requests={"events": 16, "uploads": 48, "downloads": 8, "other": 0}),
              "server": lb.Burst("server", 4, 2, 8, cpu_s=1.30, idle_cpu_s=0.10, wall_s=2.0,
                                 page_ms=[2000.0] * 8, statuses=[],
                                 requests={"events": 8, "uploads": 0, "downloads": 8, "other": 1})}
    assert bursts["browser"].cpu_ms_per_reroll == pytest.approx(25.0)
    assert bursts["server"].cpu_ms_per_reroll == pytest.approx(150.0)
    assert bursts["server"].raw_cpu_ms_per_reroll == pytest.approx(162.5)
    table = lb.markdown(bursts, 0.05, "title")
    rows = [line for line in table.splitlines() if line.startswith("| in the") or line.startswith("| on the")]
    assert rows[0].startswith("| in the browser") and "| 0 of 8 | 38 / 25 | 0.17 |" in rows[0]
    assert rows[0].endswith("| 2.0 / 6.0 / 1.0 |")
    assert rows[1].startswith("| on the server")
    assert "| 8 of 8 | 162 / 150 | 1.00 | 2000 / 2000 | 2.0 | 1.0 / 0.0 / 1.0 |" in rows[1]
    assert "open and idle: 50 ms per second" in table


@pytest.mark.slow  # about a minute: the app in a child process, two Chromium pages loading the runtime
@pytest.mark.browser
@pytest.mark.skipif(not Path(lb.CHROMIUM).exists(), reason=f"no Chromium at {lb.CHROMIUM}")
def test_two_browser_visitors_run_no_model_on_the_server(tmp_path, capsys, monkeypatch):
    pytest.importorskip("playwright.async_api")
    monkeypatch.setenv("SMIS_CACHE", str(tmp_path / "cache"))  # the tiny model's graphs (the child inherits it)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    rc = lb.main(["--tiny", "--visitors", "2", "--rerolls", "1", "--idle", "1", "--out", str(tmp_path / "out"),
                  "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| in the browser" in out and "| on the server" in out
    data = json.loads((tmp_path / "out" / "load-bench.json").read_text())["bursts"]
    browser, server = data["browser"], data["server"]
    assert browser["model_calls"] == 0, "the server ran the model for a browser-mode re-roll"
    assert server["model_calls"] == 2
    for b in (browser, server):
        assert b["requests"]["events"] >= 2
        assert len(b["page_ms"]) == 2 and min(b["page_ms"]) > 0 and b["cpu_s"] > 0 and b["wall_s"] > 0
    assert all("in your browser" in s for s in browser["statuses"])
    assert not any("in your browser" in s for s in server["statuses"])
