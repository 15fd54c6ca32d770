"""The image + text kind's entry in leanvision.kinds: the hooks through which load, train,
evaluate, predict, export and explain reach this package. Registered from this package's
__init__; each hook imports its module on first call, so registering costs no heavy import
(`import leanvision` stays light)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..kinds import Kind

NAME = "image+text"
# The card's block, model.BLOCK: spelt out here because model.py imports torch and the encoders,
# and registering must stay light (tests/test_kinds.py checks that the two agree).
BLOCK = "multimodal"


def build(card: dict[str, Any], num_classes: int) -> Any:
    from .model import build_model

    return build_model(card, num_classes=num_classes)


def claim_training(settings: dict[str, Any], resume: str | Path | None,
                   ) -> tuple[bool, dict[str, Any]]:
    """A train() call is ours with text columns, or when the run it resumes was ours; our other
    settings without text columns are a mistake worth naming."""
    from .config import split_settings

    ours, rest = split_settings(settings)
    if ours or resume is not None:
        from .train import is_multimodal_run

        if ours.get("text_columns") or is_multimodal_run(resume):
            return True, {**ours, **rest}
        if ours:
            raise ConfigError(f"--{next(iter(ours)).replace('_', '-')} needs "
                              "--text-columns: name the CSV's text columns")
    return False, rest


def train(data: str | Path, out: str | Path | None = None, *, resume: str | Path | None = None,
          console: Any = None, on_epoch_end: Any = None, nproc: int = 1,
          port: int | None = None, track: bool = False, track_uri: str | None = None,
          **settings: Any) -> dict[str, Any]:
    if nproc > 1 or track or track_uri:
        raise ConfigError("--nproc and --track are not supported with --text-columns "
                          "yet; train the image + text model in one process")
    from .train import train_multimodal

    return train_multimodal(data, out, resume=resume, console=console,
                            on_epoch_end=on_epoch_end, **settings)


def evaluate(art: Any, data: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
    from .evaluate import evaluate_multimodal

    return evaluate_multimodal(art, data, **kwargs)


def predictor(path: str | Path, runtime: str = "auto", threads: int | None = None,
              device: str = "cpu", spin: bool = True) -> Any:
    from .predictor import FusedPredictor

    return FusedPredictor.from_artifact(path, runtime, threads, device, spin)


def export(art: Any, path: str | Path, *, batch: int = 8,
           opset: int | None = None) -> dict[str, Any]:
    from .export import export_fused

    return export_fused(art, path, batch=batch, opset=opset)


def export_inputs(card: dict[str, Any]) -> dict[str, Any]:
    """The exported file's second input: the text ids and how to make them."""
    return {"text_input": copy.deepcopy(card[BLOCK]["text_input"])}


def explain(art: Any, images: Any, texts: Any, **kwargs: Any) -> dict[str, Any]:
    from .explain import explain_multimodal

    return explain_multimodal(art, images, texts, **kwargs)


KIND = Kind(
    NAME, card_block=BLOCK,
    image_stage_refusal="reads images with text (a multimodal model); `{verb}` works on "
                        "image-only models. Train one without --text-columns, or use eval, "
                        "export, predict, serve or explain on this one",
    build=build, claim_training=claim_training, train=train, evaluate=evaluate,
    predictor=predictor, export=export, export_inputs=export_inputs, explain=explain)
