"""Feature networks and metrics: tiny inputs with known answers."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from train import features as feat
from train import inception
from train import metrics as M


# ---------------------------------------------------------------------------------------------
# FID / KID
# ---------------------------------------------------------------------------------------------
def _methods():
    out = ["eigh"]
    try:
        import scipy.linalg  # noqa: F401

        out.append("scipy")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("method", _methods())
def test_fid_of_identical_features_is_zero(method):
    f = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    assert abs(M.fid_from_features(f, f, method=method)) < 1e-6


@pytest.mark.parametrize("method", _methods())
def test_frechet_distance_matches_closed_form(method):
    # Two Gaussians whose covariances share eigenvectors (a rotation R): the distance is
    # ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    theta = 0.7
    rot = torch.tensor([[math.cos(theta), -math.sin(theta), 0.0],
                        [math.sin(theta), math.cos(theta), 0.0],
                        [0.0, 0.0, 1.0]], dtype=torch.float64)
    a = torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)
    b = torch.tensor([1.0, 9.0, 0.25], dtype=torch.float64)
    s1, s2 = rot @ torch.diag(a) @ rot.T, rot @ torch.diag(b) @ rot.T
    mu1 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    mu2 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    expected = 1.0 + 4.0 + (2 - 1) ** 2 + (1 - 3) ** 2 + 0.0
    assert M.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, abs=1e-8)


def test_frechet_methods_agree_on_general_covariances():
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(5), b @ b.T + 0.1 * torch.eye(5)
    mu = torch.zeros(5, dtype=torch.float64)
    assert M.frechet_distance(mu, s1, mu, s2, method="eigh") == pytest.approx(
        M.frechet_distance(mu, s1, mu, s2, method="scipy"), rel=1e-8)


def test_fid_from_samples_approaches_the_gaussians_distance():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20000, 2, generator=g) * torch.tensor([2.0, 1.0])
    y = torch.randn(20000, 2, generator=g) * torch.tensor([1.0, 3.0]) + torch.tensor([1.0, 0.0])
    expected = 1.0 + (2 - 1) ** 2 + (1 - 3) ** 2
    assert M.fid_from_features(x, y, method="eigh") == pytest.approx(expected, rel=0.03)


def test_kid_matches_hand_computed_unbiased_mmd():
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[2.0, 0.0], [0.0, -1.0], [0.5, 0.5]])
    k = lambda a, b: (float(a @ b) / 2 + 1) ** 3
    m = 3
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert M.polynomial_mmd2(x, y) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-10)
    # With one subset holding every sample, KID is exactly that estimate.
    kid = M.kid_from_features(x, y, num_subsets=5, subset_size=10)
    assert kid["subset_size"] == 3 and kid["num_subsets"] == 1
    assert kid["mean"] == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-10)


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    shifted = torch.randn(300, 8, generator=g) + 0.5
    same = M.kid_from_features(a, b, num_subsets=10, subset_size=150)
    diff = M.kid_from_features(a, shifted, num_subsets=10, subset_size=150)
    # The unbiased estimate fluctuates around 0 (about +-0.02 here); a 0.5 shift gives about 1.
    assert abs(same["mean"]) < 0.05
    assert diff["mean"] > 0.5 and diff["mean"] > 20 * abs(same["mean"])


# ---------------------------------------------------------------------------------------------
# LPIPS-style distances
# ---------------------------------------------------------------------------------------------
class PixelNet(nn.Module):
    """A feature net with a receptive field of one pixel (two 1x1 conv layers)."""

    name = "pixel"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return [h, torch.relu(self.b(h)) + 1e-3]


def _images(n=2, h=16, w=16, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_lpips_distance_identity_symmetry_and_positivity():
    net = PixelNet()
    x, y = _images(seed=0), _images(seed=1)
    assert torch.equal(M.lpips_distance(x, x, net), torch.zeros(2))
    d = M.lpips_distance(x, y, net)
    assert torch.allclose(d, M.lpips_distance(y, x, net))
    assert (d > 0).all()


def test_masked_distance_only_sees_the_masked_region():
    net = PixelNet()
    x = _images(1)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[:, :8] = True
    y = x.clone()
    y[..., 8:] = _images(1, seed=5)[..., 8:]  # change only the right half
    assert M.lpips_distance(x, y, net, mask=mask).item() == 0.0
    assert M.lpips_distance(x, y, net, mask=~mask).item() > 0
    # An all-ones mask is the plain spatial mean; an empty one has no value.
    assert torch.allclose(M.lpips_distance(x, y, net, mask=torch.ones(16, 16)), M.lpips_distance(x, y, net))
    assert torch.isnan(M.lpips_distance(x, y, net, mask=torch.zeros(16, 16))).all()


def test_inside_distance_is_the_mean_over_the_region():
    # With one layer of per-pixel features, the masked distance is the mean of the per-pixel map.
    net = PixelNet()
    x, y = _images(1, 8, 8, 0), _images(1, 8, 8, 1)
    with torch.no_grad():
        maps = M.layer_distance_maps(x, y, net)
    mask = torch.zeros(8, 8)
    mask[2:5, 1:7] = 1
    expected = sum(float(mp[0, 0][mask.bool()].mean()) for mp in maps)
    assert M.lpips_distance(x, y, net, mask=mask).item() == pytest.approx(expected, rel=1e-5)


def test_lpips_heads_weight_channels_like_lpips_conv(tmp_path):
    alex = feat.AlexNetFeatures()
    torch.save({**alex.state_dict(), "classifier.1.weight": torch.zeros(4, 9216)}, tmp_path / "alexnet.pth")
    g = torch.Generator().manual_seed(0)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
             for i, c in enumerate(feat.AlexNetFeatures.channels)}
    torch.save(heads, tmp_path / "alex.pth")
    net = feat.LPIPSAlex.from_pretrained(tmp_path / "alex.pth", tmp_path / "alexnet.pth")
    assert all(torch.equal(net.heads_state_dict()[k], v) for k, v in heads.items())
    x, y = _images(2, 64, 64, 0), _images(2, 64, 64, 1)
    # lpips' own formula: scaling layer, unit-normalise, squared diff, 1x1 conv head, spatial mean, sum.
    sx, sy = [(t - net.shift) / net.scale for t in (x, y)]
    expected = 0
    for i, (fx, fy) in enumerate(zip(net.net(sx), net.net(sy))):
        diff = (M.normalize_channels(fx) - M.normalize_channels(fy)) ** 2
        expected = expected + torch.nn.functional.conv2d(diff, heads[f"lin{i}.model.1.weight"]).mean((1, 2, 3))
    assert torch.allclose(M.lpips_distance(x, y, net), expected, rtol=1e-5)
    assert M.distance_name(net) == M.LPIPS_NAME


def test_perceptual_distance_is_the_named_substitute():
    x, y = _images(2, 32, 32, 0), _images(2, 32, 32, 1)
    d = M.perceptual_distance(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(M.perceptual_distance(x, x), torch.zeros(2), atol=1e-6)
    assert "not LPIPS" in M.distance_name(M.substitute_net())


# ---------------------------------------------------------------------------------------------
# mCSD / mOCD and diversity
# ---------------------------------------------------------------------------------------------
C, Z = 3, 8
LATENT = (C * Z, 1, 1)


def _mask():
    lab = torch.zeros(8, 8, dtype=torch.int64)
    lab[:, 4:] = 1
    lab[6:, :] = 2
    return lab


def per_class_generator(labels, z):
    """Pixel colour = a function of its own class's code only."""
    labels, z = torch.as_tensor(labels), torch.as_tensor(z)
    n = labels.shape[0]
    codes = z.view(n, C, Z)[..., :3]  # (N, C, 3)
    img = torch.gather(codes, 1, labels.view(n, -1, 1).expand(-1, -1, 3))
    return torch.tanh(img).view(n, *labels.shape[1:], 3).permute(0, 3, 1, 2)


