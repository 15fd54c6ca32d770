"""`leanvision.prune`: artifact in, smaller artifact out.

Structured pruning removes channels through Torch-Pruning's dependency graph, so the network is
really smaller and faster, in steps: prune a step, fine-tune, record the accuracy, repeat to the
target. Unstructured pruning zeroes single weights (masks held during fine-tuning, then made
permanent); soft filter pruning zeroes whole filters every epoch, lets them regrow, and removes
them at the end. The card records the new channel counts, so the artifact reloads without pickle."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from ..artifact import Artifact, load, read_card, save_artifact
from ..data import ImageChecks, decode_images, decoding_for, normalize
from ..data.partition import Partition, partition
from ..errors import ConfigError
from ..setting import setting
from ..tracking import tracked
from ..training import distributed
from ..training.api import StartModel, train_on
from ..training.config import TrainConfig
from . import pruning
from .checks import check_pruned
from .evidence import Predictions, val_predictions
from .prune_evidence import step_record
from .prune_steps import _save_untrained, _stepwise, _transforms
from .report import print_prune_plan, print_prune_summary
from .stage import check_fresh, data_of, default_out, matching_data, open_parent

METHODS = ("structured", "unstructured", "soft")
TARGETS = ("flops", "params", "channels")
SCOPES = ("auto", "global", "layer")
TAYLOR_IMAGES = 256


@dataclass
class PruneConfig:
    """What to remove and how to recover. `ratio` is the fraction removed: with target "flops",
    0.5 leaves at most half the FLOPs; with "channels", half of each layer's (or, globally, of
    all) channels; for unstructured pruning it is the share of weights set to zero."""

    ratio: float = setting(0.5, "Fraction removed: of the FLOPs, params, channels, or "
                           "(unstructured) of the weights.")
    target: str | None = setting(None, "flops, params or channels (default: flops; channels "
                                 "for soft, params for unstructured).")
    method: str = setting("structured", "structured, unstructured or soft.")
    importance: str = setting("l2", "l1, l2, bn (batch-norm scale) or taylor.")
    # auto: global ranking cut airnet_m's first convolutions to a quarter and left it at chance;
    # per-layer kept 42%. Soft and unstructured pruning rank globally.
    scope: str = setting("auto", "global (rank channels across layers), layer, or auto (try "
                         "both, keep the one that loses less val accuracy).")
    steps: int = setting(1, "Prune in this many steps, fine-tuning after each.")
    finetune_epochs: int = setting(5, "Fine-tuning epochs per step (0: none).")
    max_layer_ratio: float = setting(0.9, "No layer loses more than this share.")
    # Odd widths push oneDNN/MLAS off their vector paths: resnet20 at 50% FLOPs with free widths
    # (some 1-7 channels) ran slower than unpruned in ONNX Runtime at batch 1 and trained 40%
    # slower; multiples of 8 made it 1.3x faster.
    round_to: int = setting(8, "Keep channel counts multiples of this (vector-friendly widths "
                            "run faster; 1: any width).")
    check: bool = setting(True, "Check forward, ONNX export and a fresh reload.")

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"--ratio must be between 0 and 1 (the fraction removed), got "
                              f"{self.ratio}")
        _choice("--method", self.method, METHODS)
        _choice("--importance", self.importance, ("l1", "l2", "bn", "taylor"))
        _choice("--scope", self.scope, SCOPES)
        if self.target is None:
            self.target = {"structured": "flops", "soft": "channels",
                           "unstructured": "params"}[self.method]
        _choice("--target", self.target, TARGETS)
        if self.method == "unstructured" and self.target != "params":
            raise ConfigError("unstructured pruning zeroes single weights, which removes no dense "
                              "FLOPs or channels; use --target params (the share of weights "
                              "zeroed), or --method structured")
        if self.method == "soft" and self.target != "channels":
            raise ConfigError("soft filter pruning removes a fixed share of channels; use "
                              "--target channels")
        if self.method == "soft" and self.finetune_epochs < 1:
            raise ConfigError("soft filter pruning happens during fine-tuning; set "
                              "--finetune-epochs to 1 or more")
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if self.finetune_epochs < 0:
            raise ConfigError(f"--finetune-epochs must be 0 or more, got {self.finetune_epochs}")
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise ConfigError("--max-layer-ratio must be between 0 and 1: pruning every channel "
                              f"of a layer would cut the network in two (got "
                              f"{self.max_layer_ratio})")
        if self.round_to < 1:
            raise ConfigError(f"--round-to must be a positive channel count, got {self.round_to}")

    def goal(self, step: int) -> float:
        """The fraction of the target kept after `step` of `steps` (linear in what is removed)."""
        return 1.0 - self.ratio * step / self.steps


@dataclass
class PruneOptions:
    """prune's fine-tuning settings as `leanvision prune` offers them (TrainConfig fields, unset
    unless given, so the stage's own defaults apply)."""

    artifact: str = setting(None, "Artifact folder to prune.")
    data: str | None = setting(None, "Data to fine-tune on (default: the data named in the "
                               "artifact's card).")
    batch_size: int | None = setting(None, "Fine-tuning batch size.")
    lr: float | None = setting(None, "Fine-tuning rate (default 1e-3 AdamW).")
    optimizer: str | None = setting(None, "Fine-tuning optimizer.")
    augment: str | None = setting(None, "none, light, strong.")
    device: str = setting(TrainConfig.device, "auto, cpu or cuda.")
    precision: str = setting(TrainConfig.precision, "auto, fp32, bf16 or fp16.")
    nproc: int = setting(1, "Data-parallel processes for the fine-tuning, as for train "
                         "(--batch-size is global).")
    # unset: the data is read as the parent artifact was trained (with or without bad images)
    skip_bad_images: bool | None = setting(None, "Leave out images that cannot be decoded "
                                           "(default: as the parent artifact was trained).")


