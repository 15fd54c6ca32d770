"""Explanations: CAMs (pytorch-grad-cam), LIME / KernelSHAP (captum), their faithfulness, and
the drift between a compressed model's maps and its parent's."""

from .api import METHODS, explain
from .attribution import attribution_maps, grid_feature_mask
from .cam import TargetLayer, cam_maps, find_target_layer
from .drift import explanation_drift
from .faithfulness import deletion_insertion

__all__ = [
    "METHODS",
    "TargetLayer",
    "attribution_maps",
    "cam_maps",
    "deletion_insertion",
    "explain",
    "explanation_drift",
    "find_target_layer",
    "grid_feature_mask",
]
