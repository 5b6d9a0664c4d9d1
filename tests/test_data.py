"""Data layer: every layout reader on a tiny fake tree, exact labels under augmentation, bad files."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smis import labels as L
from train import data as D
from train.data import build_dataset
from train.formats import CCP_GROUPS, dataset_classes, detect_format, matching_formats
from train.prepare import main as prepare_main

EXAMPLES = Path(__file__).resolve().parents[1] / "smis" / "assets" / "examples" / "ccp"


# -- helpers ------------------------------------------------------------------------------------

def _photo(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ids(h: int, w: int, values: list[int], seed: int) -> np.ndarray:
    """Blocky random ids (4x4 cells) drawn from ``values``."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(values, size=(-(-h // 4), -(-w // 4)))
    return np.kron(cells, np.ones((4, 4), dtype=np.int64))[:h, :w]


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 2 and arr.max() > 255:
        Image.fromarray(arr.astype(np.uint16)).save(path)
    elif arr.ndim == 2:
        Image.fromarray(arr.astype(np.uint8)).save(path)
    else:
        Image.fromarray(arr).save(path, **kw)
    return path


def _generic_tree(root: Path, n: int = 4, h: int = 40, w: int = 30, names=("bg", "a", "b"),
                  split: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(
        {"names": list(names), "colors": [list(c) for c in L.voc_palette(len(names))]}))
    for i in range(n):
        ext = ".jpg" if i % 2 else ".png"
        _save(root / "images" / f"s{i}{ext}", _photo(h, w, i))
        _save(root / "labels" / f"s{i}.png", _ids(h, w, list(range(len(names))), i))
    if split:
        (root / "train.txt").write_text("".join(f"s{i}\n" for i in range(n - 1)))
        (root / "val.txt").write_text(f"s{n - 1}\n")
    return root


def _check_sample(s: dict, h: int, w: int, num_classes: int) -> None:
    assert s["image"].shape == (3, h, w) and s["image"].dtype == torch.float32
    assert -1.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert s["label"].shape == (h, w) and s["label"].dtype == torch.int64
    assert 0 <= int(s["label"].min()) and int(s["label"].max()) < num_classes
    assert isinstance(s["path"], str) and Path(s["path"]).is_file()


# -- readers ------------------------------------------------------------------------------------

def test_generic_reader_splits_and_classes(tmp_path):
    root = _generic_tree(tmp_path / "g")
    train = build_dataset("generic", root, "train", 32, 24)
    val = build_dataset("generic", root, "val", 32, 24)
    assert len(train) == 3 and len(val) == 1 and len(build_dataset("generic", root, "all", 32, 24)) == 4
    assert [Path(p.image).stem for p in train.pairs] == ["s0", "s1", "s2"]
    for i in range(len(train)):
        _check_sample(train[i], 32, 24, 3)
    assert "instance" not in train[0] and not train.has_instances
    names, palette = dataset_classes("generic", root)
    assert names == ("bg", "a", "b") and palette == L.voc_palette(3)
    assert train.class_names == names


def test_generic_fine_to_coarse_and_instances(tmp_path):
    root = tmp_path / "g"
    (root).mkdir()
    (root / "classes.json").write_text(json.dumps(
        {"names": ["bg", "thing"], "fine_to_coarse": {"0": 0, "7": 1, "9": 1}}))
    fine = _ids(16, 16, [0, 7, 9], 1)
    inst = _ids(16, 16, [0, 1000, 1001, 2000], 2)
    _save(root / "images" / "x.png", _photo(16, 16, 0))
    _save(root / "labels" / "x.png", fine)
    _save(root / "instances" / "x.png", inst)
    ds = build_dataset("generic", root, "train", 16, 16)
    s = ds[0]
    assert ds.has_instances and s["instance"].dtype == torch.int64
    np.testing.assert_array_equal(s["label"].numpy(), np.where(fine == 0, 0, 1))
    np.testing.assert_array_equal(s["instance"].numpy(), inst)
    assert len(dataset_classes("generic", root)[1]) == 2  # colours default to the VOC palette
    assert "instance" not in build_dataset("generic", root, "train", 16, 16, instances=False)[0]