@tracked("prune", "artifact")
@decoding_for("prune")
def prune(artifact: str | Path, data: str | Path | None = None, out: str | Path | None = None, *,
          ratio: float = 0.5, target: str | None = None, method: str = "structured",
          importance: str = "l2", scope: str = "auto", steps: int = 1,
          finetune_epochs: int = 5, max_layer_ratio: float = 0.9, round_to: int = 8,
          check: bool = True, console: Console | None = None, nproc: int = 1,
          **train_settings: Any) -> dict[str, Any]:
    """Prune ARTIFACT and fine-tune it on DATA (default: the data it was trained on); returns
    a summary with the cost before and after and the accuracy after every step.

    `nproc`: data-parallel processes for the fine-tuning, as for train (training/distributed.py;
    also under torchrun). Rank 0 prunes and writes every file; the others fine-tune the network
    it shares with them, and every process returns the same summary. skip_bad_images, unless
    given, is the parent's (the data it was trained without its unreadable images)."""
    flags = dict(ratio=ratio, target=target, method=method, importance=importance, scope=scope,
                 steps=steps, finetune_epochs=finetune_epochs, max_layer_ratio=max_layer_ratio,
                 round_to=round_to, check=check)
    cfg = PruneConfig(**flags)  # a bad flag is refused here, before any process starts
    if nproc != 1:  # check_nproc refuses 0 and below
        return distributed.relaunch(
            prune, dict(artifact=artifact, data=data, **flags), nproc=nproc,
            settings=train_settings, out=out, check_out=check_fresh, what="pruning",
            default_out=lambda: _default_out(read_card(artifact)[0]))
    world = distributed.join(train_settings.get("device", "auto"))
    console = console or Console(stderr=True)
    if not world.main:
        console = Console(stderr=True, quiet=True)
    started = time.perf_counter()
    art = _open(artifact, cfg)
    data_spec = data_of(art, data, "the artifact's card does not say which data it was trained "
                        "on; pass the data to fine-tune on (leanvision prune ARTIFACT --data "
                        "DIR)")
    train_cfg = _finetune_config(art, data_spec, cfg, train_settings)
    # Rank 0's folder: under torchrun each process's default name has its own time stamp.
    out_dir = distributed.share(Path(out) if out is not None else _default_out(art.path), world)
    check_fresh(out_dir)
    source = matching_data(data_spec, art, lambda classes: (
        f"the data's classes ({_short(classes)}) differ from the artifact's "
        f"({_short(art.classes)}); prune with the data the model was trained on"))
    parts = partition(source, train_cfg.val_fraction, train_cfg.seed)

    model = art.model.float().eval()
    h, w = art.input_size
    example = torch.randn(1, 3, h, w)
    base = pruning.measure(model, example)
    print_prune_plan(console, art, cfg, base, out_dir)
    # Only rank 0 ranks channels (the others get its network), so Taylor's data runs once.
    taylor = cfg.importance == "taylor" and world.main
    gradients = _taylor_gradients(parts, art) if taylor else None
    skipped = _skipped_layers(model, console)
    # What every step and scope choice is compared with, image by image (before any cut).
    parent_val = val_predictions(art, parts) if world.main else None

    history: list[dict[str, Any]] = []
    if cfg.method == "soft":
        summary = _soft(art, model, example, cfg, source, parts, train_cfg, out_dir, console,
                        history, parent_val)
    else:
        summary = _stepwise(art, model, example, base, cfg, source, parts, train_cfg, out_dir,
                            console, history, gradients, parent_val)
    if not world.main:  # rank 0 checks and writes the final artifact; the others get its summary
        return distributed.share(None, world)
    record = _finish(out_dir, example, cfg, base, history, skipped, started)
    summary = {**summary, "pruning": record}
    print_prune_summary(console, summary, out_dir)
    return distributed.share(summary, world)


def _open(artifact: str | Path, cfg: PruneConfig) -> Artifact:
    art = open_parent(artifact, "prune")
    if any(t.get("kind") == "fold_bn" for t in art.card.get("transforms", [])):
        raise ConfigError(f"{art.path} is quantization-ready (batch norm folded); prune the model "
                          "before quantizing it, e.g. its parent artifact")
    if cfg.method != "unstructured":
        pruning.refuse_attention(art.model, art.card["arch"])
    return art


