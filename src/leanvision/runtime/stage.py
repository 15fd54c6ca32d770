"""`leanvision export ARTIFACT --format onnx`: the export stage.

Writes model.onnx (parity-checked against PyTorch by export_onnx) into the artifact folder, or
into `out` after copying the artifact there (weights + card), so that the exported folder is
itself a complete artifact. The card gains an "exports" block that tells a runtime everything it
needs to feed the file: tensor names, the dynamic batch axis and the preprocessing."""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifact import CARD_FILE, WEIGHTS_FILE, Artifact, load, save_weights
from ..errors import ConfigError, ModelError
from ..io import write_atomic, write_json
from ..kinds import kind_of
from ..setting import setting
from .export import INPUT_NAME, OUTPUT_NAME, describe_export_failure, export_onnx

FORMATS = ("onnx",)
ONNX_FILE = "model.onnx"


@dataclass
class ExportOptions:
    """export's settings with their help (`leanvision export` draws its options from here)."""

    artifact: Path = setting(None, "Artifact folder to export.")
    format: str = setting("onnx", "onnx.")
    out: Path | None = setting(None, "Copy the artifact here and export into the copy (default: "
                               "export into ARTIFACT).")
    batch: int = setting(8, "Batch size of the parity check beside batch 1.")
    opset: int | None = setting(None, "ONNX opset (default: the exporter's).")


def export(artifact: str | Path | Artifact, format: str = "onnx", out: str | Path | None = None,
           *, batch: int = 8, opset: int | None = None) -> dict[str, Any]:
    """Export ARTIFACT to `format`; in place, or into `out` as a complete copy of the artifact.

    Returns {"artifact", "format", "file", "opset", "max_abs_error", "seconds"}. Raises
    ConfigError for an unknown format or an `out` that holds another artifact, ModelError when
    the model does not export (naming the op and the deepest layer that fails) or disagrees
    with PyTorch; then nothing is written (a folder made for `out` is removed again)."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r} is not supported; choose one of "
                          f"{', '.join(FORMATS)}")
    if batch < 1:
        raise ConfigError(f"--batch {batch} must be >= 1")
    art = artifact if isinstance(artifact, Artifact) else load(artifact)
    target = Path(out) if out is not None else art.path
    copying = target.resolve() != art.path.resolve()
    if copying and (target / CARD_FILE).exists():
        raise ConfigError(f"{target} already holds an artifact; choose another --out")
    created = copying and not target.exists()
    try:
        if copying:
            _copy_weights(art, target)
        kind_export = kind_of(art.card).export  # e.g. two inputs: images and text ids
        if kind_export is not None:
            result = kind_export(art, target / ONNX_FILE, batch=batch, opset=opset)
        else:
            result = export_with_layer(art.model, art.input_size, target / ONNX_FILE,
                                       batch=batch, opset=opset)
        card = copy.deepcopy(art.card)
        card.setdefault("exports", {})["onnx"] = onnx_export_record(card, ONNX_FILE, result)
        write_json(target / CARD_FILE, card)  # last: the file it describes is in place
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    if not copying and isinstance(artifact, Artifact):
        artifact.card = card
    return {"artifact": str(target), "format": format, "file": str(target / ONNX_FILE),
            **{k: result[k] for k in ("opset", "max_abs_error", "seconds")}}


def onnx_export_record(card: dict[str, Any], file: str, result: dict[str, Any] | None = None,
                       ) -> dict[str, Any]:
    """The card's "exports" entry of an ONNX file: how to feed it (names, dynamic batch, the
    card's preprocessing) and, for an export_onnx `result`, its opset and parity figure."""
    record: dict[str, Any] = {"file": file}
    if result is not None:
        record.update(opset=result["opset"], max_abs_error=result["max_abs_error"])
    record.update(input=INPUT_NAME, output=OUTPUT_NAME, dynamic_batch=True,
                  preprocessing=copy.deepcopy(card["input"]))
    export_inputs = kind_of(card).export_inputs
    if export_inputs is not None:
        record.update(export_inputs(card))
    return record


def export_with_layer(model: nn.Module, input_size: tuple[int, int], path: str | Path, *,
                      batch: int = 8, opset: int | None = None) -> dict[str, Any]:
    """export_onnx, whose untranslatable-op error also names the deepest layer that fails."""
    try:
        return export_onnx(model, input_size, path, batch=batch, opset=opset)
    except ModelError as exc:
        if "cannot translate" not in str(exc):
            raise  # a parity failure: the whole model exported, no layer to blame
        found = failing_layer(model, input_size)
        if found is None:
            raise
        name, layer, op_message = found
        raise ModelError(f"{type(model).__name__} cannot be exported to ONNX: layer '{name}' "
                         f"({type(layer).__name__}): {op_message}") from None


def failing_layer(model: nn.Module, input_size: tuple[int, int],
                  ) -> tuple[str, nn.Module, str] | None:
    """(qualified name, module, what fails) of the deepest submodule that does not export on
    its own, with the input it really receives in the model; None when every child exports
    (the failing op is in the model's own forward)."""
    inputs = _capture_inputs(model, input_size)
    found = None
    parent, prefix = model, ""
    while True:
        for name, child in parent.named_children():
            qualified = f"{prefix}{name}"
            if qualified not in inputs:
                continue  # never called in forward
            problem = _export_problem(child, *inputs[qualified])
            if problem is not None:
                found = (qualified, child, problem)
                parent, prefix = child, f"{qualified}."
                break
        else:
            return found


def _capture_inputs(model: nn.Module, input_size: tuple[int, int],
                    ) -> dict[str, tuple[tuple, dict]]:
    """{module name: (args, kwargs)} of each submodule's first call in one forward pass."""
    captured: dict[str, tuple[tuple, dict]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_module, args, kwargs, name=name):
            captured.setdefault(name, (args, kwargs))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    was_training = model.training
    try:
        with torch.no_grad():
            model.float().eval()(torch.randn(2, 3, *input_size,
                                             generator=torch.Generator().manual_seed(0)))
    except Exception:  # noqa: BLE001 - a model that cannot run at all has no layer to blame
        return {}
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return captured


def _export_problem(module: nn.Module, args: tuple, kwargs: dict) -> str | None:
    """What the exporter says about `module` alone (its op, as export_onnx words it); None when
    it exports."""
    chatter = io.StringIO()
    with (tempfile.TemporaryDirectory(prefix="leanvision-bisect-") as scratch,
          torch.no_grad(), contextlib.redirect_stdout(chatter)):
        try:
            program = torch.onnx.export(module.eval(), args, kwargs=kwargs or None, dynamo=True,
                                        verbose=False)
            if program is not None:
                program.save(str(Path(scratch) / "layer.onnx"))
        except Exception as exc:  # noqa: BLE001 - any failure marks this layer
            words = describe_export_failure(module, exc)
            return words.split("cannot be exported to ONNX: ", 1)[-1]
    return None


def _copy_weights(art: Artifact, target: Path) -> None:
    """The artifact's weights file byte for byte (an in-memory artifact: saved from its model)."""
    source = art.path / WEIGHTS_FILE
    target.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        write_atomic(target / WEIGHTS_FILE, lambda tmp: shutil.copyfile(source, tmp))
    else:
        save_weights(art.model, target / WEIGHTS_FILE)
