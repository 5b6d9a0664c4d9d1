"""``python -m train.showcase``: the picture of a model that goes at the top of the README.

One row per shipped example (val photos the model never trained on): the mask, the real photo, its
re-synthesis from its own codes (encode -> generate), three random-code samples, and two re-rolls
of one class only (the largest clothing class of the mask), everything else kept. Images are
upscaled for display with a Lanczos filter (the factor is written under the grid).

    python -m train.showcase --model smis/assets/ccp-demo --out docs/images/showcase.jpg
    python -m train.showcase --compare ccp-demo ccp-demo-384 --out docs/images/growth.jpg   # models side by side
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from smis import SMISPipeline
from smis.hub import BUNDLED_MODEL_DIR

EXAMPLES = BUNDLED_MODEL_DIR.parent / "examples" / "ccp"
CLOTHES = ("upper clothes", "dress", "lower clothes")


def _tile(img: Image.Image | np.ndarray, size: tuple[int, int]) -> Image.Image:
    im = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
    resample = Image.NEAREST if im.mode == "P" else Image.LANCZOS
    return im.convert("RGB").resize(size, resample)


def showcase(pipe: SMISPipeline, examples_dir: Path = EXAMPLES, scale: int = 2, seeds: tuple[int, ...] = (0, 1, 2),
             max_rows: int = 6) -> Image.Image:
    meta = json.loads((examples_dir / "examples.json").read_text())
    cfg = pipe.config
    size = (cfg.width * scale, cfg.height * scale)
    header = ["mask", "photo", "its codes", *[f"seed {s}" for s in seeds], "re-roll 1", "re-roll 2"]
    rows = []
    for ex in meta["examples"][:max_rows]:
        labels = pipe.prepare_mask(examples_dir / ex["mask"])
        photo = pipe.prepare_photo(examples_dir / ex["photo"])
        rec = pipe.generate(labels, codes=pipe.encode(examples_dir / ex["photo"], examples_dir / ex["mask"]))
        samples = [pipe.generate(labels, seed=s) for s in seeds]
        areas = {n: float((labels == cfg.class_id(n)).mean()) for n in CLOTHES}
        cls = max(areas, key=areas.get)
        rerolls = [pipe.reroll(labels, samples[0].codes, [cls], seed=100 + k) for k in range(2)]
        row = [pipe.colorize(labels), photo, rec.image, *[s.image for s in samples], *[r.image for r in rerolls]]
        rows.append(([_tile(x, size) for x in row], cls))
    legend = [f"{cfg.name} model, {cfg.height}x{cfg.width} output upscaled x{scale} (Lanczos) for display; masks "
              "and photos: CCP val images (not trained on)."]
    canvas = _sheet(header, [tiles for tiles, _ in rows], size, legend)
    draw = ImageDraw.Draw(canvas)
    for i, (_, cls) in enumerate(rows):
        x, y = _PAD + (len(header) - 2) * (size[0] + _PAD), _TOP + _PAD + i * (size[1] + _PAD)
        draw.text((x + 4, y + 4), f"only {cls}", fill=(255, 255, 255))
    return canvas


_PAD, _TOP = 4, 22


def _sheet(header: list[str], rows: list[list[Image.Image]], size: tuple[int, int], legend: list[str]) -> Image.Image:
    """Tiles of ``size`` in rows under a header of column names, with legend lines at the foot."""
    foot = 16 * len(legend) + 14
    w = len(header) * (size[0] + _PAD) + _PAD
    h = _TOP + len(rows) * (size[1] + _PAD) + _PAD + foot
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(header):
        draw.text((_PAD + j * (size[0] + _PAD) + 4, 5), name, fill=(0, 0, 0))
    for i, tiles in enumerate(rows):
        for j, t in enumerate(tiles):
            canvas.paste(t, (_PAD + j * (size[0] + _PAD), _TOP + _PAD + i * (size[1] + _PAD)))
    for k, line in enumerate(legend):
        draw.text((_PAD, h - foot + 8 + 16 * k), line, fill=(0, 0, 0))
    return canvas


def comparison(pipes: list[tuple[str, SMISPipeline]], examples_dir: Path = EXAMPLES, seeds: tuple[int, ...] = (0, 1),
               max_rows: int = 4) -> Image.Image:
    """Models side by side on the shipped examples, at the largest model's size (smaller ones upscaled with
    Lanczos, as a visitor would see them): per row the mask, the photo, then for the photo's own codes and
    each seed one tile per model, with the same codes (one vector per class: the same for every model)."""
    meta = json.loads((examples_dir / "examples.json").read_text())
    size = max(((p.config.width, p.config.height) for _, p in pipes), key=lambda s: s[0] * s[1])
    letters = [chr(ord("A") + i) for i in range(len(pipes))]
    header = ["mask", "photo"] + [f"{k}: {what}" for what in ("its codes", *[f"seed {s}" for s in seeds])
                                  for k in letters]
    rows = []
    for ex in meta["examples"][:max_rows]:
        first = pipes[0][1]
        labels = first.prepare_mask(examples_dir / ex["mask"])
        row = [first.colorize(labels), Image.open(examples_dir / ex["photo"])]
        codes = [p.encode(examples_dir / ex["photo"], examples_dir / ex["mask"]) for _, p in pipes]
        row += [p.generate(examples_dir / ex["mask"], codes=c).image for (_, p), c in zip(pipes, codes)]
        for seed in seeds:
            row += [p.generate(examples_dir / ex["mask"], seed=seed).image for _, p in pipes]
        rows.append([_tile(x, size) for x in row])
    legend = ["  ".join(f"{k} = {name} ({p.config.height}x{p.config.width}"
                        + (", Lanczos-upscaled" if (p.config.width, p.config.height) != size else "") + ")"
                        for k, (name, p) in zip(letters, pipes)),
              "Same masks and codes for every model; its codes = encoded from the photo (encoder means); CCP val "
              "photos (not trained on)."]
    return _sheet(header, rows, size, legend)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.showcase", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder or Hub id (default: the bundled model)")
    p.add_argument("--out", default="docs/images/showcase.jpg")
    p.add_argument("--scale", type=int, default=2, help="display upscaling factor (Lanczos)")
    p.add_argument("--compare", nargs="+", metavar="MODEL",
                   help="instead: these models side by side at the largest one's size (e.g. a model and the "
                        "smaller one it was grown from), same masks and codes")
    p.add_argument("--rows", type=int, default=4, help="examples in --compare (default 4)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.compare:
        pipes = [(Path(m).name, SMISPipeline.from_pretrained(m, device="cpu")) for m in a.compare]
        img = comparison(pipes, max_rows=a.rows)
    else:
        img = showcase(SMISPipeline.from_pretrained(a.model, device="cpu"), scale=a.scale)
    img.save(out, **({"quality": 88} if out.suffix.lower() in (".jpg", ".jpeg") else {}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
