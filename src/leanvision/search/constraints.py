"""What the user asks of the optimized model, and the choice among measured candidates: the
fastest candidate that meets every constraint, or a plain statement of which constraint cannot
be met, with the closest candidate.

--max-drop is judged on the paired comparison of each candidate with the base on the same
validation images (leanvision.paired) under --accept, as quantize's guard is; a candidate
measured without per-image predictions is judged on its point estimate."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from ..paired import (
    DEFAULT_ACCEPT,
    RULE_LEVELS,
    RULES,
    PairedComparison,
    applied_rule,
    images_to_resolve,
)

# Measured figures are compared with this slack, so 1.0 points is within a budget of 1.0.
EPS = 1e-9


@dataclass(frozen=True)
class Constraints:
    max_drop: float = 1.0  # validation top-1 points the model may lose against the base
    max_latency_ms: float | None = None  # batch-1 median latency on this machine
    max_size_mb: float | None = None  # the model file the runtime loads
    accept: str = DEFAULT_ACCEPT  # how sure "within --max-drop" must be (paired.RULES)
    # Top-1 points any one class may lose (judged per class under --accept); None: not asked.
    max_class_drop: float | None = None

    def __post_init__(self) -> None:
        if self.accept not in RULES:
            raise ConfigError(f"--accept {self.accept!r} is not a rule: pass point (the "
                              "estimate), likely (80% interval's upper bound) or sure (95%'s)")
        _positive("--max-drop", self.max_drop, "top-1 points you accept losing, e.g. "
                  "--max-drop 1.0; every compression costs some accuracy, so with no budget "
                  "only the base itself would qualify")
        if self.max_drop > 100:
            raise ConfigError(f"--max-drop {self.max_drop} is more than 100 points; it is in "
                              "points of top-1 accuracy, e.g. --max-drop 1.0")
        _positive("--max-latency-ms", self.max_latency_ms, "batch-1 latency in milliseconds, "
                  "e.g. --max-latency-ms 2, or leave it out")
        _positive("--max-size-mb", self.max_size_mb, "model file size in megabytes, e.g. "
                  "--max-size-mb 5, or leave it out")
        _positive("--max-class-drop", self.max_class_drop, "top-1 points any one class may "
                  "lose, e.g. --max-class-drop 5, or leave it out")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def drop_rule(self, images: int) -> tuple[str, str | None]:
        """The rule a validation split of `images` can apply to --max-drop, and why it is not
        --accept (paired.applied_rule)."""
        return applied_rule(images, self.max_drop, self.accept)


def _positive(flag: str, value: float | None, what: str) -> None:
    if value is None:
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number) or number <= 0:
        kind = "zero" if number == 0 else "below zero" if number < 0 else "not a number"
        raise ConfigError(f"{flag} {value} is a budget of {kind}: no model can meet it. Pass "
                          f"the {what}")


@dataclass
class Candidate:
    """One measured pipeline: its artifact, the runtime it ships with, and its figures."""

    trial: int
    label: str
    artifact: str
    runtime: str
    val_top1: float
    latency_ms: float
    size_mb: float
    test_top1: float | None = None
    pipeline: dict[str, Any] = field(default_factory=dict)
    flops: int | None = None  # multiply-adds of one image (quantisation leaves them unchanged)
    # (fastest, slowest) of the interleaved re-timing rounds (retime.py); None: timed once.
    latency_range: tuple[float, float] | None = None
    # Against the base on the same validation images; None: no per-image predictions.
    comparison: PairedComparison | None = None
    # The same, within each class (by name), for the worst class and --max-class-drop.
    class_comparisons: dict[str, PairedComparison] | None = None
    val_predicted: Any = None  # per-image classes on the validation images (holdout.py)

    def drop_points(self, base_val: float) -> float:
        return round((base_val - self.val_top1) * 100, 4)

    def to_dict(self, base_val: float | None = None) -> dict[str, Any]:
        record = {k: v for k, v in asdict(self).items()
                  if k not in ("comparison", "class_comparisons", "val_predicted")}
        if base_val is not None:
            record["drop_points"] = self.drop_points(base_val)
        return record


def judged_drop(c: Candidate, base_val: float, cons: Constraints) -> tuple[float, str]:
    """(the figure held to --max-drop, the rule that gave it): the upper bound of the paired
    interval under the rule the split can apply, else the point estimate."""
    if c.comparison is None:
        return c.drop_points(base_val), "point"
    rule, _ = cons.drop_rule(c.comparison.images)
    return round(c.comparison.upper(rule), 4), rule


def worst_class(c: Candidate) -> tuple[str, PairedComparison] | None:
    """The class `c` loses most in (point estimate; the first such class on a tie)."""
    if not c.class_comparisons:
        return None
    name = max(c.class_comparisons, key=lambda k: c.class_comparisons[k].drop_points)
    return name, c.class_comparisons[name]


def judged_class_drop(c: Candidate, cons: Constraints) -> tuple[float, str, str] | None:
    """(the largest figure held to --max-class-drop, its class, the rule that gave it): per
    class, the upper bound under the rule its images can apply (a class of few images is
    judged on its estimate). None without --max-class-drop or per-image predictions."""
    if cons.max_class_drop is None or not c.class_comparisons:
        return None
    judged = []
    for name, comparison in c.class_comparisons.items():
        rule, _ = applied_rule(comparison.images, cons.max_class_drop, cons.accept)
        judged.append((round(comparison.upper(rule), 4), name, rule))
    return max(judged, key=lambda j: j[0])


def paired_record(c: Candidate, cons: Constraints) -> dict[str, Any] | None:
    """pareto.json's and search.json's account of `c`'s drop: interval, images lost and
    gained, agreement, the verdict under the rule applied, and the worst class's drop."""
    if c.comparison is None:
        return None
    rule, note = cons.drop_rule(c.comparison.images)
    record = {**c.comparison.record(cons.max_drop, rule), "accept": cons.accept, "note": note}
    worst = worst_class(c)
    if worst is not None:
        name, comparison = worst
        record["worst_class"] = {"class": name, "images": comparison.images,
                                 "drop_points": round(comparison.drop_points, 4),
                                 "lost": comparison.lost, "gained": comparison.gained,
                                 "interval95_points": [round(x, 4)
                                                       for x in comparison.interval95]}
    judged = judged_class_drop(c, cons)
    if judged is not None:
        record["class_judged"] = {"class": judged[1], "figure_points": judged[0],
                                  "rule": judged[2],
                                  "accepted": judged[0] <= cons.max_class_drop + EPS}
    return record


