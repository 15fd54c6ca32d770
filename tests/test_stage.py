"""The stage scaffold (compress/stage.py): the parent's data, the output folder's checks and
clean-up, and the child card's lineage. Whole stages run in test_prune, test_distill,
test_ptq, test_qat, test_adapt and test_robustness."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from leanvision.artifact import CARD_FILE, Artifact, make_card
from leanvision.compress import stage
from leanvision.errors import ConfigError
from leanvision.training.checkpoint import CHECKPOINT_FILE


def _parent(tmp_path: Path, config: dict) -> Artifact:
    card = make_card(arch="resnet20", arch_kwargs={"width": 8}, classes=["cat", "dog"],
                     input_size=(24, 40), mean=[0.5] * 3, std=[0.25] * 3, stage="train",
                     config=config, interpolation="bicubic", tta="flip",
                     transforms=[{"kind": "structure", "modules": {}}])
    return Artifact(path=tmp_path / "parent", card=card, model=torch.nn.Identity())


def test_the_data_is_the_given_one_else_the_cards_else_the_stages_error(tmp_path):
    art = _parent(tmp_path, {"data": "builtin:digits"})
    assert stage.data_of(art, "other", "unused") == "other"
    assert stage.data_of(art, None, "unused") == "builtin:digits"
    bare = _parent(tmp_path, {})
    assert stage.data_of(bare, None, None) is None
    with pytest.raises(ConfigError, match="^pass --data, please$"):
        stage.data_of(bare, None, "pass --data, please")


def test_check_classes_names_what_differs():
    stage.check_classes(["a", "b"], ["a", "b"], "d")
    with pytest.raises(ConfigError, match=r"missing from the data: b; unknown to the model: c"):
        stage.check_classes(["a", "c"], ["a", "b"], "d")
    with pytest.raises(ConfigError, match="same names in another order"):
        stage.check_classes(["b", "a"], ["a", "b"], "d")


def test_an_out_folder_with_an_artifact_or_a_run_is_refused(tmp_path):
    stage.check_fresh(tmp_path)  # empty: fine
    (tmp_path / CHECKPOINT_FILE).write_text("x")
    stage.check_fresh(tmp_path)  # a checkpoint only matters to stages that train
    with pytest.raises(ConfigError, match="already holds a run; choose another --out"):
        stage.check_fresh(tmp_path, run=True)
    (tmp_path / CARD_FILE).write_text("{}")
    with pytest.raises(ConfigError, match="already holds an artifact; choose another --out"):
        stage.check_fresh(tmp_path)


def test_claim_and_release_leave_no_half_artifact(tmp_path):
    new = tmp_path / "new"
    assert stage.claim(new) is True
    new.mkdir()
    (new / "sub").mkdir()
    (new / "w.bin").write_text("x")
    stage.release(new, created=True)
    assert not new.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert stage.claim(kept) is False
    (kept / "sub").mkdir()
    (kept / "w.bin").write_text("x")
    stage.release(kept, created=False)  # the user's folder stays, emptied
    assert kept.is_dir() and not any(kept.iterdir())
    (kept / "note.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not empty"):
        stage.claim(kept)
    with pytest.raises(ConfigError, match="is a file"):
        stage.claim(kept / "note.txt")


def test_default_out_is_under_runs_with_a_time_stamp():
    out = stage.default_out("prune", "parent-pruned")
    assert out.parent == Path("runs") / "prune"
    assert re.fullmatch(r"parent-pruned-\d{8}-\d{6}", out.name)
    assert stage.safe_name("my data/v 2") == "my-data-v-2"


def test_the_child_card_keeps_the_network_and_records_the_lineage(tmp_path):
    parent = _parent(tmp_path, {"data": "d"})
    card = stage.child_card(parent, "adapt", config={"data": "t"}, metrics={"n": 1})
    assert (card["stage"], card["parent"]) == ("adapt", str(parent.path))
    for key in ("arch", "arch_kwargs", "classes", "num_classes", "input", "inference",
                "transforms"):
        assert card[key] == parent.card[key], key
    assert card["config"] == {"data": "t"} and card["metrics"] == {"n": 1}
    card["transforms"].append({"kind": "x"})  # a copy: the parent's card is not edited
    assert len(parent.card["transforms"]) == 1
