"""The verbs that read an artifact: eval, predict, info, models, explain, report."""

from __future__ import annotations

from typing import Any

import typer

from .command import SKIP_AS_TRAINED, Opt, err_console, fields_of, find, out_console, verb

TEXTS = Opt("Image + text models: the text of each image, in order (repeat; '' for none).",
            type=list[str], flag="--text")


def _refuse_failed(results: list[dict]) -> None:
    """Answers for the good images are printed; one unusable image still fails the command."""
    failed = sum(1 for r in results if "error" in r)
    if failed:
        answered = len(results) - failed
        rest = f"the other {answered} were answered" if answered else "so there are no answers"
        err_console.print(f"{failed} of {len(results)} images could not be used (each is "
                          f"listed with its reason); {rest}", highlight=False)
        raise typer.Exit(1)


def _printer(ref: str) -> Any:
    """A printer beside the API function whose result it shows (imported with it)."""
    return lambda result: find(ref)(out_console, result)


ARTIFACT = Opt(argument=True)
DATA_TO_SCORE = "Data to score (default: the training data)."

verb("eval", "evaluate:evaluate",
     "Measure accuracy, per-class metrics, calibration and cost on DATA.",
     {"artifact": ARTIFACT, "data": DATA_TO_SCORE, "split": "auto, train, val, test or all.",
      "skip_bad_images": SKIP_AS_TRAINED, "device": None, "tta": None},
     context=(), show=_printer("evaluate:print_evaluation"))

verb("predict", "predict:predict",
     "Top-k classes for each image.",
     {"artifact": ARTIFACT, "images": Opt(argument=True), "top_k": "Classes to show per image.",
      "device": None, "runtime": "torch, auto (the card's recommendation), onnx-fp32 or "
                                 "onnx-int8.", "tta": None, "text": TEXTS},
     context=(), show=_printer("predict:print_predictions"), then=_refuse_failed,
     call=lambda text=None, **kw: find("predict:predict")(texts=text or None, **kw))

verb("info", "info:info", "Describe an artifact: architecture, classes, preprocessing, lineage, "
     "metrics.", {"artifact": ARTIFACT}, context=(), show=_printer("info:print_info"))

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
