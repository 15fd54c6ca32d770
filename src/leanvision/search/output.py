"""What `optimize` leaves in OUT once the trials are done: search.json (every trial),
pareto.json (the front, the choice and the statement), chosen/ (the chosen artifact with
model.onnx), bench.json (the front's measured rows) and report.html; and the tables it prints."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich import box
from rich.console import Console
from rich.table import Table

from ..artifact import CARD_FILE, read_card
from ..errors import LeanvisionError
from ..formatting import percent
from ..hardware import physical_cores
from ..io import write_json
from .constraints import (
    Candidate,
    Choice,
    decision_record,
    misses,
    paired_record,
    pareto_front,
)
from .evidence import attach_comparisons, reference_predictions
from .holdout import choose_and_confirm
from .objective import SearchContext, measure
from .retime import retime
from .space import Pipeline
from .stages import NOT_SHIPPED, QUIET, ensure_onnx

# The terminal width the front's table keeps to (one line per candidate).
TABLE_WIDTH = 100
COLUMN_GAP = 2
# A missed constraint in the table, named as the column that shows it.
MISSED = {"max_drop": "drop", "max_latency_ms": "ms", "max_size_mb": "MB"}


def finish(study: optuna.Study, ctx: SearchContext, *, storage_url: str, data: str,
           explain_images: int, console: Console) -> dict[str, Any]:
    out = ctx.out
    trials = study.get_trials(deepcopy=False)
    candidates = [c for t in trials if (c := candidate(t, out)) is not None]
    threads, classes = ctx.threads or physical_cores(), read_card(ctx.base)[1]["classes"]
    attach_comparisons(candidates, ctx.base, ctx.base_val, ctx.val_split(), threads, classes)
    paired = {c.trial: paired_record(c, ctx.constraints) for c in candidates}
    retimed = retime(candidates, ctx.base_val, ctx.constraints, ctx.threads, console)
    front = pareto_front(candidates)
    reference_pred = (reference_predictions(ctx.base, ctx.base_val, ctx.val_split(), threads)
                      if candidates else None) or (None, None)
    choice, confirmation = choose_and_confirm(candidates, ctx.base_val, ctx.constraints,
                                              *reference_pred, int(ctx.split["seed"]), classes)
    if choice.chosen is not None:  # one record per artifact and runtime: the front's
        key = (choice.chosen.artifact, choice.chosen.runtime)
        choice.chosen = next((c for c in front if (c.artifact, c.runtime) == key),
                             choice.chosen)
    reference = base_reference(ctx)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    counts = {k: v for k, v in counts.items() if v} | {"total": len(trials)}
    if not candidates:
        choice.statement = nothing_measured(trials, counts)

    search_path = write_json(out / "search.json", {
        "study": study.study_name, "storage": storage_url, "data": data,
        "base": reference, "constraints": ctx.constraints.to_dict(),
        "space": ctx.space.to_dict(), "budget": ctx.budget.to_dict(), "counts": counts,
        "left_out": left_out(trials, ctx), "retimed": retimed,
        "trials": [{**trial_record(t), "paired": paired.get(t.number)} for t in trials]})
    chosen_dir = write_chosen(choice, ctx, reference) if choice.chosen else None
    shown = front + ([choice.chosen] if choice.chosen and choice.chosen not in front else [])
    bench_path = write_bench(shown, ctx, reference)
    entries = [entry(c, ctx, reference, c is choice.chosen) for c in front]
    pareto_path = write_json(out / "pareto.json", {
        "front": entries, "chosen": entry(choice.chosen, ctx, reference, True)
        if choice.chosen else None, "met": choice.met, "statement": choice.statement,
        "retimed": retimed, "base": reference, "constraints": ctx.constraints.to_dict(),
        "decision": decision_record(candidates, ctx.constraints),
        "confirmation": confirmation})
    report_path = write_report(shown, ctx, bench_path, pareto_path, data, explain_images, console)

    skipped = left_out(trials, ctx)
    if skipped["line"]:
        console.print(f"[yellow]{skipped['line']}[/yellow]")
    console.print(pareto_table(entries, ctx))
    console.print(("[green]" if choice.met else "[yellow]") + choice.statement
                  + ("[/green]" if choice.met else "[/yellow]"))
    files = {"report": report_path, "chosen": chosen_dir, "pareto": pareto_path,
             "search": search_path, "bench": bench_path, "storage": storage_url,
             "stages": out / "stages", "base": ctx.base}
    console.print(files_table(files))
    if report_path:
        console.print(f"open the report: [bold]{report_path}[/bold]")
    return {"report": str(report_path) if report_path else None,
            "chosen": str(chosen_dir) if chosen_dir else None,
            "pareto": entries, "met": choice.met, "statement": choice.statement,
            "trials": counts, "storage": storage_url, "left_out": skipped,
            "candidate": entry(choice.chosen, ctx, reference, True) if choice.chosen else None,
            "base": reference,
            "files": {k: str(v) if v is not None else None for k, v in files.items()}}


def candidate(t: FrozenTrial, out: Path) -> Candidate | None:
    """The measured candidate of a finished trial (its artifact path is stored relative to
    OUT, so an OUT folder can move)."""
    figures = t.user_attrs.get("figures")
    if t.state != TrialState.COMPLETE or not figures:
        return None
    pipeline = t.user_attrs.get("pipeline", {})
    return Candidate(trial=t.number, label=t.user_attrs.get("label", "?"),
                     artifact=str(out / t.user_attrs["artifact"]),
                     runtime=pipeline.get("runtime", "?"),
                     val_top1=figures["val_top1"], latency_ms=figures["latency_ms"],
                     size_mb=figures["size_mb"], test_top1=figures.get("test_top1"),
                     pipeline=pipeline, flops=figures.get("flops"))


def nothing_measured(trials: list[FrozenTrial], counts: dict[str, int]) -> str:
    reasons = [r for t in trials for r in (t.user_attrs.get("error"),
                                           t.user_attrs.get("pruned_reason")) if r]
    found = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "total") or "no trials"
    return (f"No candidate was measured ({found}), so none can be chosen"
            + (f"; first reason: {reasons[0]}" if reasons else "")
            + ". Raise --trials or --max-drop, or see search.json")


def left_out(trials: list[FrozenTrial], ctx: SearchContext) -> dict[str, Any]:
    """What the search did not get to: trials stopped by the time budget, pipelines of the
    space no trial measured."""
    stopped = [t.user_attrs.get("label", "?") for t in trials if t.user_attrs.get("not_reached")]
    tried = {tuple(sorted(t.user_attrs["pipeline"].items())) for t in trials
             if t.state == TrialState.COMPLETE and t.user_attrs.get("pipeline")}
    untried = [p.label() for p in ctx.space.pipelines()
               if tuple(sorted(p.to_dict().items())) not in tried]
    parts = []
    if stopped:
        parts.append(f"{len(stopped)} trial(s) stopped by the time budget before finishing: "
                     + "; ".join(dict.fromkeys(stopped)))
    if untried and ctx.deadline is not None:
        parts.append(f"{len(untried)} of the space's {ctx.space.size()} pipelines were not "
                     "measured")
    return {"stopped_by_budget": stopped, "not_measured": untried,
            "line": ". ".join(parts) + ("." if parts else "")}


def trial_record(t: FrozenTrial) -> dict[str, Any]:
    attrs = t.user_attrs
    seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
               if t.datetime_complete and t.datetime_start else None)
    return {"number": t.number, "state": t.state.name, "params": t.params,
            "label": attrs.get("label"), "pipeline": attrs.get("pipeline"),
            "values": t.values, "figures": attrs.get("figures"),
            "artifact": attrs.get("artifact"), "stages": attrs.get("stages", []),
            "worker": attrs.get("worker"), "error": attrs.get("error"),
            "pruned_reason": attrs.get("pruned_reason"),
            "start": t.datetime_start.isoformat() if t.datetime_start else None,
            "seconds": round(seconds, 2) if seconds is not None else None}


def base_reference(ctx: SearchContext) -> dict[str, Any]:
    """The base as it is, in eager PyTorch FP32: what the chosen model is compared with."""
    figures = measure(ctx.base, "torch", ctx.budget, ctx.threads)
    return {"artifact": str(ctx.base), "arch": read_card(ctx.base)[1]["arch"],
            "runtime": "torch", "val_top1": figures["val_top1"],
            "test_top1": figures["test_top1"], "latency_ms": figures["latency_ms"],
            "size_mb": figures["size_mb"]}


def entry(c: Candidate, ctx: SearchContext, reference: dict[str, Any],
          chosen: bool) -> dict[str, Any]:
    record = c.to_dict(ctx.base_val)
    record["paired"] = paired_record(c, ctx.constraints)
    record["misses"] = misses(c, ctx.base_val, ctx.constraints)
    record["meets"] = not record["misses"]
    record["vs_base_torch"] = {
        "speedup_b1": round(reference["latency_ms"] / c.latency_ms, 3),
        "size_ratio": round(reference["size_mb"] / c.size_mb, 3)}
    record["chosen"] = chosen
    return record


def write_chosen(choice: Choice, ctx: SearchContext, reference: dict[str, Any]) -> Path:
    """OUT/chosen: a copy of the chosen artifact (ONNX exported), its card saying why."""
    c = choice.chosen
    assert c is not None
    source = Path(c.artifact)
    ensure_onnx(source)
    target, staging = ctx.out / "chosen", ctx.out / ".chosen.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*NOT_SHIPPED))
    card = json.loads((staging / CARD_FILE).read_text(encoding="utf-8"))
    card["recommended_runtime"] = c.runtime
    card["optimize"] = {"pipeline": c.pipeline, "label": c.label, "trial": c.trial,
                        "stage_folder": str(source), "met": choice.met,
                        "statement": choice.statement,
                        "constraints": ctx.constraints.to_dict(),
                        "figures": entry(c, ctx, reference, True)}
    write_json(staging / CARD_FILE, card)
    old = ctx.out / ".chosen.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_bench(shown: list[Candidate], ctx: SearchContext,
                reference: dict[str, Any]) -> Path:
    """A bench.json of the measured rows the report shows (the base's eager row unless the
    base itself is on the front, where the report would prefer it over the front's runtime);
    a re-timed candidate's p50 is the median of its re-timing rounds."""
    rows, seen = [], set()
    for c in shown:
        if (c.artifact, c.runtime) not in seen:
            seen.add((c.artifact, c.runtime))
            row = measure(Path(c.artifact), c.runtime, ctx.budget, ctx.threads)["bench"]
            if c.latency_range is not None:  # re-timed: the report shows what was chosen on
                row = {**row, "latency_ms": {**row["latency_ms"], "p50": c.latency_ms,
                                             "retimed_range": list(c.latency_range)}}
            rows.append(row)
    if all(Path(c.artifact).resolve() != ctx.base.resolve() for c in shown):
        rows.append(measure(ctx.base, "torch", ctx.budget, ctx.threads)["bench"])
    settings = measure(ctx.base, "torch", ctx.budget, ctx.threads)["settings"]
    return write_json(ctx.out / "bench.json", {"results": rows, "settings": settings})


def write_report(shown: list[Candidate], ctx: SearchContext, bench_path: Path,
                 pareto_path: Path, data: str, explain_images: int,
                 console: Console) -> Path | None:
    from ..reports import report

    folders = list(dict.fromkeys(c.artifact for c in shown)) or [str(ctx.base)]
    console.print(f"report: {len(folders)} artifact(s) of the Pareto front")
    try:
        result = report(folders, ctx.out / "report.html", data=data, bench=bench_path,
                        pareto=pareto_path, measure=False, explain_images=explain_images,
                        console=QUIET)
    except LeanvisionError as exc:  # the search results stand without the page
        console.print(f"[yellow]the report could not be written: {exc}[/yellow]")
        return None
    return Path(result["path"])


def pareto_table(entries: list[dict[str, Any]], ctx: SearchContext) -> Table:
    """The front, one line per candidate within TABLE_WIDTH columns: short pipeline names, the
    runtime beside them; the pipeline column gets the room the others leave, and a name longer
    than that is cut with an ellipsis, never wrapped onto more lines."""
    with_test = any(e["test_top1"] is not None for e in entries)
    headers = ["#", "pipeline", "runtime", "val", "drop", *(["test"] if with_test else []),
               "ms", "MB", "x faster", "meets"]
    rows = [[("▶ " if e["chosen"] else "") + str(e["trial"]), short_name(e), e["runtime"],
             f"{100 * e['val_top1']:.2f}", f"{e['drop_points']:.2f}",
             *([percent(e["test_top1"], sign="", missing="-")] if with_test else []),
             f"{e['latency_ms']:.3f}", f"{e['size_mb']:.3f}",
             f"{e['vs_base_torch']['speedup_b1']:.1f}",
             "yes" if e["meets"] else "no: " + ", ".join(MISSED[k] for k in e["misses"])]
            for e in entries]
    # Columns are COLUMN_GAP apart (one space of padding, one of the box's blank rule).
    others = sum(max(len(h), *(len(r[i]) for r in rows), 0) + COLUMN_GAP
                 for i, h in enumerate(headers) if h != "pipeline")
    table = Table(title=f"Pareto front: {len(entries)} candidate(s) (▶ chosen); drop in points "
                        f"against the base's {100 * ctx.base_val:.2f}% val top-1; speed-up "
                        "against the base in PyTorch at batch 1", box=box.SIMPLE_HEAD,
                  pad_edge=False, show_edge=False, collapse_padding=True)
    for col in headers:
        table.add_column(col, justify="left" if col in ("pipeline", "runtime", "meets")
                         else "right", no_wrap=True, overflow="ellipsis",
                         max_width=max(12, TABLE_WIDTH - others) if col == "pipeline" else None)
    for row in rows:
        table.add_row(*row)
    return table


def short_name(e: dict[str, Any]) -> str:
    """A candidate's pipeline in a few words ("resnet8 ← KD · INT8"; the runtime is its own
    column); a record without its pipeline keeps its label."""
    if e.get("pipeline"):
        with contextlib.suppress(TypeError):  # a record from another version of the fields
            return Pipeline(**e["pipeline"]).short()
    return str(e.get("label", "?")).rsplit(" @ ", 1)[0]


def files_table(files: dict[str, Any]) -> Table:
    what = {"report": "HTML report of the Pareto front", "chosen": "chosen artifact (ONNX)",
            "pareto": "Pareto front, choice, statement", "search": "every trial",
            "bench": "measured rows of the front", "storage": "Optuna study (resume here)",
            "stages": "stage cache", "base": "base artifact"}
    table = Table(title="optimize wrote")
    table.add_column("what")
    table.add_column("where")
    for key, value in files.items():
        table.add_row(what[key], str(value) if value is not None else "- (not written)")
    return table
