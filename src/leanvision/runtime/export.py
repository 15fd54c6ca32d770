"""ONNX export through PyTorch's dynamo exporter, checked against PyTorch before it is kept.

The file has one input "input" [batch, 3, H, W] (normalised float32, dynamic batch) and one
output "logits" [batch, classes]. It only appears at its path after ONNX Runtime reproduced the
PyTorch fp32 outputs at batch 1 and at a larger batch."""

from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ..errors import ModelError
from ..io import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: torch.nn.Module, input_size: tuple[int, int], path: str | Path, *,
                batch: int = 8, opset: int | None = None, rtol: float = 1e-3,
                atol: float = 1e-5) -> dict[str, Any]:
    """Export `model` (fp32, eval mode) to ONNX at `path` and check it in ONNX Runtime.

    Returns {"path", "opset", "max_abs_error", "seconds"}. Raises ModelError when the exporter
    cannot translate an op (naming it) or the outputs disagree beyond rtol/atol; then no file
    is left at `path` (an older file there is kept)."""
    started = time.perf_counter()
    h, w = int(input_size[0]), int(input_size[1])
    was_training = model.training
    model = model.float().eval()
    generator = torch.Generator().manual_seed(0)
    # The example batch is > 1 so the exporter cannot specialise the batch axis to a constant.
    example = torch.randn(max(2, batch), 3, h, w, generator=generator)
    try:
        with atomic_path(path) as tmp:
            _export(model, example, tmp, opset)
            max_err = _check_parity(model, tmp, (h, w), batch, rtol, atol, generator)
            opset_used = _default_opset(tmp)
    finally:
        model.train(was_training)
    return {"path": str(path), "opset": opset_used, "max_abs_error": max_err,
            "seconds": round(time.perf_counter() - started, 3)}


def _export(model: torch.nn.Module, example: torch.Tensor, target: Path,
            opset: int | None) -> None:
    batch_dim = torch.export.Dim("batch", min=1, max=1 << 16)
    chatter = io.StringIO()  # the exporter prints its progress steps to stdout
    try:
        with torch.no_grad(), contextlib.redirect_stdout(chatter):
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: batch_dim},), verbose=False)
    except Exception as exc:  # the exporter raises RuntimeError subclasses and torch.export's
        raise ModelError(describe_export_failure(model, exc)) from None
    if program is None:
        raise ModelError("the ONNX exporter returned no program; upgrade torch / onnxscript")
    program.save(str(target))


def describe_export_failure(model: torch.nn.Module, exc: Exception) -> str:
    text = str(exc)
    op = None
    for pattern in (r"OpOverload\(op='([\w.]+)', overload='(\w+)'\)",
                    r"target=torch\.ops\.([\w.]+)", r"\b((?:aten|prims)\.\w+(?:\.\w+)?)"):
        found = re.search(pattern, text)
        if found:
            op = ".".join(g for g in found.groups() if g)
            break
    module = re.search(r"nn_module_stack[^']*'([\w.]+)'", text)
    where = f" in module '{module.group(1)}'" if module else ""
    what = f"the op {op}{where}" if op else f"{type(exc).__name__}: {_first_line(text)}"
    return (f"{type(model).__name__} cannot be exported to ONNX: the exporter cannot translate "
            f"{what}. Replace that op with supported ones (or register an ONNX function for it), "
            "then export again")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else "no message"


def ort_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session; `threads` None takes torch's intra-op thread count."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_parity(model: torch.nn.Module, onnx_path: Path, size: tuple[int, int], batch: int,
                  rtol: float, atol: float, generator: torch.Generator) -> float:
    session = ort_session(onnx_path)
    worst = 0.0
    for n in sorted({1, batch}):
        x = torch.randn(n, 3, *size, generator=generator)
        with torch.no_grad():
            expected = model(x).float().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ModelError(f"the ONNX model returned shape {got.shape} at batch {n}, PyTorch "
                             f"{expected.shape}; the export is broken: report it with the model")
        err = float(np.max(np.abs(got - expected))) if got.size else 0.0
        worst = max(worst, err)
        if not np.allclose(got, expected, rtol=rtol, atol=atol):
            raise ModelError(f"the ONNX model disagrees with PyTorch at batch {n}: max abs error "
                             f"{err:.3g} (rtol {rtol:g}, atol {atol:g}); nothing was written. "
                             "Loosen rtol/atol if that is acceptable, else report the model")
    return worst


def _default_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))
