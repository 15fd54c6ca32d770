"""`leanvision.info`: what an artifact is, where it came from and what it measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from .artifact import read_card


def info(artifact: str | Path) -> dict[str, Any]:
    """The card plus the files of the artifact folder and their sizes; loads no weights."""
    folder, card = read_card(artifact)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith(".")}
    return {"path": str(folder), "files": files, **card}


def print_info(console: Console, card: dict[str, Any]) -> None:
    """`leanvision info`'s description of an artifact's card."""
    console.print(f"[bold]{card['path']}[/bold]: {card['arch']} "
                  f"({card['num_classes']} classes), stage {card.get('stage')}, "
                  f"parent {card.get('parent')}")
    inp = card["input"]
    console.print(f"input {inp['size'][0]}x{inp['size'][1]}, mean {inp['mean']}, "
                  f"std {inp['std']}")
    metrics = card.get("metrics", {})
    for split in ("train", "val", "test"):
        if split in metrics:
            console.print(f"{split}: top-1 {metrics[split]['top1']:.4f}, "
                          f"ECE {metrics[split]['ece']:.4f}")
    if "params" in metrics:
        console.print(f"{metrics['params']:,} params, {metrics['flops'] / 1e6:.1f} MFLOPs")
    for name, size in card["files"].items():
        console.print(f"  {name}  {size:,} B")
