"""The human parser (smis.parsing) and its training loop (train.human_parser): tiny configs, fixed seeds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from smis import parsing
from smis.hub import CheckpointError
from smis.parsing import (
    HumanParser,
    NotAPersonError,
    ParserConfig,
    ParseResult,
    ParserNet,
    check_person,
    get_parser_config,
    person_measures,
)
from train import checkpoint as ckpt
from train import metrics as M
from train.history import read_jsonl
from train.human_parser.__main__ import build_arg_parser, main, options_from_args
from train.human_parser.data import augment_batch
from train.human_parser.evaluate import segmentation_scores
from train.human_parser.loop import parser_loss, train
from train.human_parser.options import LOG_NAME, ParserTrainOptions
from train.human_parser.publish import CURVE_NAME, PERSON_MARGINS, calibrate_person_check

EXAMPLES = Path(__file__).resolve().parents[1] / "smis" / "assets" / "examples" / "ccp"


def tiny_net(seed: int = 0, height: int = 64, width: int = 64) -> ParserNet:
    """A tiny parser with calibrated BatchNorm statistics and a non-trivial classifier."""
    torch.manual_seed(seed)
    net = ParserNet(get_parser_config("tiny", height=height, width=width))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    net.train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, 3, net.config.height, net.config.width, generator=gen) * 2 - 1)
        torch.nn.init.normal_(net.classifier.weight, std=0.5)
    return net.eval()


def example_sets(n: int, height: int, width: int):
    if not (EXAMPLES / "classes.json").is_file():
        pytest.skip("the CCP examples are not in smis/assets/examples/ccp")
    data = pytest.importorskip("train.data")
    return data.build_dataset("generic", EXAMPLES, "all", height, width, max_items=n)


# -- config --------------------------------------------------------------------------------------
def test_config_roundtrip_and_strictness(tmp_path):
    cfg = get_parser_config("ccp")
    cfg.save(tmp_path / "config.json")
    assert ParserConfig.load(tmp_path / "config.json") == cfg
    d = json.loads(cfg.to_json())
    d["surprise"] = 1
    with pytest.raises(ValueError, match="unknown parser fields"):
        ParserConfig.from_dict(d)
    d.pop("surprise")
    d["_format"] = "smis-groupdnet/1"
    with pytest.raises(ValueError, match="not a human-parser config"):
        ParserConfig.from_dict(d)
    with pytest.raises(ValueError, match="multiples of 32"):
        get_parser_config("tiny", height=100)
    with pytest.raises(ValueError, match="unknown parser preset"):
        get_parser_config("huge")


# -- network -------------------------------------------------------------------------------------
def test_ccp_preset_size_and_shapes():
    net = ParserNet(get_parser_config("ccp")).eval()
    params = sum(p.numel() for p in net.parameters())
    assert 1_000_000 <= params <= 3_000_000
    assert params * 4 <= 15 * 2**20  # float32 weights fit the 15 MiB budget
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 384, 256))
    assert out.shape == (1, 10, 384, 256) and torch.isfinite(out).all()


def test_gradient_reaches_every_parameter():
    net = ParserNet(get_parser_config("tiny", height=64, width=64, dropout=0.0)).train()
    torch.manual_seed(0)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10, 64, 64)
    parser_loss(out, torch.randint(0, 10, (2, 64, 64)), "weighted", torch.ones(10)).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


# -- persistence ---------------------------------------------------------------------------------
def test_save_load_equality_and_fused_inference(tmp_path):
    net = tiny_net()
    files = net.save_pretrained(tmp_path / "p")
    assert [f.name for f in files] == ["config.json", "model.safetensors"]
    loaded = ParserNet.from_pretrained(tmp_path / "p")
    assert loaded.config == net.config
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref = net(x)
        assert torch.equal(loaded(x), ref)
        assert (parsing.fuse_batchnorm(net)(x) - ref).abs().max() < 1e-4
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_strict_loading_errors(tmp_path, monkeypatch):
    tiny_net().save_pretrained(tmp_path / "p")
    # A config that does not describe the weights.
    d = json.loads((tmp_path / "p" / "config.json").read_text())
    d["decoder"] = 24
    (tmp_path / "p" / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="do not match its config.json"):
        ParserNet.from_pretrained(tmp_path / "p")
    # A truncated weights file.
    tiny_net().save_pretrained(tmp_path / "q")
    w = tmp_path / "q" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ParserNet.from_pretrained(tmp_path / "q")
    # A GroupDNet folder is not a parser.
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "config.json").write_text(json.dumps({"_format": "smis-groupdnet/1", "name": "demo"}))
    with pytest.raises(CheckpointError, match="not a human-parser config"):
        ParserNet.from_pretrained(tmp_path / "g")
    # The shipped parser, before it has been trained.
    monkeypatch.delenv(parsing.PARSER_ENV, raising=False)
    monkeypatch.setattr(parsing.config, "BUNDLED_PARSER_DIR", tmp_path / "absent")
    with pytest.raises(CheckpointError, match="not been trained yet"):
        HumanParser.from_pretrained()


# -- inference -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(150, 97), (60, 200), (384, 256)])
def test_predict_at_photo_size(size):
    parser = HumanParser(tiny_net(), "cpu")
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    res = parser.predict(photo, check=False)
    assert res.labels.shape == size and res.labels.dtype == np.int64
    assert res.labels.min() >= 0 and res.labels.max() < 10
    assert res.confidence.shape == size and 0 <= res.confidence.min() <= res.confidence.max() <= 1
    assert res.colorize().size == (size[1], size[0])
    # The same photo as a PIL image gives the same labels.
    from PIL import Image

    assert np.array_equal(parser.predict(Image.fromarray(photo), check=False).labels, res.labels)


def test_batch_call_is_the_evaluation_hook():
    parser = HumanParser(tiny_net(), "cpu")
    images = torch.rand(3, 3, 96, 80) * 2 - 1
    labels = parser(images)
    assert labels.shape == (3, 96, 80) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < 10
    # Batched and one-by-one agree (the letterbox does not mix images).
    assert torch.equal(labels[1:2], parser(images[1:2]))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        parser(images[:, :2])


def test_not_a_person_is_refused_with_a_message():
    net = tiny_net()
    photo = np.full((90, 60, 3), 128, np.uint8)
    with torch.no_grad():
        net.classifier.weight.zero_()
        net.classifier.bias.copy_(torch.tensor([5.0] + [0.0] * 9))  # background everywhere
    with pytest.raises(NotAPersonError, match="No person found") as err:
        HumanParser(net, "cpu").predict(photo)
    assert isinstance(err.value, ValueError) and err.value.result.labels.shape == (90, 60)
    with torch.no_grad():
        net.classifier.bias.copy_(torch.tensor([0.0, 0, 0, 0.1] + [0.0] * 6))  # a near-uniform guess
    with pytest.raises(ValueError, match="unsure"):
        HumanParser(net, "cpu").predict(photo)
    assert HumanParser(net, "cpu").predict(photo, check=False).mean_confidence < 0.2


def _result(labels: np.ndarray, conf: float = 0.9) -> ParseResult:
    return ParseResult(labels, np.full(labels.shape, conf, np.float32), ParserConfig().class_names,
                       ParserConfig().palette)


def test_full_body_heuristics():
    cfg = ParserConfig()
    person = np.zeros((120, 80), np.int64)
    person[10:30, 30:50] = 1    # hair
    person[30:80, 25:55] = 3    # upper clothes
    person[80:110, 30:50] = 5   # lower clothes
    person[110:116, 30:50] = 7  # shoes
    assert check_person(_result(person), cfg) is None
    assert "unsure" in check_person(_result(person, conf=0.3), cfg)
    top = np.where(np.arange(120)[:, None] < 50, person, 0)
    assert "covers only" in check_person(_result(top), cfg)
    no_feet = np.where(person == 7, 5, person)
    assert "head to feet" in check_person(_result(no_feet), cfg)
    assert "No person" in check_person(_result(np.zeros((120, 80), np.int64)), cfg)
    # the frame cuts the person off: trousers run into the bottom edge, clothes into the top edge
    assert check_person(_result(person[:100]), cfg).startswith("The feet are cut off by the bottom of the photo")
    assert check_person(_result(person[35:]), cfg).startswith("The head is cut off by the top of the photo")
    shoes_to_the_edge = person[:114]  # feet touching the bottom edge are fine
    assert check_person(_result(shoes_to_the_edge), cfg) is None
    # soft: trousers the parser half-labels as background along the edge still count
    probs = np.zeros((10, 100, 80), np.float32)
    probs[0], probs[5, -3:, 30:50], probs[0, -3:, 30:50] = 1.0, 0.45, 0.55
    soft = ParseResult(np.where(person[:100] == 5, 0, person[:100]), np.full((100, 80), 0.9, np.float32),
                       cfg.class_names, cfg.palette, probs)
    assert person_measures(soft, cfg)["bottom_cut"] == pytest.approx(0.45 * 20 / 80)
    assert "cut off by the bottom" in check_person(soft, cfg)
    assert check_person(soft, cfg.replace(max_bottom_cut=1.0)).startswith("This does not look like a full-body")
    # proportions: a head as big as this is only ~3 heads tall, feet or not
    big_head = person.copy()
    big_head[0:30, 20:60] = 1
    assert "head sizes tall" in check_person(_result(big_head), cfg)
    assert person_measures(_result(big_head), cfg)["heads"] == pytest.approx(116 / np.sqrt(30 * 40))


def test_onnx_export_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    net = tiny_net()
    net.save_pretrained(tmp_path / "p")
    parsing.export_onnx(net, tmp_path / "p" / parsing.ONNX_NAME)
    onnx_net = parsing.OnnxParserNet(tmp_path / "p", threads=1)
    for n in (1, 3):
        x = torch.rand(n, 3, 64, 64) * 2 - 1
        with torch.no_grad():
            ref = net(x)
        assert ref.abs().max() > 0.1  # a real comparison, not of near-zero maps
        assert (onnx_net(x) - ref).abs().max() <= 1e-4
    photo = np.random.default_rng(1).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    torch_parser = HumanParser.from_pretrained(tmp_path / "p", device="cpu", backend="torch")
    onnx_parser = HumanParser.from_pretrained(tmp_path / "p", threads=1)  # auto: ONNX Runtime on the CPU
    assert (torch_parser.backend, onnx_parser.backend) == ("torch", "onnx")
    a, b = torch_parser.predict(photo, check=False), onnx_parser.predict(photo, check=False)
    batch = torch.rand(2, 3, 50, 40) * 2 - 1
    assert (onnx_parser(batch) == torch_parser(batch)).float().mean() > 0.99
    assert (a.labels == b.labels).mean() > 0.99 and np.abs(a.confidence - b.confidence).max() < 1e-3


# -- training ------------------------------------------------------------------------------------
def test_augment_batch():
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8, generator=gen)
    labs = torch.randint(0, 10, (4, 64, 32), dtype=torch.uint8, generator=gen)
    x, y = augment_batch(imgs, labs, torch.Generator().manual_seed(1), scale=(1.0, 1.0), jitter=0.0, flip=False)
    assert torch.allclose(x, imgs.float() / 127.5 - 1, atol=1e-5) and torch.equal(y, labs.long())
    x, y = augment_batch(imgs, labs, torch.Generator().manual_seed(1), scale=(0.5, 0.6))
    assert x.shape == (4, 3, 64, 32) and y.shape == (4, 64, 32) and x.abs().max() <= 1
    assert (y == parsing.IGNORE_INDEX).any() and set(y.unique().tolist()) <= set(range(10)) | {parsing.IGNORE_INDEX}
    outside = (y == parsing.IGNORE_INDEX)[:, None].expand_as(x)
    # Padding is grey (0), as in the inference letterbox; only the bilinear edge row blends.
    assert (x[outside] == 0).float().mean() > 0.8


def test_scores_on_a_known_confusion():
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 1, 0])
    s = segmentation_scores(M.confusion_matrix(pred, target, 4), ["a", "b", "c", "d"])
    assert s["pixel_accuracy"] == pytest.approx(4 / 6)
    assert {k: v["iou"] for k, v in s["per_class"].items()} == {"a": pytest.approx(2 / 4), "b": pytest.approx(2 / 3),
                                                                "c": 0.0, "d": None}
    assert s["mean_iou"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert s["mean_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert s["majority_baseline"] == pytest.approx(0.5)


def _opts(tmp_path, **kw) -> ParserTrainOptions:
    base = dict(preset="tiny", height=96, width=64, batch_size=3, steps=30, lr=5e-2, warmup=0, weight_decay=0.0,
                scale=(1.0, 1.0), jitter=0.0, flip=False, outdir=str(tmp_path / "run"), val_every=0,
                ckpt_every=0, log_every=10, progress=False, onnx=False, workers=0)
    base.update(kw)
    return ParserTrainOptions(**base)


def test_tiny_parser_overfits_two_examples(tmp_path):
    ds = example_sets(2, 64, 64)
    torch.manual_seed(0)
    out = train(_opts(tmp_path, height=64, width=64, batch_size=2), ds, ds)
    val = out["last_val"]
    # All-background guessing scores ~0.70 on these crops; 30 steps must clearly beat it (~0.9 seen).
    assert val["pixel_accuracy"] >= val["majority_baseline"] + 0.1, val
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    best = HumanParser.from_pretrained(tmp_path / "run" / "best", device="cpu")
    labels = best.predict(ds.pairs[0].image, check=False).labels
    assert labels.shape == (384, 256) and (labels != 0).any()
    assert (tmp_path / "run" / "best" / "README.md").read_text().count("mIoU **") == 1


def test_train_resume_is_exact_and_budget_stops(tmp_path):
    gen = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(3, 64, 64, generator=gen) * 2 - 1,
             "label": torch.randint(0, 10, (64, 64), generator=gen)} for _ in range(5)]
    kw = dict(height=64, width=64, batch_size=2, steps=4, scale=(0.75, 1.25), jitter=0.3, flip=True, lr=1e-2,
              warmup=2, log_every=1)
    straight = train(_opts(tmp_path / "a", **kw), data, data)
    assert straight["complete"]
    chunk = train(_opts(tmp_path / "b", stop_at=2, **kw), data, data)
    assert chunk == {**chunk, "step": 2, "complete": False, "stopped_early": True}
    with pytest.raises(ValueError, match="--resume auto"):
        train(_opts(tmp_path / "b", **kw), data, data)
    budget = train(_opts(tmp_path / "b", resume="auto", max_minutes=0.0, **kw), data, data)
    assert budget["step"] == 2 and budget["stopped_early"]
    resumed = train(_opts(tmp_path / "b", resume="auto", **kw), data, data)
    assert resumed["complete"] and resumed["step"] == 4
    a = ParserNet.from_pretrained(tmp_path / "a" / "run" / "final").state_dict()
    b = ParserNet.from_pretrained(tmp_path / "b" / "run" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    states = ckpt.list_checkpoints(tmp_path / "b" / "run")
    assert [s for s, _ in states] == [2, 4]  # --keep 2
    state = ckpt.load_state(states[-1][1])
    assert state["step"] == 4 and json.loads(state["config"])["height"] == 64


def test_cli_refuses_bad_arguments_and_evaluates(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--data", str(tmp_path / "absent"), "--no-progress"])
    assert err.value.code == 2 and "no such dataset folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--scale", "1.2", "0.8"])
    assert "--scale" in capsys.readouterr().err
    example_sets(2, 64, 64)
    tiny_net().save_pretrained(tmp_path / "p")
    assert main(["--evaluate", str(tmp_path / "p"), "--data", str(EXAMPLES), "--val-split", "all",
                    "--max-items", "2", "--workers", "0", "--no-progress"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert 0 <= scores["mean_iou"] <= 1 and set(scores["per_class"]) == set(ParserConfig().class_names)
    # At another size: the app's way (letterbox, probabilities resized to the photo), against labels at that size.
    size = [2 * tiny_net().config.height, 2 * tiny_net().config.width]
    assert main(["--evaluate", str(tmp_path / "p"), "--data", str(EXAMPLES), "--val-split", "all",
                 "--height", str(size[0]), "--width", str(size[1]),
                 "--max-items", "2", "--workers", "0", "--no-progress"]) == 0
    big = json.loads(capsys.readouterr().out)
    assert big["size"] == size and "resized bilinearly" in big["how"] and 0 <= big["mean_iou"] <= 1


def test_person_check_calibration_passes_every_calibration_photo():
    net = tiny_net(seed=1)
    photos = [np.random.default_rng(i).integers(0, 256, (90, 60, 3), dtype=np.uint8) for i in range(4)]
    thresholds, lowest = calibrate_person_check(HumanParser(net, "cpu"), photos)
    assert set(thresholds) == set(PERSON_MARGINS)
    for name, (key, frac) in PERSON_MARGINS.items():
        assert thresholds[name] == pytest.approx(frac * lowest[key], abs=1e-4) and thresholds[name] <= lowest[key]
    # --publish calibrates these four rules; the cut-off rules keep their defaults (calibrated for the
    # shipped parser on CCP val, docs/PARSER.md), which an untrained net's noise fails at random.
    net.config = net.config.replace(**thresholds, max_bottom_cut=1.0, max_top_cut=1.0, min_heads_tall=0.0)
    calibrated = HumanParser(net, "cpu")
    for photo in photos:
        calibrated.predict(photo)  # no NotAPersonError
    assert check_person(calibrated.predict(photos[0]), net.config.replace(min_confidence=1.01)) is not None


def test_publish_ships_a_parser_folder_with_card_curve_and_command(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(3, 64, 64, generator=gen) * 2 - 1,
             "label": torch.randint(0, 10, (64, 64), generator=gen)} for _ in range(4)]
    opts = _opts(tmp_path, height=64, width=64, batch_size=2, steps=6, log_every=2, val_every=3, data="somewhere")
    train(opts, data, data)
    with pytest.raises(SystemExit):
        main(["--publish", str(tmp_path), str(tmp_path / "nothing")])  # not a run folder
    assert "has no best/ parser" in capsys.readouterr().err and not (tmp_path / "nothing").exists()
    out = tmp_path / "shipped"
    assert main(["--publish", str(opts.run_dir), str(out)]) == 0
    parser = HumanParser.from_pretrained(out, device="cpu", backend="torch")
    assert parser.net.config.height == 64
    card = (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"mIoU **{metrics['val']['mean_iou']:.4f}**" in card and "| accessories |" in card
    assert "Weak classes" in card or "Every class reaches" in card
    assert f"![training loss and validation scores]({CURVE_NAME})" in card
    assert (out / CURVE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The command in the card gives back the run's options exactly.
    command = card.split("```bash\n")[1].split("\n```")[0]
    assert command.startswith("python -m train.human_parser --data somewhere")
    assert options_from_args(vars(build_arg_parser().parse_args(command.split()[3:]))) == opts
    assert len(read_jsonl(out / LOG_NAME)) == len(read_jsonl(opts.run_dir / LOG_NAME)) > 0
    if parsing.network._has_onnxruntime():
        assert (out / "model.onnx").is_file()


@pytest.mark.slow
def test_ccp_preset_cpu_latency_two_threads():
    """The shipped size parses a CCP-sized photo in <= 0.5 s on 2 threads (median of 5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parser = HumanParser(ParserNet(ParserConfig()).eval(), "cpu")
        photo = np.random.default_rng(0).integers(0, 256, (830, 550, 3), dtype=np.uint8)
        parser.predict(photo, check=False)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            parser.predict(photo, check=False)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    assert float(np.median(times)) <= 0.5