def test_deepfashion_reader(tmp_path):
    root = tmp_path / "df"
    for phase, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _save(root / phase / f"{phase}{i}.jpg", _photo(48, 32, i))
            _save(root / f"cihp_{phase}_mask" / f"{phase}{i}.png", _ids(48, 32, list(range(8)), i))
    tr = build_dataset("deepfashion", root, "train", 32, 32, augment=True)
    va = build_dataset("deepfashion", root, "val", 32, 32)
    assert len(tr) == 3 and len(va) == 2 and all("test" in p.image for p in va.pairs)
    _check_sample(tr[1], 32, 32, 8)
    assert dataset_classes("deepfashion", root)[0] == L.DEEPFASHION_CLASSES


def test_cityscapes_reader_instances_and_licence_plate(tmp_path):
    root = tmp_path / "cs"
    for split, city, stem in (("train", "aachen", "aachen_000000_000019"), ("train", "bonn", "bonn_000001_000019"),
                              ("val", "lindau", "lindau_000000_000019")):
        _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _photo(32, 64, len(stem)))
        lab = _ids(32, 64, [7, 11, 26, 255], 3)
        _save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", lab)
        inst = np.where(lab == 26, 26001, lab)
        inst[:, 32:] = np.where(lab[:, 32:] == 26, 26002, lab[:, 32:])
        _save(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", inst)
    ds = build_dataset("cityscapes", root, "train", 32, 64)
    assert len(ds) == 2 and ds.has_instances and ds.num_classes == 35
    s = ds[0]
    _check_sample(s, 32, 64, 35)
    assert set(np.unique(s["label"].numpy())) <= {7, 11, 26, 34}
    assert 34 in set(np.unique(s["label"].numpy()))  # 255 (licence plate) -> 34
    assert {26001, 26002} <= set(np.unique(s["instance"].numpy()).tolist())
    assert len(build_dataset("cityscapes", root, "val", 32, 64)) == 1
    assert len(build_dataset("cityscapes", root, "all", 32, 64)) == 3


def test_ade20k_reader(tmp_path):
    root = tmp_path / "ade"
    base = root / "ADEChallengeData2016"
    for ph, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        _save(base / "images" / ph / f"{stem}.jpg", _photo(40, 56, 1))
        _save(base / "annotations" / ph / f"{stem}.png", _ids(40, 56, [0, 1, 150], 1))
    tr = build_dataset("ade20k", root, "train", 32, 32)  # the parent folder works too
    va = build_dataset("ade20k", base, "val", 32, 32)
    assert len(tr) == 1 and len(va) == 1
    s = tr[0]
    _check_sample(s, 32, 32, 151)
    assert set(np.unique(s["label"].numpy())) <= {0, 1, 150}
    assert dataset_classes("ade20k", root)[0][0] == "other"


def _ccp_classes_json() -> dict:
    """CCP's classes.json layout (only the fields the reader needs), built from the built-in table."""
    return {"suggested_groups": [{"id": g, "name": L.CCP10_CLASSES[g], "fine_ids": list(f)}
                                 for g, f in CCP_GROUPS.items()]}


# fine id -> expected 10-class id, spelled out by name so the test does not reuse the table
CCP_EXPECTED = {0: 0, 19: 1, 41: 2, 4: 3, 51: 3, 14: 4, 35: 4, 25: 5, 42: 5, 40: 5, 45: 6, 44: 6,
                43: 7, 21: 7, 2: 8, 33: 8, 47: 9, 29: 9}


def _ccp_tree(root: Path, stems=("0849", "0850", "0851", "0852"), with_json: bool = True) -> Path:
    fine_ids = sorted(CCP_EXPECTED)
    for i, stem in enumerate(stems):
        _save(root / "images" / f"{stem}.jpg", _photo(48, 32, i), quality=95)
        _save(root / "labels" / f"{stem}.png", _ids(48, 32, fine_ids, i))
    if with_json:
        (root / "classes.json").write_text(json.dumps(_ccp_classes_json()))
    return root


@pytest.mark.parametrize("with_json", [True, False])
def test_ccp_grouping_and_split(tmp_path, with_json):
    root = _ccp_tree(tmp_path / "ccp", with_json=with_json)
    tr = build_dataset("ccp", root, "train", 48, 32)
    va = build_dataset("ccp", root, "val", 48, 32)
    assert [p.stem for p in tr.pairs] == ["0849", "0850"] and [p.stem for p in va.pairs] == ["0851", "0852"]
    assert tr.class_names == L.CCP10_CLASSES and tr.palette == L.CCP10_PALETTE
    lut = np.zeros(59, dtype=np.int64)
    for f, g in CCP_EXPECTED.items():
        lut[f] = g
    for ds in (tr, va):
        for i, p in enumerate(ds.pairs):
            fine = np.asarray(Image.open(p.label)).astype(np.int64)
            np.testing.assert_array_equal(ds[i]["label"].numpy(), lut[fine])


def test_ccp_builtin_groups_cover_every_fine_id_once():
    ids = sorted(f for fine in CCP_GROUPS.values() for f in fine)
    assert ids == list(range(59))
    assert len(CCP_GROUPS) == len(L.CCP10_CLASSES) == 10


def test_ccp_groups_match_shared_layout_names(tmp_path):
    bad = _ccp_classes_json()
    bad["suggested_groups"][1]["name"] = "fur"
    root = _ccp_tree(tmp_path / "ccp")
    (root / "classes.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="CCP10_CLASSES"):
        build_dataset("ccp", root, "train", 48, 32)


def test_format_is_found_from_the_folder(tmp_path):
    """--format auto: each layout's own folders and classes.json decide; a folder that fits several
    layouts or none is refused with a message naming the candidates."""
    assert detect_format(_generic_tree(tmp_path / "g")) == "generic"
    ccp = _ccp_tree(tmp_path / "ccp")
    assert detect_format(ccp) == "ccp"
    ds = build_dataset("auto", ccp, "val", 48, 32)
    assert ds.class_names == L.CCP10_CLASSES and len(ds) == 2
    df = tmp_path / "df"
    (df / "train").mkdir(parents=True)
    (df / "cihp_train_mask").mkdir()
    assert detect_format(df) == "deepfashion"
    cs = tmp_path / "cs"
    (cs / "leftImg8bit").mkdir(parents=True)
    (cs / "gtFine").mkdir()
    assert detect_format(cs) == "cityscapes"
    ade = tmp_path / "ade" / "ADEChallengeData2016" / "images" / "training"
    ade.mkdir(parents=True)
    assert detect_format(tmp_path / "ade") == "ade20k"
    segnet = tmp_path / "segnet"
    (segnet / "train").mkdir(parents=True)
    (segnet / "trainannot").mkdir()
    assert detect_format(segnet) == "camvid"
    # images/ + labels/ without classes.json: CamVid's names are not photo numbers, so not CCP...
    cam = tmp_path / "camvid"
    _save(cam / "images" / "0001TP_1.png", _photo(24, 32, 1))
    _save(cam / "labels" / "0001TP_1.png", _camvid_label())
    assert matching_formats(cam) == ["camvid"]
    # ...but photo numbers fit both: refused, naming both.
    bare = _ccp_tree(tmp_path / "bare", with_json=False)
    with pytest.raises(ValueError, match="several dataset layouts.*--format ccp or --format camvid"):
        build_dataset("auto", bare, "train", 48, 32)
    with pytest.raises(ValueError, match="matches no known dataset layout"):
        detect_format(tmp_path / "df" / "train")


def test_an_explicit_format_that_does_not_fit_names_the_one_that_does(tmp_path):
    ccp = _ccp_tree(tmp_path / "ccp")
    with pytest.raises(ValueError, match="looks like ccp: pass --format ccp"):
        build_dataset("generic", ccp, "train", 48, 32)
    with pytest.raises(ValueError, match="looks like ccp"):
        dataset_classes("generic", ccp)


def test_prepare_finds_the_format(tmp_path):
    ccp = _ccp_tree(tmp_path / "ccp")
    assert prepare_main(["--src", str(ccp), "--out", str(tmp_path / "out"), "--height", "48", "--width", "32"]) == 0
    assert json.loads((tmp_path / "out" / "classes.json").read_text())["prepared"]["format"] == "ccp"


def _camvid_label() -> np.ndarray:
    lab = np.full((24, 32), 3, dtype=np.int64)  # road
    lab[:8] = 0  # sky
    lab[8:10, 4:28] = 11  # a void band between sky and road
    lab[14:18, 10:14] = 11  # a void blob inside the road
    return lab


def test_camvid_reader_fills_void(tmp_path):
    root = tmp_path / "camvid"
    for stem in ("0001TP_1", "0001TP_2", "Seq05VD_1"):
        _save(root / "images" / f"{stem}.png", _photo(24, 32, len(stem)))
        _save(root / "labels" / f"{stem}.png", _camvid_label())
    (root / "train.txt").write_text("0001TP_1\n0001TP_2\n")
    (root / "val.txt").write_text("Seq05VD_1\n")
    ds = build_dataset("camvid", root, "train", 24, 32)
    assert len(ds) == 2 and len(build_dataset("camvid", root, "val", 24, 32)) == 1
    lab = ds[0]["label"].numpy()
    expected = _camvid_label()
    expected[8:9, 4:28] = 0  # nearest labelled pixel of the band's upper row is sky
    expected[9:10, 4:28] = 3  # of its lower row, road
    expected[8, [4, 27]] = 3  # corners: sky above and road beside are equally near; ties go to the row
    expected[14:18, 10:14] = 3
    np.testing.assert_array_equal(lab, expected)
    assert lab.max() < len(L.CAMVID_CLASSES)
    mapped = build_dataset("camvid", root, "train", 24, 32, camvid_void=5)[0]["label"].numpy()
    np.testing.assert_array_equal(mapped, np.where(_camvid_label() == 11, 5, _camvid_label()))
    with pytest.raises(ValueError, match="camvid_void"):
        build_dataset("camvid", root, "train", 24, 32, camvid_void=11)


def test_camvid_segnet_layout(tmp_path):
    root = tmp_path / "SegNet" / "CamVid"
    for ph in ("train", "val"):
        _save(root / ph / f"{ph}_a.png", _photo(24, 32, 0))
        _save(root / f"{ph}annot" / f"{ph}_a.png", _camvid_label())
    ds = build_dataset("camvid", tmp_path / "SegNet", "val", 24, 32)
    assert len(ds) == 1 and "val_a" in ds[0]["path"]
    assert int(ds[0]["label"].max()) <= 10


def test_fill_nearest_keeps_known_pixels():
    ids = np.zeros((6, 6), dtype=np.int64)
    ids[:, 3:] = 2
    hole = np.zeros_like(ids, dtype=bool)
    hole[2:4, 1:5] = True
    out = D.fill_nearest(np.where(hole, 99, ids), hole)
    np.testing.assert_array_equal(out, ids)
    with pytest.raises(ValueError):
        D.fill_nearest(ids, np.ones_like(hole))


# -- geometry and augmentation ---------------------------------------------------------------------

def test_resize_then_centre_crop_for_other_aspect_ratio(tmp_path):
    root = tmp_path / "g"
    _generic_tree(root, n=1, split=False)
    lab = np.zeros((32, 96), dtype=np.int64)
    lab[:, 32:64] = 1
    lab[:, 64:] = 2
    _save(root / "images" / "s0.png", _photo(32, 96, 0))
    _save(root / "labels" / "s0.png", lab)
    s = build_dataset("generic", root, "train", 16, 16)[0]  # cover scale 0.5, centre crop
    assert (s["label"] == 1).all()
    s = build_dataset("generic", root, "train", 64, 32)[0]  # cover scale 2: box 16x32 in the middle
    assert (s["label"] == 1).all()


def test_augmentation_never_invents_ids(tmp_path):
    root = tmp_path / "g"
    names = tuple(f"c{i}" for i in range(8))
    _generic_tree(root, n=2, h=50, w=38, names=names, split=False)
    lab = np.random.default_rng(0).choice([0, 2, 5, 7], size=(50, 38))  # pixel noise: worst case
    _save(root / "labels" / "s0.png", lab)
    _save(root / "instances" / "s0.png", np.where(lab == 5, 5001, lab))
    _save(root / "instances" / "s1.png", np.zeros((50, 38), dtype=np.int64))
    ds = build_dataset("generic", root, "train", 32, 24, augment=True, scale=(1.0, 1.6))
    for epoch in range(6):
        ds.set_epoch(epoch)
        s = ds[0]
        assert set(np.unique(s["label"].numpy())) <= {0, 2, 5, 7}
        assert set(np.unique(s["instance"].numpy())) <= {0, 2, 5001, 7}
        # the instance map went through the same box and flip as the label
        np.testing.assert_array_equal(s["instance"].numpy() == 5001, s["label"].numpy() == 5)


def test_flip_keeps_image_and_label_together(tmp_path):
    root = tmp_path / "g"
    _generic_tree(root, n=1, h=32, w=24, split=False)
    lab = np.zeros((32, 24), dtype=np.int64)
    lab[:, :6] = 1  # asymmetric: a flip is visible
    lab[20:, 6:10] = 2
    photo = np.asarray(L.voc_palette(3), dtype=np.uint8)[lab]
    _save(root / "images" / "s0.png", photo)
    _save(root / "labels" / "s0.png", lab)
    ds = build_dataset("generic", root, "train", 32, 24, augment=True, scale=(1.0, 1.0), seed=3)
    flipped = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        a = ds.load_arrays(0)
        is_flipped = np.array_equal(a["label"], lab[:, ::-1])
        assert is_flipped or np.array_equal(a["label"], lab)
        np.testing.assert_array_equal(a["image"], photo[:, ::-1] if is_flipped else photo)
        flipped.append(is_flipped)
    assert any(flipped) and not all(flipped)
    # With zoom the photo's colour still follows the label away from region borders.
    ds = build_dataset("generic", root, "train", 32, 24, augment=True, scale=(1.2, 1.5), seed=3)
    for epoch in range(6):
        ds.set_epoch(epoch)
        a = ds.load_arrays(0)
        inner = a["label"] == 1
        inner[:, 1:] &= a["label"][:, :-1] == 1
        inner[:, :-1] &= a["label"][:, 1:] == 1
        if inner.any():
            assert np.abs(a["image"][inner].astype(int) - np.array(L.voc_palette(3)[1])).max() <= 40


def test_augmentation_is_deterministic_given_seed(tmp_path):
    root = _generic_tree(tmp_path / "g", n=2, split=False)
    a = build_dataset("generic", root, "train", 24, 16, augment=True, seed=7)
    b = pickle.loads(pickle.dumps(build_dataset("generic", root, "train", 24, 16, augment=True, seed=7)))
    for i in range(2):
        torch.testing.assert_close(a[i]["image"], b[i]["image"], rtol=0, atol=0)
        torch.testing.assert_close(a[i]["label"], b[i]["label"], rtol=0, atol=0)
    draws = set()
    for epoch in range(8):
        a.set_epoch(epoch)
        draws.add(a[0]["label"].numpy().tobytes())
    assert len(draws) > 1  # epochs draw different crops
    plain_a = build_dataset("generic", root, "train", 24, 16, seed=1)
    plain_b = build_dataset("generic", root, "train", 24, 16, seed=2)
    plain_b.set_epoch(5)  # without augmentation neither seed nor epoch matters
    torch.testing.assert_close(plain_a[0]["image"], plain_b[0]["image"], rtol=0, atol=0)


def test_dataloader_batches(tmp_path):
    root = _generic_tree(tmp_path / "g", n=4, split=False)
    ds = build_dataset("generic", root, "train", 24, 16, augment=True)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch["image"].shape == (4, 3, 24, 16) and batch["label"].shape == (4, 24, 16)
    assert len(batch["path"]) == 4
    # in worker processes the samples are the same: augmentation depends on (seed, epoch, index) only
    again = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)))
    torch.testing.assert_close(again["image"], batch["image"], rtol=0, atol=0)


