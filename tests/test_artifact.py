"""artifact.py: an artifact folder round-trips its weights and card exactly; every way a folder
can be wrong is refused with an ArtifactError naming the file and the fix; the training data is
found again from another working folder."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from leanvision import artifact as art_mod
from leanvision import kinds
from leanvision.artifact import (
    CARD_FILE,
    CARD_FORMAT,
    DATA_FROM_ARTIFACT,
    WEIGHTS_FILE,
    load,
    load_state_strict,
    make_card,
    read_card,
    require_image_only,
    same_data,
    save_artifact,
    skip_bad_choice,
    training_data,
)
from leanvision.errors import ArtifactError, DatasetError
from leanvision.models import create_model

CLASSES = ["cat", "dog", "owl"]


def _card(**extra) -> dict:
    return make_card(arch="resnet8", arch_kwargs={}, classes=CLASSES, input_size=(16, 24),
                     mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6], stage="train", **extra)


def _saved(folder: Path, **extra) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = create_model("resnet8", len(CLASSES)).eval()
    return model, save_artifact(folder, model, _card(**extra))


def test_make_card_records_the_recipe() -> None:
    card = _card(parent="../base", config={"epochs": 3}, metrics={"val": {"top1": 0.5}},
                 interpolation="bicubic", tta="flip", transforms=[{"op": "prune"}])
    assert card["format"] == CARD_FORMAT and card["arch"] == "resnet8"
    assert card["num_classes"] == 3 and card["classes"] == CLASSES
    assert card["input"] == {"size": [16, 24], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6],
                             "interpolation": "bicubic", "resize": "shorter-side+center-crop"}
    assert card["inference"] == {"tta": "flip"} and card["transforms"] == [{"op": "prune"}]
    assert card["stage"] == "train" and card["parent"] == "../base"
    assert card["config"] == {"epochs": 3} and card["metrics"] == {"val": {"top1": 0.5}}
    assert card["leanvision"] and card["created"].endswith("+00:00")
    assert card["arch_kwargs"] == {} and card["git"] == art_mod.git_revision()
    plain = _card()
    assert plain["config"] == {} and plain["metrics"] == {} and plain["transforms"] == []
    assert plain["parent"] is None and plain["input"]["interpolation"] == "bilinear"
    assert plain["inference"] == {"tta": "none"}


def test_save_then_load_gives_the_same_model_and_card(tmp_path) -> None:
    model, folder = _saved(tmp_path / "art")
    assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    loaded = load(folder)
    assert loaded.path == folder and not loaded.model.training
    assert loaded.classes == CLASSES and loaded.num_classes == 3
    assert loaded.input_size == (16, 24) and loaded.mean == [0.1, 0.2, 0.3]
    assert loaded.std == [0.4, 0.5, 0.6] and loaded.tta == "none"
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    x = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    # the card file and the weights file name the artifact as well as its folder
    assert read_card(folder / CARD_FILE)[0] == folder
    assert read_card(folder / WEIGHTS_FILE)[0] == folder
    assert load(folder / CARD_FILE).card == loaded.card
    with safe_open(str(folder / WEIGHTS_FILE), "pt") as f:  # readable by any safetensors tool
        assert f.metadata() == {"format": "pt"}


def test_saving_again_into_the_same_folder_replaces_the_artifact(tmp_path) -> None:
    _, folder = _saved(tmp_path / "art")
    torch.manual_seed(5)
    other = create_model("resnet8", len(CLASSES)).eval()
    save_artifact(folder, other, _card(parent="../base"))
    loaded = load(folder)
    assert loaded.card["parent"] == "../base"
    for key, value in other.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key


def test_arch_kwargs_rebuild_the_same_network(tmp_path) -> None:
    model = create_model("resnet8", 3, in_chans=1).eval()  # a kwarg that changes the stem
    card = make_card(arch="resnet8", arch_kwargs={"in_chans": 1}, classes=CLASSES,
                     input_size=(16, 16), mean=[0.5], std=[0.25], stage="train")
    loaded = load(save_artifact(tmp_path / "art", model, card))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_a_hand_written_card_without_optional_fields_loads(tmp_path) -> None:
    model, folder = _saved(tmp_path / "art")
    card = json.loads((folder / CARD_FILE).read_text())
    for key in ("arch_kwargs", "transforms", "inference", "config"):
        del card[key]
    (folder / CARD_FILE).write_text(json.dumps(card))
    loaded = load(folder)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key


def test_card_transforms_are_redone_before_the_weights_load(tmp_path) -> None:
    from leanvision.models.fold import fold_batchnorm

    torch.manual_seed(0)
    model = create_model("resnet8", len(CLASSES)).eval()
    pairs = fold_batchnorm(model)  # the folded net has no BatchNorm: another structure
    card = _card(transforms=[{"kind": "fold_bn", "pairs": [list(p) for p in pairs]}])
    loaded = load(save_artifact(tmp_path / "folded", model, card))
    x = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    _, folder = _saved(tmp_path / "art")
    card = json.loads((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(json.dumps({**card, "transforms": [{"kind": "nope"}]}))
    with pytest.raises(ArtifactError, match="unknown transform 'nope' in the card"):
        load(folder)


def test_a_registered_kind_builds_its_own_network(tmp_path, monkeypatch) -> None:
    """The card names resnet20, but the kind's build (resnet8, as saved) is what loads."""
    built: list[tuple] = []

    def build(card, num_classes):
        built.append((card["arch"], num_classes))
        return create_model("resnet8", num_classes)

    toy = kinds.Kind("toy", card_block="toy", image_stage_refusal="is a toy; {verb} needs an "
                     "image model", build=build)
    kinds.register(kinds.Kind("image"))  # loads the plugins before the registry is patched
    monkeypatch.setitem(kinds._KINDS, "toy", toy)
    _, folder = _saved(tmp_path / "art")
    card = json.loads((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(json.dumps({**card, "arch": "resnet20", "toy": {}}))
    assert load(folder).num_classes == 3 and built == [("resnet20", 3)]
    with pytest.raises(ArtifactError) as err:
        require_image_only({"toy": {}}, "FOLDER", "prune")
    assert str(err.value) == "FOLDER is a toy; prune needs an image model"
    require_image_only(card, folder, "prune")  # an image card passes


def test_a_card_without_inference_means_no_tta(tmp_path) -> None:
    _, folder = _saved(tmp_path / "art")
    card = json.loads((folder / CARD_FILE).read_text())
    del card["inference"]
    (folder / CARD_FILE).write_text(json.dumps(card))
    assert load(folder).tta == "none"


@pytest.mark.parametrize(("damage", "message"), [
    ("not json", r"is not valid JSON \(Expecting property name enclosed in double quotes\); "
                 "re-create the artifact with `leanvision train`"),
    ("missing keys", "lacks arch, classes; it is not a leanvision model card"),
    ("newer format", "card format 2, newer than this"),
])
def test_a_damaged_card_is_refused(tmp_path, damage, message) -> None:
    _, folder = _saved(tmp_path / "art")
    card = json.loads((folder / CARD_FILE).read_text())
    if damage == "not json":
        (folder / CARD_FILE).write_text("{not json")
    elif damage == "missing keys":
        (folder / CARD_FILE).write_text(json.dumps({"format": 1, "input": card["input"]}))
    else:
        (folder / CARD_FILE).write_text(json.dumps({**card, "format": CARD_FORMAT + 1}))
    with pytest.raises(ArtifactError, match=message) as err:
        read_card(folder)
    assert str(folder / CARD_FILE) in str(err.value)


def test_the_current_format_is_read(tmp_path) -> None:
    _, folder = _saved(tmp_path / "art")
    assert read_card(folder)[1]["format"] == CARD_FORMAT


def test_paths_that_are_not_artifacts_are_refused(tmp_path) -> None:
    with pytest.raises(ArtifactError) as err:
        read_card(tmp_path / "nothing")
    assert str(err.value) == (f"artifact '{tmp_path / 'nothing'}' does not exist; pass a folder "
                              "written by `leanvision train` (it holds model.json and "
                              "model.safetensors)")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ArtifactError, match="is a file; pass the artifact folder that holds "
                                            f"{CARD_FILE} and {WEIGHTS_FILE}"):
        read_card(other)
    with pytest.raises(ArtifactError) as err:
        read_card(tmp_path)
    assert str(err.value) == (f"'{tmp_path}' has no {CARD_FILE}; it is not a leanvision "
                              "artifact (train one with `leanvision train DATA --out DIR`)")


def test_missing_or_damaged_weights_are_refused(tmp_path) -> None:
    _, folder = _saved(tmp_path / "art")
    (folder / WEIGHTS_FILE).write_bytes(b"\x00" * 16)
    with pytest.raises(ArtifactError, match="could not be read .*; the file is damaged: re-run "
                                            "the stage that made it"):
        load(folder)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match=f"has a card but no {WEIGHTS_FILE}; the artifact is "
                                            "incomplete: re-run the stage that made it"):
        load(folder)


