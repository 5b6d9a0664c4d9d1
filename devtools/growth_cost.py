"""What one training step costs at a larger size, part by part: the two ways to grow a model (issue 28).

    python -m devtools.growth_cost --model smis/assets/ccp-demo --height 384 --width 256 --batch 4

Growing the 192 x 128 model to 384 x 256 can fine-tune every layer at the new size, or follow
pix2pixHD's coarse-to-fine recipe (Wang et al., CVPR 2018): a small *local enhancer* at full size on
top of the global generator, which runs at half size (frozen at first, so forward only). Both keep the
same discriminator and perceptual loss at full size; what differs is the generator's part. This times
each part of a step on one thread (process CPU time, so another process on the machine barely moves
it), median of ``--repeats`` after a warm-up:

- G + E at full size: encode, render, backward of an L1 (the fine-tune's generator part);
- G + E at half size, forward only (the enhancer's frozen global generator) and forward + backward
  (the joint phase);
- a pix2pixHD local enhancer at full size (label map in, the global generator's last features added
  at half size; 3 residual blocks), forward + backward;
- the multi-scale discriminator, forward + backward on the real and the fake batch, as a D step does
  (the G step's adversarial pass runs D once more, forward + backward to the image);
- the partial VGG loss (relu1_1..relu3_1) on fake + real, forward + backward.

It prints a Markdown table and each recipe's step estimate, as seconds per image and as a ratio.
The real step has more (mode seeking renders half the batch again; latent regression encodes the
image), which scale with the generator's part: the estimate is a lower bound for both recipes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from export.onnx import random_inputs
from smis import GroupDNet, MultiscaleDiscriminator
from smis.functional import label_input, one_hot
from train.losses import build_perceptual


class LocalEnhancer(nn.Module):
    """pix2pixHD's local enhancer (G2) at full size: the label map down to half size, plus the global
    generator's last feature map there, three residual blocks, up to full size, RGB."""

    def __init__(self, label_channels: int, global_channels: int, blocks: int = 3):
        super().__init__()
        c = max(8, global_channels // 2)
        self.down = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(label_channels, c, 7), nn.BatchNorm2d(c), nn.ReLU(True),
            nn.Conv2d(c, global_channels, 3, stride=2, padding=1), nn.BatchNorm2d(global_channels), nn.ReLU(True))
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(global_channels, global_channels, 3), nn.BatchNorm2d(global_channels),
            nn.ReLU(True), nn.ReflectionPad2d(1), nn.Conv2d(global_channels, global_channels, 3),
            nn.BatchNorm2d(global_channels)) for _ in range(blocks))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(global_channels, c, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(c),
            nn.ReLU(True), nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7), nn.Tanh())

    def forward(self, label: torch.Tensor, global_features: torch.Tensor) -> torch.Tensor:
        x = self.down(label) + global_features
        for block in self.blocks:
            x = x + block(x)
        return self.up(x)


def cpu_seconds(fn: Callable[[], None], repeats: int) -> float:
    """Median process CPU time of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def measure(model: GroupDNet, height: int, width: int, batch: int, repeats: int) -> dict[str, float]:
    """CPU seconds per step of each part (see the module docstring), one thread."""
    cfg = model.config
    net = model.train()
    disc = MultiscaleDiscriminator(cfg).train()
    perceptual, _ = build_perceptual("partial")
    big = random_inputs(cfg, batch, height, width, seed=1)
    small = random_inputs(cfg, batch, height // 2, width // 2, seed=1)

    def tensors(inp):
        return torch.from_numpy(inp["labels"][:, 0]), torch.from_numpy(inp["photo"])

    labels, photo = tensors(big)
    labels_s, photo_s = tensors(small)
    onehot = label_input(one_hot(labels, cfg.num_classes))
    global_ch = cfg.generator.channels[-1]
    enhancer = LocalEnhancer(onehot.shape[1], global_ch).train()

    def g_step(lab, ph):
        def run():
            mu, _ = net.encode(ph, lab)
            fake = net(mu, lab)
            (fake - ph).abs().mean().backward()
        return run

    def g_forward_small():
        with torch.no_grad():
            mu, _ = net.encode(photo_s, labels_s)
            net(mu, labels_s)

    features = torch.randn(batch, global_ch, height // 2, width // 2)

    def enhancer_step():
        enhancer(onehot, features).abs().mean().backward()

    fake = photo.clone().requires_grad_(True)

    def d_step():
        outs = disc(torch.cat([onehot, onehot]), torch.cat([fake, photo]))
        sum(o[-1].mean() for o in outs).backward()

    def vgg_step():
        perceptual(fake, photo).backward()

    return {
        "G + E, full size, forward + backward": cpu_seconds(g_step(labels, photo), repeats),
        "G + E, half size, forward + backward": cpu_seconds(g_step(labels_s, photo_s), repeats),
        "G + E, half size, forward only": cpu_seconds(g_forward_small, repeats),
        "local enhancer, full size, forward + backward": cpu_seconds(enhancer_step, repeats),
        "D (multi-scale), real + fake, forward + backward": cpu_seconds(d_step, repeats),
        "partial VGG loss, fake + real, forward + backward": cpu_seconds(vgg_step, repeats),
    }


def estimates(parts: dict[str, float]) -> dict[str, float]:
    """Each recipe's step, the shared parts counted as a step runs them (D twice: its own step and the
    G step's adversarial pass)."""
    shared = 2 * parts["D (multi-scale), real + fake, forward + backward"] + \
        parts["partial VGG loss, fake + real, forward + backward"]
    enhancer = parts["local enhancer, full size, forward + backward"]
    return {
        "fine-tune every layer at full size": shared + parts["G + E, full size, forward + backward"],
        "local enhancer, global frozen (phase 1)": shared + enhancer + parts["G + E, half size, forward only"],
        "local enhancer + global, jointly (phase 2)": shared + enhancer + parts["G + E, half size, forward + backward"],
    }


def markdown(parts: dict[str, float], recipes: dict[str, float], batch: int, size: tuple[int, int]) -> str:
    lines = [f"One training step's parts at {size[0]}x{size[1]}, batch {batch}, one thread (CPU s, median):", "",
             "| part | CPU s per step | s per image |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {v / batch:.2f} |" for k, v in parts.items()]
    base = recipes["fine-tune every layer at full size"]
    lines += ["", "| recipe (lower bound of a step) | CPU s per step | s per image | x fine-tune |",
              "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {v / batch:.2f} | {v / base:.2f} |" for k, v in recipes.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m devtools.growth_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ccp-demo", help="model folder or bundled name (default: ccp-demo)")
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.height % 128 or args.width % 128:
        p.error("--height and --width must be multiples of 128 (the half size must be a multiple of 64)")
    torch.set_num_threads(1)
    model = GroupDNet.from_pretrained(args.model)
    parts = measure(model, args.height, args.width, args.batch, args.repeats)
    print(markdown(parts, estimates(parts), args.batch, (args.height, args.width)))


if __name__ == "__main__":
    main()
