"""train.evaluate end to end on a tiny untrained model and a 4-image generic dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from smis import get_config
from smis.labels import CCP10_CLASSES, CCP10_PALETTE
from train import evaluate as E
from train import metrics as M


def _generic_dataset(root, count=4, height=128, width=64):
    """root/images, root/labels, root/classes.json (CCP's 10 classes), root/val.txt."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    stems = []
    for i in range(count):
        lab = np.zeros((height, width), np.uint8)
        lab[20:100, 16:48] = 2 + i % 3  # a "person" of a few classes on background 0
        lab[10:30, 20:44] = 1
        photo = np.asarray(CCP10_PALETTE, np.uint8)[lab] // 2 + rng.integers(0, 100, (height, width, 3), np.uint8)
        stem = f"{i:04d}"
        Image.fromarray(photo).save(root / "images" / f"{stem}.png")
        Image.fromarray(lab).save(root / "labels" / f"{stem}.png")
        stems.append(stem)
    (root / "classes.json").write_text(json.dumps({"names": list(CCP10_CLASSES),
                                                   "colors": [list(c) for c in CCP10_PALETTE]}))
    (root / "val.txt").write_text("\n".join(stems) + "\n")
    return root


@pytest.fixture()
def tiny_model(tiny_model_dir):
    """The shared tiny untrained ``demo`` model (conftest): 128x64, CCP's 10 classes."""
    return tiny_model_dir


def test_evaluate_cli_end_to_end(tmp_path, tiny_model, monkeypatch, capsys):
    pytest.importorskip("train.data")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty cache: substitutes, no download
    data = _generic_dataset(tmp_path / "data")
    out = tmp_path / "eval"
    rc = E.main(["--model", str(tiny_model), "--data", str(data), "--format", "generic", "--split", "val",
                 "--n", "3", "--m", "1", "--num-masks", "1", "--batch-size", "8", "--kid-subsets", "3",
                 "--fid-method", "eigh", "--device", "cpu", "--out", str(out), "--quiet"])
    assert rc == 0
    r = json.loads((out / "metrics.json").read_text())
    # The substitute networks are named as such, with the sample counts.
    assert r["distance"]["substitute"] and "not LPIPS" in r["distance"]["name"]
    assert r["fid"]["substitute"] and "not FID" in r["fid"]["name"]
    assert r["fid"]["num_real"] == r["fid"]["num_fake"] == 4 and r["fid"]["feature_dim"] == 448
    assert r["fid"]["value"] > 0 and r["fid"]["real_halves"] >= 0
    assert r["kid"]["subset_size"] == 4 and r["kid"]["num_subsets"] == 1  # 4 of 4: one subset is all there is
    assert r["data"]["num_images"] == 4 and r["model"]["name"] == "demo"
    d = r["diversity"]
    assert d["num_pairs"] == 1 and d["num_masks"] == 1 and d["mean"] > 0
    s = r["smis"]
    # Mask 0 holds classes 0 (background), 1 (hair) and 2 (skin).
    assert s["mask_indices"] == [0] and s["n"] == 3 and s["m"] == 1
    assert set(s["per_class"]) == {"background", "hair", "skin"}
    assert s["per_class"]["skin"]["num_masks"] == 1 and s["per_class"]["skin"]["num_pairs"] == 1
    assert s["mcsd"] > 0 and s["mocd"] >= 0
    assert r["segmentation"] is None
    rec = r["reconstruction"]
    assert rec["num_images"] == 4 and rec["units"] == "0-255" and 0 < rec["l1"] < 255
    assert rec["per_class"]["background"]["pairs"] == 4 and rec["per_class"]["legwear"]["pairs"] == 0
    assert rec["colour_error"] > 0 and "colour error of a photo's own codes" in (out / "metrics.md").read_text()
    share = r["class_pixel_share"]
    assert list(share) == r["model"]["classes"]
    assert sum(share.values()) == pytest.approx(1.0) and share["skin"] > 0
    md = (out / "metrics.md").read_text()
    assert "share of the pixels" in md and "L_c / L_≠c" in md
    assert "not LPIPS" in md and "not FID" in md and "mCSD" in md and "| skin |" in md
    assert "4 real vs 4 generated images" in md and "real half vs real half" in md
    assert "mOCD" in capsys.readouterr().out and r["truncation"] == 1.0

    # --truncation 0: every random code is zero, so all draws of a mask are one image.
    rc = E.main(["--model", str(tiny_model), "--data", str(data), "--format", "generic", "--split", "val",
                 "--n", "3", "--m", "1", "--num-masks", "1", "--kid-subsets", "3", "--fid-method", "eigh",
                 "--device", "cpu", "--out", str(tmp_path / "psi0"), "--quiet", "--truncation", "0", "--refine", "3"])
    r0 = json.loads((tmp_path / "psi0" / "metrics.json").read_text())
    assert rc == 0 and r0["truncation"] == 0.0 and r0["refine_steps"] == 3 and r["refine_steps"] == 0
    assert r0["reconstruction"]["colour_error"] < r["reconstruction"]["colour_error"]  # codes fitted to the photos
    assert "scaled by psi = 0 (`--truncation`)" in (tmp_path / "psi0" / "metrics.md").read_text()
    assert r0["diversity"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert r0["smis"]["mcsd"] == pytest.approx(0.0, abs=1e-6)
    assert E.main(["--model", str(tiny_model), "--data", str(data), "--truncation", "-1"]) == 2


def test_evaluate_refuses_missing_explicit_weights(tmp_path, tiny_model, capsys):
    pytest.importorskip("train.data")
    data = _generic_dataset(tmp_path / "data", count=2)
    rc = E.main(["--model", str(tiny_model), "--data", str(data), "--alexnet-weights", str(tmp_path / "no.pth"),
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "eval")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--lpips-weights" in err
    rc = E.main(["--model", str(tiny_model), "--data", str(data), "--n", "2", "--m", "5", "--out", str(tmp_path)])
    assert rc == 2 and "raise --n or lower --m" in capsys.readouterr().err


def test_evaluate_segmentation_hook_with_a_fake_parser():
    """The parser hook: any callable images -> labels; here one that answers the truth for half the image."""
    cfg = get_config("demo", tiny=True)
    # A cheap torch "model" f(z, labels), through the same wrapper a raw GroupDNet would use.
    model = lambda z, labels: torch.tanh(z.mean((1, 2, 3)).view(-1, 1, 1, 1) + labels[:, None] / 10).expand(
        -1, 3, -1, -1)
    labels = torch.zeros(2, cfg.height, cfg.width, dtype=torch.int64)
    labels[:, :, cfg.width // 2:] = 3  # "upper clothes"
    dataset = [{"image": torch.zeros(3, cfg.height, cfg.width), "label": lab} for lab in labels]
    parser = lambda images: torch.full(images.shape[:1] + images.shape[2:], 3, dtype=torch.int64)
    res = E.evaluate(M.model_generate_fn(model), cfg, dataset, distance_net=_PixelNet(), fid_net=_MeanNet(),
                     n=2, m=1, num_masks=1, batch_size=2, kid_subsets=2, parser=parser, fid_method="eigh",
                     progress=False)
    seg = res["segmentation"]["generated"]
    assert seg["pixel_accuracy"] == pytest.approx(0.5)
    # upper clothes (3): IoU 1/2; background (0): IoU 0; the other 8 classes absent, out of the mean.
    assert seg["per_class"]["upper clothes"]["iou"] == pytest.approx(0.5)
    assert seg["per_class"]["background"]["iou"] == 0.0
    assert seg["mean_iou"] == pytest.approx(0.25) and len(seg["absent_classes"]) == 8
    assert res["smis"]["mask_indices"] == [0]
    assert res["fid"]["substitute"] and "not Inception FID" in res["fid"]["name"]
    md = E.to_markdown({"model": {"path": "m", "name": "demo", "height": cfg.height, "width": cfg.width},
                        "data": {"root": "d", "format": "generic", "split": "val", "num_images": 2}, "seed": 0,
                        "distance": {"name": "toy", "substitute": False}, **res})
    assert "mIoU, generated (parser)" in md and "Absent from both" in md


def test_fid_samples_draws_more_images_per_mask_and_keeps_the_first_draw():
    cfg = get_config("demo", tiny=True)
    seen = []

    def generate(labels, z):  # records every code it is asked to render
        seen.append(np.asarray(z).copy())
        return np.tanh(np.asarray(z).mean((1, 2, 3))).reshape(-1, 1, 1, 1) * np.ones((1, 3, *labels.shape[1:]))

    labels = torch.zeros(3, cfg.height, cfg.width, dtype=torch.int64)
    dataset = [{"image": torch.zeros(3, cfg.height, cfg.width), "label": lab} for lab in labels]
    kw = dict(distance_net=_PixelNet(), fid_net=_MeanNet(), n=2, m=1, num_masks=1, batch_size=4, kid_subsets=2,
              fid_method="eigh", progress=False)
    one = E.evaluate(generate, cfg, dataset, **kw)
    first = seen[0]
    seen.clear()
    three = E.evaluate(generate, cfg, dataset, fid_samples=3, **kw)
    assert one["fid"]["num_fake"] == 3 and three["fid"]["num_fake"] == 9 and three["fid"]["samples_per_mask"] == 3
    assert np.array_equal(seen[0], first)  # draw 0 of each mask: the codes a one-sample evaluation used
    assert not np.allclose(seen[1], seen[0]) and not np.allclose(seen[2], seen[1])
    with pytest.raises(ValueError, match="fid_samples"):
        E.evaluate(generate, cfg, dataset, fid_samples=0, **kw)


class _PixelNet(torch.nn.Module):
    def forward(self, x):
        return [x + 2]


class _MeanNet(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def test_reconstruction_fidelity_measures_class_mean_colours():
    """A perfect re-synthesis scores 0; a region shifted by +0.2 in [-1, 1] scores 25.5 there, and a class
    covering less than min_share of the image is left out."""
    rng = np.random.default_rng(0)
    labels = np.zeros((3, 16, 16), np.int64)
    labels[:, 4:12, 4:12] = 3  # upper clothes: 25 % of each image
    labels[:, 0, 0] = 5  # one pixel: 0.4 %, below 1 %
    data = [{"image": rng.uniform(-0.5, 0.5, (3, 16, 16)).astype(np.float32), "label": labels[i]} for i in range(3)]

    def encode(x, lab):  # the "code" is the photo itself: generate can give it back
        return x.copy(), np.zeros_like(x)

    perfect = M.reconstruction_fidelity(encode, lambda lab, z: z, data, CCP10_CLASSES, progress=False)
    assert perfect["colour_error"] == pytest.approx(0.0, abs=1e-4) and perfect["l1"] == pytest.approx(0.0, abs=1e-4)
    assert perfect["per_class"]["upper clothes"]["pairs"] == 3 and perfect["per_class"]["lower clothes"]["pairs"] == 0
    assert perfect["other_photo_error"] > 0

    def shifted(lab, z):
        return np.where(lab[:, None] == 3, z + 0.2, z)

    r = M.reconstruction_fidelity(encode, shifted, data, CCP10_CLASSES, batch_size=2, progress=False)
    assert r["per_class"]["upper clothes"]["error"] == pytest.approx(25.5, abs=0.6)
    assert r["per_class"]["background"]["error"] == pytest.approx(0.0, abs=1e-4)
    assert r["colour_error"] == pytest.approx(25.5 / 2, abs=0.3)  # two (photo, class) pairs per photo
    assert r["l1"] == pytest.approx(25.5 * 64 / 256, abs=0.3)


def test_spread_indices_and_quantize():
    assert E.spread_indices(3, 10) == [0, 4, 9] and E.spread_indices(5, 2) == [0, 1]
    q = M.quantize(torch.tensor([-2.0, 0.0, 0.3, 1.0]))
    assert torch.allclose((q + 1) * 127.5, ((q + 1) * 127.5).round(), atol=1e-4) and q[0] == -1


def test_distance_network_choice(tmp_path, monkeypatch):
    from train import features as feat

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(feat, "find_lpips_heads", lambda: None)
    net, info = E.load_distance_net()
    assert isinstance(net, feat.NormalisedVGG19Relu31) and info["substitute"] and "not LPIPS" in info["name"]
    torch.save(feat.AlexNetFeatures().state_dict(), tmp_path / "alexnet.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(feat.AlexNetFeatures.channels)},
               tmp_path / "alex.pth")
    net, info = E.load_distance_net(str(tmp_path / "alex.pth"), str(tmp_path / "alexnet.pth"))
    assert isinstance(net, feat.LPIPSAlex) and not info["substitute"] and info["name"] == M.LPIPS_NAME
    # Heads without a trunk: an error that says what to pass, not a silent substitute.
    with pytest.raises(feat.FeatureWeightsUnavailable, match="--alexnet-weights"):
        E.load_distance_net(str(tmp_path / "alex.pth"))


def test_baseline_is_drawn_with_the_same_masks_and_codes_and_upscaled(tmp_path, monkeypatch):
    """--baseline: a smaller model's images, upscaled with Lanczos, get a Frechet distance in the same run; the
    model as its own baseline gets exactly its own distance (same masks, same codes)."""
    import dataclasses

    from smis import GroupDNet
    from tests.conftest import calibrate_batchnorm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    tiny_model = tmp_path / "small"
    for folder, height, width in ((tiny_model, 128, 64), (tmp_path / "big", 256, 128)):
        torch.manual_seed(1)  # one global code per class (as ccp-cpu): the same codes fit both sizes
        model = GroupDNet(dataclasses.replace(get_config("demo", tiny=True), height=height, width=width,
                                              code_layout="global"))
        calibrate_batchnorm(model)
        model.save_pretrained(folder)
    data = _generic_dataset(tmp_path / "data", height=256, width=128)
    common = ["--data", str(data), "--n", "2", "--m", "1", "--num-masks", "1", "--kid-subsets", "2",
              "--fid-method", "eigh", "--device", "cpu", "--quiet", "--no-reconstruction"]
    assert E.main(["--model", str(tmp_path / "big"), "--baseline", str(tiny_model), *common,
                   "--out", str(tmp_path / "grown")]) == 0
    r = json.loads((tmp_path / "grown" / "metrics.json").read_text())
    assert r["baseline"]["how"].startswith("128x64, masks resized (nearest), images upscaled with Lanczos")
    assert r["fid_baseline"]["num_fake"] == 4 and r["fid_baseline"]["value"] > 0
    assert r["fid_baseline"]["value"] != pytest.approx(r["fid"]["value"])
    assert "this model minus the baseline" in (tmp_path / "grown" / "metrics.md").read_text()

    assert E.main(["--model", str(tmp_path / "big"), "--baseline", str(tmp_path / "big"), *common,
                   "--out", str(tmp_path / "self")]) == 0
    s = json.loads((tmp_path / "self" / "metrics.json").read_text())
    assert s["baseline"]["how"] == "256x128, as is"
    assert s["fid_baseline"]["value"] == pytest.approx(s["fid"]["value"], rel=1e-5)
    # A larger baseline is refused with a message saying which way round it goes.
    assert E.main(["--model", str(tiny_model), "--baseline", str(tmp_path / "big"), *common,
                   "--out", str(tmp_path / "no")]) == 2


def test_upscaled_generate_resizes_masks_down_and_images_up():
    seen = []

    def small(labels, z):
        seen.append(labels.shape)
        return np.zeros((len(labels), 3, 4, 2), np.float32)  # mid-grey

    up = E.upscaled_generate(small, (4, 2), 8, 4)
    out = up(np.zeros((3, 8, 4), np.int64), np.zeros((3, 80, 1, 1), np.float32))
    assert seen == [(3, 4, 2)] and tuple(out.shape) == (3, 3, 8, 4)
    assert float(out.abs().max()) < 0.01
