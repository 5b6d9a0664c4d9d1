"""How the parser's full-body check treats whole and cut-off people (calibration of docs/PARSER.md).

    python -m devtools.person_check --data ../shared/datasets/ccp               # CCP val 0851-0904
    python -m devtools.person_check --data ../shared/datasets/ccp --flows letterboxed --without-cut-rules

Each validation photo is checked whole and cut off by the frame (its bottom 30 / 40 / 50 % or its top
20 / 30 / 50 % removed), along one or more flows: ``demo`` (what "Start from a photo" does: the photo
letterboxed to the model's size, the photo's box parsed), ``photo`` (``HumanParser.predict`` on the photo
itself) and ``letterboxed`` (the whole letterboxed image parsed, bands included: the demo before the
bands fix). Prints a Markdown table of refusals per crop and flow, then the extremes of the cut-off
measures on the whole photos (what the thresholds are calibrated from); ``--out`` also writes the
measures of every photo as JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from smis.hub import CheckpointError
from smis.labels import letterbox_photo, load_photo
from smis.parsing import HumanParser, check_person, person_measures

#: name -> (fraction cut from the top, fraction cut from the bottom)
CROPS = {"whole": (0.0, 0.0), "bottom 30%": (0.0, 0.3), "bottom 40%": (0.0, 0.4), "bottom 50%": (0.0, 0.5),
         "top 20%": (0.2, 0.0), "top 30%": (0.3, 0.0), "top 50%": (0.5, 0.0)}
FLOWS = ("demo", "photo", "letterboxed")
#: The model's size (the bundled GroupDNet): what the demo letterboxes photos to.
MODEL_SIZE = (192, 128)
CUT_MEASURES = {"bottom_cut": max, "top_cut": max, "heads": min}


def flow_input(photo: np.ndarray, flow: str) -> np.ndarray:
    """What the parser is given for ``photo`` along ``flow``."""
    if flow == "photo":
        return photo
    rgb, (top, left, nh, nw) = letterbox_photo(photo, *MODEL_SIZE)
    return rgb if flow == "letterboxed" else rgb[top:top + nh, left:left + nw]


def run(parser: HumanParser, paths: list[Path], flows: list[str], progress: bool = True) -> dict:
    """``{flow: {crop: [(stem, message or None, measures), ...]}}``."""
    out: dict = {f: collections.defaultdict(list) for f in flows}
    for path in tqdm(paths, desc="photos", disable=not progress):
        full = load_photo(path)
        h = full.shape[0]
        for crop, (top, bottom) in CROPS.items():
            photo = full[round(top * h):h - round(bottom * h)]
            for flow in flows:
                res = parser.predict(flow_input(photo, flow), check=False)
                out[flow][crop].append((path.stem, check_person(res, parser.config),
                                        person_measures(res, parser.config)))
    return out


def markdown(results: dict, n: int) -> str:
    flows = list(results)
    lines = ["| photos | " + " | ".join(f"refused ({f})" for f in flows) + " |",
             "|---|" + "---:|" * len(flows)]
    for crop in CROPS:
        cells = [sum(msg is not None for _, msg, _ in results[f][crop]) for f in flows]
        lines.append(f"| {crop} | " + " | ".join(f"{c} / {n}" for c in cells) + " |")
    lines += ["", "| measure on the whole photos | " + " | ".join(flows) + " |", "|---|" + "---:|" * len(flows)]
    for key, pick in CUT_MEASURES.items():
        cells = [pick(m[key] for _, _, m in results[f]["whole"]) for f in flows]
        lines.append(f"| {pick.__name__} {key} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.person_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CCP root (images/NNNN.jpg)")
    p.add_argument("--first", type=int, default=851, help="first photo number (default: CCP val, 851)")
    p.add_argument("--last", type=int, default=904, help="last photo number (default 904)")
    p.add_argument("--parser", help="human-parser folder or Hub id (default: the bundled parser)")
    p.add_argument("--flows", nargs="+", choices=FLOWS, default=["demo", "photo"], help="what the parser is given")
    p.add_argument("--without-cut-rules", action="store_true",
                   help="switch the cut-off rules off (max_bottom_cut, max_top_cut, min_heads_tall): the check "
                        "as it was before them")
    p.add_argument("--out", help="JSON file for every photo's message and measures")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    paths = [Path(a.data) / "images" / f"{i:04d}.jpg" for i in range(a.first, a.last + 1)]
    missing = [q for q in paths if not q.is_file()]
    if missing:
        p.error(f"--data {a.data}: {len(missing)} photos missing, e.g. {missing[0]}")
    try:
        parser = HumanParser.from_pretrained(a.parser, device="cpu")
    except CheckpointError as err:
        p.error(str(err))
    if a.without_cut_rules:
        parser.config = parser.config.replace(max_bottom_cut=1.0, max_top_cut=1.0, min_heads_tall=0.0)
    results = run(parser, paths, a.flows, a.progress)
    print(markdown(results, len(paths)))
    if a.out:
        Path(a.out).write_text(json.dumps({f: {c: [{"photo": s, "message": msg, **m} for s, msg, m in rows]
                                               for c, rows in crops.items()} for f, crops in results.items()},
                                          indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