def global_generator(labels, z):
    """Every pixel depends on every class's code."""
    labels, z = torch.as_tensor(labels), torch.as_tensor(z)
    n = labels.shape[0]
    colour = torch.tanh(z.view(n, C, Z)[..., :3].sum(1))
    return colour[:, :, None, None].expand(n, 3, *labels.shape[1:]) + 0 * labels[:, None]


def test_smis_diversity_per_class_generator_has_zero_mocd():
    res = M.smis_diversity(per_class_generator, [_mask()], PixelNet(), LATENT, n=6, m=4, class_names="abc")
    assert res.mocd == 0.0
    assert res.mcsd > 0
    assert [c.name for c in res.per_class] == ["a", "b", "c"]
    assert all(c.csd > 0 and c.ocd == 0.0 and c.num_pairs == 4 for c in res.per_class)


def test_smis_diversity_global_generator_has_positive_mocd():
    res = M.smis_diversity(global_generator, [_mask()], PixelNet(), LATENT, n=6, m=4)
    assert res.mocd > 0 and res.mcsd > 0
    d = res.to_dict()
    assert set(d["per_class"]) == {"0", "1", "2"} and d["n"] == 6 and d["m"] == 4


def test_smis_diversity_averages_a_class_over_the_masks_that_hold_it():
    other = torch.full((8, 8), 1, dtype=torch.int64)
    other[:4] = 0  # classes 0 and 1 only
    both = M.smis_diversity(global_generator, [_mask(), other], PixelNet(), LATENT, n=4, m=2, seed=1)
    first = M.smis_diversity(global_generator, [_mask()], PixelNet(), LATENT, n=4, m=2, seed=1)
    counts = {c.class_id: (c.num_masks, c.num_pairs) for c in both.per_class}
    assert counts == {0: (2, 4), 1: (2, 4), 2: (1, 2)} and both.num_masks == 2
    # Class 2 only occurs in the first mask, so its values do not change.
    assert both.per_class[2].csd == first.per_class[2].csd and both.per_class[2].ocd == first.per_class[2].ocd
    assert both.mcsd == pytest.approx(np.mean([c.csd for c in both.per_class]))


