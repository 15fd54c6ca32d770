"""`optimize --confirm-folds K`: when one validation split is too small to tell a candidate's
drop from the budget, the shortlisted pipelines are re-run on K stratified folds of the
labelled non-test images, and their paired comparisons pooled.

What is re-run, and why nothing less would be honest: every candidate was fine-tuned,
distilled or calibrated on all of the training images, so the only images none of them has
seen are the validation split itself; scoring them again on "folds" of that split would only
cut the same evidence into pieces. So each fold k trains its own base on the other K-1 folds
(the base's recipe), re-runs each shortlisted pipeline from that base through the same stages,
and compares it with that base, image by image, on fold k. Every non-test image is held out
once, so the pooled comparison (the folds' lost and gained images added: leanvision.paired
from_counts) rests on all of them rather than on one split's tenth. It judges the *pipeline*
(the recipe that built the candidate), which is what the choice is about; the shipped model is
still the one built on the original split. The test split is never used.

Each fold is an ordinary optimize run (OUT/confirm/fold-k) over data written as a CSV with
that fold's train / val split (images held in memory, such as builtin:digits, are written once
as PNG files beside it), whose study holds exactly the shortlisted pipelines."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from ..data.partition import concat_records
from ..data.sources import DataSource
from ..data.splits import stratified_kfold
from ..errors import ConfigError
from ..io import write_atomic, write_text
from ..paired import RULE_LEVELS, PairedComparison, applied_rule, from_counts
from .constraints import Constraints
from .objective import SearchContext

# Shortlisted pipelines re-run on every fold: each costs K fine-tunings.
SHORTLIST = 3


def shortlist(front: list[dict[str, Any]], chosen: dict[str, Any] | None, max_drop: float,
              limit: int = SHORTLIST) -> list[dict[str, Any]]:
    """pareto.json's chosen entry, then the faster front entries the split could not rule
    out (they missed only --max-drop, and their 95% interval reaches below it: the statement
    names them as undecided), fastest first, then the fastest others that meet every
    constraint (those the choice would move to if the chosen one failed); one per pipeline.
    A candidate off the front is slower and no more accurate than one on it."""
    picked: list[dict[str, Any]] = [chosen] if chosen is not None else []
    fastest = chosen["latency_ms"] if chosen is not None else float("inf")

    def undecided(e: dict[str, Any]) -> bool:
        interval = (e.get("paired") or {}).get("interval95_points")
        return (e["latency_ms"] < fastest and set(e.get("misses") or {}) == {"max_drop"}
                and interval is not None and interval[0] <= max_drop)

    by_speed = sorted(front, key=lambda e: (e["latency_ms"], e["size_mb"]))
    for entry in [e for e in by_speed if undecided(e)] + [e for e in by_speed if e.get("meets")]:
        if len(picked) >= limit:
            break
        if all(entry["pipeline"] != p["pipeline"] for p in picked):
            picked.append(entry)
    return picked


def write_folds(source: DataSource, folds: int, seed: int, folder: Path) -> list[Path]:
    """One CSV per fold (path,label,split: train or val) over the labelled non-test images,
    stratified; in-memory images are written once as PNG files under `folder`/images."""
    records = concat_records([r for r in (source.train, source.val) if r is not None])
    if records.texts is not None:
        raise ConfigError("--confirm-folds re-runs image pipelines; data with text columns "
                          "is not supported: drop --confirm-folds")
    splits = stratified_kfold(records, folds, seed, classes=source.classes)
    paths = _image_paths(records.items, folder / "images")
    written = []
    for k, (_, held_out) in enumerate(splits):
        val = set(np.asarray(held_out).tolist())
        text = io.StringIO()
        rows = csv.writer(text, lineterminator="\n")
        rows.writerow(["path", "label", "split"])
        rows.writerows([path, source.classes[label], "val" if i in val else "train"]
                       for i, (path, label) in enumerate(zip(paths, records.labels.tolist(),
                                                             strict=True)))
        written.append(write_text(folder / f"fold-{k + 1}.csv", text.getvalue()))
    return written


def _image_paths(items: list, folder: Path) -> list[str]:
    from PIL import Image

    paths = []
    for i, item in enumerate(items):
        if not isinstance(item, np.ndarray):
            paths.append(str(Path(item).absolute()))
            continue
        target = folder / f"{i:06d}.png"
        if not target.is_file():  # written once; a resumed run reuses them
            write_atomic(target, lambda tmp, item=item: Image.fromarray(item).save(tmp, "PNG"))
        paths.append(str(target))
    return paths


@dataclass
class Confirmed:
    """One shortlisted pipeline's pooled comparison over the folds."""

    label: str
    pipeline: dict[str, Any]
    comparison: PairedComparison | None  # None: some fold could not compare it
    folds: list[dict[str, Any]]  # per fold: lost, gained, images (or why not)
    latency_ms: float = 0.0  # as measured on the original split: the faster supported wins

    def verdict(self, cons: Constraints) -> tuple[bool, str]:
        """(within --max-drop under --accept on the pooled images, the rule applied)."""
        if self.comparison is None:
            return False, "none"
        rule, _ = applied_rule(self.comparison.images, cons.max_drop, cons.accept)
        return self.comparison.accepts(cons.max_drop, rule), rule


