"""Fine-tuning strategies: which parameters train, and at which learning rate.

full       everything trains at `lr` (also what "from scratch" means)
probe      only the classifier trains (a linear probe on frozen features)
freeze     stem + first `freeze_stages` stages frozen, the rest at `lr`
lower-lr   everything trains; the backbone at `lr * backbone_lr_scale`, the head at `lr`
lp-ft      probe, then the top stages fine-tune on cached activations of the frozen lower part
           (training/transfer.py); probe and lp-ft run the frozen part once, not per epoch
auto       chosen by `plan_finetune` from the data size and the network
probe-then-lower-lr   (what "auto" picks for small data) probe first, then `unfreeze` and
           switch to lower-lr at `FinetunePlan.unfreeze_at_epoch`
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from timm.models import group_parameters
from torch import nn

from leanvision.errors import ConfigError, ModelError

FINETUNE_STRATEGIES = ("full", "probe", "lp-ft", "freeze", "lower-lr", "auto")
PROBE_THEN_LOWER_LR = "probe-then-lower-lr"

# Below ~30 images per class full fine-tuning overfits and, with a random head, the first large
# gradients distort the pretrained features; probing first and then fine-tuning (LP-FT, Kumar et
# al. 2022) is the safer order. Above it, a lower backbone lr keeps the features while adapting.
FEW_IMAGES_PER_CLASS = 30
# The probe phase only has to fit a linear head, which converges in a fraction of the run.
PROBE_FRACTION = 0.2


@dataclass
class FinetunePlan:
    strategy: str
    frozen_params: int
    trainable_params: int
    unfreeze_at_epoch: int | None
    notes: list[str] = field(default_factory=list)


def plan_finetune(
    strategy: str,
    *,
    pretrained: bool,
    images_per_class: float,
    epochs: int,
    freeze_stages: int = 2,
    cached_top: bool = False,
) -> str:
    """Resolve "auto" into a concrete strategy; other strategies are returned as given.

    `cached_top`: the network can be cut for LP-FT and its images are photos, not thumbnails;
    on a CPU that trains a better model in minutes than any strategy that runs the whole net
    every epoch (bench/results/transfer.json)."""
    _check_strategy(strategy, allow_resolved=True)
    if freeze_stages < 0:
        raise ConfigError(f"freeze_stages must be >= 0, got {freeze_stages}; pass e.g. 2")
    if strategy != "auto":
        return strategy
    if not pretrained:
        return "full"  # nothing to protect in random weights
    if cached_top:
        return "lp-ft"
    if images_per_class < FEW_IMAGES_PER_CLASS:
        # one epoch leaves no room for a second phase
        return "probe" if epochs < 2 else PROBE_THEN_LOWER_LR
    return "lower-lr"


def unfreeze_epoch(strategy: str, epochs: int) -> int | None:
    """The epoch (0-based) at which a probe-then-lower-lr run calls `unfreeze`; else None."""
    if strategy != PROBE_THEN_LOWER_LR or epochs < 2:
        return None
    return min(epochs - 1, max(1, round(epochs * PROBE_FRACTION)))


def param_groups(
    model: nn.Module,
    strategy: str,
    *,
    lr: float,
    weight_decay: float,
    backbone_lr_scale: float = 0.1,
    freeze_stages: int = 2,
    keep_frozen: Collection[str] = (),
) -> list[dict]:
    """Set `requires_grad` for `strategy` and return optimizer param groups.

    `keep_frozen` names parameters the architecture itself holds fixed (e.g. a whitening
    layer or a batch norm's unit scale); no strategy makes them trainable.

    Each group has "params", "lr", "weight_decay" and a "name"; biases and norm weights (1-D
    parameters) get no weight decay, since decaying them only shrinks scales that BN/LN re-learn,
    nor do the tensors a timm model lists in `no_weight_decay()` (ViT's position embedding).
    "probe-then-lower-lr" gives the probe phase's groups; after `unfreeze` ask for "lower-lr".
    """
    _check_strategy(strategy, allow_resolved=True)
    if strategy == "auto":
        raise ConfigError(
            "param_groups needs a concrete strategy; resolve 'auto' with plan_finetune first"
        )
    if strategy == PROBE_THEN_LOWER_LR:
        strategy = "probe"
    head_ids = {id(p) for p in _classifier(model).parameters()}
    if strategy == "probe" and not head_ids:
        raise ModelError("the model has no classifier to probe; build it with num_classes > 0")
    named = list(model.named_parameters())
    frozen: set[str] = set()
    if strategy == "probe":
        frozen = {n for n, p in named if id(p) not in head_ids}
    elif strategy == "freeze":
        frozen = _first_stage_params(model, freeze_stages, head_ids)
    frozen |= set(keep_frozen)
    for n, p in named:
        p.requires_grad_(n not in frozen)

    head_lr, body_lr = lr, lr * backbone_lr_scale if strategy == "lower-lr" else lr
    # timm models name extra tensors to spare from decay (ViT's pos_embed, cls_token)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for n, p in named:
        if n in frozen:
            continue
        if strategy == "lower-lr":
            part = "head" if id(p) in head_ids else "backbone"
        else:
            part = "head" if strategy == "probe" else "all"
        no_decay = p.ndim <= 1 or n in skip
        buckets.setdefault((part, no_decay), []).append(p)
    groups = []
    for (part, no_decay), params in buckets.items():
        groups.append(
            {
                "name": f"{part}{'_no_decay' if no_decay else ''}",
                "params": params,
                "lr": head_lr if part == "head" else body_lr,
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        )
    return groups


def unfreeze(model: nn.Module) -> None:
    """Make every parameter trainable again (the switch of probe-then-lower-lr)."""
    for p in model.parameters():
        p.requires_grad_(True)


def describe_finetune(
    model: nn.Module, strategy: str, *, epochs: int, notes: list[str] | None = None
) -> FinetunePlan:
    """Summarise the state `param_groups` left the model in, for printing and the artifact card."""
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan_notes = list(notes or [])
    at = unfreeze_epoch(strategy, epochs)
    if at is not None:
        plan_notes.append(f"head only until epoch {at}, then all layers at a lower backbone lr")
    if frozen and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        plan_notes.append(
            "frozen layers' BatchNorm statistics still adapt in train mode; call "
            "freeze_norm_stats(model) after model.train() to keep the pretrained ones"
        )
    return FinetunePlan(strategy, frozen, trainable, at, plan_notes)


def freeze_norm_stats(model: nn.Module) -> None:
    """Put every BatchNorm whose parameters are all frozen in eval mode, so a probe or partial
    freeze uses the pretrained running statistics; call after each `model.train()`."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def _check_strategy(strategy: str, *, allow_resolved: bool) -> None:
    valid = FINETUNE_STRATEGIES + ((PROBE_THEN_LOWER_LR,) if allow_resolved else ())
    if strategy not in valid:
        raise ConfigError(
            f"unknown fine-tuning strategy {strategy!r}; choose one of {', '.join(valid)}"
        )


def _classifier(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_classifier", None)
    if get is None:
        raise ModelError(
            f"{type(model).__name__} has no get_classifier(); build it with "
            "leanvision.models.create_model"
        )
    head = get()
    return head if isinstance(head, nn.Module) else nn.ModuleList(head)


def _first_stage_params(model: nn.Module, stages: int, head_ids: set[int]) -> set[str]:
    """Names of the stem's and the first `stages` stages' parameters, by timm's group_matcher."""
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        raise ModelError(
            f"{type(model).__name__} does not describe its stages (no group_matcher); "
            "use the probe or lower-lr strategy"
        )
    spec = matcher(coarse=True)
    by_name = dict(model.named_parameters())
    groups = [
        names
        for _, names in sorted(group_parameters(model, spec).items())
        if not any(id(by_name[n]) in head_ids for n in names)
    ]
    has_stem = isinstance(spec, dict) and spec.get("stem") is not None
    # the last non-head group always trains: freezing everything below the head is `probe`
    available = len(groups) - int(has_stem) - 1
    if stages > available:
        raise ConfigError(
            f"freeze_stages={stages} but {type(model).__name__} has {max(available, 0)} "
            f"stages that can be frozen; pass --freeze-stages 0..{max(available, 0)} or use probe"
        )
    take = stages + int(has_stem) if stages else 0
    return {n for names in groups[:take] for n in names}