def test_an_unknown_architecture_is_an_artifact_error(tmp_path) -> None:
    _, folder = _saved(tmp_path / "art")
    card = json.loads((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(json.dumps({**card, "arch": "no_such_net"}))
    with pytest.raises(ArtifactError, match=str(folder)):
        load(folder)


def test_weights_of_another_class_count_are_refused(tmp_path) -> None:
    _, folder = _saved(tmp_path / "art")
    card = json.loads((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(json.dumps({**card, "classes": ["a", "b"]}))
    with pytest.raises(ArtifactError, match=f"{WEIGHTS_FILE} does not fit the architecture in "
                                            "its card: 2 tensors differ in shape"):
        load(folder)


def test_load_state_strict_names_the_first_of_each_problem() -> None:
    model = create_model("resnet8", 3)
    state = dict(model.state_dict())
    first, *_ = state
    drop = state.pop(first)
    state["extra.weight"] = drop
    last = list(state)[-2]
    state[last] = torch.zeros(7)
    with pytest.raises(ArtifactError) as err:
        load_state_strict(model, state, source="W")
    text = str(err.value)
    assert text.startswith("W does not fit the architecture in its card: ")
    assert f"1 tensors differ in shape (first: {last} (7,) vs " in text
    assert f"1 missing (first: {first})" in text
    assert "1 unexpected (first: extra.weight)" in text
    assert text.endswith("The weights are for another architecture or class count.")
    assert text.index("differ") < text.index("missing") < text.index("unexpected")
    assert "; 1 missing" in text and "); 1 unexpected" in text


def test_load_state_strict_refuses_weights_that_are_only_missing_or_only_extra() -> None:
    model = create_model("resnet8", 3)
    state = dict(model.state_dict())
    first = next(iter(state))
    with pytest.raises(ArtifactError,
                       match=f"W does not fit .*: 1 missing \\(first: {first}\\)\\."):
        load_state_strict(model, {k: v for k, v in state.items() if k != first}, source="W")
    with pytest.raises(ArtifactError, match="1 unexpected"):
        load_state_strict(model, {**state, "extra": torch.zeros(1)}, source="W")


def test_load_state_strict_loads_fitting_weights() -> None:
    torch.manual_seed(1)
    source, target = create_model("resnet8", 3), create_model("resnet8", 3)
    load_state_strict(target, source.state_dict(), source="W")
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key])


def test_training_data_is_found_from_another_working_folder(tmp_path, monkeypatch) -> None:
    data = tmp_path / "work" / "photos"
    data.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    _, folder = _saved(tmp_path / "work" / "runs" / "art", config={"data": "photos"})
    card = json.loads((folder / CARD_FILE).read_text())
    assert card[DATA_FROM_ARTIFACT] == os.path.join("..", "..", "photos")
    assert card["config"]["data"] == "photos"  # as given
    monkeypatch.chdir(tmp_path)  # elsewhere: "photos" is not here
    _, found = read_card(folder)
    assert found["config"]["data"] == str(data.resolve())
    assert training_data(found) == str(data.resolve())
    (tmp_path / "work" / "photos").rmdir()  # moved away since: the spec stays as given
    assert read_card(folder)[1]["config"]["data"] == "photos"
    with pytest.raises(DatasetError) as err:
        training_data(read_card(folder)[1])
    assert str(err.value) == ("the data this model was trained on, 'photos', is not there "
                              "(looked from this folder and from the artifact's); pass where "
                              "it is now as data=PATH")


def test_data_that_is_not_a_local_path_is_left_as_given(tmp_path) -> None:
    _, folder = _saved(tmp_path / "art", config={"data": "hf:cifar10"})
    card = read_card(folder)[1]
    assert DATA_FROM_ARTIFACT not in card and card["config"]["data"] == "hf:cifar10"
    assert training_data(card) == "hf:cifar10"
    assert training_data({"config": {}}) is None and training_data({"config": {"data": ""}}) \
        is None
    assert training_data({}) is None  # a card without a config
    assert art_mod.with_data_location({}, tmp_path) == {}
    assert art_mod._local_path("photos/a:b") and not art_mod._local_path("s3://b/photos")
    assert not art_mod._local_path("") and not art_mod._local_path(None)
    _, gone = _saved(tmp_path / "art2", config={"data": str(tmp_path / "missing")})
    assert DATA_FROM_ARTIFACT not in read_card(gone)[1]


def test_skip_bad_choice_follows_the_request_then_the_training() -> None:
    trained_skipping = {"config": {"skip_bad_images": True}}
    assert skip_bad_choice(trained_skipping, None) is True
    assert skip_bad_choice(trained_skipping, False) is False
    assert skip_bad_choice({"config": {}}, None) is False
    assert skip_bad_choice({}, True) is True
    assert skip_bad_choice({}, None) is False


def test_same_data_however_the_path_is_spelt(tmp_path, monkeypatch) -> None:
    data = tmp_path / "photos"
    data.mkdir()
    monkeypatch.chdir(tmp_path)
    card = {"config": {"data": str(data)}}
    assert same_data(None, card) and same_data(str(data), card)
    assert same_data("photos", card) and same_data(Path("./photos/"), card)
    other = tmp_path / "other"
    other.mkdir()
    assert not same_data(other, card)
    assert not same_data("hf:photos", card)
    assert not same_data("photos", {"config": {"data": str(tmp_path / "gone")}})
    assert same_data("gone", {"config": {"data": "gone"}})  # the same spelling, even if gone
    assert not same_data("photos", {})


def test_git_revision_asks_git_about_leanvisions_own_folder(monkeypatch) -> None:
    calls: list[tuple] = []
    answer = {"returncode": 0, "stdout": "abc1234\n"}

    def run(args, **kwargs):
        calls.append((args, kwargs))
        if isinstance(answer, Exception):
            raise answer
        return subprocess.CompletedProcess(args, answer["returncode"], answer["stdout"], "")

    monkeypatch.setattr(art_mod.subprocess, "run", run)
    assert art_mod.git_revision() == "abc1234"
    args, kwargs = calls[0]
    assert args == ["git", "rev-parse", "--short", "HEAD"]
    assert kwargs == {"cwd": Path(art_mod.__file__).resolve().parent, "capture_output": True,
                      "text": True, "timeout": 5, "check": False}
    answer.update(returncode=128, stdout="abc1234\n")  # not a checkout
    assert art_mod.git_revision() is None
    answer.update(returncode=0, stdout="\n")
    assert art_mod.git_revision() is None
    for failure in (OSError("no git"), subprocess.TimeoutExpired("git", 5)):
        answer = failure
        assert art_mod.git_revision() is None
