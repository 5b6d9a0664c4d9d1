"""The objective's pieces and the CLI's early refusals (fast, no training)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from smis.functional import one_hot
from train import losses
from train.options import TrainOptions, parse_args


# -- losses ------------------------------------------------------------------------------------
def _outs(values: list[list[float]], n: int = 2) -> list[list[torch.Tensor]]:
    """D outputs with constant maps: per scale, per layer."""
    return [[torch.full((n, 1, 4, 4), v) for v in scale] for scale in values]


def test_hinge_losses_match_their_formulas():
    fake = _outs([[0.0, 0.5], [0.0, -2.0]])
    real = _outs([[0.0, 0.25], [0.0, 3.0]])
    lf, lr = losses.d_hinge_loss(fake, real)
    # fake: relu(1 + 0.5) = 1.5 and relu(1 - 2) = 0 -> mean over scales 0.75
    # real: relu(1 - 0.25) = 0.75 and relu(1 - 3) = 0 -> 0.375
    assert lf.item() == pytest.approx(0.75)
    assert lr.item() == pytest.approx(0.375)
    assert losses.g_hinge_loss(fake).item() == pytest.approx(-(0.5 - 2.0) / 2)


def test_feature_matching_sums_layers_averages_scales_and_skips_logits():
    fake = _outs([[1.0, 2.0, 100.0], [0.0, 0.0, 100.0]])
    real = _outs([[0.0, 0.0, -100.0], [0.5, 0.5, -100.0]])
    # scale 0: |1-0| + |2-0| = 3; scale 1: 0.5 + 0.5 = 1; logits ignored -> (3 + 1) / 2
    assert losses.feature_matching_loss(fake, real).item() == pytest.approx(2.0)


def test_split_halves_separates_fake_and_real():
    out = [[torch.arange(4.0).view(4, 1, 1, 1)]]
    fake, real = losses.split_halves(out)
    assert fake[0][0].flatten().tolist() == [0.0, 1.0] and real[0][0].flatten().tolist() == [2.0, 3.0]


class _TwoMaps(nn.Module):
    def forward(self, x):
        return [x, 2 * x]


def test_perceptual_loss_weights_layers_and_only_trains_the_fake():
    loss = losses.PerceptualLoss(_TwoMaps(), weights=(0.5, 1.0))
    fake = torch.zeros(1, 3, 4, 4, requires_grad=True)
    real = torch.ones(1, 3, 4, 4, requires_grad=True)
    value = loss(fake, real)
    assert value.item() == pytest.approx(0.5 * 1 + 1.0 * 2)
    value.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert real.grad is None or not real.grad.any()


def _codes(kl_per_class: list[float], z: int = 8):
    """(1, C*z, 1, 1) mu / logvar=0 whose class c has KL ``kl_per_class[c]`` nats (mu^2 / 2 summed)."""
    mu = torch.zeros(1, len(kl_per_class) * z, 1, 1)
    for c, kl in enumerate(kl_per_class):
        mu[0, c * z] = (2 * kl) ** 0.5
    return mu.requires_grad_(True), torch.zeros_like(mu)


def test_kl_loss_is_spades_sum_by_default_and_reports_nats_per_image():
    from smis.functional import kl_divergence

    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 24, 2, 1), torch.randn(4, 24, 2, 1) * 0.3
    onehot = torch.ones(4, 3, 8, 4)
    loss, nats = losses.kl_loss(mu, logvar, onehot)
    torch.testing.assert_close(loss, kl_divergence(mu, logvar))
    torch.testing.assert_close(nats, kl_divergence(mu, logvar) / 4)
    per_image, _ = losses.kl_loss(mu, logvar, onehot, per_image=True)
    torch.testing.assert_close(per_image, loss / 4)


def test_kl_free_bits_charge_each_present_class_at_least_the_floor_and_skip_absent_ones():
    mu, logvar = _codes([0.5, 3.0, 7.0])
    onehot = torch.zeros(1, 3, 4, 4)
    onehot[:, 0, :2] = 1
    onehot[:, 1, 2:] = 1  # class 2 is absent
    loss, nats = losses.kl_loss(mu, logvar, onehot, free_bits=2.0)
    assert loss.item() == pytest.approx(2.0 + 3.0)  # class 0 is charged the floor, class 2 nothing
    assert nats.item() == pytest.approx(0.5 + 3.0 + 7.0)  # the log shows what the codes really carry
    loss.backward()
    per_class = mu.grad.view(3, 8)[:, 0]
    assert per_class[0] == 0 and per_class[2] == 0 and per_class[1] > 0  # only class 1 is pushed


def test_class_appearance_loss_weighs_every_present_class_the_same():
    real = torch.zeros(1, 3, 16, 16)
    onehot = torch.zeros(1, 3, 16, 16)
    onehot[:, 0] = 1
    onehot[:, 0, :4, :4] = 0
    onehot[:, 1, :4, :4] = 1  # class 1: one pooled cell (16 pixels); class 2 absent
    fake = real.clone()
    assert losses.class_appearance_loss(fake, real, onehot).item() == 0
    fake[:, :, :4, :4] = 1.0  # only the small class is wrong, by 1 everywhere
    small = losses.class_appearance_loss(fake, real, onehot).item()
    assert small == pytest.approx(0.5)  # (1 + 0) / 2 present classes, whatever the areas
    fake = real.clone()
    fake[:, :, 4:] = 1.0  # the large class is wrong (3/4 of its area)
    assert losses.class_appearance_loss(fake, real, onehot).item() == pytest.approx((192 / 240) / 2)


def _tiny_model():
    from smis import GroupDNet, get_config

    torch.manual_seed(0)
    return GroupDNet(get_config("ccp-cpu", tiny=True))


def test_latent_regression_reads_each_code_from_its_own_class_and_trains_only_g():
    model = _tiny_model().train()
    enc = model.encoder
    labels = torch.zeros(2, 128, 64, dtype=torch.long)
    labels[:, 40:80, 20:40] = 3  # class 3 in a box, the rest background; other classes absent
    onehot = one_hot(labels, 10)
    fake = (torch.rand(2, 3, 128, 64) * 2 - 1).requires_grad_(True)
    with torch.no_grad():
        mu = enc.eval()(fake, onehot)[0]
    enc.train()
    z = mu.clone()
    z.view(2, 10, -1)[:, 3] += 1.0  # only class 3's code disagrees with what E reads from the image
    loss = losses.latent_regression_loss(enc, fake, onehot, z)
    assert loss.item() == pytest.approx(0.5)  # |1| on class 3, 0 on the background: 2 present classes
    loss.backward()
    outside = (labels != 3).unsqueeze(1).expand_as(fake)
    assert fake.grad[~outside].abs().sum() > 0
    assert fake.grad[outside].abs().sum() == 0  # class 3's code is read from class 3's pixels alone
    # E is a fixed reader: no gradients for it, and its mode and flags are as they were
    assert all(p.grad is None for p in enc.parameters())
    assert enc.training and all(p.requires_grad for p in enc.parameters())
    # classes under min_pixels and absent classes do not count
    z.view(2, 10, -1)[:, 5] += 7.0
    assert losses.latent_regression_loss(enc, fake.detach(), onehot, z).item() == pytest.approx(0.5)


def test_latent_regression_is_logged_and_reaches_g_in_the_g_step():
    from train.options import ObjectiveOptions

    model = _tiny_model().train()
    labels = torch.randint(0, 10, (2, 128, 64))
    real = torch.rand(2, 3, 128, 64) * 2 - 1
    onehot, label = one_hot(labels, 10), model.label_tensor(labels)

    def d(lab, img):
        return [[img.mean(1, keepdim=True), img.mean(1, keepdim=True)]]

    off = losses.GroupDNetObjective(ObjectiveOptions(vgg="none"), None, contextlib.nullcontext)
    assert off.g_step(model.generator, model.encoder, d, real, onehot, label)[2]["G/latent"].item() == 0
    on = losses.GroupDNetObjective(ObjectiveOptions(vgg="none", lambda_latent=2.0), None, contextlib.nullcontext)
    loss, _, terms = on.g_step(model.generator, model.encoder, d, real, onehot, label)
    assert terms["G/latent"].item() > 0
    model.zero_grad()
    terms["G/latent"].backward()
    assert model.generator.fc.weight.grad.abs().sum() > 0  # G learns from it (E only through the code it gave)


def test_mode_seeking_picks_present_classes_and_redraws_only_their_codes():
    onehot = torch.zeros(3, 4, 8, 8)
    onehot[:, 0] = 1
    onehot[0, 0, :4], onehot[0, 2, :4] = 0, 1  # image 0: classes 0 and 2 (32 pixels each)
    onehot[1, 0, :1, :1], onehot[1, 3, :1, :1] = 0, 1  # image 1: class 3 has 1 pixel, under min_pixels
    picks = torch.stack([losses.pick_present_classes(onehot) for _ in range(200)])
    assert set(picks[:, 0].tolist()) == {0, 2} and set(picks[:, 1].tolist()) == {0}
    assert set(picks[:, 2].tolist()) == {0}
    z = torch.randn(3, 4 * 2, 1, 1, requires_grad=True)
    classes = torch.tensor([2, 0, 1])
    new, dz = losses.redraw_class_codes(z, classes, 2)
    changed = (new != z).view(3, 4, 2).any(-1)
    assert changed.tolist() == [[False, False, True, False], [True, False, False, False],
                                [False, True, False, False]]
    torch.testing.assert_close(dz, (new - z).abs().view(3, 4, 2)[torch.arange(3), classes].mean(-1).detach())
    assert not new.requires_grad  # the kept codes are detached


def test_deficit_pick_sends_the_picks_to_classes_short_of_the_target_and_its_state_round_trips():
    onehot = torch.zeros(1, 3, 8, 8)
    onehot[0, 0, :4], onehot[0, 1, 4:6], onehot[0, 2, 6:] = 1, 1, 1  # all three present (>= 16 pixels)
    deficit = losses.ClassDeficit(3, target=0.1)
    torch.testing.assert_close(deficit.weights(), torch.full((3,), 1.05))  # nothing known: all alike
    for _ in range(60):  # classes 0 and 2 meet the target, class 1 does not move at all
        deficit.update(torch.tensor([0, 1, 2]), torch.tensor([0.0, 0.1, 0.0]))
    w = deficit.weights()
    assert w[1].item() == pytest.approx(1.05, rel=1e-5) and w[0].item() == pytest.approx(0.05, abs=0.005)
    torch.manual_seed(0)
    picks = torch.cat([losses.pick_present_classes(onehot, class_weights=w) for _ in range(2000)])
    assert 0.85 < (picks == 1).float().mean().item() < 0.95  # 1.05 / 1.15 of the picks; uniform gives a third
    assert (picks == 0).any() and (picks == 2).any()  # the floor keeps measuring the others
    again = losses.ClassDeficit(3, target=0.1)
    again.load_state_dict(deficit.state_dict())
    torch.testing.assert_close(again.weights(), w)
    assert again.picks.tolist() == [60, 60, 60]
    with pytest.raises(ValueError, match="has 3 classes, the model 4"):
        losses.ClassDeficit(4, 0.1).load_state_dict(deficit.state_dict())


def test_mode_seeking_is_a_hinge_on_the_change_inside_the_class():
    onehot = torch.zeros(2, 2, 16, 16)
    onehot[:, 0] = 1
    onehot[:, 0, :8], onehot[:, 1, :8] = 0, 1  # class 1: the top half
    a = torch.zeros(2, 3, 16, 16)
    b = a.clone()
    b[:, :, 8:] = 1.0  # the bottom half (class 0) changes by 1, the top (class 1) by 0.01
    b[:, :, :8] = 0.01
    classes, dz = torch.tensor([1, 0]), torch.tensor([2.0, 2.0])
    # image 0 asked class 1 to change: relu(0.1 - 0.01 / 2); image 1 asked class 0: 1 / 2 >= 0.1, no loss
    assert losses.class_mode_seeking_loss(a, b, onehot, classes, dz, 0.1).item() == pytest.approx(0.095 / 2)
    b.requires_grad_(True)
    losses.class_mode_seeking_loss(a, b, onehot, classes, dz, 0.1).backward()
    assert b.grad[0, :, :8].abs().sum() > 0 and b.grad[0, :, 8:].abs().sum() == 0  # only inside the class
    assert b.grad[1].abs().sum() == 0  # met the target: no push


def test_mode_seeking_in_the_g_step_renders_extra_images_once_and_keeps_the_batch():
    from train.options import ObjectiveOptions

    model = _tiny_model().train()
    labels = torch.randint(0, 10, (3, 128, 64))
    real = torch.rand(3, 3, 128, 64) * 2 - 1
    onehot, label = one_hot(labels, 10), model.label_tensor(labels)
    calls = []
    model.generator.register_forward_hook(lambda mod, inp, out: calls.append(out.shape[0]))

    def d(lab, img):
        return [[img.mean(1, keepdim=True), img.mean(1, keepdim=True)]]

    o = ObjectiveOptions(vgg="none", lambda_mode_seek=1.0, mode_seek_target=10.0, mode_seek_images=2)
    objective = losses.GroupDNetObjective(o, None, contextlib.nullcontext)
    loss, fake, terms = objective.g_step(model.generator, model.encoder, d, real, onehot, label)
    assert calls == [5] and fake.shape[0] == 3  # one pass over 3 + 2 images; D and the logs see 3
    assert 0 < terms["G/mode_seek"].item() <= 10.0
    picked = objective.deficit.picks
    assert picked.sum().item() == 2 and objective.state_dict()["mode_seek_deficit"]["picks"].sum().item() == 2
    assert set(objective.class_log(model.config.class_names)) == {
        f"mode_seek/deficit/{name}" for name in model.config.class_names}
    model.zero_grad()
    terms["G/mode_seek"].backward()
    assert model.generator.conv_img.weight.grad.abs().sum() > 0


def test_noise_warmup_ramps_the_sampling_noise_and_zero_noise_renders_the_means():
    from smis import GroupDNet, get_config
    from train.options import ObjectiveOptions

    o = ObjectiveOptions(noise_warmup=100, vgg="none")
    assert [o.noise_scale(s) for s in (0, 25, 100, 500)] == [0.0, 0.25, 1.0, 1.0]
    assert ObjectiveOptions().noise_scale(0) == 1.0  # off: the paper's sampling from the first step
    late = ObjectiveOptions(noise_warmup=100, noise_warmup_start=300)
    assert [late.noise_scale(s) for s in (0, 300, 350, 400, 900)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    torch.manual_seed(0)
    model = GroupDNet(get_config("ccp-cpu", tiny=True)).eval()
    objective = losses.GroupDNetObjective(o, None, contextlib.nullcontext)
    labels = torch.randint(0, 10, (2, 128, 64))
    real = torch.rand(2, 3, 128, 64) * 2 - 1
    onehot = one_hot(labels, 10)
    label = model.label_tensor(labels)

    def d(lab, img):  # a stand-in discriminator: one scale, one feature map and the logits
        return [[img.mean(1, keepdim=True), img.mean(1, keepdim=True)]]

    with torch.no_grad():
        _, fake0, terms = objective.g_step(model.generator, model.encoder, d, real, onehot, label, noise=0.0)
        mu, _ = model.encoder(real, onehot)
        torch.testing.assert_close(fake0, model.generator(mu, label))
        _, fake1, _ = objective.g_step(model.generator, model.encoder, d, real, onehot, label, noise=1.0)
    assert terms["G/noise"].item() == 0.0 and not torch.allclose(fake0, fake1)


def _pairs(n=3, h=32, w=24):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 4, (n, h, w), generator=gen)
    label = one_hot(ids, 4)
    return label, ids, torch.rand(n, 3, h, w, generator=gen) * 2 - 1


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_diffaug_gives_each_fake_real_pair_the_same_draw_and_keeps_labels_aligned(policy):
    from train.diffaug import diff_augment, parse_policy

    label, ids, real = _pairs()
    torch.manual_seed(1)
    lab2, img2 = diff_augment(torch.cat([label, label]), torch.cat([real, real]), parse_policy(policy))
    assert img2.shape == (6, 3, 32, 24) and lab2.shape == (6, 4, 32, 24)
    torch.testing.assert_close(img2[:3], img2[3:])  # fake_i == real_i in, so equal out
    assert torch.equal(lab2[:3], lab2[3:])
    # The label map is only moved: one-hot where it came from the map, all zeros in the padding.
    assert set(lab2.sum(1).unique().tolist()) <= {0.0, 1.0} and set(lab2.unique().tolist()) <= {0.0, 1.0}
    if "translation" in policy and policy == "translation":
        # An image that encodes its own labels stays aligned with the shifted map.
        coded = ids[:, None].float().expand(-1, 3, -1, -1) / 4
        lab3, img3 = diff_augment(torch.cat([label, label]), torch.cat([coded, coded]), ("translation",))
        shifted_ids = lab3.argmax(1).float() / 4 * lab3.sum(1)
        torch.testing.assert_close(img3[:, 0], shifted_ids)
        assert not torch.equal(lab3, torch.cat([label, label]))  # something moved


def test_diffaug_is_differentiable_off_by_default_and_refuses_unknown_names():
    from train.diffaug import diff_augment, parse_policy

    label, _, real = _pairs()
    fake = real.clone().requires_grad_(True)
    _, img = diff_augment(torch.cat([label, label]), torch.cat([fake, real]), parse_policy("color,translation,cutout"))
    img[:3].sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert parse_policy("") == () and diff_augment(label, real, ()) == (label, real)
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        parse_policy("color, zoom")


def test_full_vgg_without_weights_stops_with_the_options(monkeypatch):
    from train import features

    def unavailable(path=None, download=True):
        raise features.FeatureWeightsUnavailable("vgg19-dcbb9e9d.pth could not be downloaded")

    monkeypatch.setattr(features.VGG19Features, "from_pretrained", staticmethod(unavailable))
    with pytest.raises(losses.VggUnavailable) as err:
        losses.build_perceptual("full", None)
    msg = str(err.value)
    for hint in ("--vgg-weights", "--vgg partial", "--vgg none", "--vgg double-fm", "could not be downloaded"):
        assert hint in msg


def test_full_vgg_from_a_local_file(tmp_path):
    from train.features import VGG19Features

    torch.manual_seed(0)
    path = tmp_path / "vgg19.safetensors"
    save_file({k: v.contiguous() for k, v in VGG19Features().state_dict().items()}, str(path))
    loss, desc = losses.build_perceptual("full", str(path))
    assert "relu5_1" in desc and str(path) in desc
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert loss(x, x).item() == 0.0
    assert loss(x, -x).item() > 0.0


def test_partial_and_off_perceptual_losses_describe_themselves():
    loss, desc = losses.build_perceptual("partial")
    assert "relu3_1" in desc and loss.weights == losses.VGG_LAYER_WEIGHTS[:3]
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loss(x, x).item() == 0.0 and loss(x, x.flip(-1)).item() > 0.0
    assert losses.build_perceptual("none")[0] is None
    none, desc = losses.build_perceptual("double-fm")
    assert none is None and "doubling the feature-matching" in desc


# -- options -----------------------------------------------------------------------------------
def test_schedule_is_constant_then_linear_to_zero():
    opts = TrainOptions.from_dict({"data": ".", "decay_fraction": 0.4}).schedule
    total = 100
    assert opts.lr_factor(0, total) == opts.lr_factor(59, total) == 1.0
    assert opts.lr_factor(60, total) == 1.0
    assert opts.lr_factor(80, total) == pytest.approx(0.5)
    assert opts.lr_factor(100, total) == 0.0
    assert opts.total_steps(steps_per_epoch=7) == 700  # 100 epochs
    assert TrainOptions.from_dict({"data": ".", "steps": 123}).schedule.total_steps(7) == 123


def test_cli_resolves_and_round_trips(tmp_path):
    opts = parse_args(["--data", str(tmp_path), "--no-vgg", "--widths", "nf=20,ndf=20", "--tiny",
                       "--outdir", str(tmp_path / "run")])
    assert opts.objective.vgg == "none" and opts.model.widths == {"nf": 20, "ndf": 20}
    assert TrainOptions.from_dict(json.loads(opts.to_json())) == opts
    cfg = opts.model.config()
    assert cfg.generator.channels[-1] == 20 and cfg.encoder.channels[0] == 20
    assert TrainOptions.from_dict({"data": ".", "vgg": "double-fm"}).objective.feat_weight == 20.0
    more = parse_args(["--data", str(tmp_path), "--preset", "ccp-cpu", "--outdir", str(tmp_path / "more"),
                       "--decoder-groups", *"10 10 10 10 5 5 1".split()])
    assert more.model.config().generator.groups == (10, 10, 10, 10, 5, 5, 1)
    assert TrainOptions.from_dict(json.loads(more.to_json())).model.config() == more.model.config()


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/folder"], "no such folder"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--amp", "fp16", "--device", "cpu"], "fp16 needs CUDA"),
    (["--widths", "nf=ten"], "KEY=INT"),
    (["--widths", "bogus=3"], "valid 'demo' model"),
    (["--height", "100"], "valid 'demo' model"),
    (["--vgg", "partial", "--vgg-weights", "/no/such.pth"], "no such file"),
    (["--decay-fraction", "1.5"], "decay-fraction"),
    (["--resume", "/no/such/state.pt"], "no such checkpoint"),
    (["--vgg", "alexnet"], "invalid choice"),
    (["--diffaug", "color,flip"], "unknown DiffAugment policy ['flip']"),
    (["--decoder-groups", *"10 10 10 10 3 3 1".split()], "not divisible by 3 groups"),
    (["--decoder-groups", "10", "10"], "expected 7 arguments"),
])
def test_cli_refuses_bad_arguments_early(tmp_path, capsys, args, message):
    argv = ["--data", str(tmp_path), *args] if "--data" not in args else args
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_batch_that_does_not_split(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit):
        parse_args(["--data", str(tmp_path), "--batch-size", "32"])
    assert "does not split evenly over 3" in capsys.readouterr().err


def test_cli_refuses_to_overwrite_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "training-state-00000002.pt").write_bytes(b"x")
    with pytest.raises(SystemExit):
        parse_args(["--data", str(tmp_path), "--outdir", str(run)])
    assert "--resume auto" in capsys.readouterr().err
    assert parse_args(["--data", str(tmp_path), "--outdir", str(run), "--resume", "auto"]).run.resume == "auto"
