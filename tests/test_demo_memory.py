"""Server memory under concurrent visitors (issue 12): ``python -m devtools.memory_bench`` as a test.

Slow (it builds the app's default 384x256 model and runs 80 calls): ``pytest -m slow tests/test_demo_memory.py``.
Before the fix the resident memory grew by ~1.2 GB over 240 calls (20 clients x 3 rounds) and kept
growing; with it, it stays within a few tens of MB of the warm figure.
"""

from __future__ import annotations

import sys

import pytest

#: Allowed growth of the server's RSS after the burst, over its RSS after one warm-up call.
MAX_GROWTH_MB = 200


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_after_concurrent_calls_is_bounded(monkeypatch):
    from devtools.memory_bench import run

    monkeypatch.delenv("SMIS_MODEL", raising=False)
    report = run(None, clients=10, rounds=2, tiny=False, extra_args=[])
    assert report["errors"] == 0, report
    assert report["growth_mb"] < MAX_GROWTH_MB, report
    assert report["log_tracebacks"] == 0, report
