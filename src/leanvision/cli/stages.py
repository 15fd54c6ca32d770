"""The stage verbs: prune, distill, quantize (compress/), optimize (search/), robustness and
adapt (shift/). Settings of their fine-tuning are TrainConfig fields, left unset unless given."""

from __future__ import annotations

from typing import Any

from .command import SKIP_AS_TRAINED, TRACKING, Opt, fields_of, find, out_console, verb

TRAIN, PRUNE = "training.config:TrainConfig", "compress.prune:PruneConfig"
PRUNE_OPTIONS = "compress.prune:PruneOptions"
DISTILL, DISTILL_OPTIONS = "compress.distill:DistillConfig", "compress.distill:DistillOptions"


def _artifact(result: dict[str, Any]) -> None:
    out_console.print(f"artifact: {result['artifact']}")


verb("prune", "compress:prune",
     "Remove channels (or weights) from ARTIFACT, fine-tune, and write a smaller artifact.",
     lambda: {"artifact": None, "data": None, "out": None, **fields_of(PRUNE),
              **fields_of(PRUNE_OPTIONS), **TRACKING} | {"artifact": Opt(argument=True)},
     configs=(PRUNE, PRUNE_OPTIONS, TRAIN), context=("console", "progress"),
     show=lambda r: out_console.print(
         f"artifact: {r['artifact']} ({r['pruning']['flops_fraction']:.0%} of the FLOPs, "
         f"{r['pruning']['params_fraction']:.0%} of the parameters)"))

verb("distill", "compress:distill",
     "Train STUDENT on DATA with TEACHER's predictions as soft targets.",
     lambda: {**dict.fromkeys(("data", "teacher", "student", "out")), **fields_of(DISTILL),
              **fields_of(DISTILL_OPTIONS), **TRACKING} | {"data": Opt(argument=True)},
     configs=(DISTILL, DISTILL_OPTIONS, TRAIN), context=("console", "progress"), show=_artifact)

def _quantize(method: str, batch_size: int | None = None, progress: bool = False,
              **kw: Any) -> dict[str, Any]:
    fine_tuning = {"batch_size": batch_size, "progress": progress} if method == "qat" else {}
    fine_tuning = {k: v for k, v in fine_tuning.items() if v is not None}
    return find("compress:quantize")(method=method, **fine_tuning, **kw)


QUANTIZE, OPTIMIZE = "compress.quantize:QuantizeOptions", "search.options:OptimizeOptions"
verb("quantize", "compress:quantize",
     "Quantize ARTIFACT to INT8 ONNX (QDQ: uint8 activations, int8 per-channel weights), or with "
     "--backend openvino to OpenVINO IR through NNCF.",
     lambda: {**dict.fromkeys(("artifact", "data", "out")), **fields_of(QUANTIZE), **TRACKING}
     | {"artifact": Opt(argument=True)},
     configs=(QUANTIZE, TRAIN), call=_quantize, context=("console", "progress"), show=_artifact)

verb("optimize", "search:optimize",
     "The smallest, fastest model that meets the constraints: search pruning, distillation and "
     "INT8 together, every candidate measured on this machine.",
     lambda: fields_of(OPTIMIZE) | {"data": Opt(argument=True, default="builtin:digits"),
                                    "runtime": Opt(type=list[str], flag="--runtime")},
     configs=(OPTIMIZE,),
     call=lambda runtime=None, **kw: find("search:optimize")(**kw, **(
         {"runtimes": tuple(runtime)} if runtime else {})),
     show=lambda r: out_console.print(f"report: {r['report']}\nchosen: {r['chosen']}\n"
                                      f"{r['statement']}"))

verb("robustness", "shift:robustness",
     "Accuracy under CIFAR-10-C corruptions: per family and severity, mean and drop.",
     {"artifact": Opt(argument=True), "data": "Data to score (default: the training data).",
      "split": None, "severities": Opt(type=str), "families": Opt(type=str, default="all"),
      "runtime": None, "tta": None, "max_images": None, "batch_size": None, "seed": None,
      "out": "Folder for robustness.json (default: the artifact folder).",
      "skip_bad_images": SKIP_AS_TRAINED, "device": None},
     configs=("shift.robust_eval:RobustnessConfig",), context=("console", "progress"),
     show=lambda r: out_console.print(
         f"clean {100 * r['clean_top1']:.2f}%, mean corruption accuracy "
         f"{100 * r['mean_corruption_top1']:.2f}% (drop {100 * r['mean_drop']:.2f} pts); "
         f"{r['json']}"))

ADAPT = "shift.adaptation:AdaptOptions"
verb("adapt", "shift:adapt", "Adapt ARTIFACT to unlabelled TARGET images; writes a new artifact.",
     lambda: fields_of(ADAPT) | {"artifact": Opt(argument=True)},
     configs=(ADAPT, "shift.adaptation:AdaptConfig", TRAIN), context=("console", "progress"),
     show=_artifact)
