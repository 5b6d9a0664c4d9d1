"""``python -m train``: train GroupDNet (see docs/TRAINING.md).

    python -m train --data DATA --preset demo                              # one device
    torchrun --nproc_per_node=8 -m train --data DATA --preset deepfashion  # 8 GPUs
"""

import time

_STARTED = time.monotonic()  # --max-minutes counts from here (before the heavy imports below)

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from smis.hub import CheckpointError  # noqa: E402

from . import dist  # noqa: E402
from .checkpoint import TrainingStateError  # noqa: E402
from .loop import train  # noqa: E402
from .losses import VggUnavailable  # noqa: E402
from .options import parse_args  # noqa: E402

EXIT_CODES = {"finished": 0, "paused": 0, "interrupted": 0, "diverged": 3}


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)  # exits with status 2 and a message on bad arguments
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s" if "RANK" in os.environ
        else "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("train")
    try:
        result = train(opts, started_at=_STARTED)
    except VggUnavailable as err:
        log.error("%s", err)
        return 2
    except (ValueError, CheckpointError, TrainingStateError) as err:
        log.error("training stopped: %s", err)
        return 2
    finally:
        dist.shutdown()
    return EXIT_CODES[result.status]


if __name__ == "__main__":
    sys.exit(main())
