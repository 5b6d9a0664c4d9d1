"""A model's training history across runs and machines, and its plot; the JSON-lines logs
(``read_jsonl`` / ``append_jsonl`` / ``write_jsonl``) and the figure helpers (``pyplot`` /
``save_figure``) both trainers use (``python -m train`` and ``python -m train.human_parser``).

A long CPU run is trained in chunks, and a chunk may start on a fresh machine from a shipped model
(``--init-from``). So that the curves of the model card cover the whole life of the weights, every
run keeps the history of the weights it started from in ``RUN/history/`` (copied at
``--init-from``), and ``python -m train.publish`` writes the merged history into the model folder
as ``training_log/``, which the next ``--init-from`` copies again.

A log folder holds, as JSON lines with **absolute** epochs (counted from the first run):

- ``metrics.jsonl``: the training losses the loop logs (``G/*``, ``D/*``, ``KL/nats_per_image``);
- ``val_metrics.jsonl``: the loop's val probe (``train.monitor.val_probe``) at every sample grid;
- ``evals.jsonl``: ``python -m train.evaluate`` results of snapshots (Frechet distance, mCSD / mOCD);
- ``runs.jsonl``: one line per run (chunk) of the history: where it started, its recipe options.

A run folder's own ``metrics.jsonl`` / ``val_metrics.jsonl`` count epochs from its own start; its
evaluations live in ``RUN/evals/model-<step>/metrics.json`` (``train.evaluate --out``); another evaluation of
the same snapshot goes to ``RUN/evals/model-<step>-<label>/`` (e.g. ``-fid5`` for ``--fid-samples 5``), and each
``--fid-samples`` count is its own Frechet curve in the plot.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smis import hub

from .checkpoint import TrainingStateError, load_state
from .options import train_command

logger = logging.getLogger(__name__)

LOG_FILES = {"train": "metrics.jsonl", "val": "val_metrics.jsonl", "evals": "evals.jsonl", "runs": "runs.jsonl"}
#: Options of a run worth showing where the curves change (recipe changes between chunks).
RECIPE_KEYS = ("preset", "batch_size", "lambda_feat", "lambda_vgg", "lambda_kl", "kl_free_bits", "kl_per_image",
               "lambda_rec", "lambda_latent", "lambda_mode_seek", "vgg", "amp", "lr_g", "lr_d", "epochs", "augment",
               "diffaug")
HISTORY_DIR = "history"
MODEL_LOG_DIR = "training_log"
#: ``RUN/evals/model-<step>`` or ``model-<step>-<label>`` (another evaluation of the same snapshot, e.g. ``-fid5``).
_EVAL_RE = re.compile(r"model-(\d{8,})(?:-[\w.-]+)?$")
#: Evaluations of fewer masks than this give a Frechet point but no mCSD / mOCD point in the plot.
MIN_MASKS_FOR_RATIO = 5
#: A train - val logit gap of D above this reads as D memorising the training photos
#: (``train.monitor.discriminator_probe``): a quarter of the hinge loss's margin (D is pushed to +1
#: on real photos and -1 on generated ones).
OVERFIT_GAP = 0.25


@dataclass
class History:
    """Records with absolute epochs, oldest first."""

    train: list[dict[str, Any]] = field(default_factory=list)
    val: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_epoch(self) -> float:
        return max((float(r.get("epoch", 0.0)) for r in self.train + self.val + self.evals), default=0.0)

    def __bool__(self) -> bool:
        return bool(self.train or self.val or self.evals)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log; a line cut by a kill is skipped, a missing file is empty."""
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
    return out


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One more line of a JSON-lines log."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """A whole JSON-lines log (replacing the file)."""
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def read_log_dir(folder: str | Path) -> History:
    """A ``training_log`` / ``history`` folder (absolute epochs); empty if it is not there."""
    folder = Path(folder)
    return History(*(read_jsonl(folder / LOG_FILES[k]) for k in ("train", "val", "evals", "runs")))


def write_log_dir(history: History, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in LOG_FILES.items():
        write_jsonl(folder / name, getattr(history, key))
    return folder


def eval_record(metrics: dict[str, Any], step: int, epoch: float) -> dict[str, Any]:
    """The numbers of one ``train.evaluate`` ``metrics.json`` that the history keeps."""
    s = metrics.get("smis") or {}
    fid = metrics.get("fid") or {}
    per_class = {name: {"csd": c.get("csd"), "ocd": c.get("ocd")} for name, c in (s.get("per_class") or {}).items()}
    mcsd, mocd = s.get("mcsd"), s.get("mocd")
    return {"step": step, "epoch": round(epoch, 4), "frechet": fid.get("value"),
            "frechet_real_halves": fid.get("real_halves"), "frechet_name": fid.get("name"),
            "frechet_samples": fid.get("samples_per_mask", 1), "smis_masks": s.get("num_masks"),
            "mcsd": mcsd, "mocd": mocd, "ratio": (mcsd / mocd) if mcsd and mocd else None,
            "diversity": (metrics.get("diversity") or {}).get("mean"), "per_class": per_class}


def run_history(run_dir: str | Path, upto_step: int | None = None) -> History:
    """The run's inherited history followed by its own records (epochs made absolute).

    ``upto_step``: leave out the run's records after that step (a state file of an older step).
    """
    run = Path(run_dir)
    hist = read_log_dir(run / HISTORY_DIR)
    opts_file = run / "training_options.json"
    saved = json.loads(opts_file.read_text()) if opts_file.is_file() else {}
    resolved = saved.get("resolved", {})
    # A run started with --init-step N counts its epochs from step 0 of the schedule it continues:
    # its first record already says N / steps-per-epoch, which the history has counted.
    offset = hist.last_epoch
    if resolved.get("init_step") and resolved.get("steps_per_epoch"):
        offset -= resolved["init_step"] / resolved["steps_per_epoch"]
    steps_per_epoch = resolved.get("steps_per_epoch")
    own_train, own_val = [], []
    for rec in read_jsonl(run / LOG_FILES["train"]):
        if upto_step is not None and rec.get("step", 0) > upto_step:
            continue
        if "val/rec_l1" in rec:  # early runs wrote the val probe into metrics.jsonl
            own_val.append(rec)
            continue
        own_train.append(rec)
    own_val += [r for r in read_jsonl(run / LOG_FILES["val"]) if upto_step is None or r.get("step", 0) <= upto_step]
    for rec in own_train + own_val:
        rec["epoch"] = round(float(rec.get("epoch", 0.0)) + offset, 4)
    own_val.sort(key=lambda r: r["step"])
    evals = []
    for path in sorted((run / "evals").glob("model-*/metrics.json")):
        match = _EVAL_RE.search(path.parent.name)
        if match is None:
            logger.warning("%s: not an evaluation folder name (model-<step>[-label]); left out of the history",
                           path.parent)
            continue
        step = int(match.group(1))
        if upto_step is not None and step > upto_step:
            continue
        epoch = offset + (step / steps_per_epoch if steps_per_epoch else 0.0)
        evals.append(eval_record(json.loads(path.read_text()), step, epoch))
    runs = list(hist.runs)
    if saved and (own_train or own_val):
        o = saved.get("options", {})
        try:
            command = train_command(o)
        except (TypeError, ValueError):
            command = None
        first = min((r["epoch"] for r in own_train + own_val), default=offset)
        runs.append({"name": run.name, "epoch": round(min(first, hist.last_epoch) if hist else offset, 4),
                     "initialised_from": resolved.get("initialised_from"),
                     "options": {k: o.get(k) for k in RECIPE_KEYS if k in o}, "command": command})
    return History(hist.train + own_train, hist.val + own_val, hist.evals + evals, runs)


def training_hours(hist: History) -> tuple[float, list[float]]:
    """Wall-clock hours of training behind the history: (total, one figure per run of ``hist.runs``).

    Each logged interval counts its steps times the seconds per step the loop measured over it (the
    loop's sample grids and val probes included). A record whose step is below the one before starts a
    run counted from step 0; a record (the epoch at the end of its interval) is given to the last run
    that began before it.
    """
    starts = [float(r.get("epoch", 0.0)) for r in hist.runs]
    per_run = [0.0] * len(starts)
    total, prev = 0.0, 0
    for rec in hist.train:
        step, sps = int(rec.get("step", 0)), rec.get("sec_per_step")
        gap = step - prev if step > prev else step
        prev = step
        if sps is None:
            continue
        secs = gap * float(sps)
        total += secs
        if starts:
            epoch = float(rec.get("epoch", 0.0))
            idx = max((i for i, s in enumerate(starts) if s < epoch - 1e-6), default=0)
            per_run[idx] += secs
    return total / 3600.0, [s / 3600.0 for s in per_run]


def history_of_init_source(source: str | Path) -> History:
    """The history behind ``--init-from source``: a model folder's (or Hub repo's) ``training_log``,
    or the log of the run a training-state file belongs to (up to that state's step)."""
    path = Path(source).expanduser()
    if path.is_file():
        m = re.search(r"(\d{8,})\.pt$", path.name)
        step = int(m.group(1)) if m else None
        for run in (path.parent, path.parent.parent):  # a copied state / RUN/checkpoints/state
            if (run / LOG_FILES["train"]).is_file():
                return run_history(run, upto_step=step)
        return History()
    try:
        return read_log_dir(hub.resolve_model_dir(str(source)) / MODEL_LOG_DIR)
    except hub.CheckpointError:  # load_init has already said what is wrong with the source
        return History()


def init_source_step(source: str) -> int:
    """The step the ``--init-from`` source stopped at: a training state's step, else the last step
    in a model folder's ``training_log``."""
    path = Path(source).expanduser()
    if path.is_file():
        return int(load_state(path)["step"])
    try:
        folder = hub.resolve_model_dir(source)
    except hub.CheckpointError as err:
        raise TrainingStateError(f"--init-from {source}: {err}") from err
    log = read_log_dir(folder / MODEL_LOG_DIR)
    if log.train:
        return int(log.train[-1]["step"])
    raise TrainingStateError(f"--init-step auto: {folder} has no {MODEL_LOG_DIR}/ to read its step from; "
                             "pass the step number")


# ---------------------------------------------------------------------------------------------
# The plot
# ---------------------------------------------------------------------------------------------
def pyplot() -> Any:
    """``matplotlib.pyplot`` drawing to files only (the Agg backend).

    Imported here rather than at the top: matplotlib is an optional dependency
    (requirements-train.txt), needed only by the commands that draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out_png: str | Path, dpi: int) -> Path:
    """Write ``fig`` to ``out_png`` (its folder made if needed) and close it."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    pyplot().close(fig)
    return out_png

def _smooth(values: list[float], k: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_history(history: History, out_png: str | Path, title: str = "", smooth: int = 8) -> Path:
    """Losses, KL, val reconstruction, per-class re-roll change and evaluations against epochs.

    A vertical line marks where each run (chunk) after the first started, labelled with its name.
    """
    fig, axes = pyplot().subplots(2, 3, figsize=(16, 8.5))
    ax = axes.ravel()
    tr, va, ev = history.train, history.val, history.evals

    def line(a, rows, key, label=None, smooth_k=1, **kw):
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            x, y = zip(*pts)
            a.plot(x, _smooth(list(y), smooth_k), label=label or key, **kw)

    for key in ("G/feat", "G/vgg", "G/rec", "G/latent", "G/mode_seek", "G/kl", "G/gan"):
        line(ax[0], tr, key, smooth_k=smooth)
    ax[0].set_title("generator losses (weighted)")
    for key in ("D/real", "D/fake"):
        line(ax[1], tr, key, smooth_k=smooth)
    line(ax[1], va, "val/d_overfit", "val: D logit, training - val photos", marker=".", color="black")
    ax[1].set_title(f"discriminator (a logit gap > {OVERFIT_GAP}: it memorises)")
    line(ax[2], tr, "KL/nats_per_image", "train batches", smooth_k=smooth)
    line(ax[2], va, "val/kl_nats_per_image", "val photos", marker=".")
    for name in sorted({k.split("/", 2)[2] for r in va for k in r if k.startswith("val/kl_nats/")}):
        line(ax[2], va, f"val/kl_nats/{name}", f"val: {name}", linewidth=0.8)
    ax[2].set_title("KL in nats per image (what the codes carry)")
    line(ax[3], tr, "G/l1", "train L1 (sampled codes)", smooth_k=smooth)
    line(ax[3], va, "val/rec_l1", "val L1 (encode -> generate)", marker=".")
    line(ax[3], va, "val/rec_perceptual", "val perceptual", marker=".")
    ax[3].set_title("reconstruction distance")
    names = sorted({k.split("/", 2)[2] for r in va for k in r if k.startswith("val/reroll_in/")})
    for name in names:
        line(ax[4], va, f"val/reroll_in/{name}", name)
    line(ax[4], va, "val/reroll_out_mean", "outside (mean)", color="black", linestyle="--")
    ax[4].set_title("val: change inside a class when only its code is re-rolled")
    if ev:
        # One line per --fid-samples: more generated images per mask shift the distance's bias.
        counts = sorted({r.get("frechet_samples", 1) for r in ev})
        for k, color in zip(counts, ("tab:red", "tab:orange", "tab:brown", "tab:pink")):
            per_mask = "" if len(counts) == 1 else f", {k} image{'s' if k > 1 else ''} per mask"
            line(ax[5], [r for r in ev if r.get("frechet_samples", 1) == k], "frechet",
                 f"Frechet (substitute{per_mask})", marker="o", color=color)
        floor = [r.get("frechet_real_halves") for r in ev if r.get("frechet_real_halves")]
        if floor:
            ax[5].axhline(floor[-1], color="tab:red", linestyle=":", label="Frechet, real vs real")
        ax[5].set_ylabel("Frechet distance (lower is better)")
        twin = ax[5].twinx()
        enough = [r for r in ev if (r.get("smis_masks") or MIN_MASKS_FOR_RATIO) >= MIN_MASKS_FOR_RATIO]
        line(twin, enough, "ratio", "mCSD / mOCD (right axis)", marker="s", color="tab:blue")
        twin.set_ylabel("mCSD / mOCD (higher is better)")
        handles = [h for a in (ax[5], twin) for h in a.get_legend_handles_labels()[0]]
        twin.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=8)
    else:
        ax[5].text(0.5, 0.5, "no evaluations yet", ha="center", va="center", transform=ax[5].transAxes)
    ax[5].set_title("python -m train.evaluate on val")
    for i, a in enumerate(ax):
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
        for run in history.runs[1:]:
            a.axvline(run["epoch"], color="grey", linestyle="-.", linewidth=0.8)
            if i == 0:
                a.text(run["epoch"], a.get_ylim()[1], f" {run['name']}", fontsize=7, va="top", ha="right",
                       rotation=90, color="grey")
        if i not in (5,) and a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7, ncol=2 if i in (2, 4) else 1)
    fig.suptitle(title or "training history")
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=90)
