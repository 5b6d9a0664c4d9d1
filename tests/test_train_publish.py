"""python -m train.publish: the Hub-ready folder round-trips, the upload call, a missing token."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_support import BlobDataset, tiny_options

from smis import SMISPipeline
from smis.hub import INDEX_NAME, WEIGHTS_NAME
from train import publish
from train.loop import train


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread (the pipeline's backend keeps it when OMP_NUM_THREADS is set)."""
    n = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    result = train(tiny_options(outdir=str(out), steps=2, sample_every=2, sample_count=2), dataset=BlobDataset(4))
    (out / "metrics.json").write_text(json.dumps({"fid": 123.4, "mcsd": {"mean": 0.02}, "note": "substitute"}))
    return result.run_dir


def _mask() -> np.ndarray:
    return BlobDataset(1)[0]["label"].numpy()


def test_dry_run_folder_loads_back_to_the_same_outputs(run, tmp_path):
    out = tmp_path / "pub"
    assert publish.main([str(run), "--dry-run", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", WEIGHTS_NAME, "README.md", "samples.png", "training_options.json", "metrics.json"} <= names
    mask = _mask()
    ours = SMISPipeline.from_pretrained(out, device="cpu").generate(mask, seed=5)
    ema = SMISPipeline.from_pretrained(run / "snapshots" / "model-00000002", device="cpu").generate(mask, seed=5)
    assert np.array_equal(np.asarray(ours.image), np.asarray(ema.image))
    assert ours.codes == ema.codes


def test_model_card_has_front_matter_classes_training_metrics_and_citations(run, tmp_path):
    out = publish.build_folder(run, tmp_path / "pub", repo_id="me/groupdnet-tiny")
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "license: apache-2.0" in front and "pipeline_tag: image-to-image" in front
    assert "| 3 | upper clothes | `#dc143c` | 220, 20, 60 |" in card  # the CCP10 palette as a table
    assert "| steps (this snapshot) | 2 |" in card and "| total steps | 2 |" in card
    assert "perceptual loss | off (--vgg none)" in card and "was not used for this model" in card
    # --amp auto: what was chosen on this machine, and why (the probe's measurement).
    assert "| mixed precision | none (--amp auto: " in card or "| mixed precision | bf16 (--amp auto: " in card
    assert "| fid | 123.4 |" in card and "| mcsd.mean | 0.02 |" in card
    assert "![samples](samples.png)" in card
    assert "zhu2020semantically" in card and "yang2014clothing" in card
    assert 'SMISPipeline.from_pretrained("me/groupdnet-tiny")' in card


def test_fp16_and_small_shards(run, tmp_path):
    out = publish.build_folder(run, tmp_path / "pub", fp16=True, max_shard_mb=0.25)
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).stat().st_size <= 0.25 * 2**20 + 50_000 for s in shards)
    mask = _mask()
    half = SMISPipeline.from_pretrained(out, device="cpu").generate(mask, seed=1)
    full = SMISPipeline.from_pretrained(run / "snapshots" / "model-00000002", device="cpu").generate(mask, seed=1)
    diff = np.abs(np.asarray(half.image, np.int16) - np.asarray(full.image, np.int16))
    assert diff.mean() < 2.0


class _FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return f"https://hub.example/{repo_id}"

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw["repo_id"], kw))
        assert (Path(kw["folder_path"]) / "config.json").is_file()
        return type("Commit", (), {"commit_url": "https://hub.example/commit/1"})()


def test_upload_creates_repo_and_branch_then_uploads(run, tmp_path, monkeypatch):
    api = _FakeApi()
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: api)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    code = publish.main([str(run), "--repo-id", "me/groupdnet-tiny", "--out", str(tmp_path / "pub"), "--private",
                         "--revision", "v1", "--commit-message", "first model"])
    assert code == 0
    (c1, r1, k1), (c2, _, k2), (c3, _, k3) = api.calls
    assert (c1, r1, k1["private"], k1["exist_ok"]) == ("create_repo", "me/groupdnet-tiny", True, True)
    assert c2 == "create_branch" and k2["branch"] == "v1"
    assert c3 == "upload_folder" and k3["revision"] == "v1" and k3["commit_message"] == "first model"


