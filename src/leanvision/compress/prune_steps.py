"""The stepwise schedule of structured and unstructured pruning (prune a step, fine-tune,
record, repeat) and the pieces every pruning path shares: the card's structure transform and
the save of a pruned network."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console

from ..artifact import (
    Artifact,
    load,
    load_state_strict,
    make_card,
    save_artifact,
)
from ..data.partition import Partition
from ..evaluate import evaluate_records, model_cost
from ..models import create_model
from ..models.surgery import apply_transforms, structure_diff
from ..training import distributed
from ..training.api import StartModel, train_on
from ..training.config import TrainConfig
from . import pruning
from .checks import check_forward
from .evidence import Predictions, val_predictions
from .prune_evidence import choose_scope, step_record
from .report import prune_step_line

if TYPE_CHECKING:  # prune.py imports this module; the config is only a type here
    from .prune import PruneConfig


def _stepwise(art: Artifact, model: torch.nn.Module, example: torch.Tensor, base, cfg: PruneConfig,
              source, parts: Partition, train_cfg: TrainConfig, out_dir: Path, console: Console,
              history: list, gradients, parent_val: Predictions | None) -> dict[str, Any]:
    """Prune, fine-tune, repeat. With several processes rank 0 prunes, evaluates and writes;
    all of them fine-tune (train_on is rank-aware) the network rank 0 shares. `parent_val`:
    the parent's validation predictions, which every step and scope choice is compared with."""
    w = distributed.world()
    summary: dict[str, Any] = {}
    parent = str(art.path)
    for step in range(1, cfg.steps + 1):
        goal = cfg.goal(step)
        chosen: dict[str, Any] = {}

        def score(net: torch.nn.Module) -> Predictions | None:
            probe = StartModel.from_artifact(art, model=net, transforms=_transforms(art, net))
            return _val_predictions(probe, art, parts)

        masks = (_prune_step(art, model, example, base, cfg, goal, gradients, score, chosen,
                             parent_val) if w.main else None)
        if chosen.get("scope_note"):
            console.print(f"  {chosen['scope_note']}", highlight=False)
        model, transforms, masks = _share_network(art, model, masks, w)
        release = pruning.hold_masks(model, masks) if masks is not None else None
        step_dir = out_dir if step == cfg.steps else out_dir / "steps" / f"step-{step}"
        start = StartModel.from_artifact(art, model=model, transforms=transforms)
        entry: dict[str, Any] = {}
        pruned = None
        if w.main:
            cost = pruning.measure(model, example)
            pruned = _val_predictions(start, art, parts)
            entry = {"step": step, "goal": goal, **chosen, "flops": cost.flops,
                     "params": cost.params, "sparsity": pruning.sparsity_of(model),
                     "val_top1_pruned": None if pruned is None else pruned.top1}
        if cfg.finetune_epochs:
            summary = train_on(source, train_cfg, step_dir, console=console, parts=parts,
                               start=start, stage="prune", parent=parent)
        elif w.main:
            summary = _save_untrained(start, art, source, parts, step_dir, train_cfg, parent)
        if release is not None:
            release()
        if w.main:
            entry["val_top1_finetuned"] = summary["metrics"].get("val", {}).get("top1")
            entry["artifact"] = str(step_dir)
            entry.update(step_record(parent_val, pruned, val_predictions(load(step_dir), parts)))
            history.append(entry)
            console.print(prune_step_line(entry, base, cfg))
        parent = str(step_dir)
    return summary


