"""The Predictor of a fused artifact: images and optional texts in, classes out, on PyTorch or
ONNX Runtime (model.onnx with its two inputs). `Predictor.from_artifact` returns one of these
for a multimodal card, so `predict --runtime`, `serve` and `bench`-style callers need no branch.

A missing, None or empty text is "no text": that row is answered by the image branch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifact import WEIGHTS_FILE, read_card
from ..errors import ArtifactError, ConfigError
from ..hardware import physical_cores
from ..runtime.export import INPUT_NAME, OUTPUT_NAME
from ..runtime.predictor import Predictor, torch_threads
from ..tta import tta_logits
from .model import BLOCK, TEXT_INPUT, load_tokenizer
from .text import clean_text, has_text

RUNTIMES = ("torch", "onnx-fp32")
ONNX_FILE = "model.onnx"


class FusedPredictor(Predictor):
    """Predictor's interface, plus text: logits(images, text_ids) and predict_images(..., texts)."""

    def __init__(self, runtime: str, runner, card: dict[str, Any], folder: Path, threads: int,
                 device: str, model_file: Path) -> None:
        super().__init__(runtime, runner, card, folder, threads, device, model_file)
        self.tokenizer = load_tokenizer(folder, card)
        self.text_shape = tuple(card[BLOCK]["text_input"]["shape"][1:])

    @classmethod
    def from_artifact(cls, path: str | os.PathLike, runtime: str = "auto",
                      threads: int | None = None, device: str = "cpu",
                      spin: bool = True) -> FusedPredictor:
        folder, card = read_card(path)
        threads = threads or physical_cores()
        if runtime == "auto":
            runtime = "onnx-fp32" if (folder / ONNX_FILE).is_file() else "torch"
        runtime = {"onnx": "onnx-fp32", "fp32": "onnx-fp32", "eager": "torch"}.get(runtime,
                                                                                    runtime)
        if runtime not in RUNTIMES:
            raise ConfigError(f"--runtime {runtime!r}: a multimodal model runs on "
                              f"{' or '.join(RUNTIMES)} (INT8 and torch.compile are not offered "
                              "for image + text models)")
        if runtime == "onnx-fp32":
            model_file = folder / ONNX_FILE
            if not model_file.is_file():
                raise ArtifactError(f"{folder} has no {ONNX_FILE} for --runtime onnx-fp32; "
                                    "create it with `leanvision export`")
            runner = _onnx_runner(model_file, threads, device, spin)
        else:
            model_file = folder / WEIGHTS_FILE
            runner = _torch_runner(folder, threads, device)
        return cls(runtime, runner, card, folder, threads, device, model_file)

    def encode_texts(self, texts: Sequence[str | None]) -> torch.Tensor:
        """int64 ids [N, ...] for raw texts; None or "" rows are all padding (no text)."""
        return self.tokenizer.encode([clean_text(t) for t in texts]).ids

    def run_normalised(self, x, text_ids=None) -> np.ndarray:  # noqa: ANN001
        x = np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x,
                                 dtype=np.float32)
        if text_ids is None:
            text_ids = np.zeros((x.shape[0], *self.text_shape), dtype=np.int64)
        ids = np.ascontiguousarray(text_ids.numpy() if isinstance(text_ids, torch.Tensor)
                                   else text_ids, dtype=np.int64)
        return self._runner(x, ids)

    def logits(self, batch, text_ids=None) -> np.ndarray:  # noqa: ANN001
        """Logits [N, C] for uint8 images [N, 3, H, W] and ids [N, ...] (None: no text)."""
        from ..data import normalize

        x = torch.as_tensor(batch)
        if x.dtype == torch.uint8:
            x = normalize(x, self.mean, self.std)

        def network(v: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.run_normalised(v, text_ids))

        with torch.no_grad():
            return tta_logits(network, x.float(), self.tta).numpy()

    def predict_images(self, images, top_k: int = 5, batch_size: int = 64,  # noqa: ANN001
                       texts: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
        if not images:
            raise ConfigError("no images given; pass one or more image files")
        if top_k < 1:
            raise ConfigError(f"--top-k {top_k} must be at least 1")
        texts = list(texts) if texts is not None else [None] * len(images)
        if len(texts) > len(images):
            raise ConfigError(f"{len(texts)} texts for {len(images)} images; give at most one "
                              "text per image, in the images' order")
        texts += [None] * (len(images) - len(texts))
        batch, records = self.prepare(images)
        rows = [i for i, r in enumerate(records) if "error" not in r]
        ids = self.encode_texts([texts[i] for i in rows])
        if not len(batch):
            return records
        logits = np.concatenate([self.logits(batch[i:i + batch_size], ids[i:i + batch_size])
                                 for i in range(0, len(batch), batch_size)])
        probs = torch.from_numpy(logits).softmax(1)
        k = min(top_k, len(self.classes))
        used = has_text(ids)
        for row, index in enumerate(rows):
            values, classes = probs[row].topk(k)
            records[index]["text"] = texts[index] or ""
            records[index]["used_text"] = bool(used[row])
            records[index]["top"] = [{"class": self.classes[int(c)], "prob": float(v)}
                                     for v, c in zip(values, classes, strict=True)]
        return records


def _onnx_runner(path: Path, threads: int, device: str, spin: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph types
        raise ArtifactError(f"ONNX Runtime cannot load {path} ({str(exc)[:300]}); re-export "
                            "it with `leanvision export`") from None
    names = {i.name for i in session.get_inputs()}
    if names != {INPUT_NAME, TEXT_INPUT}:
        raise ArtifactError(f"{path} has inputs {sorted(names)}, not {INPUT_NAME} and "
                            f"{TEXT_INPUT}; re-export it with `leanvision export`")

    def run(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: x, TEXT_INPUT: ids})[0]

    return run


def _torch_runner(folder: Path, threads: int, device: str):
    from ..artifact import load

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; "
                          "use --device cpu")
    model = load(folder, device=device).model.float().eval()

    def run(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
        with torch_threads(threads), torch.inference_mode():
            return model(torch.from_numpy(x).to(device),
                         torch.from_numpy(ids).to(device)).float().cpu().numpy()

    return run
