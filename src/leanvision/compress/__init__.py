"""Compression stages: each reads a model artifact and writes a smaller or better one (prune,
distill, quantize, resize), with its lineage in the card."""

from .distill import DistillConfig, distill
from .prune import PruneConfig, prune
from .ptq import PTQConfig
from .qat import QATConfig
from .quantize import quantize
from .resize import resize

__all__ = ["DistillConfig", "PTQConfig", "PruneConfig", "QATConfig", "distill", "prune",
           "quantize",
           "resize"]
