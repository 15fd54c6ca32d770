"""The search space of `optimize`: which pipelines a trial may build, and the budgets of their
stages.

A candidate pipeline starts from the base artifact and applies, in this order:

    resolution  the input side the pipeline serves at: the base's own (0), or a smaller one
                (`resolutions`, only for a base above 64 px: 192/160/128 under a 224 px base),
                reached by re-fitting the base's recipe at that size (compress/resize.py); the
                cheapest speed-up of a mobile network, since its cost grows with the pixels
    source      "base", or a smaller registry model distilled from the base (KD), e.g. airnet_s
                under an airnet_m base, resnet8 under a resnet20 (`students`; only for a base at
                <= 64 px, none for large images: a mobile net from scratch rarely beats a
                pruned, distilled base there)
    prune       structured channel pruning of the base to keep 1 - ratio of its FLOPs
                (ratio in {0, 0.3, 0.5, 0.7}; widths multiples of 8; fine-tuned a few epochs)
    recovery    after pruning: "none" or "kd" (distil the pruned net with the base as teacher)
    quant       "none" (FP32), "ptq" (static INT8 with an accuracy guard) or "qat" (INT8 after
                quantisation-aware fine-tuning)
    runtime     the runtime it is measured and shipped with: torch, onnx-fp32 or openvino-fp32
                for FP32; onnx-int8 or openvino-int8 for PTQ (each its own quantizer: ONNX
                Runtime's QDQ file, NNCF's OpenVINO IR); onnx-int8 for QAT (those named in
                `runtimes`)

Optuna samples these as conditional parameters (prune only for the base, recovery only after
pruning, the FP32 runtime only without quantisation), so every trial is one valid pipeline.
A pruned or distilled pipeline at a smaller resolution starts from the resized base, which is
also its distillation teacher."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from ..formatting import pipeline_name

PRUNE_RATIOS = (0.0, 0.3, 0.5, 0.7)
RECOVERIES = ("none", "kd")
QUANTIZATIONS = ("none", "ptq", "qat")
RUNTIMES = ("torch", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8")
FP32_RUNTIMES = ("torch", "onnx-fp32", "openvino-fp32")
INT8_RUNTIME = "onnx-int8"  # QAT's runtime, and PTQ's by default
# The INT8 runtimes a PTQ stage can build for (each with its own quantizer: ONNX Runtime's QDQ
# file or NNCF's OpenVINO IR).
PTQ_RUNTIMES = (INT8_RUNTIME, "openvino-int8")
SMALL_IMAGE_SIDE = 64
# Input sides searched below a photo-sized base's own (those smaller than it).
RESOLUTIONS = (192, 160, 128)
# Registry students for a small-image base, largest first (the anchor tries the first).
SMALL_STUDENTS = ("airnet_s", "resnet20", "resnet8")
# A student with less than this share of the base's parameters rarely stays within a point of
# it (resnet20 has 14% of airnet_m's and stayed several points below it after the fast recipe:
# bench/README.md), so it is not searched: each student costs a full distillation.
MIN_STUDENT_SHARE = 1 / 4


@dataclass(frozen=True)
class Pipeline:
    """One candidate: what a trial builds and the runtime it is measured with."""

    source: str = "base"
    prune_ratio: float = 0.0
    recovery: str = "none"
    quant: str = "none"
    runtime: str = "onnx-fp32"
    resolution: int = 0  # input side; 0: the base's own

    def label(self) -> str:
        parts = ["base" if self.source == "base" else f"{self.source} (kd from base)"]
        if self.resolution:
            parts[0] += f" at {self.resolution} px"
        if self.prune_ratio:
            parts.append(f"prune {self.prune_ratio:.0%}" + (" + kd" if self.recovery == "kd"
                                                            else ""))
        parts.append({"none": "fp32", "ptq": "int8 ptq", "qat": "int8 qat"}[self.quant])
        return " · ".join(parts) + f" @ {self.runtime}"

    def short(self) -> str:
        """label() in a few words, without the runtime: "resnet8 ← KD · INT8"."""
        student = self.source != "base"
        return pipeline_name(self.source, distilled=student, side=self.resolution,
                             prune=self.prune_ratio, kd=self.recovery == "kd", quant=self.quant)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def params(self) -> dict[str, Any]:
        """The Optuna parameters that sample exactly this pipeline (for enqueue_trial)."""
        params: dict[str, Any] = {"resolution": self.resolution, "source": self.source}
        if self.source == "base":
            params["prune_ratio"] = self.prune_ratio
            if self.prune_ratio:
                params["recovery"] = self.recovery
        params["quant"] = self.quant
        if self.quant == "none":
            params["runtime"] = self.runtime
        return params


@dataclass
class SearchSpace:
    prune_ratios: tuple[float, ...] = PRUNE_RATIOS
    recoveries: tuple[str, ...] = RECOVERIES
    students: tuple[str, ...] = ()
    quantizations: tuple[str, ...] = QUANTIZATIONS
    runtimes: tuple[str, ...] = ("onnx-fp32", INT8_RUNTIME)
    resolutions: tuple[int, ...] = ()  # input sides below the base's own

    def __post_init__(self) -> None:
        self.resolutions = tuple(int(r) for r in self.resolutions)
        if any(r < 16 for r in self.resolutions) or len(set(self.resolutions)) != len(
                self.resolutions):
            raise ConfigError(f"resolutions must be distinct sides of 16 px or more, got "
                              f"{list(self.resolutions)}")
        self.prune_ratios = tuple(float(r) for r in self.prune_ratios)
        bad = [r for r in self.prune_ratios if not 0.0 <= r < 1.0]
        if bad or not self.prune_ratios:
            raise ConfigError(f"prune ratios must lie in [0, 1) (the share of FLOPs removed), "
                              f"got {list(self.prune_ratios)}")
        _subset("recovery", self.recoveries, RECOVERIES)
        _subset("quantization", self.quantizations, QUANTIZATIONS)
        _subset("--runtime", self.runtimes, RUNTIMES)
        if not any(r in FP32_RUNTIMES for r in self.runtimes):
            # Without an FP32 runtime only INT8 pipelines remain.
            self.quantizations = tuple(q for q in self.quantizations if q != "none")
        self.quantizations = tuple(q for q in self.quantizations
                                   if q == "none" or self.runtimes_for(q))
        if not self.quantizations:
            raise ConfigError(f"runtimes {', '.join(self.runtimes)} leave no pipeline: INT8 "
                              f"needs {' or '.join(PTQ_RUNTIMES)}, FP32 needs "
                              f"{' or '.join(FP32_RUNTIMES)}")

    @property
    def fp32_runtimes(self) -> tuple[str, ...]:
        return tuple(r for r in self.runtimes if r in FP32_RUNTIMES)

    def runtimes_for(self, quant: str) -> tuple[str, ...]:
        """The runtimes a pipeline with `quant` can be measured and shipped with."""
        allowed = {"none": FP32_RUNTIMES, "ptq": PTQ_RUNTIMES, "qat": (INT8_RUNTIME,)}[quant]
        return tuple(r for r in self.runtimes if r in allowed)

    def suggest(self, trial) -> Pipeline:
        """Sample one pipeline from an Optuna trial (define-by-run, conditional parameters)."""
        resolution = (trial.suggest_categorical("resolution", (0, *self.resolutions))
                      if self.resolutions else 0)
        source = trial.suggest_categorical("source", ("base", *self.students))
        ratio, recovery = 0.0, "none"
        if source == "base":
            ratio = trial.suggest_categorical("prune_ratio", self.prune_ratios)
            if ratio:
                recovery = trial.suggest_categorical("recovery", self.recoveries)
        quant = trial.suggest_categorical("quant", self.quantizations)
        choices = self.runtimes_for(quant)
        runtime = choices[0]
        if quant == "none":
            runtime = trial.suggest_categorical("runtime", choices)
        elif len(choices) > 1:  # PTQ for ONNX Runtime or for OpenVINO
            runtime = trial.suggest_categorical("int8_runtime", choices)
        return Pipeline(source, float(ratio), recovery, quant, runtime, int(resolution))

    def params(self, pipeline: Pipeline) -> dict[str, Any]:
        """The Optuna parameters of `pipeline` in this space (for enqueue_trial)."""
        params = pipeline.params()
        if not self.resolutions:
            params.pop("resolution")
        if pipeline.quant != "none" and len(self.runtimes_for(pipeline.quant)) > 1:
            params["int8_runtime"] = pipeline.runtime
        return params

    def from_params(self, params: dict[str, Any]) -> Pipeline:
        """The pipeline of a trial's (or a plan's) Optuna parameters: params()'s inverse."""
        quant = params.get("quant", "none")
        runtimes = self.runtimes_for(quant) or (INT8_RUNTIME,)
        runtime = params.get("runtime") or params.get("int8_runtime") or runtimes[0]
        return Pipeline(str(params.get("source", "base")), float(params.get("prune_ratio", 0.0)),
                        str(params.get("recovery", "none")), str(quant), str(runtime),
                        int(params.get("resolution", 0)))

    def anchors(self) -> list[Pipeline]:
        """Pipelines every new study starts with, cheapest information first: the base as it is
        (the reference), its INT8 twin, the base at each smaller resolution (smallest, so
        cheapest, first) in INT8, then one of each costlier family (pruning, a student), so
        that even a small budget sees the whole range."""
        fp32 = self.fp32_runtimes[-1] if self.fp32_runtimes else None
        int8 = next((q for q in ("ptq", "qat") if q in self.quantizations), None)
        middle = next((r for r in (0.5, *sorted(self.prune_ratios, reverse=True)) if r
                       and r in self.prune_ratios), None)
        wanted: list[Pipeline] = []
        if fp32 and "none" in self.quantizations:
            wanted.append(Pipeline(runtime=fp32))
        int8_runtimes = self.runtimes_for(int8) if int8 else ()
        for runtime in int8_runtimes:
            wanted.append(Pipeline(quant=int8, runtime=runtime))
        last_quant, last_runtime = (int8, int8_runtimes[0]) if int8 else ("none", fp32)
        for side in sorted(self.resolutions):
            wanted += [Pipeline(quant=last_quant, runtime=runtime, resolution=side)
                       for runtime in (int8_runtimes or (fp32,))]
        if middle:
            recovery = "kd" if "kd" in self.recoveries else "none"
            wanted.append(Pipeline(prune_ratio=middle, recovery=recovery, quant=last_quant,
                                   runtime=last_runtime))
        for student in self.students[:1]:
            wanted.append(Pipeline(source=student, quant=last_quant, runtime=last_runtime))
        return [p for p in wanted if self.contains(p)]

    def contains(self, p: Pipeline) -> bool:
        if p.source != "base":
            ok_source = p.source in self.students and not p.prune_ratio
        else:
            ok_source = p.prune_ratio in self.prune_ratios and (
                p.recovery in self.recoveries if p.prune_ratio else p.recovery == "none")
        ok_runtime = p.quant in self.quantizations and p.runtime in self.runtimes_for(p.quant)
        ok_side = p.resolution == 0 or p.resolution in self.resolutions
        return ok_source and p.quant in self.quantizations and ok_runtime and ok_side

    def pipelines(self) -> list[Pipeline]:
        """Every distinct pipeline the space holds."""
        sources = [("base", r, rec) for r in self.prune_ratios
                   for rec in (self.recoveries if r else ("none",))]
        sources += [(student, 0.0, "none") for student in self.students]
        finishes = [(q, rt) for q in self.quantizations for rt in self.runtimes_for(q)]
        return [Pipeline(src, float(r), rec, q, rt, side) for side in (0, *self.resolutions)
                for src, r, rec in sources for q, rt in finishes]

    def size(self) -> int:
        """How many distinct pipelines the space holds."""
        return len(self.pipelines())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_resolutions(input_side: int) -> tuple[int, ...]:
    """Smaller sides to search for a photo-sized base; none for thumbnails (a 32 px network
    has no pixels to spare)."""
    if input_side <= SMALL_IMAGE_SIDE:
        return ()
    return tuple(r for r in RESOLUTIONS if r < input_side)


