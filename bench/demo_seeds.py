"""Issue 25's demo target: on builtin:digits (`make demo`, the demo's defaults) the chosen model
and statement are the same across 3 seeds of the search, or the output says that the split
cannot tell the candidates apart.

Runs `leanvision optimize builtin:digits --out DIR --seed S` (exactly what `make demo` runs,
plus the sampler's seed) once per seed, each in a fresh folder (its own base too, as a user's
`make demo` would train it), and records per seed the chosen pipeline, its runtime, figures and
paired comparison with the base, and the statement; writes bench/results/demo_seeds.json and
prints one table. `--base ARTIFACT` shares one base among the seeds instead (the search's seed
alone then varies). `--shared-out` runs every seed in one folder, each its own study
(`--study-name demo-seed-S`): a pipeline two seeds both sample is trained once and its stage
results reused (training is seeded, so it would come out the same), while every seed's
finish re-times its own candidates; on a busy 2-core machine this is what fits in an hour."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import begin, console, print_table, result_record, write_result

WORK = Path("/tmp/leanvision-bench/demo_seeds")


def run_seed(seed: int, base: str | None, work: Path, shared: bool) -> dict[str, Any]:
    out = work / ("shared" if shared else f"seed-{seed}")
    if not shared:
        shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "leanvision", "optimize", "builtin:digits", "--out",
               str(out), "--seed", str(seed)] + (["--base", base] if base else []) + (
                   ["--study-name", f"demo-seed-{seed}"] if shared else [])
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    seconds = round(time.perf_counter() - started, 1)
    (work / f"seed-{seed}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return {"seed": seed, "error": (done.stderr or done.stdout)[-2000:], "seconds": seconds}
    pareto = json.loads((out / "pareto.json").read_text())
    search = json.loads((out / "search.json").read_text())
    chosen = pareto.get("chosen") or {}
    return {"seed": seed, "seconds": seconds, "met": pareto["met"],
            "statement": pareto["statement"], "chosen": _brief(chosen),
            "front": [_brief(e) for e in pareto["front"]], "decision": pareto.get("decision"),
            "base_val_top1": (pareto.get("base") or {}).get("val_top1"),
            "trials": [_trial(t) for t in search["trials"]]}


def _trial(t: dict[str, Any]) -> dict[str, Any]:
    """Every trial's pipeline, figures and paired verdict: which ones could have been chosen."""
    paired = t.get("paired") or {}
    return {"number": t["number"], "state": t["state"], "label": t.get("label"),
            "figures": t.get("figures"),
            "paired": {k: paired.get(k) for k in ("drop_points", "interval80_points",
                                                  "interval95_points", "lost", "gained",
                                                  "agreement", "accepted", "rule")}}


def _brief(entry: dict[str, Any]) -> dict[str, Any]:
    """What tells two seeds' choices apart: the pipeline, runtime and figures."""
    keep = ("label", "runtime", "pipeline", "val_top1", "drop_points", "latency_ms",
            "latency_range", "size_mb", "flops", "paired", "meets", "misses")
    return {k: entry.get(k) for k in keep if k in entry}


def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Same choice and statement across seeds, or a statement that says the split cannot
    tell the candidates apart?"""
    ok = [r for r in runs if "error" not in r]
    choices = {(r["chosen"].get("label"), r["chosen"].get("runtime")) for r in ok}
    statements = {r["statement"] for r in ok}
    says_cannot_tell = all("cannot tell" in r["statement"] for r in ok)
    return {"seeds": len(runs), "finished": len(ok), "same_choice": len(choices) == 1,
            "same_statement": len(statements) == 1, "choices": sorted(map(str, choices)),
            "statement_says_cannot_tell": says_cannot_tell,
            "target_met": bool(ok) and len(ok) == len(runs)
            and (len(choices) == 1 or says_cannot_tell)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base", help="one base artifact for every seed (default: each run "
                        "trains its own, as make demo does)")
    parser.add_argument("--name", default="demo_seeds", help="results file name")
    parser.add_argument("--shared-out", action="store_true", help="one output folder for "
                        "every seed, a study each (stages shared; see the module's doc)")
    args = parser.parse_args()
    run = begin()
    WORK.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        console.print(f"seed {seed}: leanvision optimize builtin:digits --seed {seed}")
        runs.append(run_seed(seed, args.base, WORK, args.shared_out))
        console.print(runs[-1].get("statement") or runs[-1].get("error"))
    rows = [[r["seed"], r.get("chosen", {}).get("label"), r.get("chosen", {}).get("runtime"),
             r.get("chosen", {}).get("val_top1"), r.get("chosen", {}).get("latency_ms"),
             r.get("met"), r["seconds"]] for r in runs]
    print_table("optimize builtin:digits, one row per search seed",
                ["seed", "chosen", "runtime", "val top-1", "ms", "met", "seconds"], rows, run)
    summary = verdict(runs)
    console.print(summary)
    write_result(args.name, result_record("demo_seeds", {"runs": runs, "verdict": summary},
                                          {"seeds": args.seeds, "base": args.base,
                                           "shared_out": args.shared_out},
                                          run))


if __name__ == "__main__":
    main()