def _prune_step(art: Artifact, model: torch.nn.Module, example: torch.Tensor, base,
                cfg: PruneConfig, goal: float, gradients,
                score: Callable[[torch.nn.Module], Predictions | None],
                record: dict[str, Any], parent_val: Predictions | None
                ) -> dict[str, torch.Tensor] | None:
    """Remove channels from `model` in place (structured), or return the unstructured masks
    that keep the fraction `goal` of the weights (held by the caller on every process).
    `score(net)`: validation predictions of a pruned candidate, for scope "auto" (the choice
    and its paired comparison noted in `record`)."""
    if cfg.method != "structured":
        return pruning.magnitude_masks(model, 1.0 - goal, cfg.scope != "layer")
    scopes = ("global", "layer") if cfg.scope == "auto" else (cfg.scope,)

    def cut(net: torch.nn.Module, scope: str) -> None:
        pruning.prune_to(net, example, base, target=cfg.target, goal=goal,
                         importance=cfg.importance, global_scope=scope == "global",
                         max_layer_ratio=cfg.max_layer_ratio,
                         round_to=cfg.round_to if cfg.round_to > 1 else None,
                         gradients=gradients)

    if len(scopes) > 1:
        # Pruning is deterministic for a given scope, so each is tried on a copy, scored, and
        # the better one is then applied to the network itself.
        scores = {}
        # Scoring must not move the random state: on several processes only rank 0 scores,
        # and every rank has to draw the same augmentations as one process would.
        with torch.random.fork_rng():
            for scope in scopes:
                trial = copy.deepcopy(model)
                cut(trial, scope)
                scores[scope] = score(trial)
        chosen, decision, _ = choose_scope(scores, parent_val)
        record.update(decision)
        cut(model, chosen)
    else:
        cut(model, scopes[0])
    check_forward(model, example, art.num_classes)
    return None


def _share_network(art: Artifact, model: torch.nn.Module, masks: dict | None,
                   w: distributed.World) -> tuple[torch.nn.Module, list[dict], dict | None]:
    """(model, transforms, masks) as rank 0 has them, on every process. The others rebuild
    rank 0's network from its card transforms and weights instead of pruning themselves: a
    ranking that differs in one tie (Taylor's gradients, GPU arithmetic) would give processes
    differently shaped networks, and after a fine-tuning step only rank 0 holds the best
    epoch's weights."""
    transforms = _transforms(art, model) if w.main else None
    if w.size == 1:
        return model, transforms, masks
    shared = distributed.share((transforms, model.state_dict(), masks) if w.main else None, w)
    if w.main:
        return model, transforms, masks
    transforms, state, masks = shared
    rebuilt = create_model(art.card["arch"], num_classes=art.num_classes,
                           **art.card.get("arch_kwargs", {}))
    apply_transforms(rebuilt, transforms, state)
    load_state_strict(rebuilt, state, source="the network pruned by process 0")
    return rebuilt.float().eval(), transforms, masks


def _transforms(art: Artifact, model: torch.nn.Module) -> list[dict]:
    """The parent's transforms with one `structure` entry describing the pruned widths."""
    reference = create_model(art.card["arch"], num_classes=art.num_classes,
                             **art.card.get("arch_kwargs", {}))
    others = [t for t in art.card.get("transforms", []) if t.get("kind") != "structure"]
    apply_transforms(reference, others)
    modules = structure_diff(reference, model)
    return others + ([{"kind": "structure", "modules": modules}] if modules else [])


def _save_untrained(start: StartModel, art: Artifact, source, parts: Partition, folder: Path,
                    train_cfg: TrainConfig, parent: str) -> dict[str, Any]:
    """An artifact for a model that was edited but not fine-tuned, measured like train's."""
    card = make_card(arch=start.arch, arch_kwargs=start.arch_kwargs, classes=art.classes,
                     input_size=start.input_size, mean=start.mean, std=start.std, stage="prune",
                     parent=parent, config=train_cfg.to_dict(), interpolation=start.interpolation,
                     tta=start.tta, transforms=start.transforms)
    model = start.model.cpu().float().eval()
    save_artifact(folder, model, card)
    new = Artifact(path=folder, card=card, model=model)
    metrics: dict[str, Any] = {}
    for split, records in (("val", parts.val), ("test", parts.test)):
        if records is not None and len(records):
            result = evaluate_records(new, records, split, str(train_cfg.data),
                                      skip_bad_images=train_cfg.skip_bad_images)
            metrics[split] = {k: result["metrics"][k] for k in ("n", "top1", "loss")}
    card["metrics"] = {**metrics, **model_cost(model, start.input_size, folder)}
    save_artifact(folder, model, card)
    return {"artifact": str(folder), "model": start.arch, "stage": "prune",
            "classes": len(art.classes), "metrics": card["metrics"]}


def _val_predictions(start: StartModel, art: Artifact, parts: Partition) -> Predictions | None:
    """A pruned network's validation predictions, read as its artifact would be."""
    probe = Artifact(path=art.path, card={**art.card, "transforms": start.transforms},
                     model=start.model.cpu().float().eval())
    return val_predictions(probe, parts)
