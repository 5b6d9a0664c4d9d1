"""Coarse-to-fine growth (pix2pixHD's local enhancer adapted to GroupDNet): config, model, export, training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train_support import BlobDataset, blob_sample, tiny_options

from smis import GroupDNet, MultiscaleDiscriminator
from smis.config import SMISConfig, get_config
from train import checkpoint as ckpt
from train.loop import train

SMALL = get_config("demo", tiny=True)  # 128 x 64


def grown_config(small: SMISConfig = SMALL, channels: tuple[int, ...] = (8,)) -> SMISConfig:
    return small.replace(height=small.height * 2, width=small.width * 2,
                         generator=dataclasses.replace(small.generator, enhancer_channels=channels))


def grown_pair(seed: int = 0) -> tuple[GroupDNet, GroupDNet]:
    """A small model with random weights and the model grown from it (its tensors loaded, enhancer fresh)."""
    torch.manual_seed(seed)
    small = GroupDNet(SMALL).eval()
    big = GroupDNet(grown_config()).eval()
    missing, unexpected = big.load_state_dict(small.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("generator.up_4.", "generator.conv_img_hd.")) for k in missing)
    return small, big


def blob_labels(n: int, height: int, width: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([blob_sample(i, height, width)[1] for i in range(n)]).astype(np.int64))


def test_config_sizes_and_json():
    cfg = grown_config()
    assert cfg.size_multiple == 128 and cfg.enhancer_factor == 2
    assert cfg.global_size() == (SMALL.height, SMALL.width) and cfg.base_grid() == SMALL.base_grid()
    assert SMISConfig.from_dict(cfg.to_dict()) == cfg
    assert SMISConfig.from_dict({k: v for k, v in SMALL.to_dict().items()}).generator.enhancer_channels == ()
    with pytest.raises(ValueError, match="multiple of 128"):
        cfg.replace(height=192)
    with pytest.raises(ValueError, match="enhancer_channels must be positive"):
        cfg.replace(generator=dataclasses.replace(cfg.generator, enhancer_channels=(0,)))


def test_a_grown_model_starts_as_the_small_one_upscaled_and_its_preview_is_the_small_one():
    small, big = grown_pair()
    labels = blob_labels(2, 256, 128)
    z = torch.randn(2, *big.config.latent_shape())
    logits = {}
    small.generator.conv_img.register_forward_hook(lambda m, i, o: logits.update(rgb=o))
    with torch.no_grad():
        ref = small(z, labels[:, ::2, ::2])
        image = big(z, labels)
        preview = big.generator.preview(z, big.label_tensor(labels))
    assert image.shape == (2, 3, 256, 128) and preview.shape == (2, 3, 128, 64)
    torch.testing.assert_close(preview, ref, rtol=0, atol=1e-6)
    upscaled = torch.tanh(F.interpolate(logits["rgb"], scale_factor=2.0, mode="bilinear", align_corners=False))
    torch.testing.assert_close(image, upscaled, rtol=0, atol=1e-5)


def test_label_features_cache_and_encoder_size():
    small, big = grown_pair(1)
    with torch.no_grad():  # give the enhancer something to do
        big.generator.conv_img_hd.weight.normal_(0, 0.1)
    labels = blob_labels(1, 256, 128)
    z = torch.randn(3, *big.config.latent_shape())
    label = big.label_tensor(labels)
    with torch.no_grad():
        feats = big.generator.label_features(label)
        assert len(feats) == 8 and feats[-1]["norm_0"][0].shape[-2:] == (256, 128)
        torch.testing.assert_close(big.generator(z, label.expand(3, -1, -1, -1)), big.generator(z, label, feats))
        torch.testing.assert_close(big.generator.preview(z, label, feats),
                                   big.generator.preview(z, label.expand(3, -1, -1, -1)))
        photo = torch.rand(1, 3, 256, 128) * 2 - 1
        mu, logvar = big.encode(photo, labels)
        mu_s, logvar_s = small.encode(F.avg_pool2d(photo, 2), labels[:, ::2, ::2])
    torch.testing.assert_close(mu, mu_s)
    torch.testing.assert_close(logvar, logvar_s)


def test_flops_and_label_branch_count_the_enhancer():
    from export.flops import generator_gflop
    from smis.backends.onnx import label_branch_bytes

    small, big = SMALL, grown_config()
    h, w = big.height, big.width
    # The enhancer is one more block at 4x the pixels of the small model's last one.
    assert generator_gflop(big) > generator_gflop(small) * 1.2
    assert label_branch_bytes(big, h, w) > label_branch_bytes(small, small.height, small.width)


def test_onnx_export_matches_pytorch_and_the_onnx_backend_caches_the_enhancer(tmp_path):
    from export.onnx import export_model, feature_names, parity, read_metadata
    from smis.backends.onnx import OnnxBackend

    _, big = grown_pair(2)
    with torch.no_grad():
        big.generator.conv_img_hd.weight.normal_(0, 0.1)
    result = export_model(big, tmp_path)
    assert any(n.startswith("up_4.") for n in feature_names(big.config))
    assert parity(big, result.files["generator"], batch=1) < 1e-4
    assert parity(big, result.files["encoder"], batch=1) < 1e-4
    assert read_metadata(result.files["generator"])["smis.size_multiple"] == "128"
    assert parity(big, result.files["generator_preview"], batch=1) < 1e-4  # the global generator's image
    assert read_metadata(result.files["generator_preview"])["smis.graph"] == "generator_preview"
    backend = OnnxBackend.from_pretrained(tmp_path)
    labels = blob_labels(1, 256, 128).numpy()
    z = np.random.default_rng(0).standard_normal((2, *big.config.latent_shape()), dtype=np.float32)
    first = backend.generate(labels, z[:1])  # the maps graph: keeps the label branch, enhancer included
    again = backend.generate(labels, z[1:])  # the render graph
    with torch.no_grad():
        ref = big(torch.from_numpy(z), torch.from_numpy(labels).expand(2, -1, -1)).numpy()
    np.testing.assert_allclose(np.concatenate([first, again]), ref, atol=1e-4)
    with pytest.raises(ValueError, match="multiples of 128"):
        backend.generate(labels[:, :192], z[:1])


class BigBlobs(BlobDataset):
    def __init__(self, n: int = 4):
        self.items = [blob_sample(i, 256, 128) for i in range(n)]
        self.nan_after = None
        self.reads = 0


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    result = train(tiny_options(outdir=str(out), steps=1), dataset=BlobDataset(4))
    assert result.status == "finished"
    return result


def test_init_from_grows_a_smaller_model_and_train_only_enhancer_freezes_the_rest(small_run, tmp_path):
    opts = tiny_options(height=256, width=128, enhancer_channels=[8])
    torch.manual_seed(0)
    cfg = opts.model.config()
    net, disc, ema = GroupDNet(cfg), MultiscaleDiscriminator(cfg), GroupDNet(cfg)
    what = ckpt.load_init(str(small_run.snapshot), net, disc, ema)
    assert "grown from 128x64 to 256x128" in what and "up_4" in what
    small = GroupDNet.from_pretrained(small_run.snapshot).state_dict()
    for k, v in small.items():
        assert torch.equal(net.state_dict()[k], v), k

    run = train(tiny_options(outdir=str(tmp_path), height=256, width=128, enhancer_channels=[8], steps=2,
                             train_only="enhancer", init_from=str(small_run.snapshot), init_step="0"),
                dataset=BigBlobs(4))
    assert run.status == "finished"
    state = ckpt.load_state(run.checkpoint)["model"]
    learnt = [k for k in state if k.startswith(("generator.up_4.", "generator.conv_img_hd."))]
    assert any(not torch.equal(state[k], net.state_dict()[k]) for k in learnt if state[k].is_floating_point())
    for k, v in small.items():  # the global generator and the encoder are as grown from
        if ".running_" not in k and "num_batches" not in k and "._u" not in k and "._v" not in k:
            assert torch.equal(state[k], v), k


def test_train_only_enhancer_needs_an_enhancer():
    with pytest.raises(ValueError, match="needs a model with an enhancer"):
        tiny_options(train_only="enhancer").validate()


def test_fit_codes_fits_the_global_generator_at_its_size():
    """With an enhancer the codes are fitted on the preview first: the same codes as the small model fits on the
    box-filtered photo, while the enhancer is still "no change"; the last steps fit the full image."""
    small, big = grown_pair(3)
    labels = blob_labels(1, 256, 128)
    photo = torch.rand(1, 3, 256, 128) * 2 - 1
    z = torch.randn(1, *big.config.latent_shape())
    logits = {}
    small.generator.conv_img.register_forward_hook(lambda m, i, o: logits.update(rgb=o))
    with torch.no_grad():  # random weights saturate tanh (no gradient): scale the RGB head to logits of std 0.5
        small(z, labels[:, ::2, ::2])
        scale = 0.5 / float(logits["rgb"].std())
        for m in (small, big):
            m.generator.conv_img.weight.mul_(scale)
            m.generator.conv_img.bias.mul_(scale)
    fitted = big.fit_codes(photo, labels, z, steps=3, full_steps=0)
    assert not torch.equal(fitted, z)
    torch.testing.assert_close(fitted, small.fit_codes(F.avg_pool2d(photo, 2), labels[:, ::2, ::2], z, steps=3))
    # by default the last quarter of the steps fit the full image (what the enhancer adds included)
    four = big.fit_codes(photo, labels, z, steps=4)
    assert not torch.allclose(four, big.fit_codes(photo, labels, z, steps=4, full_steps=0))
    assert not torch.allclose(four, fitted)


def test_bench_baseline_compares_a_grown_model_with_the_small_one(tmp_path, capsys):
    from export import bench

    small, big = grown_pair(4)
    small.save_pretrained(tmp_path / "small")
    big.save_pretrained(tmp_path / "big")
    result = bench.main(["--model", str(tmp_path / "big"), "--baseline", str(tmp_path / "small"), "--modes",
                         "torch-eager,ort-reroll", "--repeats", "1", "--warmup", "0", "--threads", "1",
                         "--peak-tflops", "0.1", "--out", str(tmp_path / "out")])
    torch.set_num_threads(1)
    assert [r["size"] for r in result["sizes"]] == [[128, 64], [256, 128]]
    md = next((tmp_path / "out").glob("bench-*.md")).read_text()
    assert "Models compared in one run" in md and "| big 256x128 / small 128x64 |" in md
    assert md.count("| ort-reroll | 1 |") == 1
    with pytest.raises(SystemExit):
        bench.parse_args(["--baseline", str(tmp_path / "small")])  # no --model
    capsys.readouterr()


def test_only_a_model_with_an_enhancer_has_a_preview_graph(tmp_path):
    from export.onnx import export_graph

    with pytest.raises(ValueError, match="the preview is for models with a local enhancer"):
        export_graph(GroupDNet(SMALL), tmp_path / "p.onnx", kind="generator_preview")


def test_the_page_gets_the_preview_graph_and_its_size(tmp_path):
    from demo.browser import find_browser_model, ort_web_version
    from export.onnx import export_model
    from smis.pipeline import SMISPipeline

    if ort_web_version() is None:
        pytest.skip("onnxruntime-web is not vendored here")
    _, big = grown_pair(5)
    big.save_pretrained(tmp_path)
    export_model(big, tmp_path)
    described = find_browser_model(SMISPipeline.from_pretrained(tmp_path, backend="onnx")).describe()
    assert described["available"] and set(described["graphs"]) == {"generator_maps", "generator_render",
                                                                   "generator_preview"}
    assert described["model"]["preview"] == [128, 64] and described["model"]["height"] == 256


def test_showcase_compare_puts_models_side_by_side_at_the_largest_size(tmp_path):
    from train.showcase import main

    small, big = grown_pair(6)
    small.save_pretrained(tmp_path / "small")
    big.save_pretrained(tmp_path / "big")
    out = tmp_path / "growth.png"
    assert main(["--compare", str(tmp_path / "small"), str(tmp_path / "big"), "--rows", "1", "--out", str(out)]) == 0
    from PIL import Image

    w, h = Image.open(out).size
    assert w == (2 + 3 * 2) * (128 + 4) + 4  # mask, photo, then (its codes, seed 0, seed 1) x 2 models at 256x128
    assert h > 256 + 22


def test_graft_puts_a_retrained_global_generator_under_the_enhancer_and_refuses_misfits(tmp_path, capsys):
    """``python -m train.graft``: global generator + encoder from the small model, enhancer and D from the grown
    one; the result's preview is the small model's image, its enhancer the grown model's, and --init-from reads it."""
    from safetensors.torch import save_file

    from train import graft

    torch.manual_seed(1)
    retrained, big = GroupDNet(SMALL).eval(), GroupDNet(grown_config()).eval()
    with torch.no_grad():  # an enhancer that draws something (its RGB residual starts at zero)
        for p in big.generator.conv_img_hd.parameters():
            p.normal_(0, 0.1)
    retrained.save_pretrained(tmp_path / "small")
    big.save_pretrained(tmp_path / "big")
    disc = MultiscaleDiscriminator(big.config)
    save_file(disc.state_dict(), str(tmp_path / "big" / ckpt.DISCRIMINATOR_NAME))

    assert graft.main(["--global", str(tmp_path / "small"), "--enhancer", str(tmp_path / "big"),
                       "--out", str(tmp_path / "graft")]) == 0
    assert "D from it too" in capsys.readouterr().out
    grafted = GroupDNet.from_pretrained(tmp_path / "graft").eval()
    prefixes = ckpt.enhancer_prefixes(big.config)
    assert prefixes and grafted.config == big.config
    for k, v in grafted.state_dict().items():
        torch.testing.assert_close(v, (big if k.startswith(prefixes) else retrained).state_dict()[k], rtol=0, atol=0)
    labels = blob_labels(2, 256, 128)
    z = torch.randn(2, *big.config.latent_shape())
    with torch.no_grad():
        torch.testing.assert_close(grafted.generator.preview(z, grafted.label_tensor(labels)),
                                   retrained(z, labels[:, ::2, ::2]), rtol=0, atol=1e-6)
        assert not torch.allclose(grafted(z, labels), big(z, labels), atol=1e-3)  # other global generator
    record = json.loads((tmp_path / "graft" / "graft.json").read_text())
    assert record["tensors"]["from_enhancer"] == sum(k.startswith(prefixes) for k in big.state_dict())
    what = ckpt.load_init(str(tmp_path / "graft"), GroupDNet(big.config), MultiscaleDiscriminator(big.config), None)
    assert "and D (discriminator.safetensors)" in what

    with pytest.raises(graft.GraftError, match="has no local enhancer"):  # the two swapped
        graft.graft(str(tmp_path / "big"), str(tmp_path / "small"), tmp_path / "x")
    wide = SMALL.replace(width=SMALL.width * 2)
    GroupDNet(wide).save_pretrained(tmp_path / "wide")
    with pytest.raises(graft.GraftError, match="global generator runs at 128x64"):
        graft.graft(str(tmp_path / "wide"), str(tmp_path / "big"), tmp_path / "x")
    other = SMALL.replace(z_channels=SMALL.z_channels * 2)
    GroupDNet(other).save_pretrained(tmp_path / "other")
    with pytest.raises(graft.GraftError, match="differ beyond the size: z_channels"):
        graft.graft(str(tmp_path / "other"), str(tmp_path / "big"), tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before anything is written
