"""Every place that loads a file the user named refuses a pickle that would run code.

The payload's __reduce__ opens a marker file for writing, so unpickling it creates the marker:
each test asserts the marker is absent afterwards (the loader never unpickled it) and that the
refusal is a leanvision error. Forcing `torch.load(weights_only=False)` at any site makes the
matching test fail on the marker."""
from __future__ import annotations

import contextlib
import json
import pickle
from pathlib import Path

import huggingface_hub
import pytest
import torch
from typer.testing import CliRunner

import leanvision as lv
from leanvision.cli import app
from leanvision.errors import ArtifactError, LeanvisionError, ModelError
from leanvision.models import create_model
from leanvision.models.pretrained import read_state_dict
from leanvision.training.checkpoint import CHECKPOINT_FILE, load_checkpoint


class _Payload:
    """Unpickling this creates `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _write_payload(path: Path, marker: Path, *, wrap: str = "state_dict",
                   writer: str = "torch.save") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"x": _Payload(marker)}
    if wrap == "checkpoint":  # shaped like a leanvision checkpoint, so only the pickle is wrong
        obj = {"version": 1, "config": "{}", "model": obj}
    elif wrap:
        obj = {wrap: obj}
    if writer == "pickle":  # a plain pickle stream, which torch.load also accepts
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)  # torch.load's own protocol: no warning
    else:
        torch.save(obj, path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "unpickled-marker"


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_payload_really_runs_when_unpickled(tmp_path, marker, writer):
    """Guards the guard: the payload is live, so the tests below are not vacuous."""
    payload = _write_payload(tmp_path / "evil.pth", marker, writer=writer)
    with contextlib.suppress(RuntimeError):  # a plain pickle runs, then fails torch's magic check
        torch.load(payload, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(("suffix", "writer"), [(".pth", "torch.save"), (".pt", "pickle"),
                                                (".bin", "torch.save")])
def test_pretrained_path_is_not_unpickled(tmp_path, marker, suffix, writer):
    payload = _write_payload(tmp_path / f"evil{suffix}", marker, writer=writer)
    with pytest.raises(ModelError, match="Re-save the state_dict as .safetensors"):
        create_model("resnet8", 3, pretrained=payload)
    assert not marker.exists()
    with pytest.raises(ModelError):
        read_state_dict(payload)
    assert not marker.exists()


def test_pretrained_artifact_folder_with_a_pickle_inside_is_not_unpickled(tmp_path, marker):
    folder = tmp_path / "fake-artifact"
    _write_payload(folder / "model.safetensors", marker)
    with pytest.raises(ModelError, match="cannot read weights"):
        create_model("resnet8", 3, pretrained=folder)
    assert not marker.exists()


def test_artifact_with_a_pickled_weights_file_is_not_unpickled(tmp_path, marker):
    folder = tmp_path / "artifact"
    folder.mkdir()
    card = {"format": 1, "arch": "resnet8", "arch_kwargs": {}, "num_classes": 3,
            "classes": ["a", "b", "c"],
            "input": {"size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}}
    (folder / "model.json").write_text(json.dumps(card))
    _write_payload(folder / "model.safetensors", marker)
    with pytest.raises(LeanvisionError):
        lv.load(folder)
    assert not marker.exists()


def test_timm_cache_pickle_is_not_unpickled(tmp_path, marker, monkeypatch):
    """pretrained=True finds a pytorch_model.bin in the Hugging Face cache: same rule."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub_id = create_model("mobilenetv3_small_100", 1000).pretrained_cfg["hf_hub_id"]
    repo = tmp_path / "hf" / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    _write_payload(repo / "snapshots" / "abc123" / "pytorch_model.bin", marker)
    with pytest.raises(ModelError, match="cannot read weights"):
        create_model("mobilenetv3_small_100", 3, pretrained=True)
    assert not marker.exists()


def test_checkpoint_is_not_unpickled(tmp_path, marker):
    run = tmp_path / "run"
    _write_payload(run / CHECKPOINT_FILE, marker, wrap="checkpoint")
    with pytest.raises(ArtifactError, match="could not be read as a leanvision checkpoint"):
        load_checkpoint(run)
    assert not marker.exists()


def test_resume_does_not_unpickle_the_checkpoint(tmp_path, marker):
    run = tmp_path / "run"
    _write_payload(run / CHECKPOINT_FILE, marker, wrap="checkpoint")
    with pytest.raises(ArtifactError, match="could not be read as a leanvision checkpoint"):
        lv.train(resume=run, progress=False)
    assert not marker.exists()


def test_cli_resume_does_not_unpickle_the_checkpoint(tmp_path, marker):
    run = tmp_path / "run"
    _write_payload(run / CHECKPOINT_FILE, marker, wrap="checkpoint")
    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code != 0
    assert "could not be read as a leanvision checkpoint" in result.output
    assert not marker.exists()


def test_multimodal_resume_does_not_unpickle_the_checkpoint(tmp_path, marker):
    run = tmp_path / "run"
    _write_payload(run / CHECKPOINT_FILE, marker, wrap="checkpoint")
    (run / "config.json").write_text(json.dumps({"multimodal": {}}))
    with pytest.raises(ArtifactError, match="could not be read as a leanvision checkpoint"):
        lv.train(resume=run, progress=False)
    assert not marker.exists()


def test_decoded_image_cache_file_is_not_unpickled(tmp_path, marker):
    """A .npy in the decode cache holding pickled objects is treated as no cache (rebuilt)."""
    import numpy as np

    from leanvision.data.cache import _load_file

    npy, meta = tmp_path / "images.npy", tmp_path / "images.json"
    np.save(npy, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    meta.write_text(json.dumps({"format": 1, "shape": [1], "kept": [0], "bad_index": [],
                                "bad_reason": []}))
    assert _load_file(npy, meta, (1,)) is None
    assert not marker.exists()


def test_search_measurement_cache_is_not_unpickled(tmp_path, marker):
    """optimize reads back a candidate's stored validation predictions (an .npz in its stage
    folder); one holding pickled objects must fail to load, not run."""
    import numpy as np

    from leanvision.search.evidence import ValSplit, val_predictions

    split = ValSplit(data=str(tmp_path / "data"), val_fraction=0.5, seed=0)
    stored = tmp_path / "candidate" / f"measure-torch-val-{split.key()}.npz"
    stored.parent.mkdir()
    np.savez(stored, predicted=np.array([_Payload(marker)], dtype=object),
             labels=np.array([0], dtype=np.int32))
    with pytest.raises(ValueError, match="allow_pickle"):
        val_predictions(stored.parent, "torch", split)
    assert not marker.exists()
