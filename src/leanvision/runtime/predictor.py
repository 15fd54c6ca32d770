"""One Predictor over every runtime, with the preprocessing of the artifact's card.

    Predictor.from_artifact(folder, runtime="auto")
        ├─ "torch"          eager PyTorch, fp32 (model.safetensors)
        ├─ "torch-compile"  torch.compile of the same (inductor; compiles on first call)
        ├─ "onnx-fp32"      ONNX Runtime on model.onnx
        ├─ "onnx-int8"      ONNX Runtime on model.int8.onnx (QDQ)
        ├─ "openvino-fp32"  OpenVINO's CPU plugin on model.onnx (optional: leanvision[openvino])
        └─ "openvino-int8"  OpenVINO on model.openvino-int8.xml + .bin (quantize --backend
                            openvino)

Images are decoded exactly as `leanvision predict` does (decode_resized with the
same checks), normalised with the card's mean / std, and the card's test-time augmentation is
applied around whichever runtime runs the network, so runtimes differ only in the network call.
OpenVINO is compiled in f32 (its default on CPUs with bf16 computes in bf16, a different
precision); which runtime wins on a machine is measured, not assumed: bench/runtime_openvino.py."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..artifact import CARD_FILE, WEIGHTS_FILE, read_card
from ..data import BadImageError, normalize, to_tensor_resized
from ..data.images import decode_resized, pil_to_rgb
from ..errors import ArtifactError, ConfigError
from ..hardware import physical_cores
from ..kinds import kind_of
from ..tta import TTA_MODES, tta_logits
from .onnx_file import check_onnx
from .openvino_runtime import (
    INT8_XML,
    OPENVINO_RUNTIMES,
    openvino_available,
    openvino_runner,
    require_openvino,
)

RUNTIMES = ("torch", "torch-compile", "onnx-fp32", "onnx-int8", *OPENVINO_RUNTIMES)
ONNX_FILES = {"onnx-fp32": "model.onnx", "onnx-int8": "model.int8.onnx"}
OPENVINO_FILES = {"openvino-fp32": "model.onnx", "openvino-int8": INT8_XML}
# The file each runtime opens; torch and torch-compile open model.safetensors.
MODEL_FILES = {**ONNX_FILES, **OPENVINO_FILES}
# OpenVINO runtimes are chosen automatically only through a card's recommendation (the quantize
# stage measured them there) and only where openvino is installed.
AUTO_ORDER = ("onnx-int8", "onnx-fp32", "torch")
RUNTIME_ALIASES = {"int8": "onnx-int8", "fp32": "onnx-fp32", "onnx": "onnx-fp32",
                   "eager": "torch", "pytorch": "torch"}
# The resize policy to_tensor_resized implements; a card asking for another cannot be honoured.
RESIZE_POLICIES = ("shorter-side+center-crop",)
# Training, evaluation and predict all decode through to_tensor_resized, which resamples
# bilinearly whatever the card says (timm models' cards say "bicubic"); the Predictor decodes
# the same way so that its figures are the model's, and refuses only names it does not know.
KNOWN_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")

Runner = Callable[[np.ndarray], np.ndarray]
ImageInput = str | os.PathLike | Image.Image


def available_runtimes(folder: str | os.PathLike) -> list[str]:
    """The runtimes whose model file the artifact folder holds, in RUNTIMES order."""
    folder, _ = read_card(folder)
    found = []
    for runtime in RUNTIMES:
        needed = MODEL_FILES.get(runtime, WEIGHTS_FILE)
        if (folder / needed).is_file():
            found.append(runtime)
    return found


class Predictor:
    """A model behind one interface whatever runs it. Build with `Predictor.from_artifact`."""

    def __init__(self, runtime: str, runner: Runner, card: dict[str, Any], folder: Path,
                 threads: int, device: str, model_file: Path) -> None:
        self.runtime, self.threads, self.device = runtime, threads, device
        self.card, self.folder, self.model_file = card, folder, model_file
        self._runner = runner
        size = card["input"]["size"]
        self.input_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.mean = [float(v) for v in card["input"]["mean"]]
        self.std = [float(v) for v in card["input"]["std"]]
        self.tta: str = card.get("inference", {}).get("tta", "none") or "none"

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @classmethod
    def from_artifact(cls, path: str | os.PathLike, runtime: str = "auto",
                      threads: int | None = None, device: str = "cpu",
                      spin: bool = True) -> Predictor:
        """Open the artifact folder at `path` with `runtime` ("auto" or one of RUNTIMES).

        "auto" takes the card's "recommended_runtime" when its file is there, else onnx-int8,
        onnx-fp32, torch, whichever file exists first. `threads` None: the physical cores.
        `spin` False: ONNX Runtime's worker threads sleep between calls instead of spin-waiting
        (a server whose cores also parse HTTP and decode images wants them back)."""
        folder, card = read_card(path)
        kind_predictor = kind_of(card).predictor  # e.g. images with text: two inputs
        if kind_predictor is not None:
            return kind_predictor(path, runtime, threads, device, spin)
        _check_preprocessing(folder, card)
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"--device {device!r} must be cpu or cuda")
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads {threads} must be at least 1")
        threads = threads or physical_cores()
        chosen = _choose_runtime(folder, card, runtime)
        if chosen in ONNX_FILES:
            model_file = folder / ONNX_FILES[chosen]
            check_onnx(model_file, folder, num_classes=len(card["classes"]),
                       input_size=tuple(card["input"]["size"]))
            runner = _onnx_runner(model_file, threads, device, spin)
        elif chosen in OPENVINO_FILES:
            model_file = folder / OPENVINO_FILES[chosen]
            if chosen == "openvino-fp32":  # the same safety checks as ONNX Runtime's file
                check_onnx(model_file, folder, num_classes=len(card["classes"]),
                           input_size=tuple(card["input"]["size"]))
            runner = openvino_runner(model_file, threads, device, len(card["classes"]))
        else:
            model_file = folder / WEIGHTS_FILE
            runner = _torch_runner(folder, threads, device, compiled=chosen == "torch-compile")
        return cls(chosen, runner, card, folder, threads, device, model_file)

    # --- the network call -------------------------------------------------------------------

    def run_normalised(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Raw logits [N, C] float32 for normalised float images [N, 3, H, W]; no TTA."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"expected normalised images [N, 3, H, W], got shape {x.shape}")
        return self._runner(x)

    def logits(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Logits [N, C] with the card's TTA. uint8 images [N, 3, H, W] are normalised with
        the card's mean / std; float images are taken as normalised already."""
        x = torch.as_tensor(batch)
        if x.dtype == torch.uint8:
            x = normalize(x, self.mean, self.std)
        elif not x.is_floating_point():
            raise ConfigError(f"images must be uint8 or normalised float, not {x.dtype}")

        def network(v: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.run_normalised(v))

        with torch.no_grad():
            return tta_logits(network, x.float(), self.tta).numpy()

    # --- images in, classes out ---------------------------------------------------------------

    def prepare(self, images: Sequence[ImageInput]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """uint8 [M, 3, H, W] of the usable images, and one record per image: {"image"} (the
        next row of the batch) or {"image", "error"} (the reason it is not usable)."""
        tensors, records = [], []
        for item in images:
            name = str(item) if not isinstance(item, Image.Image) else f"<PIL {item.size}>"
            records.append({"image": name})
            try:
                if isinstance(item, Image.Image):
                    tensors.append(to_tensor_resized(pil_to_rgb(item), self.input_size))
                else:
                    tensors.append(decode_resized(item, self.input_size))
            except BadImageError as exc:
                records[-1]["error"] = exc.reason
        h, w = self.input_size
        batch = torch.stack(tensors) if tensors else torch.zeros(0, 3, h, w, dtype=torch.uint8)
        return batch, records

    def predict_images(self, images: Sequence[ImageInput], top_k: int = 5,
                       batch_size: int = 64) -> list[dict[str, Any]]:
        """One result per image, in order: {"image", "top": [{"class", "prob"}, ...]}, or
        {"image", "error"} for one that is not a usable image (the others still get answers)."""
        if not images:
            raise ConfigError("no images given; pass one or more image files")
        if top_k < 1:
            raise ConfigError(f"--top-k {top_k} must be at least 1")
        batch, records = self.prepare(images)
        if not len(batch):
            return records
        logits = np.concatenate([self.logits(batch[i:i + batch_size])
                                 for i in range(0, len(batch), batch_size)])
        probs = torch.from_numpy(logits).softmax(1)
        k = min(top_k, len(self.classes))
        rows = iter(range(len(batch)))
        for record in records:
            if "error" in record:
                continue
            values, indices = probs[next(rows)].topk(k)
            record["top"] = [{"class": self.classes[int(c)], "prob": float(v)}
                             for v, c in zip(values, indices, strict=True)]
        return records

    def __repr__(self) -> str:
        return (f"Predictor({self.folder}, runtime={self.runtime!r}, threads={self.threads}, "
                f"device={self.device!r})")


def _check_preprocessing(folder: Path, card: dict[str, Any]) -> None:
    spec = card.get("input", {})
    for key in ("size", "mean", "std"):
        if key not in spec:
            raise ArtifactError(f"{folder / CARD_FILE} has no input.{key}; the card is "
                                "incomplete: re-run the stage that made the artifact")
    for key, allowed in (("resize", RESIZE_POLICIES), ("interpolation", KNOWN_INTERPOLATIONS)):
        value = spec.get(key, allowed[0])
        if value not in allowed:
            raise ArtifactError(f"{folder / CARD_FILE} asks for input.{key} {value!r}, which "
                                f"this leanvision cannot reproduce (it knows "
                                f"{', '.join(allowed)}); upgrade leanvision")
    tta = card.get("inference", {}).get("tta", "none") or "none"
    if tta not in TTA_MODES:
        raise ArtifactError(f"{folder / CARD_FILE} asks for TTA {tta!r}; known modes are "
                            f"{', '.join(TTA_MODES)}")


def recommended_runtime(card: dict[str, Any]) -> str | None:
    """The runtime a quantize / export stage recommended in the card, if any."""
    value = card.get("recommended_runtime") or card.get("quantization", {}).get(
        "recommended_runtime")
    if not value:
        return None
    return RUNTIME_ALIASES.get(str(value), str(value))


def _choose_runtime(folder: Path, card: dict[str, Any], runtime: str) -> str:
    present = available_runtimes(folder)
    if runtime == "auto":
        recommended = recommended_runtime(card)
        if recommended in present and (recommended not in OPENVINO_RUNTIMES
                                       or openvino_available()):
            return recommended
        for candidate in AUTO_ORDER:
            if candidate in present:
                return candidate
        raise ArtifactError(f"{folder} holds neither {WEIGHTS_FILE} nor an ONNX model; "
                            "re-run the stage that made the artifact")
    runtime = RUNTIME_ALIASES.get(runtime, runtime)
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r} is not one of auto, {', '.join(RUNTIMES)}")
    if runtime in OPENVINO_RUNTIMES:  # a missing package, before any missing file
        require_openvino(f"--runtime {runtime}")
    if runtime not in present:
        needed = MODEL_FILES.get(runtime, WEIGHTS_FILE)
        how = {"model.onnx": "`leanvision export`",
               "model.int8.onnx": "`leanvision quantize`",
               INT8_XML: "`leanvision quantize --backend openvino`"}.get(
                   needed, "the stage that made it")
        have = ", ".join(present) or "none"
        raise ArtifactError(f"{folder} has no {needed} for --runtime {runtime} (available: "
                            f"{have}); create it with {how}")
    return runtime


