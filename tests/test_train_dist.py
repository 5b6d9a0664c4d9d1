"""The CLI as separate processes: a 2-process gloo run under torchrun, SIGKILL / SIGTERM and restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_support import REPO, subprocess_env, train_cli, write_generic

from smis import GroupDNet
from train import checkpoint as ckpt


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_generic(tmp_path_factory.mktemp("data"), n=8)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.1)


def _logged_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(x)["step"] for x in lines if x.endswith("}")]
    return max(steps, default=0)


def test_two_process_gloo_run_under_torchrun(data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_cli("--data", str(data), "--outdir", str(out), "--batch-size", "4", "--steps", "2",
                      "--ckpt-every", "2", "--device", "cpu")[1:]]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    resolved = json.loads((out / "training_options.json").read_text())["resolved"]
    assert resolved["world_size"] == 2 and resolved["batch_per_process"] == 2
    assert resolved["steps_per_epoch"] == 2  # 8 pairs / 2 processes / 2 per process
    state = ckpt.load_state(ckpt.state_path(out, 2))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # one stream per rank
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    assert "process 0/2" in (out / "log.txt").read_text()


def test_sigkill_at_any_moment_then_resume_auto_and_sigterm(data, tmp_path):
    out = tmp_path / "run"
    base = train_cli("--data", str(data), "--outdir", str(out), "--batch-size", "2", "--steps", "500",
                     "--ckpt-every", "1", "--keep", "2")
    env = subprocess_env()

    # 1. Checkpoint every step and SIGKILL the run a few steps in (likely in the middle of a save).
    proc = subprocess.Popen(base, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _logged_step(out) >= 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    saved = ckpt.list_checkpoints(out)
    assert saved, "no checkpoint before the kill"
    for _, path in saved:  # every file with a final name loads
        assert ckpt.load_state(path)["step"] >= 1
    for _, folder in ckpt.list_snapshots(out):
        GroupDNet.from_pretrained(folder)
    newest = saved[-1][0]

    # 2. Restart with --resume auto: continues from the newest checkpoint (a budget too small for one
    #    step and a save stops it again before a step, the newest checkpoint untouched).
    proc = subprocess.run([*base, "--resume", "auto", "--max-minutes", "0.001"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"resumed from {ckpt.state_path(out, newest)} at step {newest}" in proc.stderr
    assert not list((out / ckpt.STATE_DIR).glob(".tmp-*")), "half-written files were not cleaned"
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "paused" and status["step"] == newest
    assert ckpt.list_checkpoints(out)[-1][0] == newest and status["checkpoint"] == str(ckpt.state_path(out, newest))

    # 3. SIGTERM to the whole process group (a preempted node), data-loader workers included:
    #    saves at the current step and exits 0.
    proc = subprocess.Popen([*base, "--resume", "auto", "--workers", "1"], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(lambda: _logged_step(out) >= newest + 3, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-4000:]
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert ckpt.list_checkpoints(out)[-1][0] == status["step"] > newest + 2
    assert ckpt.load_state(status["checkpoint"])["step"] == status["step"]
