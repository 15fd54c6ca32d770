"""The verbs that read an artifact: eval, predict, info, models, explain, report."""

from __future__ import annotations

from .command import ARG, DATA_TO_SCORE, SKIP_AS_TRAINED, Opt, fields_of, verb

TEXTS = Opt("Image + text models: the text of each image, in order (repeat; '' for none).",
            type=list[str], flag="--text", default=None)

verb("eval", "evaluate:evaluate",
     "Measure accuracy, per-class metrics, calibration and cost on DATA.",
     {"artifact": ARG, "data": DATA_TO_SCORE, "split": "auto, train, val, test or all.",
      "skip_bad_images": SKIP_AS_TRAINED, "device": None, "tta": None},
     show="evaluate:print_evaluation")

verb("predict", "predict:predict", "Top-k classes for each image.",
     {"artifact": ARG, "images": Opt(argument=True), "top_k": "Classes to show per image.",
      "device": None, "runtime": "torch, auto (the card's recommendation), onnx-fp32 or "
                                 "onnx-int8.", "tta": None, "texts": TEXTS},
     show="predict:print_predictions", then="predict:unanswered")

verb("info", "info:info", "Describe an artifact: architecture, classes, preprocessing, lineage, "
     "metrics.", {"artifact": ARG}, show="info:print_info")

verb("models", "models:list_models", "List model names that create_model accepts.",
     {"pattern": Opt("A glob such as 'resnet*'.", argument=True)},
     show="models.registry:print_names")

EXPLAIN, REPORT = "explanations.api:ExplainOptions", "reports.api:ReportOptions"

verb("explain", "explanations:explain",
     "Overlay PNGs and raw maps (.npy) of what ARTIFACT looks at in each image.",
     lambda: fields_of(EXPLAIN) | {"artifact": ARG, "images": ARG, "out": None,
                                   "target": Opt(type=str), "parent": Opt(type=str),
                                   "texts": TEXTS},
     configs=(EXPLAIN,), show="explanations: {out}")

verb("report", "reports:report",
     "One self-contained HTML page: curves, confusion, calibration, variants with Pareto charts, "
     "and an explanation gallery with drift between variants.",
     lambda: fields_of(REPORT) | {"paths": ARG}, configs=(REPORT,),
     show="report: {path}")
