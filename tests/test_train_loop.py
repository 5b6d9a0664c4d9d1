"""The training loop in-process on CPU: resume exactness, checkpoint format, guards, data errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import pytest
import torch
from test_train_support import BlobDataset, tiny_options, write_generic

from smis import GroupDNet
from train import checkpoint as ckpt
from train import loop as loop_mod
from train.loop import train
from train.monitor import render_sample_grid


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on 2 shared cores, two spinning OpenMP threads make these runs ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sigterm_at(step_to_stop: int):
    def callback(step: int) -> None:
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGTERM)
    return callback


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a} != {b}"


#: The straight run's objective: per-class mode seeking with the shortfall-weighted pick, whose running
#: per-class state must survive a resume like the weights do.
OBJECTIVE = dict(lambda_mode_seek=1.0, mode_seek_images=1, mode_seek_pick="deficit")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """4 steps in one go (4 steps/epoch), checkpoints at 2 and 4, a sample grid at 0, 2 and 4."""
    out = tmp_path_factory.mktemp("straight")
    result = train(tiny_options(outdir=str(out), sample_every=2, sample_count=2, **OBJECTIVE),
                   dataset=BlobDataset(8))
    assert result.status == "finished" and result.step == 4
    return result


def test_stop_and_resume_gives_the_same_weights_as_one_run(straight, tmp_path):
    """The straight run == 2 steps, SIGTERM, --resume auto, 2 more (a stop in mid-epoch)."""
    data = BlobDataset(8)
    first = train(tiny_options(outdir=str(tmp_path), **OBJECTIVE), dataset=data, step_callback=_sigterm_at(2))
    assert first.status == "interrupted" and first.step == 2
    assert ckpt.list_checkpoints(tmp_path)[-1][0] == 2
    second = train(tiny_options(outdir=str(tmp_path), resume="auto", **OBJECTIVE), dataset=data)
    assert second.status == "finished" and second.step == 4

    a = ckpt.load_state(straight.checkpoint)
    b = ckpt.load_state(second.checkpoint)
    for key in ("model", "D", "ema", "opt_G", "opt_D", "step", "epoch", "batch_in_epoch", "rng", "objective"):
        _assert_same_tensors(a[key], b[key], key)
    assert int(a["objective"]["mode_seek_deficit"]["picks"].sum()) == 4  # one pick per step, 4 steps
    opts = json.loads((tmp_path / "training_options.json").read_text())
    assert opts["resolved"]["start_step"] == 2 and opts["resolved"]["resumed_from"].endswith("00000002.pt")


def test_training_state_is_weights_only_and_snapshot_is_a_model_folder(straight):
    state = torch.load(straight.checkpoint, map_location="cpu", weights_only=True)
    assert state["step"] == 4 and state["epoch"] == 1 and state["batch_in_epoch"] == 0
    rng = state["rng"][0]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["numpy"]["keys"], torch.Tensor)
    assert {"opt_G", "opt_D", "scaler_G", "scaler_D", "ema", "D", "model"} <= state.keys()
    model = GroupDNet.from_pretrained(straight.snapshot)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["ema"][k]), k
    run = straight.run_dir
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all("G/feat" in x and "D/total" in x for x in lines)
    assert all(0 <= x["mode_seek/deficit/background"] <= 0.1 for x in lines)  # each class's shortfall, logged
    assert [s for s, _ in ckpt.list_snapshots(run)] == [2, 4]
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "samples-00000000.png", "samples-00000002.png", "samples-00000004.png"]


def test_resume_auto_skips_a_corrupt_newest_checkpoint(straight, tmp_path):
    for step, path in ckpt.list_checkpoints(straight.run_dir):
        data = path.read_bytes()
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        (tmp_path / "checkpoints" / path.name).write_bytes(data[:1000] if step == 4 else data)
    path, state = ckpt.find_resume(tmp_path)
    assert state["step"] == 2 and path.name.endswith("00000002.pt")


def test_non_finite_loss_stops_without_saving_the_bad_state(tmp_path, caplog):
    data = BlobDataset(4, nan_after=4)  # batch 2: steps 1-2 are clean, step 3 sees NaN photos
    with caplog.at_level(logging.ERROR, logger="train.loop"):
        result = train(tiny_options(outdir=str(tmp_path), steps=8, ckpt_every=1), dataset=data)
    assert result.status == "diverged"
    saved = [s for s, _ in ckpt.list_checkpoints(tmp_path)]
    assert result.step == 3 and saved == [1, 2]
    state = ckpt.load_state(result.checkpoint)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert "non-finite loss" in caplog.text and str(result.checkpoint) in caplog.text
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "diverged"


def test_time_budget_checkpoints_and_pauses_then_resume_finishes(tmp_path, monkeypatch):
    # A budget that cannot hold one step and a save: no step is started, the folder says so.
    opts = tiny_options(outdir=str(tmp_path), steps=3, ckpt_every=0, max_minutes=1e-4)
    paused = train(opts, dataset=BlobDataset(4))
    assert paused.status == "paused" and paused.step == 0 and paused.checkpoint is None
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "paused"
    # A budget with room for about one more step after the first (its time measured by that step):
    # the run stops before a step would overrun it, saved.
    budgets = []
    real_budget = loop_mod._Budget

    def keep(*a, **k):
        budgets.append(real_budget(*a, **k))
        return budgets[-1]

    def spend(step: int) -> None:  # after step 1: all of the 60 s used but 1.6 steps and a save
        if step == 1:
            b = budgets[-1]
            b.t0 = time.monotonic() - (60.0 - 1.5 * b.save_s - 1.6 * b.step_s)

    monkeypatch.setattr(loop_mod, "_Budget", keep)
    opts = tiny_options(outdir=str(tmp_path), steps=6, ckpt_every=0, max_minutes=1.0, resume="auto")
    result = train(opts, dataset=BlobDataset(4), step_callback=spend)
    assert result.status == "paused" and 2 <= result.step <= 3
    assert ckpt.list_checkpoints(tmp_path)[-1][0] == result.step
    assert budgets[-1].elapsed() < 60.0
    done = train(tiny_options(outdir=str(tmp_path), steps=6, ckpt_every=0, resume="auto"), dataset=BlobDataset(4))
    assert done.status == "finished" and done.step == 6


def test_budget_arithmetic():
    b = loop_mod._Budget(time.monotonic() - 50, max_minutes=1, step_s=4.0)
    assert not b.fits(0.0)  # 50 s used + a 4 s step + 1.5 x the 5 s save estimate > 60 s
    b.save_s = 1.0
    assert b.fits(0.0) and not b.fits(10.0)  # a 10 s val probe would not fit before the next step
    b.step_done(2.0)
    assert b.step_s == pytest.approx(3.8)
    assert loop_mod._Budget(time.monotonic(), None).fits(1e9)


def test_sigterm_at_any_point_leaves_a_folder_that_resumes(tmp_path, monkeypatch):
    from train import losses, monitor

    # During the first step: the step ends, is saved, and status.json says so.
    real_step = losses.GroupDNetObjective.g_step
    calls = []

    def g_step(self, *a, **k):
        if not calls:
            os.kill(os.getpid(), signal.SIGTERM)
        calls.append(1)
        return real_step(self, *a, **k)

    monkeypatch.setattr(losses.GroupDNetObjective, "g_step", g_step)
    out = tmp_path / "a"
    first = train(tiny_options(outdir=str(out), steps=3, resume="auto"), dataset=BlobDataset(4))
    status = json.loads((out / "status.json").read_text())
    assert first.status == "interrupted" and first.step == 1 and status["signal"] == "SIGTERM"
    assert status["checkpoint"] == str(ckpt.list_checkpoints(out)[-1][1]) and status["saved_step"] == 1
    again = train(tiny_options(outdir=str(out), steps=3, resume="auto"), dataset=BlobDataset(4))
    assert again.status == "finished" and again.step == 3 and len(calls) == 3

    # During the step-0 val probe: no step is started, nothing half-written, and the run starts afresh.
    real_call = monitor.SampleGrids.__call__

    def probe(self, *a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_call(self, *a, **k)

    monkeypatch.setattr(monitor.SampleGrids, "__call__", probe)
    out = tmp_path / "b"
    stopped = train(tiny_options(outdir=str(out), steps=2, sample_every=5, resume="auto"), dataset=BlobDataset(4))
    assert stopped.status == "interrupted" and stopped.step == 0 and stopped.checkpoint is None
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(monitor.SampleGrids, "__call__", real_call)
    assert train(tiny_options(outdir=str(out), steps=2, sample_every=5, resume="auto"),
                 dataset=BlobDataset(4)).status == "finished"


def test_a_refused_run_leaves_its_folder_as_it_was(straight, tmp_path):
    source = ckpt.state_path(straight.run_dir, 2)
    out = tmp_path / "new"
    with pytest.raises(ValueError, match="outside this run's 0..3 steps"):
        train(tiny_options(outdir=str(out), init_from=str(source), init_step="9"), dataset=BlobDataset(8))
    assert not out.exists()  # not even log.txt or history/
    # An existing run folder: a refused chunk does not touch a file.
    before = {p: p.stat().st_mtime_ns for p in straight.run_dir.rglob("*")}
    with pytest.raises(ValueError, match="another model config"):
        train(tiny_options(outdir=str(straight.run_dir), widths={"nf": 20}, resume="auto"), dataset=BlobDataset(8))
    assert {p: p.stat().st_mtime_ns for p in straight.run_dir.rglob("*")} == before


def test_a_checkpoint_written_before_a_config_field_existed_still_resumes(straight, tmp_path):
    """Configs compare by value: a state whose config lacks a field added later (at its default, here
    ``generator.enhancer_channels``) resumes; the refusal of a real change names the field."""
    state = ckpt.load_state(ckpt.state_path(straight.run_dir, 2))
    old = json.loads(state["config"])
    del old["generator"]["enhancer_channels"]
    state["config"] = json.dumps(old)
    out = tmp_path / "old"
    ckpt.atomic_save(state, ckpt.state_path(out, 2))
    result = train(tiny_options(outdir=str(out), resume="auto", **OBJECTIVE), dataset=BlobDataset(8))
    assert result.status == "finished" and result.step == 4
    with pytest.raises(ValueError, match=r"generator\.channels: \(160, .*\) -> \(320, "):
        train(tiny_options(outdir=str(out), widths={"nf": 20}, resume="auto"), dataset=BlobDataset(8))


def test_bf16_autocast_double_fm_and_diffaug_run_on_cpu(tmp_path):
    result = train(tiny_options(outdir=str(tmp_path), steps=1, amp="bf16", vgg="double-fm",
                                diffaug="color,translation,cutout"), dataset=BlobDataset(2))
    assert result.status == "finished"
    opts = json.loads((tmp_path / "training_options.json").read_text())
    assert opts["resolved"]["feature_matching_weight"] == 20.0
    assert "doubling" in opts["resolved"]["perceptual_loss"]


def test_sample_grid_layout():
    model = GroupDNet(tiny_options().model.config()).eval()
    samples = [BlobDataset(3)[i] for i in range(3)]
    grid = render_sample_grid(model, samples, reroll_class=3)
    assert grid.size == (3 * 64, (2 + 3 + 1) * 128)


def test_bad_files_go_through_train_data_on_bad(tmp_path, caplog):
    root = write_generic(tmp_path / "data", n=4)  # batch 2: two steps read every pair
    (root / "images" / "0002.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING):
        result = train(tiny_options(data=str(root), outdir=str(tmp_path / "skip"), steps=2, on_bad="skip"))
    assert result.status == "finished"
    assert "0002.png" in caplog.text
    with pytest.raises(ValueError, match="0002.png"):
        train(tiny_options(data=str(root), outdir=str(tmp_path / "error"), steps=2, on_bad="error"))


# -- --init-from -----------------------------------------------------------------------------------
def _fresh_networks(opts):
    from smis import MultiscaleDiscriminator

    cfg = opts.model.config()
    torch.manual_seed(123)
    return GroupDNet(cfg), MultiscaleDiscriminator(cfg), GroupDNet(cfg)


def test_init_from_a_model_folder_or_a_training_state(straight):
    net, disc, ema = _fresh_networks(tiny_options())
    d_before = {k: v.clone() for k, v in disc.state_dict().items()}
    what = ckpt.load_init(str(straight.snapshot), net, disc, ema)
    assert "D fresh" in what
    snap = GroupDNet.from_pretrained(straight.snapshot).state_dict()
    for m in (net, ema):
        _assert_same_tensors(m.state_dict(), snap, "G+E")
    _assert_same_tensors(disc.state_dict(), d_before, "D")  # untouched

    what = ckpt.load_init(str(straight.checkpoint), net, disc, ema)
    state = ckpt.load_state(straight.checkpoint)
    assert "step 4" in what
    _assert_same_tensors(net.state_dict(), state["model"], "model")
    _assert_same_tensors(disc.state_dict(), state["D"], "D")
    _assert_same_tensors(ema.state_dict(), state["ema"], "ema")
    assert "differs" not in what


def test_init_from_says_which_config_fields_differ(straight):
    """Same shapes, other behaviour (label pooling): allowed for fine-tuning, and said in the log line."""
    import dataclasses

    from smis import MultiscaleDiscriminator

    cfg = tiny_options().model.config()
    other = cfg.replace(generator=dataclasses.replace(
        cfg.generator, label_pool="area" if cfg.generator.label_pool != "area" else "max"))
    torch.manual_seed(0)
    net, disc, ema = GroupDNet(other), MultiscaleDiscriminator(other), GroupDNet(other)
    what = ckpt.load_init(str(straight.snapshot), net, disc, ema)
    assert f"generator.label_pool: {cfg.generator.label_pool} -> {other.generator.label_pool}" in what


def test_init_from_other_shapes_or_nothing_changes_nothing_and_says_why(straight, tmp_path):
    opts = tiny_options(widths={"nf": 20})  # another width: same names, other shapes
    net, disc, ema = _fresh_networks(opts)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ckpt.TrainingStateError, match="other shapes.*same architecture"):
        ckpt.load_init(str(straight.checkpoint), net, disc, ema)
    _assert_same_tensors(net.state_dict(), before, "G+E")
    with pytest.raises(ckpt.TrainingStateError, match="no model folder"):
        ckpt.load_init(str(tmp_path / "nowhere"), net, disc, ema)
    with pytest.raises(ckpt.TrainingStateError, match="Hub is unreachable|HF_HUB_OFFLINE"):
        ckpt.load_init("someone/not-cached-model", net, disc, ema)
    # Through the loop: the run folder is left without a checkpoint or options file.
    out = tmp_path / "run"
    with pytest.raises(ckpt.TrainingStateError):
        train(tiny_options(outdir=str(out), widths={"nf": 20}, init_from=str(straight.checkpoint)),
              dataset=BlobDataset(4))
    assert not ckpt.list_checkpoints(out) and not (out / "training_options.json").exists()


def test_init_from_starts_a_new_run_and_resume_auto_continues_it(straight, tmp_path):
    opts = tiny_options(outdir=str(tmp_path), steps=2, ckpt_every=1, init_from=str(straight.snapshot),
                        resume="auto")
    first = train(opts, dataset=BlobDataset(4), step_callback=_sigterm_at(1))
    assert first.status == "interrupted" and first.step == 1
    resolved = json.loads((tmp_path / "training_options.json").read_text())["resolved"]
    assert resolved["start_step"] == 0 and str(straight.snapshot) in resolved["initialised_from"]
    second = train(opts, dataset=BlobDataset(4))  # same command: resumes, does not re-initialise
    assert second.status == "finished" and second.step == 2
    resolved = json.loads((tmp_path / "training_options.json").read_text())["resolved"]
    assert resolved["start_step"] == 1 and str(straight.snapshot) in resolved["initialised_from"]


def test_init_step_continues_the_schedule_of_the_weights_it_starts_from(straight, tmp_path):
    """A fresh machine: no run folder, only the weights of step 2 of a 4-step run. --init-step auto
    continues at step 2 (LR schedule, data position), and the history counts epochs once."""
    from train import history

    source = ckpt.state_path(straight.run_dir, 2)
    result = train(tiny_options(outdir=str(tmp_path), init_from=str(source), init_step="auto"),
                   dataset=BlobDataset(8))
    assert result.status == "finished" and result.step == 4
    resolved = json.loads((tmp_path / "training_options.json").read_text())["resolved"]
    assert resolved["start_step"] == 2 and resolved["init_step"] == 2
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [3, 4]
    merged = history.run_history(tmp_path)
    assert [(r["step"], r["epoch"]) for r in merged.train] == [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0)]
    with pytest.raises(ValueError, match="outside this run's 0..3 steps"):
        train(tiny_options(outdir=str(tmp_path / "b"), init_from=str(source), init_step="9"), dataset=BlobDataset(8))
    with pytest.raises(ValueError, match="--init-step needs --init-from"):
        tiny_options(init_step="2")


def test_resuming_another_runs_state_into_a_new_folder_keeps_its_history(straight, tmp_path):
    """An A/B arm: --resume RUN/checkpoints/state into a new folder continues exactly, and the new run
    says what it grew from and carries the parent's history up to that step (the model card's curves)."""
    from train import history

    source = ckpt.state_path(straight.run_dir, 2)
    opts = tiny_options(outdir=str(tmp_path), resume=str(source), **OBJECTIVE)
    result = train(opts, dataset=BlobDataset(8))
    assert result.status == "finished" and result.step == 4
    resolved = json.loads((tmp_path / "training_options.json").read_text())["resolved"]
    assert resolved["start_step"] == 2 and resolved["init_step"] == 2
    grew_from = resolved["initialised_from"]
    assert str(source) in grew_from and "resumed into a new run folder" in grew_from
    _assert_same_tensors(torch.load(ckpt.state_path(tmp_path, 4), weights_only=True)["ema"],
                         torch.load(ckpt.state_path(straight.run_dir, 4), weights_only=True)["ema"], "ema")
    merged = history.run_history(tmp_path)
    assert [(r["step"], r["epoch"]) for r in merged.train] == [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0)]
    assert [r["name"] for r in merged.runs] == [straight.run_dir.name, tmp_path.name]
    again = train(tiny_options(outdir=str(tmp_path), resume="auto", steps=5), dataset=BlobDataset(8))
    resolved = json.loads((tmp_path / "training_options.json").read_text())["resolved"]
    assert again.step == 5 and str(source) in resolved["initialised_from"] and resolved["init_step"] == 2


# -- the val probe ---------------------------------------------------------------------------------
def test_val_probe_measures_reconstruction_and_per_class_reroll_locality():
    from train.monitor import val_probe

    cfg = tiny_options(preset="ccp-cpu").model.config()
    torch.manual_seed(0)
    model = GroupDNet(cfg).eval()
    samples = [BlobDataset(4)[i] for i in range(4)]
    probe = val_probe(model, samples)
    real = torch.stack([s["image"] for s in samples])
    labels = torch.stack([s["label"] for s in samples])
    with torch.no_grad():
        fake = model(model.encode(real, labels)[0], labels)
    assert probe["val/rec_l1"] == pytest.approx(float((fake - real).abs().mean()), rel=1e-5)
    assert probe["val/kl_nats_per_image"] >= 0
    assert {f"val/reroll_in/{n}" for n in cfg.class_names} <= probe.keys()
    assert probe["val/reroll_in_mean"] > 0
    # A generator that ignores Z: no class's re-roll changes anything.
    with torch.no_grad():
        model.generator.fc.weight.zero_()
        model.generator.fc.bias.zero_()
    dead = val_probe(model, samples)
    assert dead["val/reroll_in_mean"] == 0 and dead["val/reroll_out_mean"] == 0
    # The encoder's spread per class: present in >= 2 images, > 0 while E reads the pixels, 0 when it cannot
    spread = {k: v for k, v in probe.items() if k.startswith("val/mu_spread/")}
    assert spread and all(v > 0 for v in spread.values())
    with torch.no_grad():
        model.encoder.fc_mu.weight.zero_()
    blind = val_probe(model, samples)
    assert all(blind[k] == pytest.approx(0, abs=1e-6) for k in spread)


def test_probe_table_names_the_dead_end_of_each_code():
    from train.monitor import probe_table

    probe = {}
    for name, (spread, inside, outside) in {"a": (0.4, 0.5, 0.05), "b": (0.4, 0.01, 0.02),
                                            "c": (0.02, 0.3, 0.03), "d": (0.02, 0.001, 0.01)}.items():
        probe.update({f"val/kl_nats/{name}": 1.0, f"val/mu_spread/{name}": spread,
                      f"val/reroll_in/{name}": inside, f"val/reroll_out/{name}": outside})
    rows = probe_table(probe, ["a", "b", "c", "d", "absent"]).splitlines()[2:]
    assert [r.rsplit("|", 2)[1].strip() for r in rows] == [
        "works", "decoder ignores the code", "encoder reads nothing", "dead at both ends"]


def test_probe_cli_on_a_model_folder(tmp_path, capsys):
    from train.monitor import main

    cfg = tiny_options(preset="ccp-cpu").model.config()
    torch.manual_seed(0)
    GroupDNet(cfg).save_pretrained(tmp_path / "model")
    data = write_generic(tmp_path / "data", n=3)
    (data / "val.txt").write_text("0000\n0001\n0002\n")
    assert main(["--model", str(tmp_path / "model"), "--data", str(data), "--images", "3",
                 "--json", str(tmp_path / "probe.json")]) == 0
    out = capsys.readouterr().out
    assert "reconstruction L1" in out and "| verdict |" in out
    assert json.loads((tmp_path / "probe.json").read_text())["val/rec_l1"] > 0
    assert main(["--model", str(tmp_path / "missing"), "--data", str(data)]) == 2


class _BrightnessCritic(torch.nn.Module):
    """A stand-in D whose logit is the photo's mean brightness: it 'memorises' bright photos."""

    def forward(self, label, image):
        return [[image.mean(1, keepdim=True)]]


