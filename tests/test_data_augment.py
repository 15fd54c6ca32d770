import pytest
import torch

from leanvision.data import AUGMENT_PRESETS, BatchAugment, normalize
from leanvision.data.augment import random_shift_flip
from leanvision.errors import ConfigError


def _batch(b=16, h=16, w=16):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=gen)
    return images, torch.arange(b) % 4


@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
def test_shapes_dtypes_and_replay(preset):
    images, labels = _batch()
    aug = BatchAugment(preset, num_classes=4)
    state = torch.get_rng_state()
    out, targets = aug(images, labels)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert targets.dtype == torch.int64 and torch.equal(targets, labels)
    torch.set_rng_state(state)
    again, _ = aug(images, labels)
    assert torch.equal(out, again)
    if preset == "none":
        assert torch.equal(out, images)
    else:
        assert not torch.equal(out, images)


def test_light_flips_and_shifts_per_sample():
    row = torch.arange(16, dtype=torch.uint8).repeat(3, 16, 1)  # pixel value = column index
    images = row.expand(64, 3, 16, 16).contiguous()
    torch.manual_seed(0)
    out = random_shift_flip(images)
    # Each output row is a shifted, reflected, maybe mirrored copy of 0..15.
    first_rows = out[:, 0, 0, :].long()
    steps = first_rows[:, 1:] - first_rows[:, :-1]
    flipped = (steps[:, 4:12] == -1).all(1)
    assert 10 < int(flipped.sum()) < 54  # about half flipped, per sample
    starts = {int(r[0]) for r in first_rows[~flipped]}
    assert len(starts) > 1  # different translations in one batch
    assert out.min() >= 0 and out.max() <= 15  # reflection never invents values


def test_matches_reflect_pad_and_crop():
    images, _ = _batch(b=4, h=8, w=8)
    torch.manual_seed(5)
    out = random_shift_flip(images)
    torch.manual_seed(5)
    dy = torch.randint(-1, 2, (4,))
    dx = torch.randint(-1, 2, (4,))
    flip = torch.rand(4) < 0.5
    padded = torch.nn.functional.pad(images.float(), (1, 1, 1, 1), mode="reflect").to(torch.uint8)
    for i in range(4):
        top, left = 1 + int(dy[i]), 1 + int(dx[i])
        crop = padded[i, :, top:top + 8, left:left + 8]
        assert torch.equal(out[i], crop.flip(2) if flip[i] else crop)


def test_mixup_cutmix_soft_targets():
    images, labels = _batch()
    for kwargs in ({"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.2, "cutmix": 1.0}):
        aug = BatchAugment("light", num_classes=4, **kwargs)
        assert aug.soft_targets
        state = torch.get_rng_state()
        out, targets = aug(images, labels)
        assert out.dtype == torch.uint8 and out.shape == images.shape
        assert targets.shape == (16, 4) and targets.dtype.is_floating_point
        assert torch.allclose(targets.sum(1), torch.ones(16))
        assert (targets.max(1).values < 1).any()  # actually mixed
        torch.set_rng_state(state)
        again, again_targets = aug(images, labels)
        assert torch.equal(out, again) and torch.equal(targets, again_targets)


def test_errors_and_normalize():
    with pytest.raises(ConfigError, match="none, light, strong"):
        BatchAugment("heavy", num_classes=3)
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2)
    out = normalize(images, [0.5, 0.5, 0.5], [0.5, 0.25, 1.0])
    assert out.dtype == torch.float32 and out.shape == (2, 3, 1, 2)
    assert out[0, :, 0, 0].tolist() == [-1.0, -2.0, -0.5]
    assert out[0, :, 0, 1].tolist() == [1.0, 2.0, 0.5]
    assert normalize(images, [0.5] * 3, [0.5] * 3, dtype=torch.bfloat16).dtype == torch.bfloat16