def pool(label: str, pipeline: dict[str, Any], per_fold: list[dict[str, Any] | None],
         latency_ms: float = 0.0) -> Confirmed:
    """Add the folds' paired counts (disjoint images) into one comparison."""
    folds = [f if f is not None else {"missing": True} for f in per_fold]
    if any(f is None for f in per_fold):
        return Confirmed(label, pipeline, None, folds, latency_ms)
    lost = sum(f["lost"] for f in per_fold)
    gained = sum(f["gained"] for f in per_fold)
    images = sum(f["images"] for f in per_fold)
    agreements = [f.get("agreement") for f in per_fold]
    agreement = (None if any(a is None for a in agreements)
                 else sum(a * f["images"] for a, f in zip(agreements, per_fold, strict=True))
                 / images)
    return Confirmed(label, pipeline, from_counts(lost, gained, images, agreement), folds,
                     latency_ms)


def fold_counts(search: dict[str, Any], pipeline: dict[str, Any]) -> dict[str, Any] | None:
    """A fold's paired counts for `pipeline` from its search.json (None: not compared)."""
    for trial in search.get("trials", []):
        paired = trial.get("paired")
        if trial.get("pipeline") == pipeline and trial.get("state") == "COMPLETE" and paired:
            return {k: paired[k] for k in ("lost", "gained", "images", "agreement")}
    return None


def statement(confirmed: list[Confirmed], folds: int, cons: Constraints) -> str:
    """One sentence per shortlisted pipeline, and which one the folds support."""
    parts = []
    for c in confirmed:
        if c.comparison is None:
            parts.append(f"{c.label}: not compared on every fold")
            continue
        met, rule = c.verdict(cons)
        bound = ("point estimate" if rule == "point" else
                 f"{RULE_LEVELS[rule]:.0%} upper bound {c.comparison.upper(rule):.1f}")
        parts.append(f"{c.label}: {c.comparison.describe()} — within {cons.max_drop:g} "
                     f"point{'' if cons.max_drop == 1 else 's'}: "
                     f"{'yes' if met else 'no'} ({bound})")
    supported = sorted((c for c in confirmed if c.verdict(cons)[0]),
                       key=lambda c: c.latency_ms)
    images = next((c.comparison.images for c in confirmed if c.comparison is not None), 0)
    head = (f"Confirmed on {folds} folds ({images} images, each held out once; base and "
            f"pipeline re-trained per fold): ")
    tail = (f" The folds support {supported[0].label}." if supported else
            " No shortlisted pipeline stays within the budget on the folds.")
    return head + "; ".join(parts) + "." + tail