def misses(c: Candidate, base_val: float, cons: Constraints) -> dict[str, float]:
    """By how much `c` misses each constraint it misses (points, ms, MB)."""
    found = {}
    drop, _ = judged_drop(c, base_val, cons)
    if drop > cons.max_drop + EPS:
        found["max_drop"] = drop - cons.max_drop
    if cons.max_latency_ms is not None and c.latency_ms > cons.max_latency_ms + EPS:
        found["max_latency_ms"] = c.latency_ms - cons.max_latency_ms
    if cons.max_size_mb is not None and c.size_mb > cons.max_size_mb + EPS:
        found["max_size_mb"] = c.size_mb - cons.max_size_mb
    judged = judged_class_drop(c, cons)
    if judged is not None and judged[0] > cons.max_class_drop + EPS:
        found["max_class_drop"] = judged[0] - cons.max_class_drop
    return found


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on accuracy, latency and size at once (one per artifact
    and runtime), fastest first."""
    unique: dict[tuple[str, str], Candidate] = {}
    for c in candidates:
        unique.setdefault((c.artifact, c.runtime), c)
    pool = list(unique.values())

    def dominates(a: Candidate, b: Candidate) -> bool:
        no_worse = (a.val_top1 >= b.val_top1 and a.latency_ms <= b.latency_ms
                    and a.size_mb <= b.size_mb)
        better = (a.val_top1 > b.val_top1 or a.latency_ms < b.latency_ms
                  or a.size_mb < b.size_mb)
        return no_worse and better

    front = [c for c in pool if not any(dominates(o, c) for o in pool if o is not c)]
    return sorted(front, key=lambda c: (c.latency_ms, c.size_mb, -c.val_top1))


@dataclass
class Choice:
    chosen: Candidate | None
    met: bool
    statement: str


def choose(candidates: list[Candidate], base_val: float, cons: Constraints) -> Choice:
    """The fastest candidate meeting every constraint (ties: smaller, then more accurate);
    otherwise the closest one and a statement of what cannot be met."""
    if not candidates:
        return Choice(None, False, "no candidate was measured, so none can be chosen")
    meeting = [c for c in candidates if not misses(c, base_val, cons)]
    if meeting:
        fastest = min(meeting, key=lambda c: (c.latency_ms, c.size_mb, -c.val_top1))
        best = timed_alike_fewest_flops(fastest, meeting)
        why = "is the fastest that does" if best is fastest else (
            f"timed alike with the fastest, {fastest.label} ({fastest.latency_ms:.3f} ms; their "
            "re-timing rounds overlap), with fewer multiply-adds")
        return Choice(best, True, f"{best.label} meets every constraint ("
                                  f"{_figures(best, base_val, cons)}; {_limits(cons)}) and {why}"
                                  + _cannot_tell(candidates, best, base_val, cons)
                                  + _split_note(candidates, cons))
    closest = min(candidates, key=lambda c: (_shortfall(c, base_val, cons), c.latency_ms))
    reasons = _impossible(candidates, base_val, cons)
    if not reasons:
        reasons = ["no candidate meets them together"]
    missed = misses(closest, base_val, cons)
    gaps = ", ".join(f"{_NAMES[k]} by {v:.3g} {_UNITS[k]}" for k, v in missed.items())
    statement = (f"No candidate meets every constraint ({_limits(cons)}): "
                 + "; ".join(reasons)
                 + f". Closest: {closest.label} ({_figures(closest, base_val, cons)}), which "
                 + "misses " + gaps + "." + _split_note(candidates, cons))
    return Choice(closest, False, statement)


def undecided(candidates: list[Candidate], chosen: Candidate, base_val: float,
              cons: Constraints) -> list[Candidate]:
    """Candidates faster than `chosen` that missed only --max-drop, by a margin the split
    cannot resolve: their drop's 95% interval reaches below the budget, so on other
    validation images (another seed, split or search) one of them could be chosen instead."""
    found = []
    for c in candidates:
        missed = misses(c, base_val, cons)
        if (c.latency_ms >= chosen.latency_ms or set(missed) != {"max_drop"}
                or c.comparison is None):
            continue
        if c.comparison.interval95[0] > cons.max_drop + EPS:
            continue  # surely over the budget: the split can tell
        found.append(c)
    return sorted(found, key=lambda c: c.latency_ms)


def _cannot_tell(candidates: list[Candidate], chosen: Candidate, base_val: float,
                 cons: Constraints) -> str:
    close = undecided(candidates, chosen, base_val, cons)
    if not close:
        return ""
    fastest = close[0]
    return (f". The split cannot tell the candidates apart: {len(close)} faster candidate"
            f"{'' if len(close) == 1 else 's'} missed the accuracy budget by less than its "
            f"noise (fastest: {fastest.label}, {drop_text(fastest, base_val, cons)}), so "
            "another validation split or search could choose one of them; --confirm-folds "
            "decides on more images")


def timed_alike_fewest_flops(fastest: Candidate, meeting: list[Candidate]) -> Candidate:
    """Among the candidates whose re-timing rounds overlap the fastest's (timing cannot tell
    them apart), the one with the fewest multiply-adds: the likelier to stay faster on the
    next run and the next machine. `fastest` when none overlaps or FLOPs are unknown."""
    if fastest.latency_range is None or fastest.flops is None:
        return fastest
    alike = [c for c in meeting if c.latency_range is not None and c.flops is not None
             and c.latency_range[0] <= fastest.latency_range[1]]
    return min(alike, key=lambda c: (c.flops, c.latency_ms))


_NAMES = {"max_drop": "max-drop", "max_latency_ms": "max-latency-ms",
          "max_size_mb": "max-size-mb", "max_class_drop": "max-class-drop"}
_UNITS = {"max_drop": "points", "max_latency_ms": "ms", "max_size_mb": "MB",
          "max_class_drop": "points"}


def _impossible(candidates: list[Candidate], base_val: float, cons: Constraints) -> list[str]:
    """One sentence per constraint that no candidate meets even alone, with the best value."""
    reasons = []
    by_name = {name: [c for c in candidates if name not in misses(c, base_val, cons)]
               for name in _NAMES}
    if not by_name["max_drop"]:
        best = min(candidates, key=lambda c: (judged_drop(c, base_val, cons)[0], -c.val_top1))
        figure, rule = judged_drop(best, base_val, cons)
        loses = (f"the most accurate candidate loses {best.drop_points(base_val):.2f} points"
                 if rule == "point" else f"the nearest candidate's {RULE_LEVELS[rule]:.0%} "
                 f"upper bound is {figure:.2f} points")
        reasons.append(f"--max-drop {cons.max_drop:g} cannot be met: {loses} ({best.label})")
    if not by_name["max_latency_ms"]:
        best = min(candidates, key=lambda c: c.latency_ms)
        reasons.append(f"--max-latency-ms {cons.max_latency_ms:g} cannot be met on this "
                       f"machine: the fastest candidate takes {best.latency_ms:.3f} ms "
                       f"({best.label})")
    if not by_name["max_size_mb"]:
        best = min(candidates, key=lambda c: c.size_mb)
        reasons.append(f"--max-size-mb {cons.max_size_mb:g} cannot be met: the smallest "
                       f"candidate is {best.size_mb:.3f} MB ({best.label})")
    if not by_name["max_class_drop"]:
        best = min(candidates, key=lambda c: judged_class_drop(c, cons)[0])
        figure, name, rule = judged_class_drop(best, cons)
        bound = "" if rule == "point" else f" ({RULE_LEVELS[rule]:.0%} upper bound)"
        reasons.append(f"--max-class-drop {cons.max_class_drop:g} cannot be met: in the "
                       f"nearest candidate ({best.label}) class {name} loses {figure:.2f} "
                       f"points{bound}")
    return reasons


def _shortfall(c: Candidate, base_val: float, cons: Constraints) -> float:
    """How far `c` is from meeting everything, each miss relative to its own limit."""
    limits = {"max_drop": cons.max_drop, "max_latency_ms": cons.max_latency_ms,
              "max_size_mb": cons.max_size_mb, "max_class_drop": cons.max_class_drop}
    return sum(v / limits[k] for k, v in misses(c, base_val, cons).items())


def _figures(c: Candidate, base_val: float, cons: Constraints) -> str:
    return (f"val top-1 {100 * c.val_top1:.2f}%, {drop_text(c, base_val, cons)}, "
            f"{c.latency_ms:.3f} ms, {c.size_mb:.3f} MB")


def drop_text(c: Candidate, base_val: float, cons: Constraints) -> str:
    """The drop as the statement quotes it: the paired comparison and the bound held to the
    budget, e.g. "drop 0.6 points (95% interval -0.4 to 1.6; 2 images lost, 0 gained;
    agreement 98.9%), 80% upper bound 1.2"."""
    if c.comparison is None:
        return f"drop {c.drop_points(base_val):.2f} points"
    figure, rule = judged_drop(c, base_val, cons)
    text = c.comparison.describe()
    if rule != "point":
        text += f", {RULE_LEVELS[rule]:.0%} upper bound {figure:.1f}"
    worst = worst_class(c)
    if worst is not None:
        name, comparison = worst
        text += (f"; worst class {name}: drop {comparison.drop_points:.1f} points on its "
                 f"{comparison.images} images")
    return text


