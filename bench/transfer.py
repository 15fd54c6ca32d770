"""Transfer learning on real photos (the clothing set: 10 classes, 3,068 train / 341 val / 372
test, 400x533 JPEG), side by side in one run, each arm in its own process so that its wall
time and peak memory (RSS) are its own:

  probe       `leanvision train DATA --finetune probe` (frozen features, logistic regression)
  lp-ft       `leanvision train DATA` with defaults (probe, then the top fine-tuned on cached
              activations)
  full        leanvision's whole-network fine-tuning (--finetune lower-lr), epochs sized by a
              measured step time to lp-ft's wall time
  plain       a tutorial's fp32 PyTorch loop: torchvision ImageFolder + DataLoader, random
              resized crops and flips, timm efficientnet_lite0 from the same weights, AdamW,
              stopped at lp-ft's wall time

Settings were chosen on val; each arm scores test once, at the end, reported beside val.

    python bench/transfer.py [--arms probe,lp-ft,full,plain] [--name transfer]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    CpuShare,
    accuracy_interval,
    begin,
    clothing,
    print_table,
    result_record,
    write_result,
)

ARMS = ("probe", "lp-ft", "full", "plain")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--name", default="transfer")
    ap.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        figures = run_arm(args.arm, clothing(), Path(args.out), args.seconds)
        Path(args.out, "figures.json").write_text(json.dumps(figures))
        return
    run = begin(["one run per arm; the intervals are the test set's sampling spread (Wilson, "
                 "95%), not seed-to-seed spread"])
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arm(s) {sorted(unknown)}; choose from {', '.join(ARMS)}")
    work = Path(tempfile.mkdtemp(prefix="transfer-"))
    results: dict[str, dict] = {}
    # lp-ft runs first: its wall time is the budget the time-matched baselines get.
    order = sorted(arms, key=lambda a: a != "lp-ft")
    for arm in order:
        budget = results.get("lp-ft", {}).get("seconds") if arm in ("full", "plain") else None
        results[arm] = spawn(arm, work / arm, budget)
        print(f"{arm}: {json.dumps({k: v for k, v in results[arm].items() if k != 'card'})}",
              flush=True)
    rows = [[a, r.get("val_top1"), _interval(r.get("test_interval95")), r["seconds"],
             r["peak_rss_gb"], r.get("epochs"), r["others_cpu_share"]]
            for a, r in results.items()]
    print_table("transfer on clothing (10 classes, 400x533 photos)",
                ["arm", "val top-1", "test top-1 (95%)", "seconds", "peak RSS GB", "epochs",
                 "others' CPU"], rows, run)
    record = result_record("transfer", results, {"arms": arms, "data": "clothing (shared/data)"},
                           run)
    write_result(args.name, record)


def _interval(bounds: list[float] | None) -> str:
    return "-" if not bounds else f"{bounds[0]:.1%}-{bounds[1]:.1%}"


def spawn(arm: str, out: Path, seconds: float | None) -> dict:
    """One arm in a child process: wall time, peak RSS of that child alone, and its figures."""
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--arm", arm, "--out", str(out)]
    if seconds is not None:
        cmd += ["--seconds", str(seconds)]
    t0 = time.perf_counter()
    with CpuShare() as share:
        proc = subprocess.Popen(cmd)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds_taken = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"arm {arm} failed (status {status})")
    figures = json.loads((out / "figures.json").read_text())
    figures["test_interval95"] = accuracy_interval(figures["test_top1"], figures["test_n"])
    return {**figures, "seconds": round(seconds_taken, 1),
            "peak_rss_gb": round(usage.ru_maxrss * 1024 / 2**30, 2),
            "others_cpu_share": round(share.others, 3)}


def run_arm(arm: str, data: Path, out: Path, seconds: float | None) -> dict:
    if arm == "plain":
        from plain_finetune import plain_finetune

        return plain_finetune(data, seconds or 600.0)
    import leanvision as lv

    settings: dict = {"progress": False}
    if arm == "probe":
        settings["finetune"] = "probe"
    elif arm == "full":
        settings.update(finetune="lower-lr", batch_size=32,
                        epochs=_full_epochs(data, seconds or 600.0))
    summary = lv.train(data, out / "run", **settings)
    m = summary["metrics"]
    transfer = summary["training"].get("transfer", {})
    return {"val_top1": m["val"]["top1"], "test_top1": m["test"]["top1"],
            "test_n": m["test"]["n"],
            "probe_val_top1": transfer.get("probe_val_top1"),
            "epochs": summary["training"]["epochs_run"], "training": summary["training"]}


def _full_epochs(data: Path, seconds: float) -> int:
    """Whole-network epochs that fit `seconds`, from a measured training step (at least 1)."""
    import torch

    from leanvision.models import create_model

    model = create_model("efficientnet_lite0", 10, pretrained=True).train()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(32, dtype=torch.long)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per_image = min(times[1:]) / 32
    n_train = sum(1 for _ in (data / "train").rglob("*.jpg"))
    return max(1, int(seconds * 0.8 / (per_image * n_train)))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