def test_smis_diversity_is_deterministic_and_restricts_classes():
    kw = dict(n=5, m=3, classes=[1], seed=7)
    a = M.smis_diversity(per_class_generator, [_mask()], PixelNet(), LATENT, **kw)
    b = M.smis_diversity(per_class_generator, [_mask()], PixelNet(), LATENT, **kw)
    assert [c.class_id for c in a.per_class] == [1]
    assert a.mcsd == b.mcsd


def test_smis_diversity_refuses_class_ids_the_model_lacks():
    with pytest.raises(ValueError, match="3 classes"):
        M.smis_diversity(per_class_generator, [torch.full((4, 4), 5)], PixelNet(), LATENT, n=3, m=2)


def test_class_covering_the_whole_mask_has_no_outside_value():
    res = M.smis_diversity(per_class_generator, [torch.ones(4, 4, dtype=torch.int64)], PixelNet(), LATENT, n=3, m=2)
    assert res.per_class[0].ocd is None and math.isnan(res.mocd)


def test_overall_diversity_of_a_fixed_output_is_zero():
    const = lambda labels, z: np.zeros((labels.shape[0], 3, *labels.shape[1:]), np.float32)
    assert M.overall_diversity(const, [_mask()], PixelNet(), LATENT, n=4, m=3)["mean"] == 0.0
    d = M.overall_diversity(per_class_generator, [_mask(), _mask()], PixelNet(), LATENT, n=4, m=3)
    assert d["mean"] > 0 and d["num_pairs"] == 6


def test_sample_pairs_distinct_and_checked():
    pairs = M.sample_pairs(100, 19, 0, 1)
    assert len(set(pairs)) == 19 and all(0 <= i < j < 100 for i, j in pairs)
    assert pairs == M.sample_pairs(100, 19, 0, 1) != M.sample_pairs(100, 19, 0, 2)
    assert sorted(M.sample_pairs(3, 3, 0)) == [(0, 1), (0, 2), (1, 2)]
    with pytest.raises(ValueError, match="pairs"):
        M.sample_pairs(3, 4, 0)


