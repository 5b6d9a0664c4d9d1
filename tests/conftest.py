"""Shared fixtures: tiny models saved to disk, fixed seeds, few threads."""

from __future__ import annotations

import os

# One intra-op thread per process: tests launch subprocesses (torchrun, the app) on 2 cores, and
# oversubscribed threads made them up to 10x slower. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny untrained ``demo`` model (128x64, 10 CCP classes) saved as a model folder."""
    from smis import GroupDNet, get_config

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-demo")
    model = GroupDNet(get_config("demo", tiny=True))
    calibrate_batchnorm(model)
    model.save_pretrained(folder)
    return folder


def calibrate_batchnorm(model, steps: int = 4, batch: int = 4, seed: int = 0) -> None:
    """Set the running statistics of an untrained model's BatchNorms from random inputs.

    A freshly initialised model in eval mode uses mean 0 / var 1 and saturates tanh everywhere;
    calibrated, its outputs are smooth, so numeric comparisons in tests mean something.
    """
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            labels = torch.randint(0, cfg.num_classes, (batch, cfg.height // 8, cfg.width // 8), generator=gen)
            labels = labels.repeat_interleave(8, 1).repeat_interleave(8, 2)
            z = torch.randn(batch, *cfg.latent_shape(), generator=gen)
            model.generator(z, model.label_tensor(labels))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    model.eval()
