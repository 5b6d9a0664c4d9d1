"""Export: ONNX graphs (checker, parity, folding, dynamic shapes, metadata), the ONNX Runtime
backend behind the pipeline, TensorRT's absence, FLOP counts and the bench command.

Models are tiny twins of every preset with random weights whose statistics are calibrated
(``export.onnx.random_model``): their images span [-1, 1], so a parity bound means something.
Everything runs on one thread: on a shared 2-core machine that is several times faster than two.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from export.flops import encoder_costs, generator_costs, generator_gflop
from export.onnx import (
    UNFOLDED_OPS,
    FoldedCGNorm,
    conv_weight_sources,
    export_graph,
    export_model,
    feature_names,
    inference_copy,
    op_types,
    parity,
    plain_config,
    random_inputs,
    random_model,
    read_metadata,
    torch_reference,
)
from smis import GroupDNet, SMISPipeline, get_config
from smis.backends.onnx import OnnxBackend, make_session
from smis.config import PRESETS
from smis.hub import BUNDLED_MODEL_DIR, CheckpointError
from smis.layers import CGNorm
from smis.onnx_format import config_from_metadata, latent_layout

#: Max abs error of the fp32 graphs against PyTorch (the issue's bound).
FP32_BOUND = 1e-4
#: fp16 graphs (fp16 weights and arithmetic, fp32 I/O), measured 3e-3..9e-3 on the image and
#: 5e-3..1.7e-2 on mu / logvar for the tiny presets: stated bounds 2e-2 (image, ~2.5 of 255
#: levels) and 5e-2 (encoder maps).
FP16_IMAGE_BOUND = 2e-2
FP16_CODE_BOUND = 5e-2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module", params=list(PRESETS))
def exported(request, tmp_path_factory):
    """(model, ExportResult) per preset: tiny twin, random calibrated weights, fp32 graphs."""
    model = random_model(get_config(request.param, tiny=True), seed=0, batches=1)
    result = export_model(model, tmp_path_factory.mktemp(f"onnx-{request.param}"))
    return model, result


@pytest.fixture(scope="module")
def demo_model():
    return random_model(get_config("demo", tiny=True), seed=1, batches=1)


@pytest.fixture(scope="module")
def demo_dir(demo_model, tmp_path_factory):
    """The tiny demo model saved as safetensors (no .onnx in the folder)."""
    folder = tmp_path_factory.mktemp("demo-model")
    demo_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def demo_onnx_dir(demo_model, tmp_path_factory):
    """The tiny demo model exported (fp32 generator + encoder, config.json)."""
    folder = tmp_path_factory.mktemp("demo-onnx")
    export_model(demo_model, folder)
    return folder


# -- export, checker, parity ---------------------------------------------------------------------

def test_export_passes_checker_and_matches_pytorch(exported):
    model, result = exported
    for kind in ("generator", "encoder"):
        onnx.checker.check_model(str(result.files[kind]), full_check=True)
        err = parity(model, result.files[kind], batch=2, threads=1)
        assert err <= FP32_BOUND, f"{model.config.name} {kind}: {err:.2e}"
    # The comparison means something: the reference image is far from flat or saturated.
    image = torch_reference(model, random_inputs(model.config, 2))[0]
    assert image.std() > 0.2 and (np.abs(image) < 0.99).mean() > 0.5
    # The cached-mask pair: one mask and two codes give the image and the mask's label branch,
    # which the render graph turns into the same image for those codes (and other codes).
    inputs = random_inputs(model.config, 2, seed=3)
    inputs["labels"][1] = inputs["labels"][0]
    first = make_session(result.files["generator_maps"], threads=1)
    render = make_session(result.files["generator_render"], threads=1)
    image, _, *maps = first.run(None, {"labels": inputs["labels"][:1], "z": inputs["z"]})
    names = [i.name for i in render.get_inputs()][1:]
    assert names == feature_names(model.config) == [o.name for o in first.get_outputs()][2:]
    reference = torch_reference(model, inputs)[0]
    assert np.abs(image - reference).max() <= FP32_BOUND
    got = render.run(["image"], {"z": inputs["z"], **dict(zip(names, maps))})[0]
    assert np.abs(got - reference).max() <= FP32_BOUND
    assert parity(model, result.files["generator_maps"], batch=2, threads=1) <= FP32_BOUND  # a mask per code


def test_graph_has_no_batchnorm_and_no_spectral_norm(exported):
    model, result = exported
    gen_ops = set().union(*(op_types(result.files[k]) for k in ("generator", "generator_maps", "generator_render")))
    enc_ops = op_types(result.files["encoder"])
    assert not gen_ops & (UNFOLDED_OPS | {"Div", "Sub", "InstanceNormalization"}), gen_ops
    assert not enc_ops & UNFOLDED_OPS, enc_ops
    assert "BatchNormalization" not in gen_ops | enc_ops
    # Every conv weight is a stored constant (spectral norm would compute it at run time) and
    # there is exactly one Conv per convolution of the architecture.
    sources = conv_weight_sources(result.files["generator"])
    assert sources["computed"] == 0
    assert sources["initializer"] + sources["constant"] == len(generator_costs(model.config))
    assert conv_weight_sources(result.files["encoder"])["computed"] == 0
    # The original model is untouched by the export (still parametrized, still runs).
    assert hasattr(model.generator.head_0.conv_0, "parametrizations")
    torch_reference(model, random_inputs(model.config, 1))


def test_dynamic_batch_and_size(tmp_path):
    """One export runs batch 1 and 3, at the native size and at other multiples of 64."""
    model = random_model(get_config("deepfashion", tiny=True), seed=2, batches=1)
    path = export_graph(model, tmp_path / "g.onnx", "generator", uint8=False)
    enc = export_graph(model, tmp_path / "e.onnx", "encoder")
    for batch, h, w in ((1, None, None), (3, None, None), (2, 128, 192), (1, 192, 64)):
        assert parity(model, path, batch=batch, height=h, width=w, threads=1) <= FP32_BOUND
    for batch, h, w in ((3, None, None), (1, 128, 192)):
        assert parity(model, enc, batch=batch, height=h, width=w, threads=1) <= FP32_BOUND
    dims = [d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]


def test_fp16_graph_within_stated_bound(demo_model, tmp_path):
    result = export_model(demo_model, tmp_path, fp16=True)
    assert result.files["generator"].name == "generator-fp16.onnx"
    gen = onnx.load(str(result.files["generator"]))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in gen.graph.initializer)
    assert gen.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O
    assert read_metadata(result.files["generator"])["smis.precision"] == "fp16"
    assert parity(demo_model, result.files["generator"], batch=2, threads=1) <= FP16_IMAGE_BOUND
    assert parity(demo_model, result.files["encoder"], batch=2, threads=1) <= FP16_CODE_BOUND
    # The backend with dtype="float16" runs these files (split halves included), fp32 in and out.
    backend = OnnxBackend.from_pretrained(tmp_path, dtype="float16", device="cpu", threads=1)
    assert backend.fp16 and backend.generator_path.name == "generator-fp16.onnx"
    inputs = random_inputs(demo_model.config, 2, seed=6)
    inputs["labels"][1] = inputs["labels"][0]
    image = backend.generate(inputs["labels"][:, 0], inputs["z"])
    assert image.dtype == np.float32 and backend.label_cache.key is not None
    assert np.abs(image - torch_reference(demo_model, inputs)[0]).max() <= FP16_IMAGE_BOUND


def test_uint8_output_is_the_rounded_image(demo_model, demo_onnx_dir):
    backend = OnnxBackend.from_pretrained(demo_onnx_dir, device="cpu", threads=1)
    inputs = random_inputs(demo_model.config, 2, seed=4)
    image = backend.generate(inputs["labels"][:, 0], inputs["z"])
    u8 = backend.generate_uint8(inputs["labels"][:, 0], inputs["z"])
    expected = np.clip((image.transpose(0, 2, 3, 1) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    assert u8.dtype == np.uint8 and u8.shape == expected.shape
    assert np.abs(u8.astype(int) - expected).max() <= 1


def test_metadata_round_trip(demo_model, demo_onnx_dir):
    cfg = demo_model.config
    for name in ("generator.onnx", "encoder.onnx"):
        meta = read_metadata(demo_onnx_dir / name)
        assert config_from_metadata(meta) == cfg
        assert json.loads(meta["smis.class_names"]) == list(cfg.class_names)
        assert [tuple(c) for c in json.loads(meta["smis.palette"])] == list(cfg.palette)
        layout = json.loads(meta["smis.latent_layout"])
        assert layout == json.loads(json.dumps(latent_layout(cfg)))
        assert layout["channels_per_class"] == 8 and layout["channels"] == 8 * cfg.num_classes
        assert meta["smis.size_multiple"] == "64"
        assert meta["smis.graph"] == name.split(".")[0]
    assert {"labels", "z"} == set(json.loads(read_metadata(demo_onnx_dir / "generator.onnx")["smis.inputs"]))


def test_folded_cg_norm_equals_cg_norm():
    """The BatchNorm fold, on its own, for every parameter-free norm kind and grouping."""
    torch.manual_seed(0)
    label = torch.rand(2, 6, 8, 8)
    x = torch.randn(2, 12, 8, 8) * 3 + 1
    for norm, groups in (("batch", 1), ("batch", 3), ("instance", 2), ("none", 1)):
        ref = CGNorm(12, 6, 3, groups, "fixed", 6, norm)
        for p in ref.parameters():
            p.data.normal_()
        if norm == "batch":
            ref.norm.running_mean.normal_()
            ref.norm.running_var.uniform_(0.5, 2.0)
        ref.eval()
        with torch.no_grad():
            err = (FoldedCGNorm(ref)(x, label) - ref(x, label)).abs().max().item()
        assert err < 1e-4, (norm, groups, err)


def test_exported_edges_equal_instance_edges():
    """The graphs get their edges from ``smis.functional.instance_edges`` (through
    ``GroupDNet.label_tensor``); it matches the definition: 1 where a 4-neighbour differs."""
    from smis.functional import instance_edges

    labels = torch.randint(0, 4, (2, 1, 16, 12), generator=torch.Generator().manual_seed(0))
    lab = labels.numpy()
    ref = np.zeros(lab.shape, bool)
    dx, dy = lab[..., :, 1:] != lab[..., :, :-1], lab[..., 1:, :] != lab[..., :-1, :]
    ref[..., :, 1:] |= dx
    ref[..., :, :-1] |= dx
    ref[..., 1:, :] |= dy
    ref[..., :-1, :] |= dy
    assert torch.equal(instance_edges(labels), torch.from_numpy(ref).float())


# -- the ONNX Runtime backend in the pipeline ----------------------------------------------------

def test_backend_swap_gives_the_same_images(demo_dir, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="python -m export onnx --model"):  # smis never imports export/
        SMISPipeline.from_pretrained(demo_dir, backend="onnx", cache_dir=cache, threads=1)
    onnx_pipe = SMISPipeline.from_pretrained(demo_dir, backend="onnx", cache_dir=cache, threads=1,
                                             exporter=export_model)
    torch_pipe = SMISPipeline.from_pretrained(demo_dir, backend="torch", device="cpu")
    torch.set_num_threads(1)  # TorchBackend sets all cores
    backend = onnx_pipe.backend
    assert backend.name == "onnxruntime" and backend.device == "CPUExecutionProvider"
    (folder,) = cache.iterdir()  # one export, in a folder named by the weights' hash
    assert (folder / "generator.onnx").is_file() and (folder / "encoder.onnx").is_file()
    assert onnx_pipe.config == torch_pipe.config

    cfg = onnx_pipe.config
    rng = np.random.default_rng(0)
    mask = rng.integers(0, cfg.num_classes, (cfg.height // 8, cfg.width // 8)).repeat(8, 0).repeat(8, 1)
    a, b = onnx_pipe.generate(mask, seed=3), torch_pipe.generate(mask, seed=3)
    assert a.codes == b.codes
    assert np.abs(np.asarray(a.image, int) - np.asarray(b.image, int)).max() <= 1  # rounding at .5
    z = a.codes.latent()[None]
    diff = np.abs(backend.generate(mask[None], z) - torch_pipe.backend.generate(mask[None], z)).max()
    assert diff <= FP32_BOUND

    rolled = onnx_pipe.reroll(a.labels, a.codes, ["hair"], seed=9)
    hair = cfg.class_id("hair")
    assert not np.array_equal(rolled.codes.values[hair], a.codes.values[hair])
    keep = [c for c in range(cfg.num_classes) if c != hair]
    assert np.array_equal(rolled.codes.values[keep], a.codes.values[keep])
    rolled_t = torch_pipe.reroll(a.labels, a.codes, ["hair"], seed=9)
    assert np.abs(np.asarray(rolled.image, int) - np.asarray(rolled_t.image, int)).max() <= 1

    photo = np.asarray(a.image)
    codes_o, codes_t = onnx_pipe.encode(photo, mask), torch_pipe.encode(photo, mask)
    assert np.abs(codes_o.values - codes_t.values).max() <= FP32_BOUND

    # A second load reuses the cached export.
    mtime = (folder / "generator.onnx").stat().st_mtime_ns
    again = OnnxBackend.from_pretrained(demo_dir, cache_dir=cache, threads=1)
    assert again.generator_path == folder / "generator.onnx"
    assert (folder / "generator.onnx").stat().st_mtime_ns == mtime


def _count_runs(backend: OnnxBackend) -> dict[str, int]:
    """Count the backend's session runs by graph (wrapping each session's run methods)."""
    calls = {"generator": 0, "generator_maps": 0, "generator_render": 0}
    for kind, session in (("generator", backend.session), ("generator_maps", backend._maps),
                          ("generator_render", backend._render)):
        for method in ("run", "run_with_iobinding"):
            setattr(session, method, _counting(getattr(session, method), calls, kind))
    return calls


def _counting(run, calls: dict[str, int], kind: str):
    def counted(*args, **kwargs):
        calls[kind] += 1
        return run(*args, **kwargs)
    return counted


def test_split_generator_serves_rerolls_from_the_cached_label_branch(demo_model, demo_onnx_dir):
    backend = OnnxBackend.from_pretrained(demo_onnx_dir, device="cpu", threads=1)
    assert backend._render is not None
    cfg = demo_model.config
    inputs = random_inputs(cfg, 3, seed=5)
    labels = np.repeat(inputs["labels"][:1, 0], 3, axis=0)  # one mask, three codes
    full = backend.session.run(["image"], {"labels": labels[:, None], "z": inputs["z"]})[0]
    calls = _count_runs(backend)
    split = backend.generate(labels, inputs["z"])  # a new mask: the maps graph, once
    key = backend.label_cache.key
    assert key is not None and np.abs(split - full).max() <= 1e-5
    assert calls == {"generator": 0, "generator_maps": 1, "generator_render": 0}
    again = backend.generate(labels[:1], inputs["z"][1:2])  # served from the cache
    assert backend.label_cache.key == key and np.abs(again[0] - full[1]).max() <= 1e-5
    assert calls == {"generator": 0, "generator_maps": 1, "generator_render": 1}
    uint8 = backend.generate_uint8(labels[:1], inputs["z"][1:2])
    assert uint8.dtype == np.uint8 and uint8.shape == (1, cfg.height, cfg.width, 3)
    ref = torch_reference(demo_model, {"labels": labels[:, None], "z": inputs["z"]})[0]
    assert np.abs(split - ref).max() <= FP32_BOUND
    # Another mask replaces the cache; a batch of different masks takes the one-graph path.
    other = backend.generate(inputs["labels"][1:2, 0], inputs["z"][:1])
    assert backend.label_cache.key != key and other.shape == (1, 3, cfg.height, cfg.width)
    mixed = backend.generate(inputs["labels"][:, 0], inputs["z"])
    ref = torch_reference(demo_model, inputs)[0]
    assert np.abs(mixed - ref).max() <= FP32_BOUND
    # Over the memory budget the split graphs are not used.
    small = OnnxBackend.from_pretrained(demo_onnx_dir, device="cpu", threads=1, label_cache_mib=0.001)
    small.generate(labels, inputs["z"])
    assert small.label_cache.key is None


def test_backend_uses_graphs_in_the_model_folder(demo_onnx_dir, tmp_path):
    backend = OnnxBackend.from_pretrained(demo_onnx_dir, device="cpu", threads=1)
    assert backend.generator_path.parent == demo_onnx_dir
    # The .onnx files alone are enough: the config comes from their metadata.
    bare = tmp_path / "bare"
    shutil.copytree(demo_onnx_dir, bare)
    (bare / "config.json").unlink()
    assert OnnxBackend.from_pretrained(bare, threads=1).config == backend.config
    assert backend.session.get_session_options().intra_op_num_threads == 1
    assert backend.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(ValueError, match="float32 or float16"):
        OnnxBackend.from_pretrained(demo_onnx_dir, dtype="bfloat16")
    with pytest.raises(ValueError, match="z must be"):
        backend.generate(np.zeros((1, 128, 64), np.int64), np.zeros((1, 80, 1, 1), np.float32))
    with pytest.raises(ValueError, match="multiples of 64"):
        backend.generate(np.zeros((1, 100, 64), np.int64), np.zeros((1, 80, 1, 1), np.float32))
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        OnnxBackend.from_pretrained(demo_onnx_dir, device="mps")


# -- bad paths -------------------------------------------------------------------------------------

def test_missing_model_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no model folder"):
        SMISPipeline.from_pretrained(tmp_path / "nope", backend="onnx")


def test_corrupt_onnx_file(demo_onnx_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(demo_onnx_dir, bad)
    data = (bad / "generator.onnx").read_bytes()
    (bad / "generator.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="not a loadable ONNX graph.*export again"):
        OnnxBackend.from_pretrained(bad, threads=1)


def test_onnx_from_another_config_is_refused(demo_onnx_dir, tmp_path):
    bad = tmp_path / "stale"
    shutil.copytree(demo_onnx_dir, bad)
    get_config("demo", tiny=True, nf=20).save(bad / "config.json")
    with pytest.raises(ValueError, match="exported from another model"):
        OnnxBackend.from_pretrained(bad, threads=1)


def test_graphs_left_behind_after_new_weights_are_not_used(demo_dir, tmp_path, caplog):
    from export.__main__ import main

    folder = tmp_path / "model"
    shutil.copytree(demo_dir, folder)
    assert main(["onnx", "--model", str(folder), "--no-split"]) == 0
    assert OnnxBackend.from_pretrained(folder, threads=1).generator_path.parent == folder
    retrained = random_model(get_config("demo", tiny=True), seed=5, batches=1)
    retrained.save_pretrained(folder)  # same config, new weights; the old .onnx files stay
    backend = OnnxBackend.from_pretrained(folder, cache_dir=tmp_path / "cache", threads=1, exporter=export_model)
    assert backend.generator_path.parent != folder and "other weights" in caplog.text
    inputs = random_inputs(retrained.config, 1, seed=2)
    got = backend.generate(inputs["labels"][:, 0], inputs["z"])
    assert np.abs(got - torch_reference(retrained, inputs)[0]).max() <= FP32_BOUND


def test_onnx_without_smis_metadata_is_refused(demo_onnx_dir, tmp_path):
    bad = tmp_path / "plain"
    shutil.copytree(demo_onnx_dir, bad)
    proto = onnx.load(str(bad / "generator.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(bad / "generator.onnx"))
    with pytest.raises(ValueError, match="not exported by `python -m export`"):
        OnnxBackend.from_pretrained(bad, threads=1)


def test_tensorrt_absent_gives_a_clear_message(monkeypatch, demo_onnx_dir, capsys):
    import export.tensorrt as trt_mod
    from export.__main__ import main

    monkeypatch.setattr(trt_mod, "_import_tensorrt", lambda: (None, "`import tensorrt` failed (no module)"))
    monkeypatch.setattr(trt_mod, "_ort_tensorrt", lambda: (False, "this onnxruntime build has no provider"))
    with pytest.raises(trt_mod.TensorRTUnavailable) as info:
        trt_mod.build_engine(demo_onnx_dir / "generator.onnx")
    message = str(info.value)
    assert "TensorRT is not available" in message and "import tensorrt" in message
    assert 'backend="onnx"' in message  # ... and what to do instead
    assert main(["tensorrt", "--onnx", str(demo_onnx_dir / "generator.onnx")]) == 2
    assert "TensorRT is not available" in capsys.readouterr().err


def test_tensorrt_status_is_honest_here():
    """On a machine without TensorRT the real probes say so (get_available_providers lies)."""
    from export.tensorrt import tensorrt_status

    status = tensorrt_status()
    if all(v.startswith("ok") for v in status.values()):
        pytest.skip("TensorRT is installed here")
    assert any(not v.startswith("ok") and len(v) > 20 for v in status.values())


# -- FLOPs, CLI, bench, bundled model -----------------------------------------------------------

def test_flop_count_matches_torch_and_the_paper():
    from torch.utils.flop_counter import FlopCounterMode

    # The paper-faithful DeepFashion generator: ~0.58 TFLOP per 256x256 image.
    assert generator_gflop(get_config("deepfashion")) == pytest.approx(582.7, rel=1e-3)
    cfg = get_config("cityscapes", tiny=True)  # instance edges and per-class CG-Norm
    model = GroupDNet(plain_config(cfg)).eval()  # spectral norm changes no FLOP; skip its power iterations
    labels = torch.zeros(1, cfg.height, cfg.width, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *cfg.latent_shape()), labels)
    assert counter.get_total_flops() == sum(c.flops for c in generator_costs(cfg))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.encode(torch.zeros(1, 3, cfg.height, cfg.width), labels)
    assert counter.get_total_flops() == sum(c.flops for c in encoder_costs(cfg))


def test_cli_exports_and_checks(tmp_path, capsys):
    from export.__main__ import main

    assert main(["onnx", "--preset", "demo", "--tiny", "--out", str(tmp_path), "--no-encoder", "--check"]) == 0
    out = capsys.readouterr().out
    assert "parity generator" in out and (tmp_path / "generator.onnx").is_file()
    assert not (tmp_path / "encoder.onnx").exists() and (tmp_path / "config.json").is_file()
    assert main(["inspect", str(tmp_path / "generator.onnx")]) == 0
    assert "class c owns channels [8c, 8c+8)" in capsys.readouterr().out
    assert main(["onnx", "--model", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2


def test_cli_export_of_a_bundled_model_goes_to_the_backends_cache(demo_dir, tmp_path, monkeypatch, capsys):
    """`python -m export onnx --model <a folder under smis/assets>` leaves the folder (the checkout, or
    the installed package) as it was: the graphs go where the ONNX backend looks for them."""
    import export.__main__ as cli

    assets = tmp_path / "smis" / "assets"
    bundled = assets / "mine"
    shutil.copytree(demo_dir, bundled)
    monkeypatch.setattr(cli, "BUNDLED_MODEL_DIR", assets / "ccp-demo")
    monkeypatch.setenv("SMIS_CACHE", str(tmp_path / "cache"))
    before = sorted(p.name for p in bundled.iterdir())
    assert cli.main(["onnx", "--model", str(bundled)]) == 0
    assert "export cache" in capsys.readouterr().out
    assert sorted(p.name for p in bundled.iterdir()) == before
    cached = list((tmp_path / "cache" / "onnx").glob("*/generator-maps.onnx"))
    assert len(cached) == 1
    pipe = SMISPipeline.from_pretrained(bundled, backend="onnx", threads=1)  # no exporter: only the cache
    assert pipe.backend.generator_path == cached[0].parent / "generator.onnx"
    assert cli.main(["onnx", "--model", str(bundled)]) == 0  # the same weights: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    assert list((tmp_path / "cache" / "onnx").glob("*/generator-maps.onnx")) == cached


def test_bench_smoke(demo_model, tmp_path):
    from export.bench import fastest_line, markdown, run_bench

    modes = ["torch-eager", "torch-baked", "torch-folded", "ort-fp32", "ort-newmask", "torch-reroll", "ort-reroll"]
    result = run_bench(demo_model, torch.device("cpu"), modes, [1, 2], repeats=1, warmup=0, threads=1,
                       peak_tflops=0.1, workdir=tmp_path)
    torch.set_num_threads(1)
    rows = {(r["mode"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(m, b) for m in modes for b in (1, 2)}
    assert rows[("torch-eager", 1)]["speedup_vs_eager_fp32"] == pytest.approx(1.0)
    assert all(r["max_abs_err"] <= FP32_BOUND for r in result["rows"])
    assert result["generator_gflop_per_image"] == pytest.approx(generator_gflop(demo_model.config))
    table = markdown(result)
    assert table.count("\n| ort-fp32 |") == 2 and "Fastest at batch 1" in fastest_line(result)
    assert "Re-roll on an unchanged mask" in fastest_line(result)


def test_bench_train_step_shows_what_amp_auto_picks(demo_model):
    from export.bench import markdown, run_bench, train_step_bench
    from smis.precision import choose_amp

    rows = train_step_bench(demo_model, torch.device("cpu"), [1], repeats=1)
    torch.set_num_threads(1)
    picked = "bf16" if choose_amp("auto", "cpu")[0] == "bf16" else "fp32"
    assert [r["precision"] for r in rows] == [f"auto -> {picked}", "fp32", "bf16"]
    assert all(r["p50_ms"] > 0 for r in rows) and rows[0]["why"].startswith("--amp auto:")
    seen = []
    real_forward = type(demo_model).forward
    with pytest.MonkeyPatch.context() as mp:  # --height / --width reach the training step too
        mp.setattr(type(demo_model), "forward", lambda self, z, labels: (seen.append(labels.shape),
                                                                          real_forward(self, z, labels))[1])
        train_step_bench(demo_model, torch.device("cpu"), [1], repeats=1, height=128, width=128)
    assert seen and all(tuple(s[-2:]) == (128, 128) for s in seen)
    result = run_bench(demo_model, torch.device("cpu"), ["torch-eager"], [1], repeats=1, warmup=0, threads=1,
                       peak_tflops=0.1)
    torch.set_num_threads(1)
    table = markdown({**result, "train_step": rows})
    assert f"| auto -> {picked} | 1 |" in table and table.count("Training step (") == 1 and "; --amp auto: " in table


def test_bench_sizes_compares_sizes_in_one_run(tmp_path, capsys):
    """--sizes 128x64,256x128: every mode at both sizes, then the second's times as a ratio to the first's."""
    from export import bench

    result = bench.main(["--preset", "demo", "--tiny", "--sizes", "128x64,256x128", "--modes", "torch-eager",
                         "--repeats", "1", "--warmup", "0", "--threads", "1", "--peak-tflops", "0.1",
                         "--out", str(tmp_path)])
    torch.set_num_threads(1)
    assert [r["size"] for r in result["sizes"]] == [[128, 64], [256, 128]]
    md = (tmp_path / "bench-demo-tiny-cpu.md").read_text()
    assert "| mode | batch | 128x64 p50 ms (CPU ms) | 256x128 p50 ms (CPU ms) | 256x128 / 128x64 |" in md
    assert md.count("| torch-eager | fp32 | 1 |") == 2 and md.count("| torch-eager | 1 |") == 1  # per size; ratio
    with pytest.raises(SystemExit):
        bench.parse_args(["--sizes", "100x64"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--sizes", "128x64", "--height", "128"])
    capsys.readouterr()


@pytest.mark.skipif(not (BUNDLED_MODEL_DIR / "config.json").is_file(), reason="bundled model not trained yet")
def test_bundled_model_parity(tmp_path):
    model = GroupDNet.from_pretrained(BUNDLED_MODEL_DIR)
    result = export_model(model, tmp_path)
    for kind in ("generator", "encoder"):
        assert parity(model, result.files[kind], batch=1, threads=1) <= FP32_BOUND


def test_inference_copy_matches_and_is_independent(demo_model):
    copy = inference_copy(demo_model)
    assert not any(hasattr(m, "parametrizations") for m in copy.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())
    inputs = random_inputs(demo_model.config, 1, seed=7)
    ref = torch_reference(demo_model, inputs)[0]
    with torch.no_grad():
        got = copy(torch.from_numpy(inputs["z"]), torch.from_numpy(inputs["labels"])[:, 0]).numpy()
    assert np.abs(got - ref).max() <= FP32_BOUND
    copy.generator.fc.weight.data.zero_()
    assert np.array_equal(torch_reference(demo_model, inputs)[0], ref)


def _ort_cuda_usable() -> bool:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    from export.tensorrt import _probe_model_bytes

    so = ort.SessionOptions()
    so.log_severity_level = 4
    session = ort.InferenceSession(_probe_model_bytes(), so, providers=["CUDAExecutionProvider"])
    return session.get_providers()[0] == "CUDAExecutionProvider"


@pytest.mark.gpu
def test_onnx_backend_on_cuda_matches_pytorch(demo_model, demo_onnx_dir, tmp_path):
    if not _ort_cuda_usable():
        pytest.skip("ONNX Runtime's CUDA provider does not run here")
    backend = OnnxBackend.from_pretrained(demo_onnx_dir, device="cuda")
    assert backend.device == "CUDAExecutionProvider"
    inputs = random_inputs(demo_model.config, 3, seed=8)
    ref = torch_reference(demo_model, inputs)[0]
    assert np.abs(backend.generate(inputs["labels"][:, 0], inputs["z"]) - ref).max() <= FP32_BOUND
    inputs["labels"][:] = inputs["labels"][:1]  # the split path, maps kept on the GPU
    ref = torch_reference(demo_model, inputs)[0]
    assert np.abs(backend.generate(inputs["labels"][:, 0], inputs["z"]) - ref).max() <= FP32_BOUND
    export_model(demo_model, tmp_path, fp16=True)
    half = OnnxBackend.from_pretrained(tmp_path, device="cuda", dtype="float16")
    assert np.abs(half.generate(inputs["labels"][:, 0], inputs["z"]) - ref).max() <= FP16_IMAGE_BOUND
