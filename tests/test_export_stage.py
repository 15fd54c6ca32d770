"""The export stage: model.onnx in place or in a complete copy of the artifact, an "exports" card
block a runtime can feed the file from, and an unsupported op named with its layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from leanvision.artifact import Artifact, load, make_card, save_artifact
from leanvision.errors import ConfigError, ModelError
from leanvision.models import create_model
from leanvision.runtime.export import ort_session
from leanvision.runtime.stage import export

pytestmark = pytest.mark.usefixtures("one_thread")


def _artifact(folder) -> Artifact:
    torch.manual_seed(0)
    card = make_card(arch="resnet8", arch_kwargs={}, classes=["blue", "green", "red"],
                     input_size=(16, 16), mean=[0.5, 0.4, 0.3], std=[0.25] * 3, stage="train",
                     tta="flip")
    save_artifact(folder, create_model("resnet8", 3), card)
    return load(folder)


def test_export_in_place_records_the_file_in_the_card(tmp_path) -> None:
    art = _artifact(tmp_path / "art")
    result = export(art.path, batch=4)
    assert result["artifact"] == str(art.path) and result["format"] == "onnx"
    assert result["file"] == str(art.path / "model.onnx") and result["max_abs_error"] < 1e-4
    card = json.loads((art.path / "model.json").read_text())
    block = card["exports"]["onnx"]
    assert block == {"file": "model.onnx", "opset": result["opset"],
                     "max_abs_error": result["max_abs_error"], "input": "input",
                     "output": "logits", "dynamic_batch": True, "preprocessing": card["input"]}
    assert block["preprocessing"]["mean"] == [0.5, 0.4, 0.3]
    assert card["stage"] == "train" and card["inference"] == {"tta": "flip"}
    assert sorted(p.name for p in art.path.iterdir()) == ["model.json", "model.onnx",
                                                           "model.safetensors"]


def test_export_to_out_copies_a_complete_artifact(tmp_path) -> None:
    art = _artifact(tmp_path / "art")
    before = (art.path / "model.json").read_text()
    result = export(art.path, "onnx", tmp_path / "exported", batch=2)
    out = tmp_path / "exported"
    assert result["artifact"] == str(out)
    assert (art.path / "model.json").read_text() == before  # the source is untouched
    assert not (art.path / "model.onnx").exists()
    assert (out / "model.safetensors").read_bytes() == (art.path / "model.safetensors").read_bytes()
    copied = load(out)  # the copy is itself an artifact
    assert copied.card["exports"]["onnx"]["file"] == "model.onnx"
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    got = ort_session(out / "model.onnx").run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, copied.model(x).numpy(), rtol=1e-3, atol=1e-5)
    with pytest.raises(ConfigError, match="already holds an artifact"):
        export(art.path, out=out)


class Zeta(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.zeta(x, x + 1.0)


class ZetaNet(nn.Module):
    """The untranslatable op sits two levels down, after layers that export fine."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(nn.ReLU(), Zeta())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_unsupported_op_names_op_and_layer_and_writes_nothing(tmp_path) -> None:
    card = make_card(arch="zeta", arch_kwargs={}, classes=["a", "b"], input_size=(8, 8),
                     mean=[0.5] * 3, std=[0.5] * 3, stage="train")
    art = Artifact(path=tmp_path / "nowhere", card=card, model=ZetaNet())
    with pytest.raises(ModelError, match=r"layer 'blocks\.1' \(Zeta\): the exporter cannot "
                                         r"translate the op prims\.zeta"):
        export(art, out=tmp_path / "out", batch=2)
    assert list(tmp_path.iterdir()) == []  # the out folder it made is gone again


def test_unknown_format_is_refused(tmp_path) -> None:
    art = _artifact(tmp_path / "art")
    with pytest.raises(ConfigError, match="--format 'tflite' is not supported; choose one of "
                                          "onnx"):
        export(art.path, "tflite", tmp_path / "out")
    assert not (tmp_path / "out").exists()
