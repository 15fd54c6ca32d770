"""ONNX export of a fused model: two inputs, "input" (normalised images [batch, 3, H, W]) and
"text_ids" (int64 token ids [batch, L] or [batch, L, K], 0 = padding), one output "logits".

Tokenization stays outside the graph, like image decoding: the card's tokenizer settings (and
tokenizer.json for WordPiece) make the ids. The file is kept only when ONNX Runtime reproduces
PyTorch at batch 1 and batch N, on rows with text and rows without (the fallback is in-graph)."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..artifact import Artifact
from ..errors import ModelError
from ..io import atomic_path
from ..runtime.export import INPUT_NAME, OUTPUT_NAME, describe_export_failure, ort_session
from .model import BLOCK, TEXT_INPUT


def example_ids(card: dict[str, Any], batch: int, generator: torch.Generator) -> torch.Tensor:
    """Random ids in the tokenizer's range, shaped as the card's text input; the last row of a
    batch > 1 is left empty (no text), so parity covers the fallback too."""
    shape = card[BLOCK]["text_input"]["shape"][1:]
    settings = card[BLOCK]["tokenizer"]
    high = settings.get("buckets", 30522)
    ids = torch.randint(1, high, (batch, *shape), generator=generator)
    keep = torch.randint(1, shape[0] + 1, (batch,), generator=generator)
    ids[torch.arange(shape[0])[None, :].expand(batch, -1) >= keep[:, None]] = 0
    if batch > 1:
        ids[-1] = 0
    return ids


def export_fused(art: Artifact, path: str | Path, *, batch: int = 8, opset: int | None = None,
                 rtol: float = 1e-3, atol: float = 1e-4) -> dict[str, Any]:
    started = time.perf_counter()
    model = art.model.float().eval()
    h, w = art.input_size
    generator = torch.Generator().manual_seed(0)
    n = max(2, batch)
    example = (torch.randn(n, 3, h, w, generator=generator), example_ids(art.card, n, generator))
    batch_dim = torch.export.Dim("batch", min=1, max=1 << 16)
    with atomic_path(path) as tmp:
        chatter = io.StringIO()
        try:
            with torch.no_grad(), contextlib.redirect_stdout(chatter):
                program = torch.onnx.export(
                    model, example, dynamo=True, opset_version=opset,
                    input_names=[INPUT_NAME, TEXT_INPUT], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: batch_dim}, {0: batch_dim}), verbose=False)
        except Exception as exc:  # the exporter raises many kinds; name the op
            raise ModelError(describe_export_failure(model, exc)) from None
        if program is None:
            raise ModelError("the ONNX exporter returned no program; upgrade torch / onnxscript")
        program.save(str(tmp))
        worst = _parity(model, art.card, tmp, (h, w), batch, rtol, atol, generator)
        opset_used = next(int(o.version) for o in onnx.load(str(tmp), load_external_data=False)
                          .opset_import if o.domain in ("", "ai.onnx"))
    return {"path": str(path), "opset": opset_used, "max_abs_error": worst,
            "seconds": round(time.perf_counter() - started, 3)}


def _parity(model: torch.nn.Module, card: dict, onnx_path: Path, size: tuple[int, int],
            batch: int, rtol: float, atol: float, generator: torch.Generator) -> float:
    session = ort_session(onnx_path)
    worst = 0.0
    for n in sorted({1, max(2, batch)}):
        x = torch.randn(n, 3, *size, generator=generator)
        ids = example_ids(card, n, generator)
        with torch.no_grad():
            expected = model(x, ids).float().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy(), TEXT_INPUT: ids.numpy()})[0]
        err = float(np.max(np.abs(got - expected))) if got.size else 0.0
        worst = max(worst, err)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=rtol, atol=atol):
            raise ModelError(f"the ONNX model disagrees with PyTorch at batch {n}: max abs error "
                             f"{err:.3g} (rtol {rtol:g}, atol {atol:g}); nothing was written")
    return worst
