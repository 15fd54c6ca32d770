"""Test-time augmentation: the multi-crop views, and --tta overriding the card in eval/predict."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, make_image_folder

import leanvision as lv
from leanvision.errors import ConfigError
from leanvision.tta import multi_crop_views, tta_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def test_multi_crop_is_center_and_four_shifted_corners():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    views = multi_crop_views(x)
    assert len(views) == 5 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[0], x)
    # pad 2 (32/16): the bottom-right corner crop is the image shifted by 2 up and left
    assert torch.equal(views[4][..., :-2, :-2], x[..., 2:, 2:])
    assert torch.equal(views[1][..., 2:, 2:], x[..., :-2, :-2])


def test_multi_crop_averages_the_logits_of_the_views():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.randn(3, 3, 8, 8)
    expected = sum(model(v) for v in multi_crop_views(x)) / 5
    assert torch.allclose(tta_logits(model, x, "multi-crop"), expected, atol=1e-6)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    data = make_image_folder(root / "data", per_class=8)
    torch.set_num_threads(1)
    lv.train(str(data), root / "art", **FAST)
    return root / "art", data


def test_eval_and_predict_take_a_tta_override(artifact):
    art, data = artifact
    plain = lv.evaluate(art)
    crops = lv.evaluate(art, tta="multi-crop")
    assert plain["tta"] == "none" and crops["tta"] == "multi-crop"
    assert crops["metrics"]["loss"] != pytest.approx(plain["metrics"]["loss"], abs=1e-7)
    image = sorted((data / "red").glob("*.png"))[0]
    p_plain = lv.predict(art, [image])[0]["top"][0]["prob"]
    p_flip = lv.predict(art, [image], tta="flip")[0]["top"][0]["prob"]
    assert p_plain != pytest.approx(p_flip, abs=1e-7)
    with pytest.raises(ConfigError, match="--tta 'mirror'"):
        lv.evaluate(art, tta="mirror")
    with pytest.raises(ConfigError, match="multi-crop"):
        lv.predict(art, [image], tta="ten-crop")