# -- bad files -------------------------------------------------------------------------------------

def _bad_tree(root: Path, missing_label: bool = True) -> dict[str, Path]:
    _generic_tree(root, n=6, h=20, w=20, split=False)
    bad = {}
    img = root / "images" / "s1.jpg"
    img.write_bytes(img.read_bytes()[: len(img.read_bytes()) // 2])  # truncated JPEG
    bad["truncated"] = img
    bad["mismatch"] = _save(root / "labels" / "s2.png", np.zeros((20, 18), dtype=np.int64))
    bad["range"] = _save(root / "labels" / "s3.png", np.full((20, 20), 9, dtype=np.int64))
    if missing_label:
        (root / "labels" / "s4.png").unlink()
        bad["missing"] = root / "images" / "s4.png"
    return bad


def test_bad_files_are_skipped_and_reported(tmp_path, caplog):
    bad = _bad_tree(tmp_path / "g")
    with caplog.at_level(logging.WARNING, logger="train.data"):
        ds = build_dataset("generic", tmp_path / "g", "train", 16, 16, on_bad="skip")
        assert len(ds) == 5  # the photo without a label is not listed
        paths = [ds[i]["path"] for i in range(len(ds))]
    good = {str(tmp_path / "g" / "images" / n) for n in ("s0.png", "s5.jpg")}
    assert set(paths) <= good  # every bad sample was replaced by a readable one
    assert set(ds.bad_paths) == {str(p) for p in bad.values()}
    assert ds.skipped == 3
    assert str(bad["missing"]) in caplog.text and str(bad["truncated"]) in caplog.text
    assert "outside 0..2" in ds.bad[str(bad["range"])]
    assert "18x20" in ds.bad[str(bad["mismatch"])]

    fresh = build_dataset("generic", tmp_path / "g", "train", 16, 16, on_bad="skip")
    report = fresh.scan(progress=False, workers=2)
    assert report.total == 6 and report.ok == 2 and len(report.bad) == 4
    assert {b.path for b in report.bad} == {str(p) for p in bad.values()}
    assert sum(report.class_pixels) == 2 * 20 * 20 and report.sizes == {"20x20": 2}
    assert fresh[1]["path"] in good  # scanned bad pairs are not read again


@pytest.mark.parametrize("kind, match", [("truncated", "cannot be read"), ("mismatch", "18x20"),
                                         ("range", "outside 0..2")])
def test_bad_files_refused_in_error_mode(tmp_path, kind, match):
    bad = _bad_tree(tmp_path / "g", missing_label=False)
    ds = build_dataset("generic", tmp_path / "g", "train", 16, 16, on_bad="error")
    index = [Path(p.image).stem for p in ds.pairs].index(Path(bad[kind]).stem)
    with pytest.raises(ValueError, match=match) as err:
        ds[index]
    assert str(bad[kind]) in str(err.value)
    assert ds[0]["path"].endswith("s0.png")  # good samples still load
    with pytest.raises(ValueError, match="3 bad files"):
        ds.scan(progress=False)


def test_missing_label_refused_in_error_mode(tmp_path):
    bad = _bad_tree(tmp_path / "g")
    with pytest.raises(ValueError, match="no label file") as err:
        build_dataset("generic", tmp_path / "g", "train", 16, 16, on_bad="error")
    assert str(bad["missing"]) in str(err.value)


def test_edge_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset format"):
        build_dataset("coco", tmp_path, "train", 16, 16)
    with pytest.raises(ValueError, match="does not exist"):
        build_dataset("generic", tmp_path / "nope", "train", 16, 16)
    with pytest.raises(ValueError, match="classes.json"):
        build_dataset("generic", tmp_path, "train", 16, 16)
    root = _generic_tree(tmp_path / "g")
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset("generic", root, "dev", 16, 16)
    (root / "val.txt").unlink()
    with pytest.raises(ValueError, match="no val.txt"):
        build_dataset("generic", root, "val", 16, 16)
    with pytest.raises(ValueError, match="on_bad"):
        build_dataset("generic", root, "train", 16, 16, on_bad="ignore")


# -- prepare and the shipped examples -----------------------------------------------------------------

def test_prepare_packs_ccp_into_generic(tmp_path, capsys):
    src = _ccp_tree(tmp_path / "ccp")
    out = tmp_path / "packed"
    assert prepare_main(["--format", "ccp", "--src", str(src), "--out", str(out), "--height", "24",
                         "--width", "16"]) == 0
    assert (out / "train.txt").read_text().split() == ["0849", "0850"]
    assert (out / "val.txt").read_text().split() == ["0851", "0852"]
    packed = build_dataset("generic", out, "val", 24, 16)
    direct = build_dataset("ccp", src, "val", 24, 16)
    assert packed.class_names == L.CCP10_CLASSES
    for i in range(2):
        np.testing.assert_array_equal(packed[i]["label"].numpy(), direct[i]["label"].numpy())
        assert (packed[i]["image"] - direct[i]["image"]).abs().mean() < 0.1  # JPEG q95
    assert prepare_main(["--format", "ccp", "--src", str(src), "--out", str(out), "--height", "24",
                         "--width", "16"]) == 2  # refuses to write into a filled folder
    assert "--overwrite" in capsys.readouterr().err


def test_shipped_examples():
    manifest = json.loads((EXAMPLES / "examples.json").read_text())
    assert len(manifest["examples"]) == 6 and manifest["classes"] == list(L.CCP10_CLASSES)
    assert all(1 <= int(e["id"]) - 850 <= 54 for e in manifest["examples"])  # CCP validation photos
    seen = set()
    for e in manifest["examples"]:
        photo, mask = Image.open(EXAMPLES / e["photo"]), Image.open(EXAMPLES / e["mask"])
        assert photo.format == "JPEG" and photo.mode == "RGB" and photo.size == (256, 384)
        assert mask.format == "PNG" and mask.mode == "L" and mask.size == (256, 384)
        ids = np.unique(np.asarray(mask)).tolist()
        assert ids == e["class_ids"] and e["classes"] == [L.CCP10_CLASSES[i] for i in ids]
        seen |= set(e["classes"])
    assert {"dress", "lower clothes", "bag", "legwear"} <= seen
    ds = build_dataset("generic", EXAMPLES, "train", 384, 256, on_bad="error")
    assert len(ds) == 6 and ds.class_names == L.CCP10_CLASSES and ds.palette == L.CCP10_PALETTE
    _check_sample(ds[0], 384, 256, 10)
    assert ds.scan(progress=False).ok == 6
    assert sum(f.stat().st_size for f in EXAMPLES.rglob("*") if f.is_file()) < 1_000_000
    readme = (EXAMPLES / "README.md").read_text()
    assert "Clothing Co-Parsing by Joint Image Segmentation and Labeling" in readme
    assert "Apache" in readme and ".mat" in readme