# ---------------------------------------------------------------------------------------------
# Segmentation scores
# ---------------------------------------------------------------------------------------------
def test_miou_and_accuracy_on_a_hand_made_case():
    truth = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 3, 1]])
    cm = M.confusion_matrix(pred, truth, num_classes=4)
    assert cm.tolist() == [[3, 1, 0, 0], [0, 3, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    s = M.segmentation_scores(cm, ["a", "b", "c", "d"])
    assert s["pixel_accuracy"] == pytest.approx(6 / 8)
    # IoU a = 3 / (4 + 3 - 3) = 0.75, b = 3 / (4 + 4 - 3) = 0.6, c absent, d = 0 / 1.
    assert s["per_class"]["a"]["iou"] == pytest.approx(0.75)
    assert s["per_class"]["b"]["iou"] == pytest.approx(0.6)
    assert s["per_class"]["c"]["iou"] is None and s["absent_classes"] == ["c"]
    assert s["per_class"]["d"]["iou"] == 0.0
    assert s["mean_iou"] == pytest.approx((0.75 + 0.6 + 0.0) / 3) and s["num_classes_in_mean"] == 3


def test_confusion_matrix_ignores_labels():
    cm = M.confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 255, 1]), 2, ignore_index=255)
    assert cm.tolist() == [[1, 0], [0, 1]]


# ---------------------------------------------------------------------------------------------
# Feature networks
# ---------------------------------------------------------------------------------------------
def test_shipped_normalised_vgg_matches_its_source_description():
    from safetensors import safe_open

    with safe_open(str(feat.NORMALISED_VGG19_FILE), "pt") as f:
        meta = f.metadata()
    assert meta["source_sha256"] == feat.NORMALISED_VGG19_SOURCE_SHA256
    net = feat.NormalisedVGG19Relu31.from_pretrained()
    # README: the 1x1 preprocessing conv maps RGB in [0, 1] to BGR x 255 minus the Caffe mean.
    w = net.preprocess.weight.view(3, 3)
    assert torch.equal(w, 255 * torch.eye(3).flip(1))
    assert torch.allclose(net.preprocess.bias, torch.tensor([-103.939, -116.779, -123.68]))
    x = _images(1, 9, 7)  # odd sizes: ceil-mode pooling keeps the border
    outs = net(x)
    assert [tuple(o.shape) for o in outs] == [(1, 64, 9, 7), (1, 128, 5, 4), (1, 256, 3, 2)]
    assert not any(p.requires_grad for p in net.parameters())


