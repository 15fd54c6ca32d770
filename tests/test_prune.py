"""The prune stage: really smaller networks, lineage in the card, reload without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, make_image_folder
from typer.testing import CliRunner

import leanvision
from leanvision.cli import app
from leanvision.compress import prune
from leanvision.compress.pruning import layers_to_keep, measure, refuse_attention
from leanvision.errors import ConfigError, ModelError
from leanvision.models import create_model
from leanvision.models.surgery import apply_transforms

pytestmark = pytest.mark.usefixtures("one_thread")
TUNE = dict(batch_size=8, progress=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prune")
    data = make_image_folder(root / "data", per_class=12)
    torch.set_num_threads(1)
    leanvision.train(str(data), root / "base", **FAST)
    return root / "base"


def _flops(folder: Path) -> float:
    art = leanvision.load(folder)
    return measure(art.model, torch.randn(1, 3, *art.input_size)).flops


def test_structured_flops_target_gives_a_smaller_network_that_reloads(base, tmp_path):
    out = tmp_path / "pruned"
    summary = prune(base, out=out, ratio=0.5, finetune_epochs=1, **TUNE)
    record = summary["pruning"]
    assert 0.45 <= record["flops_fraction"] <= 0.5
    assert record["params_fraction"] < 0.9
    assert _flops(out) <= 0.5 * _flops(base)
    # really smaller: fewer parameters stored, not masks
    pruned, parent = leanvision.load(out), leanvision.load(base)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pruned.model) < 0.9 * count(parent.model)
    # vector-friendly widths by default (--round-to 8)
    widths = {m.out_channels for m in pruned.model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert all(w % 8 == 0 for w in widths), widths
    card = json.loads((out / "model.json").read_text())
    assert card["stage"] == "prune" and card["parent"] == str(base)
    assert card["transforms"][0]["kind"] == "structure"
    # the fresh-process reload gave identical logits, and the forward check ran
    assert record["checks"]["forward"] is True
    assert record["checks"]["reload_max_abs_diff"] == 0.0
    assert card["metrics"]["val"]["top1"] is not None


def test_iterative_schedule_records_accuracy_after_every_step(base, tmp_path):
    out = tmp_path / "steps"
    summary = prune(base, out=out, ratio=0.4, steps=2, finetune_epochs=1, target="params",
                    importance="l1", scope="layer", **TUNE)
    steps = summary["pruning"]["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[0]["params"] > steps[1]["params"]
    for s in steps:
        assert 0.0 <= s["val_top1_pruned"] <= 1.0 and 0.0 <= s["val_top1_finetuned"] <= 1.0
    middle = leanvision.load(out / "steps" / "step-1")
    assert middle.card["stage"] == "prune"
    assert leanvision.load(out).card["parent"] == str(out / "steps" / "step-1")
    assert summary["pruning"]["params_fraction"] <= 0.61


def test_auto_scope_keeps_the_pruning_that_loses_less_before_finetuning(base, tmp_path):
    summary = prune(base, out=tmp_path / "auto", ratio=0.4, finetune_epochs=0, check=False,
                    **TUNE)
    step = summary["pruning"]["steps"][0]
    scores = step["scope_val_top1"]
    assert set(scores) == {"global", "layer"} and step["scope"] in scores
    assert scores[step["scope"]] == max(scores.values())
    assert step["val_top1_pruned"] == pytest.approx(scores[step["scope"]])
    # the choice quotes the paired comparison of the two scopes on the same images
    between = step["scope_comparison"]
    assert between["kept"] == step["scope"] and between["other"] != step["scope"]
    assert step["scope_note"].startswith(f"scope {step['scope']} over {between['other']}")
    # and the step states what it cost against the parent
    against = step["finetuned_vs_parent"]
    assert against["images"] == summary["metrics"]["val"]["n"]
    assert "95% interval" in step["finetuned_vs_parent_text"]


def test_frozen_layers_are_kept_whole():
    model = create_model("airnet_s", 10)  # its whitening filters are set from data, frozen
    with pytest.warns(UserWarning, match="pruning skips 'whiten'.*frozen"):
        kept = layers_to_keep(model)
    assert model.whiten in kept


@pytest.mark.parametrize("importance", ["bn", "taylor"])
def test_other_importances_prune_without_finetuning(base, tmp_path, importance):
    out = tmp_path / importance
    summary = prune(base, out=out, ratio=0.3, target="channels", importance=importance,
                    finetune_epochs=0, check=False, **TUNE)
    assert summary["pruning"]["params_fraction"] < 0.8
    assert leanvision.load(out).card["pruning"]["config"]["importance"] == importance


def test_unstructured_masks_survive_finetuning_and_keep_shapes(base, tmp_path):
    out = tmp_path / "sparse"
    summary = prune(base, out=out, method="unstructured", ratio=0.6, finetune_epochs=1,
                    check=False, **TUNE)
    assert summary["pruning"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    art, parent = leanvision.load(out), leanvision.load(base)
    assert [p.shape for p in art.model.parameters()] == [p.shape for p in
                                                        parent.model.parameters()]
    assert not art.card["transforms"]


def test_soft_filter_pruning_removes_the_zeroed_channels(base, tmp_path):
    out = tmp_path / "soft"
    summary = prune(base, out=out, method="soft", ratio=0.25, finetune_epochs=2, **TUNE)
    assert summary["pruning"]["params_fraction"] < 0.85
    assert (out / "steps" / "soft-finetune" / "model.json").is_file()
    assert leanvision.load(out).card["parent"] == str(out / "steps" / "soft-finetune")


def test_depthwise_network_prunes_and_rebuilds_from_the_card(tmp_path):
    """efficientnet_lite0 (depthwise convs, BN-act modules) rebuilt from name + structure."""
    from leanvision.compress.prune import _transforms
    from leanvision.compress.pruning import prune_to

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=3).eval()
    example = torch.randn(1, 3, 64, 64)
    prune_to(model, example, measure(model, example), target="flops", goal=0.6,
             importance="l2", global_scope=True, max_layer_ratio=0.8)
    card = {"arch": "efficientnet_lite0", "arch_kwargs": {}, "transforms": []}
    art = type("A", (), {"card": card, "num_classes": 3})()
    transforms = _transforms(art, model)
    rebuilt = create_model("efficientnet_lite0", num_classes=3)
    state = model.state_dict()
    apply_transforms(rebuilt, transforms, state)
    rebuilt.load_state_dict(state)
    rebuilt.eval()
    assert torch.equal(rebuilt(example), model(example))


@pytest.mark.parametrize("settings, message", [
    (dict(ratio=1.5), "--ratio must be between 0 and 1"),
    (dict(ratio=0.0), "--ratio must be between 0 and 1"),
    (dict(max_layer_ratio=1.0), "cut the network in two"),
    (dict(method="unstructured", target="flops"), "--target params"),
    (dict(importance="magic"), "--importance 'magic' is unknown"),
])
def test_bad_settings_are_refused_before_anything_is_written(base, tmp_path, settings, message):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=message):
        prune(base, out=out, **{"finetune_epochs": 0, **settings})
    assert not out.exists()


def test_an_unreachable_target_says_what_to_change(base, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="lower --ratio or raise --max-layer-ratio"):
        prune(base, out=out, ratio=0.95, max_layer_ratio=0.5, finetune_epochs=0, **TUNE)
    assert not (out / "model.json").exists()


def test_data_with_other_classes_is_refused(base, tmp_path):
    other = make_image_folder(tmp_path / "other", per_class=4,
                              classes={"cat": (1, 2, 3), "dog": (200, 200, 200)})
    with pytest.raises(ConfigError, match="differ from the artifact's"):
        prune(base, other, out=tmp_path / "never", finetune_epochs=0)
    assert not (tmp_path / "never").exists()


def test_attention_models_are_refused_with_the_alternative():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(8, 2)

    with pytest.raises(ModelError, match="--method unstructured"):
        refuse_attention(Tiny(), "tiny")


def test_cli_prune_prints_json_and_fails_cleanly(base, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["prune", str(base), "--out", str(out), "--ratio", "0.3",
                                 "--finetune-epochs", "0", "--no-check", "--json"])
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    assert reply["ok"] and reply["pruning"]["flops_fraction"] <= 0.7
    bad = runner.invoke(app, ["prune", str(base), "--ratio", "2", "--json"])
    assert bad.exit_code == 2
    assert "--ratio" in json.loads(bad.stdout.strip().splitlines()[-1])["error"]
