"""devtools.growth_cost: every part of a step is timed and both growth recipes are estimated from them."""

from __future__ import annotations

import pytest
import torch

from devtools import growth_cost as G
from smis import GroupDNet, get_config

PARTS = ("G + E, full size, forward + backward", "G + E, half size, forward + backward",
         "G + E, half size, forward only", "local enhancer, full size, forward + backward",
         "D (multi-scale), real + fake, forward + backward", "partial VGG loss, fake + real, forward + backward")


def test_recipes_count_the_shared_parts_as_a_step_runs_them():
    parts = dict(zip(PARTS, (10.0, 3.0, 1.0, 0.5, 2.0, 4.0)))
    recipes = G.estimates(parts)
    assert recipes == {"fine-tune every layer at full size": 2 * 2.0 + 4.0 + 10.0,
                       "local enhancer, global frozen (phase 1)": 2 * 2.0 + 4.0 + 0.5 + 1.0,
                       "local enhancer + global, jointly (phase 2)": 2 * 2.0 + 4.0 + 0.5 + 3.0}
    table = G.markdown(parts, recipes, 4, (384, 256))
    assert "| fine-tune every layer at full size | 18.00 | 4.50 | 1.00 |" in table
    assert table.count("\n| ") == 2 + 6 + 3  # two headers, six parts, three recipes


@pytest.mark.slow
def test_every_part_is_timed_on_a_tiny_model():
    torch.manual_seed(0)
    model = GroupDNet(get_config("demo", tiny=True))
    threads = torch.get_num_threads()
    try:
        parts = G.measure(model, 256, 128, batch=2, repeats=1)
    finally:
        torch.set_num_threads(threads)
    assert tuple(parts) == PARTS and all(v > 0 for v in parts.values())


def test_local_enhancer_doubles_the_global_features_size():
    enhancer = G.LocalEnhancer(label_channels=5, global_channels=16)
    out = enhancer(torch.zeros(2, 5, 64, 32), torch.zeros(2, 16, 32, 16))
    assert out.shape == (2, 3, 64, 32) and float(out.abs().max()) <= 1