def test_normalised_vgg_relu1_1_matches_a_hand_computation():
    net = feat.NormalisedVGG19Relu31.from_pretrained()
    x = _images(1, 6, 7, seed=3)
    rgb01 = ((x[0] + 1) / 2).double().numpy()
    bgr = rgb01[::-1] * 255 - np.array([103.939, 116.779, 123.68])[:, None, None]
    padded = np.pad(bgr, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    w = net.features[0].weight.double().numpy()
    b = net.features[0].bias.double().numpy()
    expected = np.zeros((64, 6, 7))
    for i in range(6):
        for j in range(7):
            expected[:, i, j] = np.tensordot(w, padded[:, i:i + 3, j:j + 3], axes=3) + b
    expected = np.maximum(expected, 0)
    assert np.allclose(net(x)[0][0].double().numpy(), expected, atol=1e-3)


def test_normalised_vgg_conversion_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    shapes = {"0": (3, 3, 1, 1), "2": (64, 3, 3, 3), "5": (64, 64, 3, 3), "9": (128, 64, 3, 3),
              "12": (128, 128, 3, 3), "16": (256, 128, 3, 3)}
    src = {}
    for k, s in shapes.items():
        src[f"{k}.weight"] = torch.randn(*s, generator=g)
        src[f"{k}.bias"] = torch.randn(s[0], generator=g)
    torch.save(src, tmp_path / "vgg.pth")
    out = feat.convert_normalised_vgg19(tmp_path / "vgg.pth", tmp_path / "vgg.safetensors")
    net = feat.NormalisedVGG19Relu31.from_pretrained(out)
    assert torch.equal(net.features[10].weight, src["16.weight"])
    assert torch.equal(net.preprocess.bias, src["0.bias"])
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.metadata()["source_sha256"] == hashlib.sha256((tmp_path / "vgg.pth").read_bytes()).hexdigest()


def test_vgg19_loads_torchvision_layout_and_returns_five_layers(tmp_path):
    ref = feat.VGG19Features()
    state = dict(ref.state_dict())
    # The rest of a torchvision checkpoint: later conv layers and the classifier are ignored.
    state.update({"features.30.weight": torch.zeros(512, 512, 3, 3), "classifier.0.weight": torch.zeros(4, 4)})
    torch.save(state, tmp_path / "vgg19.pth")
    net = feat.VGG19Features.from_pretrained(tmp_path / "vgg19.pth")
    # torchvision vgg19 has 143,667,240 parameters; features.0-28 (to conv5_1) hold 12,944,960 of them.
    assert sum(p.numel() for p in net.parameters()) == 12_944_960
    x = _images(1, 32, 32)
    outs = net(x)
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4),
                                                  (512, 2, 2)]
    # ImageNet normalisation inside: relu1_1 = relu(conv(normalised x)).
    norm = ((x + 1) / 2 - torch.tensor(feat.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        feat.IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(outs[0], torch.relu(net.features[0](norm)), atol=1e-6)
    # Gradients reach the input (the perceptual loss), not the weights.
    x.requires_grad_(True)
    net(x)[-1].sum().backward()
    assert x.grad is not None and net.features[0].weight.grad is None


def test_alexnet_and_inception_match_torchvision_parameter_counts():
    # torchvision: alexnet 61,100,840 params, of which the classifier holds 58,631,144;
    # inception_v3 27,161,264 including fc (2,049,000) and AuxLogits (3,326,696).
    assert sum(p.numel() for p in feat.AlexNetFeatures().parameters()) == 61_100_840 - 58_631_144
    inc = inception.InceptionV3Pool()
    assert sum(p.numel() for p in inc.parameters()) == 27_161_264 - 2_049_000 - 3_326_696
    names = inc.state_dict()
    assert tuple(names["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape) == (384, 384, 3, 1)
    assert tuple(names["Mixed_6e.branch7x7dbl_5.conv.weight"].shape) == (192, 192, 1, 7)
    assert "Conv2d_1a_3x3.bn.running_var" in names


def test_inception_variant_detection_and_ignored_keys(tmp_path):
    state = dict(inception.InceptionV3Pool("torchvision").state_dict())
    # pytorch-fid's FID network has a 1008-class fc; torchvision's has 1000 classes and AuxLogits.
    assert inception.inception_variant({"fc.weight": torch.zeros(1008, 2048)}) == "fid"
    assert inception.inception_variant({"fc.weight": torch.zeros(1000, 2048)}) == "torchvision"
    # An old checkpoint without BatchNorm num_batches_tracked still loads.
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save({**old, "fc.weight": torch.zeros(1000, 2048), "AuxLogits.fc.bias": torch.zeros(1000)},
               tmp_path / "tv.pth")
    tv = inception.InceptionV3Pool.from_pretrained(tmp_path / "tv.pth")
    assert tv.variant == "torchvision" and not tv.training
    assert torch.equal(tv.Mixed_7c.branch_pool.bn.running_var, state["Mixed_7c.branch_pool.bn.running_var"])
    tv.train()
    assert not tv.training  # fixed networks stay in eval mode (BatchNorm statistics)


@pytest.mark.slow
def test_inception_forward_shape():
    assert inception.InceptionV3Pool().eval()(_images(1, 32, 32)).shape == (1, 2048)


def test_missing_vgg_weights_raise_with_the_helpful_message(tmp_path, monkeypatch):
    with pytest.raises(feat.FeatureWeightsUnavailable, match="does not exist") as err:
        feat.VGG19Features.from_pretrained(tmp_path / "nope.pth")
    assert "pass --vgg-weights PATH (a torchvision vgg19 checkpoint) or switch the loss off" in str(err.value)
    assert isinstance(err.value, RuntimeError)
    # No path: torchvision's cache is empty and the download fails (no network attempted here).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(feat.FeatureWeightsUnavailable, match="could not be downloaded") as err:
        feat.VGG19Features.from_pretrained()
    assert str(err.value).endswith(feat.VGG_HINT)
    assert "vgg19-dcbb9e9d.pth" in str(err.value)


def test_vgg19_uses_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(feat.VGG19Features().state_dict(), tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("downloaded"))
    assert isinstance(feat.VGG19Features.from_pretrained(), feat.VGG19Features)


def test_wrong_checkpoint_is_named(tmp_path):
    with pytest.raises(feat.FeatureWeightsUnavailable, match="not a torchvision vgg19 checkpoint"):
        feat.VGG19Features.from_pretrained(feat.NORMALISED_VGG19_FILE)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(feat.FeatureWeightsUnavailable, match="could not read"):
        feat.AlexNetFeatures.from_pretrained(tmp_path / "junk.pth")
    with pytest.raises(feat.FeatureWeightsUnavailable, match="--inception-weights"):
        inception.InceptionV3Pool.from_pretrained(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------------------
# Parity with the reference implementations, where they can be imported (training machines)
# ---------------------------------------------------------------------------------------------
def _import_or_skip(name):
    try:
        return __import__(name)
    except Exception as err:  # torchvision raises RuntimeError next to a CPU-only torch
        pytest.skip(f"{name} cannot be imported here ({type(err).__name__})")


def test_parity_with_torchvision_models():
    tv = _import_or_skip("torchvision")
    torch.manual_seed(0)
    x = _images(1, 80, 72)
    vgg = tv.models.vgg19(weights=None).eval()
    mine = feat.VGG19Features()
    feat.load_matching(mine, vgg.state_dict(), "vgg19", "")
    with torch.no_grad():
        h = ((x + 1) / 2 - torch.tensor(feat.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
            feat.IMAGENET_STD).view(1, 3, 1, 1)
        ref = []
        for i, layer in enumerate(vgg.features[:30]):
            h = layer(h)
            if i in feat.VGG19Features.taps:
                ref.append(h)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(mine.eval()(x), ref))
        inc = tv.models.inception_v3(weights=None, aux_logits=True, init_weights=True).eval()
        pool = {}
        inc.avgpool.register_forward_hook(lambda mod, i, o: pool.__setitem__("x", o.flatten(1)))
        inc(torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False))
        ours = inception.InceptionV3Pool("torchvision")
        feat.load_matching(ours, inc.state_dict(), "inception", "")
        assert torch.allclose(ours.eval()(x), pool["x"], rtol=1e-4)
    assert set(feat.AlexNetFeatures().state_dict()) == {
        k for k in tv.models.alexnet(weights=None).state_dict() if k.startswith("features.")}


def test_parity_with_the_lpips_package():
    lpips = _import_or_skip("lpips")
    ref = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    ours = feat.LPIPSAlex()
    trunk = {f"features.{k.split('.')[1]}.{k.split('.')[2]}": v for k, v in ref.net.state_dict().items()}
    ours.net.load_state_dict(trunk)
    heads = {k: v for k, v in ref.state_dict().items() if k.startswith("lin") and not k.startswith("lins.")}
    ours.load_state_dict({**ours.state_dict(), **heads})
    x, y = _images(2, 64, 64, 0), _images(2, 64, 64, 1)
    with torch.no_grad():
        assert torch.allclose(M.lpips_distance(x, y, ours.eval()), ref(x, y).view(-1), rtol=1e-5)
