"""GroupDNet (Zhu et al., CVPR 2020): semantically multi-modal image synthesis.

One latent code per class: re-roll, mix or morph the appearance of one region of a label map
while the rest stays as it was.
"""

from .codes import ClassCodes
from .config import PRESETS, SMISConfig, get_config
from .discriminator import MultiscaleDiscriminator
from .encoder import Encoder
from .generator import Generator
from .model import GroupDNet
from .pipeline import ResultMetadata, SMISPipeline, SMISResult

__all__ = [
    "PRESETS", "ClassCodes", "Encoder", "Generator", "GroupDNet", "MultiscaleDiscriminator",
    "ResultMetadata", "SMISConfig", "SMISPipeline", "SMISResult", "get_config",
]
__version__ = "0.1.0"
