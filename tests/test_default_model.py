"""The bundled default model (smis/assets/ccp-demo-384): it loads strictly and its codes work.

A broken model, loader or export cannot land: on the shipped example masks, re-rolling one class's
code must change that class's region several times more than the rest of the image. The bounds
are set from the shipped model's measured values with a margin (see the model card).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smis import GroupDNet, SMISPipeline
from smis.hub import ASSETS_DIR, BUNDLED_MODEL_DIR, WEAK_CODE_RATIO, load_state

EXAMPLES = BUNDLED_MODEL_DIR.parent / "examples" / "ccp"
#: Classes whose codes work in the shipped model, re-rolled on every example that contains them
#: (>= 1 % of its pixels), seeds 1-3. Measured on the 384x256 model (the 192x128 model grown coarse-to-fine,
#: its codes trained again at 192x128 and grafted back, the enhancer re-fitted: step 40 of runs/ccp384-p2), mean
#: |change| in [0, 1] units inside / outside the class: skin 0.074 / 0.018 (4.0x), upper clothes 0.153 / 0.027
#: (5.6x), dress 0.149 / 0.017 (9.0x), lower clothes 0.214 / 0.019 (11.3x), hair 0.132 / 0.033 (4.0x), shoes
#: 0.120 / 0.007 (16.0x), bag 0.182 / 0.018 (10.0x), accessories 0.138 / 0.009 (15.9x), legwear 0.183 / 0.010
#: (17.5x; 1.2x before its code was trained again); background 3.2x.
WORKING = ("skin", "upper clothes", "dress", "lower clothes", "hair", "shoes", "bag", "accessories", "legwear")
SEEDS = (1, 2, 3)
#: Bounds: under a quarter of the smallest measured inside change (skin's); the ratio is the project's
#: per-class bar (the smallest measured, background's, hair's and skin's, are 3.2, 4.0 and 4.0).
MIN_LOCALITY_RATIO = 2.0
MIN_INSIDE_CHANGE = 0.015


@pytest.fixture(scope="module")
def pipe() -> SMISPipeline:
    return SMISPipeline.from_pretrained(BUNDLED_MODEL_DIR, device="cpu")


def _examples(pipe: SMISPipeline) -> list[np.ndarray]:
    meta = json.loads((EXAMPLES / "examples.json").read_text())
    return [pipe.prepare_mask(EXAMPLES / ex["mask"]) for ex in meta["examples"]]


@pytest.mark.parametrize("folder", [BUNDLED_MODEL_DIR, ASSETS_DIR / "ccp-demo"], ids=["ccp-demo-384", "ccp-demo"])
def test_bundled_models_load_strictly_in_fp16_and_are_the_cpu_preset(folder):
    state = load_state(folder)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model = GroupDNet.from_pretrained(folder)  # strict: names and shapes checked
    assert model.config.name == "ccp-cpu" and model.config.code_layout == "global"
    assert set(model.state_dict()) == set(state)
    for name in ("README.md", "training_curves.png", "samples.png", "metrics.json"):
        assert (folder / name).is_file(), name
    for f in folder.rglob("*"):  # the project's limit on every shipped file
        assert f.stat().st_size <= 15 * 2**20, f


def test_the_default_is_the_384x256_model_grown_from_the_192x128_one():
    big, small = GroupDNet.from_pretrained(BUNDLED_MODEL_DIR), GroupDNet.from_pretrained("ccp-demo")
    assert (big.config.height, big.config.width) == (384, 256) and big.config.generator.enhancer_channels
    assert big.config.global_size() == (small.config.height, small.config.width) == (192, 128)


def test_rerolling_one_class_changes_its_region_and_little_else(pipe):
    per_class: dict[str, list[tuple[float, float]]] = {}
    others = np.arange(pipe.config.num_classes)
    for labels in _examples(pipe):
        base = pipe.generate(labels, seed=0)
        img0 = np.asarray(base.image, dtype=np.float32) / 255.0
        for name in WORKING:
            cid = pipe.config.class_id(name)
            mask = labels == cid
            if mask.mean() < 0.01:
                continue
            for seed in SEEDS:
                new = pipe.reroll(labels, base.codes, [name], seed=seed)
                # Only that class's code changes ...
                assert np.array_equal(new.codes.values[others != cid], base.codes.values[others != cid])
                diff = np.abs(np.asarray(new.image, dtype=np.float32) / 255.0 - img0).mean(-1)
                per_class.setdefault(name, []).append((float(diff[mask].mean()), float(diff[~mask].mean())))
    assert set(per_class) == set(WORKING), "the shipped examples no longer cover every class tested"
    for name, pairs in per_class.items():  # ... and the image changes there, several times more than elsewhere
        inside, outside = np.mean(pairs, axis=0)
        assert inside >= MIN_INSIDE_CHANGE, f"re-rolling {name!r} changes it by only {inside:.4f}"
        assert inside >= MIN_LOCALITY_RATIO * outside, (
            f"re-rolling {name!r}: inside {inside:.4f} is not {MIN_LOCALITY_RATIO}x outside {outside:.4f}")


def test_the_shipped_card_and_the_demo_agree_on_which_codes_work(pipe):
    """The demo reads the per-class figures of the shipped metrics.json (About tab, note on a weak
    re-roll): every class tested above as working must be measured as working there too."""
    from demo import launch

    control = launch.model_class_control(pipe)
    assert set(control) == set(pipe.class_names)
    assert {n for n in WORKING if control[n] < WEAK_CODE_RATIO} == set()


def test_encoding_a_photo_reconstructs_it_better_than_random_codes(pipe):
    meta = json.loads((EXAMPLES / "examples.json").read_text())
    ex = meta["examples"][0]
    photo = pipe.prepare_photo(EXAMPLES / ex["photo"]).astype(np.float32) / 255
    labels = pipe.prepare_mask(EXAMPLES / ex["mask"])
    codes = pipe.encode(EXAMPLES / ex["photo"], EXAMPLES / ex["mask"])
    rec = np.asarray(pipe.generate(labels, codes=codes).image, dtype=np.float32) / 255
    rand = [np.asarray(pipe.generate(labels, seed=s).image, dtype=np.float32) / 255 for s in range(3)]
    err = np.abs(rec - photo).mean()
    assert err < min(np.abs(r - photo).mean() for r in rand)


def test_refined_codes_keep_a_photos_colours(pipe):
    """encode(refine=12) on two shipped example photos: each class's mean colour in the re-synthesis is
    far closer to the photo's than with the encoder's means alone (CCP val at 20 steps: the model card)."""
    meta = json.loads((EXAMPLES / "examples.json").read_text())
    plain, refined = [], []
    for ex in meta["examples"][:2]:
        labels = pipe.prepare_mask(EXAMPLES / ex["mask"])
        photo = pipe.prepare_photo(EXAMPLES / ex["photo"]).astype(np.float64)
        for errors, steps in ((plain, 0), (refined, 12)):
            out = np.asarray(pipe.generate(labels, codes=pipe.encode(EXAMPLES / ex["photo"], EXAMPLES / ex["mask"],
                                                                     refine=steps)).image, np.float64)
            errors += [np.abs(out[labels == c].mean(0) - photo[labels == c].mean(0)).mean()
                       for c in np.unique(labels) if (labels == c).mean() >= 0.01]
    # Measured: 15.8 -> 9.0 (0-255) on examples 0854 and 0857 (8.3 at 20 steps).
    assert np.mean(refined) < 0.7 * np.mean(plain) and np.mean(refined) < 10