def split_notes(candidates: list[Candidate], cons: Constraints) -> list[str]:
    """What the statement says once about the evidence: the split cannot resolve --max-drop
    (or --max-class-drop) under --accept, and how many images would; or the candidates carry
    no per-image predictions to compare."""
    compared = [c for c in candidates if c.comparison is not None]
    if not compared:
        if not candidates or (cons.accept == "point" and cons.max_class_drop is None):
            return []
        return ["no per-image validation predictions to compare with the base: the drop is "
                "judged on the point estimate" + ("; --max-class-drop cannot be judged"
                                                  if cons.max_class_drop is not None else "")]
    notes = [note] if (note := cons.drop_rule(compared[0].comparison.images)[1]) else []
    sizes = [x.images for c in compared for x in (c.class_comparisons or {}).values()]
    if cons.max_class_drop is not None and sizes:
        smallest = min(sizes)
        if applied_rule(smallest, cons.max_class_drop, cons.accept)[1]:
            needed = images_to_resolve(cons.max_class_drop, RULE_LEVELS[cons.accept])
            notes.append(f"the smallest class's {smallest} images cannot resolve "
                         f"--max-class-drop {cons.max_class_drop:g} at --accept {cons.accept} "
                         f"({needed} would); classes that small are judged on the estimate")
    return notes


