"""A tiny GroupDNet memorises a CCP pair: the reconstruction L1 falls by at least 2x.

Measured on the 2-core CPU machine (``-m slow``, ~75 s under load): over 150 steps at batch 1 with
the partial VGG loss and 10x the paper's learning rates, the L1 between the G-step image (decoded
from the encoded code of the photo) and the photo fell from 0.556 (mean of steps 1-10) to 0.156
(steps 141-150), 3.6x; feature matching fell 3.1x. At the paper's learning rates, or with three
pairs in rotation, 150 CPU steps are too few to see a fall (SPADE's small Glorot init makes the
first few hundred steps slow), which is why this test uses one pair and lr x10.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_train_support import CCP_EXAMPLES, tiny_options

from train.data import build_dataset
from train.loop import train


@pytest.mark.slow
def test_tiny_model_memorises_one_ccp_pair(tmp_path):
    if not (CCP_EXAMPLES / "classes.json").is_file():
        pytest.skip("the CCP examples (smis/assets/examples/ccp) are missing")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opts = tiny_options(data=str(CCP_EXAMPLES), outdir=str(tmp_path), steps=150, batch_size=1, vgg="partial",
                            lr_g=1e-3, lr_d=4e-3, decay_fraction=0.0, log_every=10, ckpt_every=0)
        cfg = opts.model.config()
        pair = build_dataset("generic", CCP_EXAMPLES, "train", cfg.height, cfg.width, max_items=1)
        result = train(opts, dataset=pair)
    finally:
        torch.set_num_threads(n)
    assert result.status == "finished"
    logs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = logs[0], logs[-1]
    assert (first["step"], last["step"]) == (10, 150)
    assert last["G/l1"] <= first["G/l1"] / 2, (first["G/l1"], last["G/l1"])
    assert last["G/vgg"] < first["G/vgg"]
