"""`leanvision quantize ARTIFACT --method ptq|dynamic|qat [--backend onnxruntime|openvino]`: one
entry point over the ways to INT8. Everything a user can get wrong (method, backend, settings,
data whose classes differ from the model's, an --out that holds an artifact) is refused here,
before anything is written."""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rich.console import Console

from ..artifact import Artifact
from ..data import decoding_for
from ..errors import ConfigError
from ..setting import setting
from ..tracking import tracked
from .ptq import PTQ_METHODS, PTQConfig, run_ptq
from .qat import QATConfig, qat_train_config, run_qat
from .stage import check_fresh, data_of, default_out, matching_data, open_parent

METHODS = ("ptq", "dynamic", "qat")
# onnxruntime: QDQ ONNX (model.int8.onnx); openvino: NNCF's OpenVINO IR (model.openvino-int8.*).
BACKENDS = ("onnxruntime", "openvino")
# Settings the CLI passes to every method; post-training methods run ORT on the CPU.
_PTQ_PASSTHROUGH = ("progress", "device")
_PTQ_SETTINGS = tuple(f.name for f in fields(PTQConfig)
                      if f.name not in ("method", "calibration_images", "calibrate", "max_drop",
                                         "accept"))


@dataclass
class QuantizeOptions:
    """quantize's settings with their help (`leanvision quantize` draws its options from here)."""

    artifact: str = setting(None, "Artifact folder to quantize.")
    data: str | None = setting(None, "Data to fine-tune on (default: the data named in the "
                               "artifact's card).")
    method: str = setting("ptq", "ptq (static INT8 with an accuracy guard), dynamic, or qat "
                          "(quantization-aware fine-tuning first).")
    max_drop: float | None = setting(None, "ptq: most top-1 points INT8 may lose on validation "
                                     "data before layers return to FP32 (default 0.5).")
    accept: str | None = setting(None, "ptq: how sure 'within --max-drop' must be: point "
                                 "(the estimate), likely (80% interval's upper bound) or sure "
                                 "(95%'s); default likely.")
    calibration_images: int | None = setting(None, "Training images that calibrate activation "
                                             "ranges (300 ptq, 512 qat).")
    calibrate: str = setting("minmax", "minmax, entropy or percentile.")
    backend: str = setting("onnxruntime", "ptq: onnxruntime (model.int8.onnx) or openvino (NNCF; "
                           "model.openvino-int8.xml/.bin, needs leanvision[openvino]).")
    epochs: int | None = setting(None, "qat: fine-tuning epochs (default 2).")
    lr: float | None = setting(None, "qat: rate (default: the parent's / 20).")
    batch_size: int | None = setting(None, "qat: fine-tuning batch size.")
    # unset: the data is read as the parent artifact was trained (with or without bad images)
    skip_bad_images: bool | None = setting(None, "Leave out images that cannot be decoded "
                                           "(default: as the parent artifact was trained).")


