"""The stage verbs: prune, distill, quantize (compress/), optimize (search/), robustness and
adapt (shift/), then export, bench and serve. Settings of their fine-tuning are TrainConfig
fields, left unset unless given."""

from __future__ import annotations

from .command import ARG, DATA_TO_SCORE, SKIP_AS_TRAINED, TRACKING, Opt, fields_of, keys, verb

TRAIN, PRUNE = "training.config:TrainConfig", "compress.prune:PruneConfig"
PRUNE_OPTIONS = "compress.prune:PruneOptions"
DISTILL, DISTILL_OPTIONS = "compress.distill:DistillConfig", "compress.distill:DistillOptions"
QUANTIZE, OPTIMIZE = "compress.quantize:QuantizeOptions", "search.options:OptimizeOptions"
ADAPT = "shift.adaptation:AdaptOptions"
EXPORT, BENCH, SERVE = ("runtime.stage:ExportOptions", "runtime.bench:BenchOptions",
                        "serving.api:ServeOptions")

verb("prune", "compress:prune",
     "Remove channels (or weights) from ARTIFACT, fine-tune, and write a smaller artifact.",
     lambda: {**keys("artifact", "data", "out"), **fields_of(PRUNE, PRUNE_OPTIONS),
              **TRACKING} | {"artifact": ARG}, configs=(PRUNE, PRUNE_OPTIONS, TRAIN),
     show="artifact: {artifact} ({pruning[flops_fraction]:.0%} of the FLOPs, "
          "{pruning[params_fraction]:.0%} of the parameters)")

verb("distill", "compress:distill",
     "Train STUDENT on DATA with TEACHER's predictions as soft targets.",
     lambda: {**keys("data", "teacher", "student", "out"),
              **fields_of(DISTILL, DISTILL_OPTIONS), **TRACKING} | {"data": ARG},
     configs=(DISTILL, DISTILL_OPTIONS, TRAIN), show="artifact: {artifact}")

verb("quantize", "compress:quantize",
     "Quantize ARTIFACT to INT8 ONNX (QDQ: uint8 activations, int8 per-channel weights), or with "
     "--backend openvino to OpenVINO IR through NNCF.",
     lambda: {**keys("artifact", "data", "out"), **fields_of(QUANTIZE), **TRACKING}
     | {"artifact": ARG},
     configs=(QUANTIZE, TRAIN), show="artifact: {artifact}")

verb("optimize", "search:optimize",
     "The smallest, fastest model that meets the constraints: search pruning, distillation and "
     "INT8 together, every candidate measured on this machine.",
     lambda: fields_of(OPTIMIZE) | {"data": Opt(argument=True, default="builtin:digits"),
                                    "runtimes": Opt(None, list[str], None, "--runtime")},
     configs=(OPTIMIZE,), show="report: {report}\nchosen: {chosen}\n{statement}")

verb("robustness", "shift:robustness",
     "Accuracy under CIFAR-10-C corruptions: per family and severity, mean and drop.",
     {"artifact": ARG, "data": DATA_TO_SCORE, "split": None,
      "severities": Opt(type=str), "families": Opt(type=str, default="all"),
      **keys("runtime", "tta", "max_images", "batch_size", "seed"),
      "out": "Folder for robustness.json (default: the artifact folder).",
      "skip_bad_images": SKIP_AS_TRAINED, "device": None},
     configs=("shift.robust_eval:RobustnessConfig",), show="shift.robust_eval:print_summary_line")

verb("adapt", "shift:adapt", "Adapt ARTIFACT to unlabelled TARGET images; writes a new artifact.",
     lambda: fields_of(ADAPT) | {"artifact": ARG}, show="artifact: {artifact}",
     configs=(ADAPT, "shift.adaptation:AdaptConfig", TRAIN))

verb("export", "runtime.stage:export",
     "Export ARTIFACT to ONNX (dynamic batch), checked against PyTorch before it is kept.",
     lambda: fields_of(EXPORT) | {"artifact": ARG, "format": Opt(flag="--format")},
     configs=(EXPORT,),
     show="{file} (opset {opset}, max difference to PyTorch {max_abs_error:.2g})")

verb("bench", "runtime.bench:bench",
     "Latency (batch 1: p50/p90/p99), throughput (batch N), accuracy, size and FLOPs of every "
     "runtime and precision of each artifact.",
     lambda: fields_of(BENCH) | {"artifacts": ARG, "runtimes": Opt(type=str)},
     configs=(BENCH,), show="results: {path}")

verb("serve", "serving:serve",
     "An HTTP service and a web page for ARTIFACT (FastAPI on uvicorn, dynamic batching).",
     lambda: {"artifact": Opt("Artifact folder to serve (the only model the service ever "
                              "loads).", argument=True),
              **keys("host", "port", "api_key", "runtime", "threads"), **fields_of(SERVE)},
     configs=(SERVE,), as_json=False)