def decision_record(candidates: list[Candidate], cons: Constraints) -> dict[str, Any]:
    """pareto.json's account of how --max-drop was decided: the rule asked for and the one
    the split could apply, the validation images and how many would resolve the budget."""
    compared = [c for c in candidates if c.comparison is not None]
    images = compared[0].comparison.images if compared else None
    level = RULE_LEVELS[cons.accept]
    return {"accept": cons.accept,
            "rule_applied": cons.drop_rule(images)[0] if images else "point",
            "validation_images": images,
            "images_to_resolve": None if level is None else images_to_resolve(cons.max_drop,
                                                                              level),
            "compared": len(compared), "candidates": len(candidates),
            "notes": split_notes(candidates, cons)}


def _split_note(candidates: list[Candidate], cons: Constraints) -> str:
    notes = split_notes(candidates, cons)
    if not notes:
        return ""
    if not any(c.comparison is not None for c in candidates):
        return f" ({notes[0]})"
    return (f" (Too little data to decide: {'; '.join(notes)}. Hold out more validation "
            "images (train the base with a larger --val-fraction), or pass --confirm-folds 5 "
            "to re-run the shortlisted pipelines on 5 folds of all non-test images, to decide "
            f"under --accept {cons.accept}.)")


def _limits(cons: Constraints) -> str:
    parts = [f"drop <= {cons.max_drop:g} points at --accept {cons.accept}"]
    if cons.max_latency_ms is not None:
        parts.append(f"latency <= {cons.max_latency_ms:g} ms")
    if cons.max_size_mb is not None:
        parts.append(f"size <= {cons.max_size_mb:g} MB")
    if cons.max_class_drop is not None:
        parts.append(f"any class's drop <= {cons.max_class_drop:g} points")
    return ", ".join(parts)