def test_missing_token_says_how_to_log_in(run, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    folder = publish.build_folder(run, tmp_path / "pub")
    with pytest.raises(publish.PublishError, match="hf auth login.*HF_TOKEN.*--dry-run"):
        publish.upload(folder, "me/groupdnet-tiny")


def test_publish_refuses_a_folder_that_is_not_a_run(tmp_path, caplog):
    assert publish.main([str(tmp_path), "--dry-run"]) == 1
    assert "no model snapshot" in caplog.text


def test_card_embeds_the_evaluation_report(run, tmp_path):
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "metrics.json").write_text(json.dumps({"smis": {"mcsd": 0.03, "mocd": 0.004}}))
    (ev / "metrics.md").write_text("# Evaluation of x\n\n| metric | value |\n|---|---|\n| mCSD | 0.0300 |\n")
    out = publish.build_folder(run, tmp_path / "pub", metrics=ev / "metrics.json")
    card = (out / "README.md").read_text()
    assert "### Evaluation of x" in card and "| mCSD | 0.0300 |" in card
    assert (out / "metrics.md").is_file() and json.loads((out / "metrics.json").read_text())["smis"]["mcsd"] == 0.03


def test_history_chain_through_a_published_folder(run, tmp_path):
    """publish writes D, the merged training log and the curves; --init-from that folder loads D and
    carries the log on, so the next publish plots the whole life of the weights."""
    from safetensors.torch import load_file

    from train import checkpoint as ckpt
    from train import history

    notes = tmp_path / "notes.md"
    notes.write_text("# How it was made\n\nFree bits: before 2.6, after 4.1.\n")
    first = publish.build_folder(run, tmp_path / "pub1", fp16=True, notes=notes)
    names = {p.name for p in first.iterdir()}
    assert {ckpt.DISCRIMINATOR_NAME, "training_curves.png", history.MODEL_LOG_DIR} <= names
    d = load_file(str(first / ckpt.DISCRIMINATOR_NAME))
    state = ckpt.load_state(ckpt.state_path(run, 2))
    assert d.keys() == state["D"].keys() and all(v.dtype == torch.float16 for v in d.values())
    log = history.read_log_dir(first / history.MODEL_LOG_DIR)
    assert [r["step"] for r in log.train] == [1, 2] and len(log.runs) == 1
    assert log.runs[0]["command"].startswith("python -m train --data")
    card = (first / "README.md").read_text()
    assert "![training curves](training_curves.png)" in card and log.runs[0]["command"] in card
    assert "## How it was made\n\nFree bits: before 2.6, after 4.1." in card
    assert "| training time (wall clock, every run the weights went through) |" in card
    assert "| run | from epoch | hours |" in card
    assert f"| processes / device | 1 / cpu, {torch.get_num_threads()} threads each |" in card

    second_run = tmp_path / "run2"
    train(tiny_options(outdir=str(second_run), steps=2, init_from=str(first)), dataset=BlobDataset(4))
    resolved = json.loads((second_run / "training_options.json").read_text())["resolved"]
    assert ckpt.DISCRIMINATOR_NAME in resolved["initialised_from"]
    merged = history.run_history(second_run)
    assert [r["step"] for r in merged.train] == [1, 2, 1, 2]
    assert [r["epoch"] for r in merged.train] == [0.5, 1.0, 1.5, 2.0]  # absolute epochs
    assert [r["name"] for r in merged.runs] == [run.name, "run2"] and merged.runs[1]["epoch"] == 1.0
    second = (publish.build_folder(second_run, tmp_path / "pub2", fp16=True) / "README.md").read_text()
    assert "| epochs (this run's schedule) |" in second  # a run's own option, not what the weights went through
    assert "| epochs trained (every run the weights went through) | 2.0 |" in second
    out = history.plot_history(merged, tmp_path / "curves.png")
    assert out.stat().st_size > 10_000


