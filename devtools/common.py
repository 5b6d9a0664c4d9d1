"""What the developer tools share: a free local port and a tiny untrained model for their quick runs."""

from __future__ import annotations

import socket
from pathlib import Path

import torch

from smis import GroupDNet, get_config


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(folder: Path) -> Path:
    """The tiny untrained ``demo`` model (seed 0) saved as a model folder; returns the folder."""
    torch.manual_seed(0)
    GroupDNet(get_config("demo", tiny=True)).save_pretrained(folder)
    return folder