def test_discriminator_probe_sees_a_critic_that_prefers_the_training_photos():
    from train.history import OVERFIT_GAP
    from train.monitor import discriminator_probe, discriminator_table

    cfg = tiny_options(preset="ccp-cpu").model.config()
    model = GroupDNet(cfg).eval()
    samples = [BlobDataset(4)[i] for i in range(4)]
    bright = [dict(s, image=torch.full_like(s["image"], 0.8)) for s in samples]
    dark = [dict(s, image=torch.full_like(s["image"], -0.8)) for s in samples]
    probe = discriminator_probe(_BrightnessCritic(), model, bright, dark)
    assert probe["val/d_logit/train"] == pytest.approx(0.8) and probe["val/d_logit/val"] == pytest.approx(-0.8)
    assert probe["val/d_real/train"] == 1.0 and probe["val/d_real/val"] == 0.0
    assert probe["val/d_overfit"] == pytest.approx(1.6) and probe["val/d_overfit"] > OVERFIT_GAP
    assert "D memorises the training set" in discriminator_table(probe)
    fair = discriminator_probe(_BrightnessCritic(), model, dark, dark)
    assert fair["val/d_overfit"] == 0 and "no sign that D memorises" in discriminator_table(fair)
    noisy = dict(probe, **{"val/d_overfit_se": 1.0})  # the same gap, measured on too few photos
    assert "no sign that D memorises" in discriminator_table(noisy)
    assert discriminator_probe(_BrightnessCritic(), model, [], dark) == {}