def _onnx_runner(path: Path, threads: int, device: str, spin: bool = True) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one image graph: no independent branches worth a pool
    # Spinning (ORT's default) shaves the wake-up off back-to-back calls but burns the cores
    # while the caller does anything else between them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("--device cuda: this onnxruntime has no CUDA provider; install "
                              "onnxruntime-gpu or use --device cpu")
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph / NotImplemented types
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc)
        raise ArtifactError(f"ONNX Runtime cannot load {path} ({first}); re-export it with "
                            "`leanvision export`") from None
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([output_name], {input_name: x})[0]

    run.session = session  # type: ignore[attr-defined]  # its options, for whoever asks
    return run


def _torch_runner(folder: Path, threads: int, device: str, compiled: bool) -> Runner:
    from ..artifact import load

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; "
                          "use --device cpu")
    model = load(folder, device=device).model.float().eval()
    # channels_last lets oneDNN / cuDNN use their fastest convolution kernels.
    model = model.to(memory_format=torch.channels_last)
    network = torch.compile(model) if compiled else model

    def run(x: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
        with torch_threads(threads), torch.inference_mode():
            return network(batch).float().cpu().numpy()

    return run


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's thread count is process-wide: set it for the call, then put it back."""
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if before != threads:
            torch.set_num_threads(before)
