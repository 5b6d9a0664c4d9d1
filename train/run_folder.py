"""The files a training run writes into its folder, besides checkpoints and snapshots
(:mod:`train.checkpoint`): rank 0 writes them; on other ranks every method does nothing.

- ``log.txt``: this process's log lines (appended by every chunk of the run);
- ``training_options.json``: ``{"options": flat options, "resolved": what they resolved to, "config": the model}``;
- ``metrics.jsonl``: one JSON line per log interval (losses averaged over the interval and the processes);
- ``val_metrics.jsonl``: one JSON line per sample grid (:func:`train.monitor.val_probe`);
- ``samples/samples-<step>.png``: the progress grid (:func:`train.monitor.render_sample_grid`);
- ``status.json``: how the last chunk ended; ``tensorboard/``: the same scalars and grids (optional).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from . import checkpoint as ckpt
from .history import append_jsonl

logger = logging.getLogger(__name__)

OPTIONS_FILE = "training_options.json"
METRICS_FILE = "metrics.jsonl"
#: Per-sample-grid measurements on val images (``train.monitor.val_probe``), one JSON line each.
VAL_METRICS = "val_metrics.jsonl"
STATUS_FILE = "status.json"


class _Buffer(logging.Handler):
    """Keeps the records logged before the run folder may be touched (replayed into log.txt)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RunFolder:
    """``run_dir``'s log, options, metrics, samples and status files (written when ``enabled``).

    Nothing in the folder changes until :meth:`start` (or :meth:`write_status`): the checks that may
    refuse a run come before it, so a refused run leaves the folder as it was. Log lines from before
    :meth:`start` are kept and written to ``log.txt`` then.
    """

    def __init__(self, run_dir: Path, enabled: bool):
        self.path = Path(run_dir)
        self.enabled = enabled
        self._metrics = self._tb = self._log = None
        self._buffer: _Buffer | None = None
        if enabled:
            self._buffer = _Buffer()
            logging.getLogger().addHandler(self._buffer)

    @property
    def started(self) -> bool:
        return self._log is not None

    def _open(self) -> None:
        """Create the folder, open log.txt (replaying the buffered lines), remove a killed run's temporaries."""
        if not self.enabled or self._log is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._log = logging.FileHandler(self.path / "log.txt", encoding="utf-8")
        self._log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._log.setLevel(logging.INFO)
        if self._buffer is not None:
            logging.getLogger().removeHandler(self._buffer)
            for record in self._buffer.records:
                self._log.handle(record)
            self._buffer = None
        logging.getLogger().addHandler(self._log)
        ckpt.clean_temporaries(self.path)

    def previous_options(self) -> dict[str, Any]:
        """The ``training_options.json`` an earlier chunk of this run wrote (``{}`` if none)."""
        try:
            return json.loads((self.path / OPTIONS_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def start(self, options: dict[str, Any], tensorboard: bool) -> None:
        """Write ``training_options.json`` and open the metrics file (and TensorBoard)."""
        if not self.enabled:
            return
        self._open()
        (self.path / OPTIONS_FILE).write_text(json.dumps(options, indent=2) + "\n")
        if tensorboard:
            try:  # optional (requirements-train.txt): imported only when asked for
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path / "tensorboard"))
            except ImportError:  # said once per run folder, at info level: metrics.jsonl has everything
                if not (self.path / "tensorboard").exists() and not (self.path / METRICS_FILE).exists():
                    logger.info("TensorBoard is not installed (pip install tensorboard, or --no-tensorboard): "
                                "scalars go to metrics.jsonl only")
        self._metrics = open(self.path / METRICS_FILE, "a", encoding="utf-8")  # closed by close_logs()

    def log_metrics(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` (and TensorBoard scalars; keys without ``/`` go to ``progress/``)."""
        if self._metrics is None:
            return
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step":
                    self._tb.add_scalar(k if "/" in k else f"progress/{k}", v, record["step"])

    def log_val(self, step: int, epoch: float, probe: dict[str, float]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path / VAL_METRICS, {"step": step, "epoch": round(epoch, 4),
                                               **{k: round(v, 6) for k, v in probe.items()}})
        logger.info("step %d val: reconstruction L1 %.4f, KL %.2f nats/image, re-roll change inside "
                    "the class %.4f (weakest class %.4f) vs outside %.4f", step, probe["val/rec_l1"],
                    probe["val/kl_nats_per_image"], probe.get("val/reroll_in_mean", float("nan")),
                    probe.get("val/reroll_in_min", float("nan")), probe.get("val/reroll_out_mean", float("nan")))

    def save_samples(self, step: int, image: Image.Image, rows: str) -> None:
        """``samples/samples-<step>.png`` with ``rows`` (what each row shows) in its ``smis:rows`` text."""
        if not self.enabled:
            return
        info = PngImagePlugin.PngInfo()
        info.add_text("smis:rows", rows)
        path = self.path / "samples" / f"samples-{step:08d}.png"
        path.parent.mkdir(exist_ok=True)
        image.save(path, pnginfo=info)
        if self._tb is not None:
            self._tb.add_image("samples", np.asarray(image), step, dataformats="HWC")

    def write_status(self, status: dict[str, Any]) -> None:
        if self.enabled:
            self._open()
            ckpt.atomic_write_text(self.path / STATUS_FILE, json.dumps(status, indent=2) + "\n")

    def close_logs(self) -> None:
        """Close the metrics file and TensorBoard (the run's end, before the last messages)."""
        for f in (self._metrics, self._tb):
            if f is not None:
                f.close()
        self._metrics = self._tb = None

    def close(self) -> None:
        self.close_logs()
        if self._buffer is not None:
            logging.getLogger().removeHandler(self._buffer)
            self._buffer = None
        if self._log is not None:
            logging.getLogger().removeHandler(self._log)
            self._log.close()
            self._log = None
