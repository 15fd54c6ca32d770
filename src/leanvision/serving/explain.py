"""Grad-CAM overlays for /v1/explain, from the PyTorch model of the served artifact.

The overlay is drawn as `leanvision explain` draws it (pytorch-grad-cam's show_cam_on_image,
upscaled by whole multiples for small inputs) but encoded in memory: the server writes no
files. Only Grad-CAM and Grad-CAM++ are offered: Score-CAM costs one forward pass per channel,
too much to hand to any caller."""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..artifact import Artifact, load
from ..data import normalize
from ..explanations.cam import TargetLayer, cam_maps, find_target_layer, frozen

CAM_CHOICES = ("gradcam", "gradcam++")
MIN_OVERLAY_SIDE = 128  # as explanations.api: small inputs are shown larger


@dataclass
class Explainer:
    art: Artifact
    layer: TargetLayer

    def __post_init__(self) -> None:
        # CAM hooks attach to the shared model; one explanation at a time.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, artifact: str | os.PathLike) -> Explainer:
        art = load(artifact)
        return cls(art=art, layer=find_target_layer(art.model, art.input_size))

    @property
    def classes(self) -> list[str]:
        return self.art.classes

    def overlay_png(self, image: torch.Tensor, target: str | None,
                    method: str = "gradcam") -> tuple[bytes, str, float]:
        """PNG bytes of the map over `image` (uint8 [3, H, W] at the input size), the class it
        explains (`target`, else the predicted one) and that class's probability."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        x = normalize(image, self.art.mean, self.art.std)[None]
        with self._lock:
            with frozen(self.art.model), torch.no_grad():
                probs = self.art.model(x).float().softmax(1)[0]
            cls = self.classes.index(target) if target is not None else int(probs.argmax())
            saliency = cam_maps(self.art.model, x, [cls], method, self.layer)[0]
        rgb = image.permute(1, 2, 0).numpy().astype(np.float32) / 255.0
        overlay = Image.fromarray(show_cam_on_image(rgb, saliency, use_rgb=True))
        scale = -(-MIN_OVERLAY_SIDE // min(overlay.size))  # ceil
        if scale > 1:
            overlay = overlay.resize((overlay.width * scale, overlay.height * scale),
                                     Image.Resampling.NEAREST)
        buffer = io.BytesIO()
        overlay.save(buffer, format="PNG")
        return buffer.getvalue(), self.classes[cls], float(probs[cls])
