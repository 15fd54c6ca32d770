"""The stage verbs: prune, distill, quantize (compress/), optimize (search/), robustness and
adapt (shift/). Settings of their fine-tuning are TrainConfig fields, left unset unless given."""

from __future__ import annotations

from typing import Any

from .command import TRACKING, Opt, fields_of, find, out_console, verb

DATA = Opt("Data to fine-tune on (default: the data named in the artifact's card).")
# Tri-state: unset, a stage reads the data as its parent artifact was trained (with or without
# the unreadable images); either flag given wins.
SKIP_BAD = Opt("Leave out images that cannot be decoded (default: as the parent artifact was "
               "trained).", default=None)
UNSET = Opt(default=None)  # the stage's own default, not TrainConfig's, applies
ARTIFACT = "Artifact folder to {}."
TRAIN, PRUNE = "training.config:TrainConfig", "compress.prune:PruneConfig"
DISTILL = "compress.distill:DistillConfig"


def _artifact(result: dict[str, Any]) -> None:
    out_console.print(f"artifact: {result['artifact']}")


verb("prune", "compress:prune",
     "Remove channels (or weights) from ARTIFACT, fine-tune, and write a smaller artifact.",
     lambda: {"artifact": Opt(ARTIFACT.format("prune"), argument=True), "data": DATA,
              "out": None, **fields_of(PRUNE), "batch_size": "Fine-tuning batch size.",
              "lr": "Fine-tuning rate (default 1e-3 AdamW).",
      "optimizer": "Fine-tuning optimizer.", "augment": Opt("none, light, strong.", default=None),
      "device": None, "precision": None,
      "nproc": "Data-parallel processes for the fine-tuning, as for train (--batch-size is "
               "global).", "skip_bad_images": SKIP_BAD, **TRACKING},
     configs=(PRUNE, TRAIN), context=("console", "progress"),
     show=lambda r: out_console.print(
         f"artifact: {r['artifact']} ({r['pruning']['flops_fraction']:.0%} of the FLOPs, "
         f"{r['pruning']['params_fraction']:.0%} of the parameters)"))

verb("distill", "compress:distill",
     "Train STUDENT on DATA with TEACHER's predictions as soft targets.",
     lambda: {"data": Opt("Folder, CSV file or builtin:digits to train on.", argument=True),
      "teacher": "Trained artifact whose logits teach the student.",
      "student": "Model name (leanvision models) or an artifact folder, e.g. a pruned model.",
      "out": None, **fields_of(DISTILL),
      "epochs": None, "batch_size": None, "lr": "Default: the recipe's rate.",
      "optimizer": "Default: the recipe's optimizer.", "augment": UNSET, "val_fraction": UNSET,
      "device": None, "precision": None, "seed": UNSET, "nproc": None,
      "skip_bad_images": SKIP_BAD, **TRACKING},
     configs=(DISTILL, TRAIN), context=("console", "progress"), show=_artifact)


def _quantize(method: str, batch_size: int | None = None, progress: bool = False,
              **kw: Any) -> dict[str, Any]:
    fine_tuning = {"batch_size": batch_size, "progress": progress} if method == "qat" else {}
    fine_tuning = {k: v for k, v in fine_tuning.items() if v is not None}
    return find("compress:quantize")(method=method, **fine_tuning, **kw)


QUANTIZE, OPTIMIZE = "compress.quantize:QuantizeOptions", "search.options:OptimizeOptions"
verb("quantize", "compress:quantize",
     "Quantize ARTIFACT to INT8 ONNX (QDQ: uint8 activations, int8 per-channel weights), or with "
     "--backend openvino to OpenVINO IR through NNCF.",
     lambda: {"artifact": Opt(ARTIFACT.format("quantize"), argument=True), "data": DATA,
              "out": None, **fields_of(QUANTIZE), "skip_bad_images": SKIP_BAD, **TRACKING},
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
      "skip_bad_images": None, "device": None},
     configs=("shift.robust_eval:RobustnessConfig",), context=("console", "progress"),
     show=lambda r: out_console.print(
         f"clean {100 * r['clean_top1']:.2f}%, mean corruption accuracy "
         f"{100 * r['mean_corruption_top1']:.2f}% (drop {100 * r['mean_drop']:.2f} pts); "
         f"{r['json']}"))

verb("adapt", "shift:adapt",
     "Adapt ARTIFACT to unlabelled TARGET images; writes a new artifact.",
     {"artifact": Opt(ARTIFACT.format("adapt"), argument=True),
      "target": "Folder of unlabelled images from the deployment domain (flat or in "
                "subfolders).",
      "method": None,
      "data": "DANN: labelled source data (default: the data named in the artifact's card).",
      "out": None, "min_target_images": None,
      "epochs": "DANN: fine-tuning epochs (default 10).", "batch_size": None,
      "lr": "DANN: rate (default 1e-3 AdamW).", "optimizer": "DANN: optimizer.",
      "augment": Opt("DANN: none, light, strong.", default=None),
      "domain_weight": None, "target_bn": None,
      "skip_bad_images": "Adapt without unreadable images (target, and DANN's source data).",
      "device": None, "precision": Opt("DANN: auto, fp32, bf16 or fp16.", default=None),
      "seed": None},
     configs=("shift.adaptation:AdaptConfig", TRAIN), context=("console", "progress"),
     show=_artifact)