@tracked("quantize", "artifact")
@decoding_for("quantize")
def quantize(artifact: str | Path | Artifact, data: str | Path | None = None,
             out: str | Path | None = None, *, method: str = "ptq", epochs: int | None = None,
             lr: float | None = None, calibration_images: int | None = None,
             calibrate: str = "minmax", max_drop: float | None = None,
             accept: str | None = None, backend: str = "onnxruntime",
             console: Console | None = None, progress: bool | None = None,
             **settings: Any) -> dict[str, Any]:
    """Quantize ARTIFACT to INT8; writes an artifact folder with model.onnx and model.int8.onnx.

    method "ptq" (default): static QDQ INT8 with an accuracy guard (`max_drop` top-1 points,
    default 0.5, judged by the paired comparison of INT8 with FP32 under `accept`: point,
    likely (default) or sure; see compress.guard); "dynamic": int8 weights, activations
    quantised at run time; "qat": quantisation-aware fine-tuning first (`epochs`, `lr`).
    `calibration_images` defaults to 300 (ptq) / 512 (qat). `backend` "openvino" (ptq only):
    NNCF quantizes for OpenVINO's CPU plugin instead, writing model.openvino-int8.xml / .bin,
    guarded the same way. `data` defaults to the data the artifact was trained on. `settings`:
    for ptq / dynamic, PTQConfig fields (threads, timing_runs, max_rounds, sensitivity_images,
    skip_bad_images); for qat, TrainConfig fields overriding the fine-tune's defaults.
    skip_bad_images, unless given, is the parent's: data it was trained without its unreadable
    images is read the same way. `progress`: whether QAT's fine-tuning draws bars (default: as
    the parent's training). Returns {"artifact", "metrics", "quantization", ...}."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not a quantization method; choose one of "
                          f"{', '.join(METHODS)}")
    _check_backend(backend, method, calibrate)
    console = console or Console(stderr=True)
    if settings.get("skip_bad_images") is None:  # None: not chosen, so the parent's choice
        settings.pop("skip_bad_images", None)
    if method in PTQ_METHODS:
        pcfg = _ptq_config(method, epochs, lr, calibration_images, calibrate,
                           {"max_drop": max_drop, "accept": accept}, settings)
    else:
        if max_drop is not None or accept is not None:
            raise ConfigError("--max-drop and --accept apply to --method ptq (QAT has no "
                              "accuracy guard); drop them or use --method ptq")
        qcfg = QATConfig(method="qat", lr=lr, calibrate=calibrate,
                         **({"epochs": epochs} if epochs is not None else {}),
                         **({"calibration_images": calibration_images}
                            if calibration_images is not None else {}))
    if isinstance(artifact, Artifact):  # QAT edits the network; keep the caller's intact
        artifact = Artifact(artifact.path, artifact.card, copy.deepcopy(artifact.model))
    art = open_parent(artifact, "quantize")
    if method in PTQ_METHODS and "skip_bad_images" not in settings:  # QAT: qat.INHERITED
        pcfg.skip_bad_images = bool(art.card.get("config", {}).get("skip_bad_images", False))
    data_spec = data_of(art, data, f"the card of {art.path} does not name its training data; "
                        "pass --data DATA to calibrate on")
    source = matching_data(data_spec, art)
    if method == "qat":
        cfg = qat_train_config(art.card.get("config", {}), data_spec, qcfg,
                               {**settings, **({} if progress is None else
                                               {"progress": progress})})
    out_dir = (Path(out) if out is not None
               else default_out("quantize", f"{art.path.name}-{method}"))
    check_fresh(out_dir)
    if method == "qat":
        return run_qat(art, source, cfg, qcfg, out_dir, console)
    if backend == "openvino":
        from .ptq_openvino import run_openvino_ptq  # imports nothing of openvino until called

        return run_openvino_ptq(art, source, pcfg, out_dir, console)
    return run_ptq(art, source, pcfg, out_dir, console)


def _check_backend(backend: str, method: str, calibrate: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        return
    if method != "ptq":
        raise ConfigError(f"--backend openvino quantizes with --method ptq only (not {method}); "
                          "drop --backend or use --method ptq")
    if calibrate != "minmax":
        raise ConfigError(f"--calibrate {calibrate} applies to --backend onnxruntime; NNCF "
                          "chooses its own ranges: drop --calibrate")
    from ..runtime.openvino_runtime import require_nncf

    require_nncf("--backend openvino")


def _ptq_config(method: str, epochs: int | None, lr: float | None,
                calibration_images: int | None, calibrate: str,
                guard: dict[str, Any], settings: dict[str, Any]) -> PTQConfig:
    if epochs is not None or lr is not None:
        raise ConfigError(f"--epochs and --lr apply to --method qat, not {method} (which does "
                          "not train)")
    unknown = [k for k in settings if k not in _PTQ_SETTINGS + _PTQ_PASSTHROUGH]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], _PTQ_SETTINGS, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        raise ConfigError(f"unknown {method} setting '{unknown[0]}'{suggestion} (training "
                          "settings apply to --method qat only)")
    if settings.get("device", "auto") not in ("auto", "cpu"):
        raise ConfigError(f"--method {method} runs ONNX Runtime on the CPU; drop --device "
                          f"{settings['device']}")
    chosen = {k: v for k, v in settings.items() if k in _PTQ_SETTINGS}
    if calibration_images is not None:
        chosen["calibration_images"] = calibration_images
    chosen.update({k: v for k, v in guard.items() if v is not None})
    return PTQConfig(method=method, calibrate=calibrate, **chosen)
