"""Pack a dataset into the generic layout at training size, for copying to a GPU machine.

    python -m train.prepare --format ccp --src /path/to/ccp --out .gpu/ccp384 --height 384 --width 256

writes ``OUT/images/<stem>.jpg`` (resized and centre-cropped photos, JPEG), ``OUT/labels/<stem>.png``
(class ids after the format's mapping, e.g. CCP's 10 groups or CamVid's filled void),
``OUT/instances/<stem>.png`` (16-bit, layouts with instance maps), ``OUT/classes.json`` and one
``OUT/<split>.txt`` per packed split; read it back with ``build_dataset("generic", OUT, ...)``.
Training-time augmentation (scale jitter, crop, flip) then works on the packed size.

``--stems`` and ``--manifest`` make a small example set (``examples.json`` lists each example's
photo, mask and the classes it shows); that is how ``smis/assets/examples/ccp`` was made.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .data import BadSampleError, SMISDataset, build_dataset
from .formats import AUTO, FORMATS, resolve_format

logger = logging.getLogger(__name__)

_WORKER: dict[str, Any] = {}


def _pack_one(ds: SMISDataset, index: int, out: Path, quality: int) -> dict[str, Any] | None:
    """Write sample ``index`` (un-augmented) under ``out``; ``None`` if it is bad and skipped."""
    pair = ds.pairs[index]
    try:
        arrays = ds.load_one(index, augment=False)
    except BadSampleError as err:
        if ds.on_bad == "error":
            raise
        logger.warning("skipping %s", err.bad)
        return None
    Image.fromarray(arrays["image"]).save(out / "images" / f"{pair.stem}.jpg", quality=quality, optimize=True)
    label = arrays["label"]
    if ds.num_classes <= 256:
        Image.fromarray(label.astype(np.uint8)).save(out / "labels" / f"{pair.stem}.png", optimize=True)
    else:
        Image.fromarray(label.astype(np.uint16)).save(out / "labels" / f"{pair.stem}.png")
    if "instance" in arrays:
        inst = arrays["instance"]
        if inst.min() < 0 or inst.max() >= 2**16:
            raise ValueError(f"{pair.instance}: instance ids do not fit a 16-bit PNG")
        Image.fromarray(inst.astype(np.uint16)).save(out / "instances" / f"{pair.stem}.png")
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=ds.num_classes)).tolist()
    return {"stem": pair.stem, "classes": present}


def _init_worker(ds: SMISDataset, out: Path, quality: int) -> None:
    _WORKER.update(ds=ds, out=out, quality=quality)


def _pack_in_worker(index: int) -> dict[str, Any] | None:
    return _pack_one(_WORKER["ds"], index, _WORKER["out"], _WORKER["quality"])


def pack(
    fmt: str,
    src: str | Path,
    out: str | Path,
    height: int,
    width: int,
    splits: tuple[str, ...] = ("train", "val"),
    quality: int = 95,
    stems: tuple[str, ...] | None = None,
    manifest: bool = False,
    split_files: bool = True,
    on_bad: str = "skip",
    workers: int = 0,
    overwrite: bool = False,
    camvid_void: str | int = "nearest",
    progress: bool = True,
) -> dict[str, Any]:
    """Pack ``splits`` of the dataset at ``src`` into the generic layout at ``out``; returns a summary."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out} is not empty; pass --overwrite to replace its packed files")
        for sub in ("images", "labels", "instances"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("classes.json", "examples.json", "train.txt", "val.txt", "test.txt", "all.txt"):
            (out / name).unlink(missing_ok=True)
    summary: dict[str, Any] = {"format": fmt, "height": height, "width": width, "splits": {}, "bad": []}
    seen: dict[str, str] = {}
    entries: list[dict[str, Any]] = []
    names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    for split in splits:
        ds = build_dataset(fmt, src, split, height, width, augment=False, on_bad=on_bad,
                           camvid_void=camvid_void)
        names, palette = ds.class_names, ds.palette
        if stems is not None:
            ds.pairs = [p for p in ds.pairs if p.stem in stems]
        for p in ds.pairs:
            if p.stem in seen:
                raise ValueError(f"stem {p.stem!r} is in both {seen[p.stem]} and {split}; packed files need "
                                 "unique names")
            seen[p.stem] = split
        for sub in ("images", "labels") + (("instances",) if ds.has_instances else ()):
            (out / sub).mkdir(parents=True, exist_ok=True)
        indices = range(len(ds.pairs))
        # A bar on a terminal only (disable=None): a log file or pipe gets no flood of \r updates.
        bar = dict(total=len(ds.pairs), desc=f"pack {split}", disable=None if progress else True)
        if workers > 0:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(ds, out, quality)) as pool:
                results = list(tqdm(pool.map(_pack_in_worker, indices, chunksize=8), **bar))
        else:
            results = [_pack_one(ds, i, out, quality) for i in tqdm(indices, **bar)]
        done = [r for r in results if r is not None]
        bad = [str(ds.pairs[i].image) for i, r in enumerate(results) if r is None]
        summary["bad"] += bad + [str(b) for b in ds.missing]
        summary["splits"][split] = len(done)
        if split_files:
            (out / f"{split}.txt").write_text("".join(f"{r['stem']}\n" for r in done))
        entries += done
    classes = {"names": list(names), "colors": [list(c) for c in palette],
               "prepared": {"format": fmt, "height": height, "width": width, "jpeg_quality": quality,
                            "source_splits": summary["splits"]}}
    (out / "classes.json").write_text(_dump_json(classes))
    if manifest:
        examples = [{"id": e["stem"], "photo": f"images/{e['stem']}.jpg", "mask": f"labels/{e['stem']}.png",
                     "classes": [names[c] for c in e["classes"]], "class_ids": e["classes"]} for e in entries]
        doc = {"format": fmt, "height": height, "width": width, "classes": list(names),
               "palette": [list(c) for c in palette], "examples": examples}
        (out / "examples.json").write_text(_dump_json(doc))
    summary["bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return summary


def _dump_json(obj: Any) -> str:
    """Indented JSON with short lists of numbers or names (colours, class lists) on one line."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[[^\[\]{}]*\]", lambda m: re.sub(r"\s*\n\s*", " ", m.group(0)).replace("[ ", "[")
                  .replace(" ]", "]"), text) + "\n"


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m train.prepare", description=__doc__.split("\n\n")[0])
    cli.add_argument("--format", default=AUTO, choices=(AUTO, *FORMATS),
                        help="layout of --src (default: auto, found from the folder)")
    cli.add_argument("--src", required=True, help="dataset root")
    cli.add_argument("--out", required=True, help="output folder (generic layout)")
    cli.add_argument("--height", type=int, required=True)
    cli.add_argument("--width", type=int, required=True)
    cli.add_argument("--splits", default="train,val", help="comma-separated splits to pack (default train,val)")
    cli.add_argument("--quality", type=int, default=95, help="JPEG quality of the photos (default 95)")
    cli.add_argument("--stems", default=None, help="comma-separated stems to keep (an example set)")
    cli.add_argument("--manifest", action="store_true", help="also write examples.json")
    cli.add_argument("--no-split-files", action="store_true",
                        help="write no train.txt/val.txt (every split of the packed folder is then all of it)")
    cli.add_argument("--on-bad", choices=("skip", "error"), default="skip")
    cli.add_argument("--camvid-void", default="nearest", help="CamVid void label: 'nearest' or a class id")
    cli.add_argument("--workers", type=int, default=0, help="worker processes (default: in-process)")
    cli.add_argument("--overwrite", action="store_true", help="replace packed files already in --out")
    args = cli.parse_args(argv)
    if args.height < 1 or args.width < 1:
        cli.error("--height and --width must be positive")
    if not 1 <= args.quality <= 100:
        cli.error("--quality must be in 1..100")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    void = int(args.camvid_void) if args.camvid_void.isdigit() else args.camvid_void
    stems = tuple(s.strip() for s in args.stems.split(",") if s.strip()) if args.stems else None
    try:
        summary = pack(resolve_format(args.format, args.src), args.src, args.out, args.height, args.width,
                       splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()),
                       quality=args.quality, stems=stems, manifest=args.manifest,
                       split_files=not args.no_split_files, on_bad=args.on_bad, workers=args.workers,
                       overwrite=args.overwrite, camvid_void=void)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k}: {v}" for k, v in summary["splits"].items())
    print(f"packed {counts} into {args.out} ({summary['bytes'] / 2**20:.1f} MiB); "
          f"{len(summary['bad'])} bad files skipped")
    for b in summary["bad"][:20]:
        print(f"  bad: {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
