"""Model kinds: the core finds a kind's hooks through leanvision.kinds, never by testing for it."""

from __future__ import annotations

import pytest

import leanvision as lv
from leanvision import kinds
from leanvision.artifact import Artifact, require_image_only
from leanvision.errors import ArtifactError, ConfigError

IMAGE_CARD = {"format": 1, "arch": "resnet8", "classes": ["a", "b"],
              "input": {"size": [24, 40], "mean": [0.5] * 3, "std": [0.25] * 3}}


def test_an_image_card_is_the_default_kind_whose_stages_are_the_cores_own():
    kind = kinds.kind_of(IMAGE_CARD)
    assert kind.name == kinds.IMAGE
    assert (kind.build, kind.train, kind.evaluate, kind.predictor, kind.export,
            kind.explain) == (None,) * 6


def test_the_image_and_text_kind_is_found_through_the_registry():
    kind = kinds.kind_of({**IMAGE_CARD, "multimodal": {}})
    assert kind.name == "image+text"
    assert "image+text" in kinds.registered()
    assert all(callable(h) for h in (kind.build, kind.claim_training, kind.train,
                                     kind.evaluate, kind.predictor, kind.export,
                                     kind.export_inputs, kind.explain))
    assert kinds.kind_of({**IMAGE_CARD, "kind": "image+text"}) is kind


def test_the_kinds_card_block_is_the_one_its_model_writes():
    from leanvision.multimodal import kind, model

    assert kind.BLOCK == model.BLOCK


def test_an_unknown_kind_is_refused_by_name_with_the_known_ones():
    with pytest.raises(ArtifactError, match=r"unknown model kind 'imagee'.*did you mean "
                                            r"'image'.*knows image, image\+text"):
        kinds.kind_of({**IMAGE_CARD, "kind": "imagee"})


def test_a_second_kind_under_a_registered_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        kinds.register(kinds.Kind("image+text"))


def test_training_settings_of_a_kind_without_its_run_are_named():
    with pytest.raises(ConfigError, match="--fusion needs --text-columns"):
        kinds.training_kind({"fusion": "late", "epochs": 1}, None)
    kind, settings = kinds.training_kind({"text_columns": None, "fusion": None, "epochs": 1},
                                         None)
    assert kind.name == kinds.IMAGE and settings == {"epochs": 1}  # unset options dropped
    kind, settings = kinds.training_kind({"text_columns": ["t"], "epochs": 1}, None)
    assert kind.name == "image+text" and settings == {"text_columns": ["t"], "epochs": 1}


def test_a_new_kind_plugs_in_without_touching_the_core(monkeypatch, tmp_path):
    seen = {}

    def evaluate(art, data, **kwargs):
        seen.update(kwargs, data=data)
        return {"top1": 1.0}

    toy = kinds.Kind("toy", card_block="toy", evaluate=evaluate,
                     image_stage_refusal="reads toys; `{verb}` works on image-only models")
    monkeypatch.setitem(kinds._KINDS, "toy", toy)
    art = Artifact(path=tmp_path, card={**IMAGE_CARD, "toy": {}}, model=None)
    assert lv.evaluate(art, "somewhere", split="val") == {"top1": 1.0}
    assert seen["data"] == "somewhere" and seen["split"] == "val"
    with pytest.raises(ArtifactError, match="reads toys; `prune` works on image-only models"):
        require_image_only(art.card, tmp_path, "prune")