def default_students(base_arch: str, input_side: int) -> tuple[str, ...]:
    """Registry students for a small-image base: the small nets with fewer parameters than it,
    but not so few that they could not come near its accuracy; none for large images."""
    if input_side > SMALL_IMAGE_SIDE:
        return ()
    return tuple(s for s in SMALL_STUDENTS if s != base_arch and _fits_under(s, base_arch))


def _fits_under(student: str, base_arch: str) -> bool:
    from ..models import create_model

    def params(name: str) -> int:
        return sum(p.numel() for p in create_model(name, 10).parameters())

    try:
        share = params(student) / params(base_arch)
    except Exception:  # noqa: BLE001 - a base arch we cannot build again gets no student
        return False
    return MIN_STUDENT_SHARE <= share < 1.0


@dataclass
class Budget:
    """How much work each stage gets. None: scaled to the training set size (about
    `*_images` image-steps, within bounds), so small data sets search in minutes."""

    base_settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (base)
    train_settings: dict[str, Any] = field(default_factory=dict)  # every fine-tune / distill
    finetune_epochs: int | None = None  # after pruning
    kd_epochs: int | None = None  # distilling a pruned net from the base
    student_epochs: int | None = None  # distilling a registry student from scratch
    qat_epochs: int = 2
    calibration_images: int = 300
    ptq_timing_runs: int = 10
    bench_warmup: int = 10
    bench_iterations: int = 100
    bench_batch: int = 8
    hopeless_margin: float = 2.0  # points below base - max_drop at which a trial is abandoned
    finetune_images: int = 8_000
    kd_images: int = 8_000
    student_images: int = 24_000

    def __post_init__(self) -> None:
        for name in ("finetune_epochs", "kd_epochs", "student_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.qat_epochs < 1 or self.bench_iterations < 1 or self.bench_batch < 1:
            raise ConfigError("qat_epochs, bench_iterations and bench_batch must be >= 1")
        if self.hopeless_margin < 0:
            raise ConfigError(f"hopeless_margin must be >= 0 points, got {self.hopeless_margin}")

    @classmethod
    def quick(cls, **overrides: Any) -> Budget:
        """A smoke-test budget: a couple of epochs per stage, short timings."""
        values: dict[str, Any] = dict(finetune_epochs=2, kd_epochs=2, student_epochs=5,
                                      qat_epochs=1, calibration_images=128, ptq_timing_runs=5,
                                      bench_warmup=5, bench_iterations=50)
        return cls(**{**values, **overrides})

    def epochs(self, kind: str, n_train: int) -> int:
        given = {"finetune": self.finetune_epochs, "kd": self.kd_epochs,
                 "student": self.student_epochs}[kind]
        if given is not None:
            return given
        images = {"finetune": self.finetune_images, "kd": self.kd_images,
                  "student": self.student_images}[kind]
        low, high = (2, 10) if kind != "student" else (5, 40)
        return int(min(high, max(low, round(images / max(1, n_train)))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _subset(name: str, given: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    unknown = [g for g in given if g not in allowed]
    if unknown or not given:
        raise ConfigError(f"{name} {unknown[0] if unknown else '(none)'!r} is not one of "
                          f"{', '.join(allowed)}")
