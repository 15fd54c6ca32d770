"""Training an image + text classifier: `leanvision.train(DATA.csv, text_columns=[...])` comes
here. Same recipe, hardware choice, decode scan, fit loop (with the text ids as the loop's second
input), checkpoints and card as an image model; only the network and its inputs differ."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from ..artifact import Artifact, make_card, save_artifact
from ..data.partition import partition
from ..errors import ConfigError
from ..evaluate import model_cost
from ..hardware import choose_hardware, describe_machine
from ..io import write_atomic, write_json
from ..models import create_model, model_preprocessing
from ..training.api import balance_weights, check_fresh, decode_partition, default_run_dir
from ..training.checkpoint import find_checkpoint, load_checkpoint
from ..training.config import TrainConfig
from ..training.finish import TRAIN_PROBE_PIXELS, training_record
from ..training.loop import FitInputs, fit
from ..training.param_setup import scale_norm_lr
from ..training.recipe import data_stats, resolve_recipe
from ..training.report import diagnose_fit, print_config, print_counts, print_summary
from .config import MultimodalConfig, split_settings
from .data import describe_report, encode_rows, prepare_source
from .encoders import load_minilm_weights
from .evaluate import evaluate_records_multimodal
from .fusion import FusedClassifier, aux_criterion
from .model import BLOCK, TEXT_ONLY_ARCH, TOKENIZER_FILE, block, build_model, new_tokenizer

RUN_CONFIG = "config.json"


def is_multimodal_run(resume: str | Path | None) -> bool:
    """Whether the run a --resume names was a multimodal one (its config.json says so)."""
    if resume is None:
        return False
    try:
        saved = json.loads((find_checkpoint(resume).parent / RUN_CONFIG).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return BLOCK in saved


def train_multimodal(data: str | Path, out: str | Path | None = None, *,
                     resume: str | Path | None = None, console: Console | None = None,
                     on_epoch_end: Callable | None = None, **settings: Any) -> dict[str, Any]:
    """Train on a CSV with image paths, text columns and labels; write a fused artifact.

    `settings` are TrainConfig fields plus MultimodalConfig fields (text_columns, fusion,
    text_encoder, text_finetune, max_tokens, empty_text, ...)."""
    console = console or Console(stderr=True)
    state = None
    if resume is not None:
        ckpt = find_checkpoint(resume)
        state = load_checkpoint(ckpt)
        saved = json.loads((ckpt.parent / RUN_CONFIG).read_text("utf-8"))
        extra = sorted(k for k, v in settings.items()
                       if v is not None and k not in ("epochs", "progress"))
        if extra:
            raise ConfigError("--resume continues a run with its saved settings; only --epochs "
                              f"may change (got {', '.join(extra)})")
        cfg = TrainConfig.from_dict(saved["config"])
        if settings.get("epochs"):
            cfg = replace(cfg, epochs=int(settings["epochs"]))
        mm = MultimodalConfig.from_dict(saved[BLOCK])
        out_dir = ckpt.parent
    else:
        ours, rest = split_settings(settings)
        mm = MultimodalConfig.from_dict(ours)
        cfg = TrainConfig.from_dict({"data": str(data), **rest})
        out_dir = Path(out) if out is not None else default_run_dir(cfg)
        check_fresh(out_dir)
    _refuse_unsupported(cfg)
    source, data_report = prepare_source(cfg.data, mm)
    return _train(source, data_report, cfg, mm, out_dir, state, console, on_epoch_end)


def _refuse_unsupported(cfg: TrainConfig) -> None:
    if cfg.mixup or cfg.cutmix:
        raise ConfigError("--mixup/--cutmix blend images but not their text; they are not "
                          "supported with --text-columns")
    if cfg.unlabeled:
        raise ConfigError("--unlabeled (semi-supervised) is for image-only models; drop it or "
                          "--text-columns")
    if cfg.finetune not in ("auto", "full"):
        raise ConfigError(f"--finetune {cfg.finetune} is not supported with --text-columns "
                          "(the image branch trains fully); use auto or full")


def _train(source, data_report: dict, cfg: TrainConfig, mm: MultimodalConfig, out_dir: Path,
           state: dict | None, console: Console, on_epoch_end: Callable | None) -> dict[str, Any]:
    started = time.perf_counter()
    parts = partition(source, cfg.val_fraction, cfg.seed)
    num_classes = len(source.classes)
    notes: list[str] = []
    if state is None:
        if cfg.recipe == "auto":
            # The fast recipe's decoupled rates and lookahead are tuned for the image net alone.
            cfg = replace(cfg, recipe="standard")
            notes.append("recipe standard: multimodal models use the standard recipe")
        cfg, more = resolve_recipe(cfg, data_stats(parts.train, num_classes))
        notes += more
    hw = choose_hardware(cfg.device, cfg.precision, cfg.channels_last)

    torch.manual_seed(cfg.seed)
    text_only = mm.fusion == "text-only"
    image = None if text_only else create_model(
        cfg.model, num_classes, pretrained=cfg.pretrained if state is None else False,
        drop_rate=cfg.dropout, img_size=cfg.img_size)
    pre = model_preprocessing(image if image is not None else cfg.model)
    input_size = (cfg.img_size, cfg.img_size) if cfg.img_size else tuple(pre["input_size"])
    arch = TEXT_ONLY_ARCH if text_only else cfg.model
    arch_kwargs = {"img_size": cfg.img_size} if cfg.img_size and not text_only else {}
    tokenizer = new_tokenizer(mm)
    mm_block = block(mm, tokenizer, data_report)
    model = build_model({"arch": arch, "arch_kwargs": arch_kwargs, BLOCK: mm_block},
                        num_classes, image=image)
    if mm.text_encoder == "minilm" and state is None:
        load_minilm_weights(model.text)
    if not mm.finetune_text:
        model.text.requires_grad_(False)

    print_config(console, cfg, notes, hw, input_size, out_dir)
    console.print(f"text: columns {', '.join(mm.text_columns)}; encoder {mm.text_encoder} "
                  f"({'fine-tuned' if mm.finetune_text else 'frozen'}), fusion {mm.fusion}, "
                  f"{mm.max_tokens} tokens; {describe_report(data_report)}")

    train_imgs, val_imgs = decode_partition(parts, input_size, cfg)
    print_counts(console, cfg, source.classes, train_imgs, val_imgs, parts)
    train_ids = encode_rows(tokenizer, parts.train, train_imgs.kept)
    val_ids = encode_rows(tokenizer, parts.val, val_imgs.kept) if val_imgs is not None else None
    skipped = train_imgs.bad + (val_imgs.bad if val_imgs is not None else [])
    class_w, sample_w = balance_weights(cfg.balance, train_imgs.labels, num_classes)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RUN_CONFIG, {"config": cfg.to_dict(), BLOCK: mm.to_dict(),
                                      "recipe_notes": notes, "machine": describe_machine()})
    result = fit(FitInputs(model=model, num_classes=num_classes,
                           param_groups=_param_groups(model, cfg, mm),
                           train=train_imgs, val=val_imgs, mean=pre["mean"], std=pre["std"],
                           class_weights=class_w, sample_weights=sample_w,
                           on_epoch_end=on_epoch_end,
                           criterion=aux_criterion(model, cfg.label_smoothing or 0.0,
                                                   0.0 if text_only else mm.aux_weight, class_w),
                           train_extra=train_ids, val_extra=val_ids),
                 cfg, hw, out_dir, resume=state, console=console)

    model = model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    model.load_state_dict(result.best_state)
    card = make_card(arch=arch, arch_kwargs=arch_kwargs, classes=source.classes,
                     input_size=input_size, mean=pre["mean"], std=pre["std"], stage="train",
                     config=cfg.to_dict(), interpolation=pre.get("interpolation", "bilinear"),
                     tta=cfg.tta or "none")
    card[BLOCK] = mm_block
    _copy_tokenizer(tokenizer, out_dir)
    save_artifact(out_dir, model, {**card, "metrics": {}})
    art = Artifact(path=out_dir, card=card, model=model)
    card["metrics"] = _final_metrics(art, parts, cfg)
    # FLOPs are counted on the image branch (the text cost depends on the text's length).
    card["metrics"].update(model_cost(model, input_size, out_dir) if not text_only else
                           {"params": sum(p.numel() for p in model.parameters()), "flops": 0})
    card["training"] = training_record(result, "full", skipped, hw, started, parts)
    save_artifact(out_dir, model, card)
    summary = {"artifact": str(out_dir), "model": arch, "stage": "train",
               "fusion": mm.fusion, "text_encoder": mm.text_encoder,
               "classes": num_classes, "metrics": card["metrics"], "training": card["training"]}
    print_summary(console, summary, out_dir)
    return summary


def _param_groups(model: FusedClassifier, cfg: TrainConfig, mm: MultimodalConfig) -> list[dict]:
    """Trainable parameters in groups: decay / no decay (1-D tensors: biases, norms,
    embedding-free scalars), and a fine-tuned MiniLM at text_lr_scale x the rate."""
    text_ids = {id(p) for p in model.text.parameters()}
    text_scale = mm.text_lr_scale if mm.text_encoder == "minilm" else 1.0
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "text" if id(p) in text_ids else "body"
        decay = p.ndim > 1 and "embed" not in name
        key = f"{part}_{'decay' if decay else 'no_decay'}"
        group = groups.setdefault(key, {
            "params": [], "name": key, "lr": cfg.lr * (text_scale if part == "text" else 1.0),
            "weight_decay": cfg.weight_decay if decay else 0.0})
        group["params"].append(p)
    return scale_norm_lr(model, list(groups.values()), cfg.norm_lr_scale or 1.0)


def _copy_tokenizer(tokenizer, out_dir: Path) -> None:
    path = getattr(tokenizer, "path", None)
    if path is not None:  # WordPiece: the vocabulary must travel with the weights
        write_atomic(out_dir / TOKENIZER_FILE, lambda tmp: shutil.copyfile(path, tmp))


def _final_metrics(art: Artifact, parts, cfg: TrainConfig) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    rng = np.random.default_rng(cfg.seed)
    n_probe = min(len(parts.train), TRAIN_PROBE_PIXELS // (64 * 64))
    probe = parts.train.subset(np.sort(rng.choice(len(parts.train), n_probe, replace=False)))
    for split, records in (("train", probe), ("val", parts.val), ("test", parts.test)):
        if records is None or not len(records):
            continue
        result = evaluate_records_multimodal(art, records, split, cfg.data,
                                             skip_bad_images=cfg.skip_bad_images,
                                             device=cfg.device, fallback=split != "train")
        keep = ("n", "top1", "loss", "macro_f1", "ece")
        metrics[split] = {k: v for k, v in result["metrics"].items()
                          if k in keep or k.startswith("top")}
        if split != "train":
            metrics[split]["per_class"] = result["metrics"]["per_class"]
            metrics[split]["confusion"] = result["metrics"]["confusion"]
            if "fallback" in result:
                metrics[split]["top1_without_text"] = result["fallback"]["top1_without_text"]
            metrics[split]["rows_without_text"] = result["text"]["without_text"]
    metrics["fit"] = diagnose_fit(metrics)
    return metrics