def test_evaluations_with_more_images_per_mask_are_their_own_curve(tmp_path, monkeypatch):
    """A Frechet distance from 5 images per mask has another bias than from 1: never one line."""
    import matplotlib.axes

    from train import history

    one = history.eval_record({"fid": {"value": 80.0, "real_halves": 27.5}}, 100, 1.0)
    five = history.eval_record({"fid": {"value": 60.0, "samples_per_mask": 5}}, 200, 2.0)
    assert (one["frechet_samples"], five["frechet_samples"]) == (1, 5)
    labels = []
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **kw: labels.append(kw.get("label")) or real_plot(self, *a, **kw))
    rows = [one, five, dict(one, step=300, epoch=3.0)]
    history.plot_history(history.History(evals=rows), tmp_path / "curves.png")
    frechet = [label for label in labels if label and label.startswith("Frechet")]
    assert len(frechet) == 2 and "1 image per mask" in frechet[0] and "5 images per mask" in frechet[1]


def test_a_second_evaluation_of_a_snapshot_joins_the_history_without_its_few_mask_ratio(tmp_path, monkeypatch):
    """RUN/evals/model-<step>-fid5 (a Frechet-only evaluation on one mask) is read next to the full one;
    its mCSD / mOCD from one mask is too noisy to plot."""
    import matplotlib.axes

    from train import history

    run = tmp_path / "run"
    train(tiny_options(outdir=str(run), steps=2), dataset=BlobDataset(4))
    full = {"fid": {"value": 80.0}, "smis": {"mcsd": 0.4, "mocd": 0.1, "num_masks": 10}}
    fid5 = {"fid": {"value": 60.0, "samples_per_mask": 5}, "smis": {"mcsd": 0.9, "mocd": 0.1, "num_masks": 1}}
    for name, metrics in (("model-00000002", full), ("model-00000002-fid5", fid5)):
        (run / "evals" / name).mkdir(parents=True)
        (run / "evals" / name / "metrics.json").write_text(json.dumps(metrics))
    (run / "evals" / "model-latest").mkdir()
    (run / "evals" / "model-latest" / "metrics.json").write_text(json.dumps(full))  # not a step: left out
    evals = history.run_history(run).evals
    assert [(r["step"], r["frechet"], r["frechet_samples"]) for r in evals] == [(2, 80.0, 1), (2, 60.0, 5)]
    plotted = {}
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, x, *a, **kw: plotted.setdefault(
        kw.get("label"), list(x)) and real_plot(self, x, *a, **kw))
    history.plot_history(history.History(evals=evals), tmp_path / "curves.png")
    assert len(plotted["mCSD / mOCD (right axis)"]) == 1


def test_an_older_snapshot_gets_the_losses_and_samples_of_its_own_step(tmp_path):
    out = tmp_path / "run4"
    train(tiny_options(outdir=str(out), steps=4, sample_every=2, sample_count=2), dataset=BlobDataset(4))
    pub = publish.build_folder(out, tmp_path / "pub", snapshot=out / "snapshots" / "model-00000002")
    card = (pub / "README.md").read_text()
    assert "| steps (this snapshot) | 2 |" in card
    assert "Losses averaged over the last logged interval (step 2):" in card  # not step 4's
    assert (pub / "samples.png").read_bytes() == (out / "samples" / "samples-00000002.png").read_bytes()


def test_training_hours_add_up_the_logged_intervals_of_every_run():
    """A run counted from step 0 after another run, and one continuing the other's steps (--init-step),
    each get their own hours; the card's figure is their sum."""
    from train import history

    train_recs = [{"step": 100, "epoch": 1.0, "sec_per_step": 3.6}, {"step": 200, "epoch": 2.0, "sec_per_step": 7.2},
                  {"step": 50, "epoch": 2.5, "sec_per_step": 36.0},  # a new run from step 0: 50 steps
                  {"step": 150, "epoch": 3.5, "sec_per_step": 36.0},  # continued: 100 steps
                  {"step": 160, "epoch": 3.6}]  # no timing: not counted
    runs = [{"name": "a", "epoch": 0.0}, {"name": "b", "epoch": 2.0}]
    total, per_run = history.training_hours(history.History(train=train_recs, runs=runs))
    assert per_run == pytest.approx([(100 * 3.6 + 100 * 7.2) / 3600, 150 * 36.0 / 3600])
    assert total == pytest.approx(sum(per_run))
    assert history.training_hours(history.History()) == (0.0, [])