def confirm(source: DataSource, pareto: dict[str, Any], cons: Constraints, folds: int,
            seed: int, out: Path, run_fold: Callable[[str, Path, list[dict]], dict[str, Any]],
            console: Console) -> dict[str, Any]:
    """Re-run pareto.json's shortlist on `folds` folds; `run_fold(data_csv, folder,
    pipelines)` runs one fold's optimize and returns its search.json. Returns pareto.json's
    "confirm" block."""
    short = shortlist(pareto["front"], pareto.get("chosen"), cons.max_drop)
    if not short:
        return {"folds": folds, "shortlist": [], "statement": "nothing to confirm: no "
                "candidate was measured"}
    csvs = write_folds(source, folds, seed, out / "confirm")
    per_fold: list[dict[str, Any]] = []
    for k, csv_path in enumerate(csvs):
        console.rule(f"--confirm-folds: fold {k + 1} of {folds}")
        per_fold.append(run_fold(str(csv_path), out / "confirm" / f"fold-{k + 1}",
                                 [c["pipeline"] for c in short]))
    confirmed = [pool(c["label"], c["pipeline"], [fold_counts(s, c["pipeline"]) for s in per_fold],
                      c["latency_ms"]) for c in short]
    said = statement(confirmed, folds, cons)
    return {"folds": folds, "seed": seed, "statement": said,
            "shortlist": [{"label": c.label, "pipeline": c.pipeline,
                           "pooled": None if c.comparison is None else
                           c.comparison.record(cons.max_drop, c.verdict(cons)[1]),
                           "within_budget": c.verdict(cons)[0], "folds": c.folds}
                          for c in confirmed],
            "supported": next((c.label for c in sorted(confirmed, key=lambda c: c.latency_ms)
                               if c.verdict(cons)[0]), None)}


def confirm_run(summary: dict[str, Any], ctx: SearchContext, source: DataSource, folds: int,
                seed: int, console: Console) -> None:
    """Confirm the finished search's shortlist on `folds` folds: pareto.json gains a
    "confirm" block and its statement the confirmation's; `summary` likewise. Every fold's
    search reuses this one's constraints, space, budget, timing threads and skip-bad choice."""
    import json

    import optuna

    from ..io import write_json
    from .api import DIRECTIONS, optimize
    from .space import Pipeline

    cons, space, out = ctx.constraints, ctx.space, ctx.out

    def run_fold(data: str, folder: Path, pipelines: list[dict]) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(folder / 'optuna.db').resolve()}"
        study = optuna.create_study(storage=storage, study_name="confirm",
                                    directions=list(DIRECTIONS), load_if_exists=True)
        # Exactly the shortlist, no anchors; a resumed fold (or a longer shortlist) adds
        # only the pipelines its study does not hold yet.
        # (an enqueued trial not yet run holds its parameters as fixed_params)
        held = [t.params or t.system_attrs.get("fixed_params", {})
                for t in study.get_trials(deepcopy=False)]
        for pipeline in pipelines:
            params = space.params(Pipeline(**pipeline))
            if params not in held:
                study.enqueue_trial(params)
                held.append(params)
        optimize(data, out=folder, max_drop=cons.max_drop, max_latency_ms=cons.max_latency_ms,
                 max_size_mb=cons.max_size_mb, accept=cons.accept,
                 max_class_drop=cons.max_class_drop, trials=len(held), storage=storage,
                 study_name="confirm", threads=ctx.threads, seed=seed, console=console,
                 budget=ctx.budget, space=space, skip_bad_images=ctx.skip_bad_images)
        return json.loads((folder / "search.json").read_text(encoding="utf-8"))

    pareto_path = out / "pareto.json"
    pareto = json.loads(pareto_path.read_text(encoding="utf-8"))
    block = confirm(source, pareto, cons, folds, seed, out, run_fold, console)
    pareto["confirm"] = block
    said = pareto["statement"].rstrip()
    pareto["statement"] = f"{said}{'' if said.endswith(('.', ')')) else '.'} {block['statement']}"
    write_json(pareto_path, pareto)
    summary["confirm"], summary["statement"] = block, pareto["statement"]
    console.print(block["statement"], highlight=False)