def test_discriminator_probe_leaves_a_training_d_as_it_was():
    """D runs in eval mode: its spectral-norm vectors do not move, and its mode comes back."""
    from smis import MultiscaleDiscriminator
    from train.monitor import discriminator_probe

    cfg = tiny_options(preset="ccp-cpu").model.config()
    torch.manual_seed(0)
    model, disc = GroupDNet(cfg).train(), MultiscaleDiscriminator(cfg).train()
    before = {k: v.clone() for k, v in disc.state_dict().items()}
    samples = [BlobDataset(4)[i] for i in range(4)]
    probe = discriminator_probe(disc, model, samples[:2], samples[2:])
    assert set(probe) >= {"val/d_logit/generated", "val/d_real/val", "val/d_overfit"}
    assert disc.training and model.training
    _assert_same_tensors(before, disc.state_dict(), "D")


def test_probe_cli_on_a_training_state_adds_the_discriminator(tmp_path, capsys):
    from smis import MultiscaleDiscriminator
    from train.monitor import main

    cfg = tiny_options(preset="ccp-cpu").model.config()
    torch.manual_seed(0)
    model, disc = GroupDNet(cfg), MultiscaleDiscriminator(cfg)
    state = tmp_path / "training-state-00000007.pt"
    torch.save({"step": 7, "model": model.state_dict(), "ema": model.state_dict(), "D": disc.state_dict(),
                "config": cfg.to_json()}, state)
    data = write_generic(tmp_path / "data", n=4)
    (data / "train.txt").write_text("0000\n0001\n")
    (data / "val.txt").write_text("0002\n0003\n")
    assert main(["--state", str(state), "--data", str(data), "--images", "2",
                 "--json", str(tmp_path / "probe.json")]) == 0
    out = capsys.readouterr().out
    assert "| verdict |" in out and "| training photos |" in out and "memorise" in out
    assert "val/d_overfit" in json.loads((tmp_path / "probe.json").read_text())
    torch.save({"step": 7, "model": model.state_dict(), "config": cfg.to_json()}, tmp_path / "no-d.pt")
    assert main(["--state", str(tmp_path / "no-d.pt"), "--data", str(data)]) == 2
    assert "no config or no discriminator" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one source, not both
        main(["--state", str(state), "--model", str(tmp_path), "--data", str(data)])


