"""devtools.growth_cost: every part of a step is timed and both growth recipes are estimated from them."""

from __future__ import annotations

import torch

from devtools import growth_cost as G
from smis import GroupDNet, get_config


def test_parts_and_recipes_on_a_tiny_model():
    torch.manual_seed(0)
    model = GroupDNet(get_config("demo", tiny=True))
    threads = torch.get_num_threads()
    try:
        parts = G.measure(model, 256, 128, batch=2, repeats=1)
    finally:
        torch.set_num_threads(threads)
    assert len(parts) == 6 and all(v > 0 for v in parts.values())
    recipes = G.estimates(parts)
    frozen = recipes["local enhancer, global frozen (phase 1)"]
    assert frozen < recipes["local enhancer + global, jointly (phase 2)"]
    table = G.markdown(parts, recipes, 2, (256, 128))
    assert "| fine-tune every layer at full size |" in table and table.count("\n| ") == 6 + 3


def test_local_enhancer_doubles_the_global_features_size():
    enhancer = G.LocalEnhancer(label_channels=5, global_channels=16)
    out = enhancer(torch.zeros(2, 5, 64, 32), torch.zeros(2, 16, 32, 16))
    assert out.shape == (2, 3, 64, 32) and float(out.abs().max()) <= 1
