"""Safety checks for an edited network: it runs, it exports to ONNX, and it rebuilds from its
artifact files alone in a fresh Python process with the same outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..artifact import CARD_FILE, Artifact
from ..errors import LeanvisionError, ModelError

RELOAD_TOLERANCE = 1e-4


def check_forward(model: torch.nn.Module, example: torch.Tensor, num_classes: int) -> None:
    model.eval()
    with torch.no_grad():
        try:
            logits = model(example)
        except RuntimeError as exc:
            raise ModelError(f"the pruned network no longer runs ({str(exc).splitlines()[0]}); "
                             "a layer was cut inconsistently: try --scope layer or a lower "
                             "--ratio") from None
    if tuple(logits.shape) != (example.shape[0], num_classes) or not torch.isfinite(logits).all():
        raise ModelError(f"the pruned network returns {tuple(logits.shape)} "
                         f"{'non-finite ' if not torch.isfinite(logits).all() else ''}logits "
                         f"instead of ({example.shape[0]}, {num_classes})")


def check_pruned(art: Artifact, folder: Path, example: torch.Tensor) -> dict[str, Any]:
    """Run every check; on a failure the card is removed (the folder is no artifact) and a
    ModelError says which check failed."""
    try:
        check_forward(art.model, example, art.num_classes)
        checks: dict[str, Any] = {"forward": True, "onnx": _onnx_check(art)}
        with torch.no_grad():
            here = art.model.eval()(_seeded_input(example))
        there = fresh_process_logits(folder, tuple(example.shape[-2:]))
        diff = float((here - there).abs().max())
        if diff > RELOAD_TOLERANCE:
            raise ModelError(f"the artifact reloaded in a fresh process gives other outputs "
                             f"(max difference {diff:.3g}); it does not rebuild faithfully")
        checks["reload_max_abs_diff"] = diff
        return checks
    except LeanvisionError:
        (folder / CARD_FILE).unlink(missing_ok=True)
        raise


def _onnx_check(art: Artifact) -> dict[str, Any] | str:
    try:
        from ..runtime.export import export_onnx
    except ImportError:
        return "skipped: ONNX export needs onnx, onnxruntime and onnxscript installed"
    with tempfile.TemporaryDirectory() as tmp:
        result = export_onnx(art.model, art.input_size, Path(tmp) / "model.onnx", batch=4)
    return {k: v for k, v in result.items() if k != "path"}


def _seeded_input(example: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, *example.shape[1:])


def fresh_process_logits(folder: Path, input_size: tuple[int, int]) -> torch.Tensor:
    """Logits on the seeded input, computed by a new Python process that only has the files."""
    code = ("import json, sys, torch, leanvision; art = leanvision.load(sys.argv[1]); "
            "torch.manual_seed(0); x = torch.randn(2, 3, int(sys.argv[2]), int(sys.argv[3])); "
            "print(json.dumps(art.model(x).tolist()))")
    h, w = input_size
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(h), str(w)],
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
        raise ModelError(f"the pruned artifact does not reload in a fresh process: {last}")
    return torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
