"""The verbs that read an artifact: eval, predict, info, models, explain, report."""

from __future__ import annotations

import typer
from rich.table import Table

from .command import Opt, err_console, fields_of, find, out_console, verb

TEXTS = Opt("Image + text models: the text of each image, in order (repeat; '' for none).",
            type=list[str], flag="--text")


def _show_eval(result: dict) -> None:
    m, cost = result["metrics"], result["cost"]
    out_console.print(f"{result['artifact']} on {result['data']} ({result['split']}, "
                      f"{m['n']} images, TTA {result.get('tta', 'none')})")
    topk = next((k for k in m if k.startswith("top") and k != "top1"), None)
    out_console.print(f"top-1 {m['top1']:.4f}" + (f"  {topk} {m[topk]:.4f}" if topk else "")
                      + f"  macro-F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}  "
                      f"loss {m['loss']:.4f}")
    table = Table("class", "precision", "recall", "F1", "support")
    for name, row in m["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                      f"{row['f1']:.3f}", str(row["support"]))
    out_console.print(table)
    out_console.print(f"{cost['params']:,} params, {cost['flops'] / 1e6:.1f} MFLOPs, "
                      f"{cost.get('size_bytes', 0) / 1e6:.2f} MB on disk")


def _show_predictions(results: list[dict]) -> None:
    for r in results:
        if "error" in r:
            out_console.print(f"{r['image']}: [red]{r['error']}[/red]", highlight=False)
            continue
        top = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        out_console.print(f"{r['image']}: {top}", highlight=False)


def _refuse_failed(results: list[dict]) -> None:
    """Answers for the good images are printed; one unusable image still fails the command."""
    failed = sum(1 for r in results if "error" in r)
    if failed:
        answered = len(results) - failed
        rest = f"the other {answered} were answered" if answered else "so there are no answers"
        err_console.print(f"{failed} of {len(results)} images could not be used (each is "
                          f"listed with its reason); {rest}", highlight=False)
        raise typer.Exit(1)


def _show_info(card: dict) -> None:
    out_console.print(f"[bold]{card['path']}[/bold]: {card['arch']} "
                      f"({card['num_classes']} classes), stage {card.get('stage')}, "
                      f"parent {card.get('parent')}")
    inp = card["input"]
    out_console.print(f"input {inp['size'][0]}x{inp['size'][1]}, mean {inp['mean']}, "
                      f"std {inp['std']}")
    metrics = card.get("metrics", {})
    for split in ("train", "val", "test"):
        if split in metrics:
            out_console.print(f"{split}: top-1 {metrics[split]['top1']:.4f}, "
                              f"ECE {metrics[split]['ece']:.4f}")
    if "params" in metrics:
        out_console.print(f"{metrics['params']:,} params, {metrics['flops'] / 1e6:.1f} MFLOPs")
    for name, size in card["files"].items():
        out_console.print(f"  {name}  {size:,} B")


ARTIFACT = Opt(argument=True)
DATA_TO_SCORE = "Data to score (default: the training data)."

verb("eval", "evaluate:evaluate",
     "Measure accuracy, per-class metrics, calibration and cost on DATA.",
     {"artifact": ARTIFACT, "data": DATA_TO_SCORE, "split": "auto, train, val, test or all.",
      "skip_bad_images": None, "device": None, "tta": None},
     context=(), show=_show_eval)

verb("predict", "predict:predict",
     "Top-k classes for each image.",
     {"artifact": ARTIFACT, "images": Opt(argument=True), "top_k": "Classes to show per image.",
      "device": None, "runtime": "torch, auto (the card's recommendation), onnx-fp32 or "
                                 "onnx-int8.", "tta": None, "text": TEXTS},
     context=(), show=_show_predictions, then=_refuse_failed,
     call=lambda text=None, **kw: find("predict:predict")(texts=text or None, **kw))

verb("info", "info:info", "Describe an artifact: architecture, classes, preprocessing, lineage, "
     "metrics.", {"artifact": ARTIFACT}, context=(), show=_show_info)

verb("models", "models:list_models",
     "List model names that create_model accepts.",
     {"pattern": Opt("A glob such as 'resnet*'.", argument=True)}, context=(),
     show=lambda names: out_console.print("\n".join(names)))

EXPLAIN, REPORT = "explanations.api:ExplainOptions", "reports.api:ReportOptions"

verb("explain", "explanations:explain",
     "Overlay PNGs and raw maps (.npy) of what ARTIFACT looks at in each image.",
     lambda: fields_of(EXPLAIN) | {"artifact": ARTIFACT, "images": ARTIFACT, "out": None,
                                   "target": Opt(type=str), "parent": Opt(type=str),
                                   "text": Opt("Image + text models: the text of each image, "
                                               "in order (repeat).", type=list[str],
                                               flag="--text")},
     configs=(EXPLAIN,),
     show=lambda r: out_console.print(f"explanations: {r['out']}"),
     call=lambda text=None, **kw: find("explanations:explain")(texts=text or None, **kw))

verb("report", "reports:report",
     "One self-contained HTML page: curves, confusion, calibration, variants with Pareto charts, "
     "and an explanation gallery with drift between variants.",
     lambda: fields_of(REPORT) | {"paths": ARTIFACT}, configs=(REPORT,),
     show=lambda r: out_console.print(f"report: {r['path']}"))
