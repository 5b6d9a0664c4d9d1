"""The CUDA paths of the loop (fp16 + GradScaler, bf16, channels-last, torch.compile); run with -m gpu."""

from __future__ import annotations

import pytest
import torch
from test_train_support import BlobDataset, tiny_options

from smis import SMISPipeline
from train import checkpoint as ckpt
from train.loop import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("amp, extra", [("fp16", {}), ("bf16", {"reuse_fake": True, "grad_clip": 10.0}),
                                        ("none", {"channels_last": False})])
def test_cuda_steps_save_and_resume(tmp_path, amp, extra):
    opts = tiny_options(outdir=str(tmp_path), device="cuda", amp=amp, steps=4, ckpt_every=2, **extra)
    first = train(opts, dataset=BlobDataset(8))
    assert first.status == "finished" and first.step == 4
    state = ckpt.load_state(first.checkpoint)
    assert "cuda" in state["rng"][0]
    if amp == "fp16":
        assert state["scaler_G"]["scale"] > 0
    pipe = SMISPipeline.from_pretrained(first.snapshot, device="cuda")
    assert pipe.generate(BlobDataset(1)[0]["label"].numpy(), seed=0).image.size == (64, 128)


@pytest.mark.slow
def test_cuda_compile_runs(tmp_path):
    result = train(tiny_options(outdir=str(tmp_path), device="cuda", amp="bf16", steps=3, compile=True),
                   dataset=BlobDataset(8))
    assert result.status == "finished"