def test_the_loop_logs_the_val_probe_with_the_discriminators_view(tmp_path, monkeypatch, caplog):
    """... and times it apart from the steps (a probe slowed by 2 s leaves s/step alone)."""
    from train import monitor

    real_call = monitor.SampleGrids.__call__

    def slow_probe(self, *a, **k):
        time.sleep(2.0)
        return real_call(self, *a, **k)

    monkeypatch.setattr(monitor.SampleGrids, "__call__", slow_probe)
    data = write_generic(tmp_path / "data", n=6)
    (data / "train.txt").write_text("0000\n0001\n0002\n0003\n")
    (data / "val.txt").write_text("0004\n0005\n")
    with caplog.at_level(logging.INFO, logger="train.loop"):
        result = train(tiny_options(data=str(data), outdir=str(tmp_path / "run"), steps=2, sample_every=2,
                                    sample_count=2, val_count=2))
    assert result.status == "finished"
    rows = [json.loads(line) for line in (tmp_path / "run" / "val_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2] and all(r["probe_s"] >= 2.0 for r in rows)
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1, 2]  # one step per line: s/step is that step's own time
    assert steps[-1]["time_s"] - sum(r["sec_per_step"] for r in steps) >= 2.0  # the step-0 probe is outside
    assert "sample grid and val probe took" in (tmp_path / "run" / "log.txt").read_text()  # lines from the start
    for key in ("val/rec_l1", "val/d_logit/train", "val/d_logit/val", "val/d_logit/generated", "val/d_overfit"):
        assert all(isinstance(r[key], float) for r in rows), key
