"""Datasets, image decoding and validation, the decoded-tensor cache, splits and augmentation.

This package knows nothing of models, training or the CLI; they import from here, never back.
"""

from .augment import AUGMENT_PRESETS, BatchAugment, normalize
from .cache import (
    DecodedImages,
    clear_decode_cache,
    decode_images,
    decoding_for,
    default_memory_budget,
)
from .images import BadImageError, ImageChecks, load_rgb, to_tensor_resized
from .sources import IMAGE_EXTENSIONS, DataSource, ImageRecords, load_data
from .splits import stratified_holdout, stratified_kfold

__all__ = [
    "AUGMENT_PRESETS",
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "BatchAugment",
    "DataSource",
    "DecodedImages",
    "ImageChecks",
    "ImageRecords",
    "clear_decode_cache",
    "decode_images",
    "decoding_for",
    "default_memory_budget",
    "load_data",
    "load_rgb",
    "normalize",
    "stratified_holdout",
    "stratified_kfold",
    "to_tensor_resized",
]
