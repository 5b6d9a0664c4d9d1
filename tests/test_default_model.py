"""The bundled default model (smis/assets/ccp-demo): it loads strictly and its codes work.

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
from smis.hub import BUNDLED_MODEL_DIR, WEAK_CODE_RATIO, load_state

EXAMPLES = BUNDLED_MODEL_DIR.parent / "examples" / "ccp"
#: Classes whose codes work in the shipped model, re-rolled on every example that contains them
#: (>= 1 % of its pixels), seeds 1-3. Measured at step 8480 of ccp-cpu-v9-noaug (epoch 99.2, the end of its
#: schedule), mean |change| in [0, 1] units inside / outside the class: skin 0.070 / 0.019 (3.7x), upper clothes
#: 0.198 / 0.029 (6.8x), dress 0.139 / 0.017 (8.4x), lower clothes 0.295 / 0.023 (12.9x), hair 0.137 / 0.035
#: (3.9x), shoes 0.097 / 0.005 (17.9x), bag 0.148 / 0.013 (11.4x), accessories 0.141 / 0.008 (18.2x); background
#: 3.5x. Legwear's code does not work (1.00x, inside 0.003): add it when a later model makes it work
#: (the model card has the figures).
WORKING = ("skin", "upper clothes", "dress", "lower clothes", "hair", "shoes", "bag", "accessories")
SEEDS = (1, 2, 3)
#: Bounds: under a quarter of the smallest measured inside change (skin's); the ratio is the project's
#: per-class bar (the smallest measured, background's and skin's, are 3.5 and 3.7).
MIN_LOCALITY_RATIO = 2.0
MIN_INSIDE_CHANGE = 0.015


@pytest.fixture(scope="module")
def pipe() -> SMISPipeline:
    return SMISPipeline.from_pretrained(BUNDLED_MODEL_DIR, device="cpu")


def _examples(pipe: SMISPipeline) -> list[np.ndarray]:
    meta = json.loads((EXAMPLES / "examples.json").read_text())
    return [pipe.prepare_mask(EXAMPLES / ex["mask"]) for ex in meta["examples"]]


def test_bundled_model_loads_strictly_in_fp16_and_is_the_cpu_preset():
    state = load_state(BUNDLED_MODEL_DIR)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model = GroupDNet.from_pretrained(BUNDLED_MODEL_DIR)  # strict: names and shapes checked
    assert model.config.name == "ccp-cpu" and model.config.code_layout == "global"
    assert set(model.state_dict()) == set(state)
    for name in ("README.md", "training_curves.png", "samples.png", "metrics.json"):
        assert (BUNDLED_MODEL_DIR / name).is_file(), name


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
    far closer to the photo's than with the encoder's means alone (CCP val: 16.6 -> 7.6 at 10 steps,
    6.0 at 20, the model card's notes)."""
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
    # Measured: 13.9 -> 7.2 (0-255) on examples 0854 and 0857.
    assert np.mean(refined) < 0.6 * np.mean(plain) and np.mean(refined) < 10