def _skipped_layers(model: torch.nn.Module, console: Console) -> list[str]:
    """The layers pruning leaves alone (warned once each, and recorded in the card)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruning.layers_to_keep(model)
    skipped = sorted({str(c.message) for c in caught if "pruning skips" in str(c.message)})
    for message in skipped:
        console.print(f"[yellow]warning:[/] {message}")
    return skipped


def _finish(out_dir: Path, example: torch.Tensor, cfg: PruneConfig, base, history: list,
            skipped: list[str], started: float) -> dict[str, Any]:
    """Check the final artifact and add the "pruning" block to its card; returns the block."""
    final = load(out_dir)
    result = pruning.measure(final.model, example)
    checks = check_pruned(final, out_dir, example) if cfg.check else {}
    record = {"config": asdict(cfg), "base": asdict(base), "result": asdict(result),
              "flops_fraction": result.flops / base.flops,
              "params_fraction": result.params / base.params,
              "sparsity": pruning.sparsity_of(final.model), "steps": history,
              "skipped_layers": skipped, "checks": checks,
              "seconds": round(time.perf_counter() - started, 2)}
    final.card["pruning"] = record
    save_artifact(out_dir, final.model, final.card)
    return record


def _soft(art: Artifact, model: torch.nn.Module, example: torch.Tensor, cfg: PruneConfig,
          source, parts: Partition, train_cfg: TrainConfig, out_dir: Path, console: Console,
          history: list, parent_val: Predictions | None) -> dict[str, Any]:
    def zero(epoch: int, net: torch.nn.Module) -> None:
        pruning.zero_weakest_filters(net, example.to(next(net.parameters()).device), cfg.ratio,
                                     cfg.importance, cfg.scope == "global", cfg.max_layer_ratio,
                                     round_to)

    round_to = cfg.round_to if cfg.round_to > 1 else None
    soft_dir = out_dir / "steps" / "soft-finetune"
    start = StartModel.from_artifact(art, model=model)
    # Every process starts from the same file and zeroes the same filters each epoch: the
    # ranking reads only the weights, which DistributedDataParallel keeps equal.
    summary = train_on(source, train_cfg, soft_dir, console=console, parts=parts, start=start,
                       stage="prune", parent=str(art.path), epoch_hook=zero)
    if not distributed.world().main:  # rank 0 holds the best weights; it removes and writes
        return summary
    model = model.cpu().float().eval()
    zero(cfg.finetune_epochs, model)
    base = pruning.measure(model, example)
    # The zeroed groups have the smallest norms, so a magnitude step removes exactly them.
    pruning.prune_to(model, example, base, target="channels", goal=1.0 - cfg.ratio,
                     importance="l2", global_scope=cfg.scope != "layer",
                     max_layer_ratio=cfg.max_layer_ratio, round_to=round_to)
    start = StartModel.from_artifact(art, model=model, transforms=_transforms(art, model))
    summary = _save_untrained(start, art, source, parts, out_dir, train_cfg, str(soft_dir))
    history.append({"step": 1, "goal": 1.0 - cfg.ratio, "artifact": str(out_dir),
                    "val_top1_soft": summary["metrics"].get("val", {}).get("top1"),
                    "val_top1_finetuned": summary["metrics"].get("val", {}).get("top1"),
                    **step_record(parent_val, None, val_predictions(load(out_dir), parts))})
    return summary


def _taylor_gradients(parts: Partition, art: Artifact):
    """Taylor importance needs |w * dL/dw|: gradients of the loss on a fixed batch of training
    images, recomputed before every pruning step (the weights change)."""
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(parts.train), generator=g)[:TAYLOR_IMAGES].sort().values
    decoded = decode_images(parts.train.subset(pick.numpy()), art.input_size, ImageChecks(),
                            skip_bad=True)
    x = normalize(decoded.images, art.mean, art.std)
    y = decoded.labels

    def gradients(model: torch.nn.Module) -> None:
        F.cross_entropy(model(x), y).backward()

    return gradients


def _finetune_config(art: Artifact, data_spec: str, cfg: PruneConfig,
                     settings: dict[str, Any]) -> TrainConfig:
    parent = art.card.get("config", {})
    # The parent's split (seed, hold-out: its val images stay unseen) and skip-bad choice.
    base = {"data": data_spec, "model": art.card["arch"],
            "seed": parent.get("seed", 0), "val_fraction": parent.get("val_fraction", 0.1),
            "skip_bad_images": bool(parent.get("skip_bad_images", False)),
            "epochs": max(1, cfg.finetune_epochs), "warmup_epochs": 0.0}
    if "optimizer" not in settings and "lr" not in settings:
        # A trained network needs a gentle rate; 1e-3 AdamW recovers pruned CNNs within epochs.
        base.update({"optimizer": "adamw", "lr": 1e-3})
    if "model" in settings:
        raise ConfigError("--model does not apply to pruning: the architecture is the artifact's")
    return TrainConfig.from_dict({**base, **settings})


def _default_out(folder: Path) -> Path:
    return default_out("prune", f"{folder.name}-pruned")


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{flag} '{value}' is unknown; choose one of {', '.join(allowed)}")


def _short(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
