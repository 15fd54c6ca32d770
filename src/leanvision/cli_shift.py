"""CLI skins of the distribution-shift verbs (robustness, adapt); registered on cli.app."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from .cli import JSON_OPT, OUT_OPT, TTA_OPT, app, err_console, out_console, run_verb


@app.command("robustness")
def robustness_cmd(
    artifact: Path = typer.Argument(..., help="Artifact folder."),
    data: str | None = typer.Option(None, help="Data to score (default: the training data)."),
    split: str = typer.Option("auto", help="auto (test, else val), train, val, test or all."),
    severities: str = typer.Option("1,3,5", help="Comma list of CIFAR-10-C severities 1..5."),
    families: str = typer.Option("all", help="Comma list of gaussian_noise, gaussian_blur, "
                                 "jpeg_compression, brightness, contrast, pixelate; or all."),
    runtime: str = typer.Option("auto", help="auto (what the artifact ships: INT8 ONNX for a "
                                "quantized one), torch, onnx-fp32 or onnx-int8."),
    tta: str | None = TTA_OPT,
    max_images: int | None = typer.Option(None, help="Score a seeded random subset this big."),
    batch_size: int = typer.Option(256),
    seed: int = typer.Option(0, help="Seed of the noise (and of --max-images)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for robustness.json "
                                    "(default: the artifact folder)."),
    skip_bad_images: bool = typer.Option(False),
    device: str = typer.Option("auto"),
    as_json: bool = JSON_OPT,
) -> None:
    """Accuracy under CIFAR-10-C corruptions: per family and severity, mean and drop."""
    from .shift import robustness

    run_verb(lambda: robustness(artifact, data, out=out, split=split, severities=severities,
                                families=families, seed=seed, max_images=max_images,
                                batch_size=batch_size, runtime=runtime, tta=tta, device=device,
                                skip_bad_images=skip_bad_images, progress=sys.stderr.isatty(),
                                console=err_console),
             as_json, lambda r: out_console.print(
                 f"clean {100 * r['clean_top1']:.2f}%, mean corruption accuracy "
                 f"{100 * r['mean_corruption_top1']:.2f}% (drop {100 * r['mean_drop']:.2f} "
                 f"pts); {r['json']}"))


@app.command("adapt")
def adapt_cmd(
    artifact: Path = typer.Argument(..., help="Artifact folder to adapt."),
    target: Path = typer.Option(..., "--target", help="Folder of unlabelled images from the "
                                "deployment domain (flat or in subfolders)."),
    method: str = typer.Option("adabn", help="adabn (re-estimate batch-norm statistics; "
                               "seconds) or dann (domain-adversarial fine-tuning; stronger)."),
    data: str | None = typer.Option(None, "--data", help="DANN: labelled source data (default: "
                                    "the data named in the artifact's card)."),
    out: Path | None = OUT_OPT,
    min_target_images: int = typer.Option(32, help="Refuse target folders with fewer images."),
    epochs: int | None = typer.Option(None, help="DANN: fine-tuning epochs (default 10)."),
    batch_size: int | None = typer.Option(None, help="AdaBN: images per statistics batch "
                                          "(256); DANN: training batch."),
    lr: float | None = typer.Option(None, help="DANN: rate (default 1e-3 AdamW)."),
    optimizer: str | None = typer.Option(None, help="DANN: optimizer."),
    augment: str | None = typer.Option(None, help="DANN: none, light, strong."),
    domain_weight: float = typer.Option(1.0, help="DANN: weight of the domain loss."),
    target_bn: bool = typer.Option(True, help="DANN: finish with AdaBN on the target."),
    skip_bad_images: bool = typer.Option(False, help="Adapt without unreadable images "
                                         "(target, and DANN's source data)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    precision: str | None = typer.Option(None, help="DANN: auto, fp32, bf16 or fp16."),
    seed: int = typer.Option(0),
    as_json: bool = JSON_OPT,
) -> None:
    """Adapt ARTIFACT to unlabelled TARGET images; writes a new artifact."""
    from .shift import adapt

    settings: dict[str, Any] = {k: v for k, v in dict(
        epochs=epochs, lr=lr, optimizer=optimizer, augment=augment,
        precision=precision).items() if v is not None}
    run_verb(lambda: adapt(artifact, target, out, method=method, data=data,
                           min_target_images=min_target_images, batch_size=batch_size,
                           domain_weight=domain_weight, target_bn=target_bn, seed=seed,
                           device=device, skip_bad_images=skip_bad_images,
                           progress=sys.stderr.isatty(), console=err_console, **settings),
             as_json, lambda r: out_console.print(f"artifact: {r['artifact']}"))
