"""FLOPs of the GroupDNet generator and encoder, counted by hand from the layer shapes.

A convolution costs ``out_channels * (in_channels / groups) * kh * kw`` multiply-adds per output
pixel; a FLOP is half a multiply-add (FLOPs = 2 x MACs, the convention of the paper's
"0.58 TFLOP" and of ``torch.utils.flop_counter``). Only convolutions are counted: the
element-wise work (CG-Norm modulation, LeakyReLU, resizes, tanh) is under 1 % of the total.
Folding BatchNorm for export changes no convolution, so the exported graph costs the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from smis.config import NUM_UPSAMPLINGS, PRESETS, SMISConfig, cgnorm_layout, get_config
from smis.generator import block_names


@dataclass(frozen=True)
class ConvCost:
    name: str
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _conv(name: str, cin: int, cout: int, groups: int, k: int, pixels: int) -> ConvCost:
    assert cin % groups == 0 and cout % groups == 0, name
    return ConvCost(name, cout * (cin // groups) * k * k * pixels)


def generator_costs(config: SMISConfig, height: int | None = None, width: int | None = None) -> list[ConvCost]:
    """Every convolution of the generator for one (height x width) image, in forward order."""
    h, w = config.base_grid(height, width)
    g = config.generator
    c = config.num_classes
    lab = config.label_channels
    costs = [_conv("fc", config.z_channels * c, g.channels[0], c, 3, h * w)]
    for i, (name, (fin, fout, groups)) in enumerate(zip(block_names(config), g.blocks)):
        px = (h << i) * (w << i)  # block i runs after i nearest x2 upsamplings
        fmid = min(fin, fout)
        hid, shared_groups, mod_groups = cgnorm_layout(g.norm_layout, c, groups, g.norm_hidden)
        norms = [("norm_0", fin), ("norm_1", fmid)] + ([("norm_s", fin)] if fin != fout else [])
        for norm, nch in norms:
            costs.append(_conv(f"{name}.{norm}.shared", lab, hid, shared_groups, 3, px))
            costs.append(_conv(f"{name}.{norm}.gamma", hid, nch, mod_groups, 3, px))
            costs.append(_conv(f"{name}.{norm}.beta", hid, nch, mod_groups, 3, px))
        costs.append(_conv(f"{name}.conv_0", fin, fmid, groups, 3, px))
        costs.append(_conv(f"{name}.conv_1", fmid, fout, groups, 3, px))
        if fin != fout:
            costs.append(_conv(f"{name}.conv_s", fin, fout, groups, 1, px))
    small = (h << NUM_UPSAMPLINGS) * (w << NUM_UPSAMPLINGS)  # the global generator's size
    costs.append(_conv("conv_img", g.channels[-1], 3, 1, 3, small))
    if g.enhancer_channels:
        costs.append(_conv("conv_img_hd", g.enhancer_channels[-1], 3, 1, 3, small * config.enhancer_factor ** 2))
    return costs


def encoder_costs(config: SMISConfig, height: int | None = None, width: int | None = None) -> list[ConvCost]:
    """Every convolution of the encoder for one image (six stride-2 convs, then mu and logvar)."""
    hh, ww = config.global_size(height or config.height, width or config.width)  # it reads the global size
    c = config.num_classes
    widths = (3 * c, *config.encoder.channels)
    costs = []
    for j, (fin, fout) in enumerate(zip(widths[:-1], widths[1:])):
        hh, ww = (hh + 1) // 2, (ww + 1) // 2
        costs.append(_conv(f"layers.{j}", fin, fout, c, 3, hh * ww))
    zc = config.z_channels * c
    costs += [_conv("fc_mu", widths[-1], zc, c, 3, hh * ww), _conv("fc_var", widths[-1], zc, c, 3, hh * ww)]
    return costs


def generator_gflop(config: SMISConfig, height: int | None = None, width: int | None = None) -> float:
    """Forward GFLOP (2 x MACs) of the generator for one image."""
    return sum(c.flops for c in generator_costs(config, height, width)) / 1e9


def render_gflop(config: SMISConfig, height: int | None = None, width: int | None = None) -> float:
    """GFLOP of the code-dependent half of the generator (everything but the CG-Norm label branch):
    what a re-roll on an unchanged mask costs once the label branch is cached."""
    return sum(c.flops for c in generator_costs(config, height, width) if ".norm_" not in c.name) / 1e9


def encoder_gflop(config: SMISConfig, height: int | None = None, width: int | None = None) -> float:
    return sum(c.flops for c in encoder_costs(config, height, width)) / 1e9


def block_table(config: SMISConfig) -> list[tuple[str, float]]:
    """GFLOP per top-level layer (fc, head_0 ... up_3, conv_img) at the native size."""
    out: dict[str, float] = {}
    for cost in generator_costs(config):
        key = cost.name.split(".")[0]
        out[key] = out.get(key, 0.0) + cost.flops / 1e9
    return list(out.items())


def preset_table(tiny: bool = False) -> list[dict]:
    """GFLOP per image of every preset at its native size (generator, encoder, CG-Norm share)."""
    rows = []
    for name in PRESETS:
        cfg = get_config(name, tiny=tiny)
        gen = generator_costs(cfg)
        total = sum(c.flops for c in gen)
        modulation = sum(c.flops for c in gen if ".norm_" in c.name)
        rows.append({"preset": name, "size": f"{cfg.height}x{cfg.width}",
                     "generator_gflop": total / 1e9, "encoder_gflop": encoder_gflop(cfg),
                     "cg_norm_share": modulation / total})
    return rows
