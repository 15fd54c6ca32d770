"""Peak memory of the two photo-sized inference paths that issue 37 capped in pixels, each run in
a fresh process so that one arm's arena or allocator cannot lower or raise the next one's peak:

- (a) ONNX Runtime static quantisation (`runtime.ort_quant.quantize_onnx_static`: calibration
  included) of a 224 px efficientnet_lite0 on 300 clothing photos, with batches of 32 (the
  behaviour before CALIBRATION_PIXELS) against the pixel-capped batches of today;
- (b) `compress.ptq.onnx_top1` scoring the clothing set's 341 validation photos at 224 px with
  a batch of 256 (uncapped) against `hardware.pixel_capped_batch`'s batch.

Each arm runs `--repeats` times (3: a memory peak does not drift with the machine's load as a
timing does), arms rotated each round (A B, B A, A B). The figure is the process's high-water
mark (ru_maxrss, through a bare launcher: see run_measured), with the RSS sampled every 0.1 s
as a cross-check and the RSS just before the measured call (interpreter, libraries, inputs).
The model is the packaged ImageNet efficientnet_lite0 with a fresh 10-class head: accuracy is
not measured, only memory.

Run: python bench/memory.py [--repeats 3]. Writes bench/results/memory.json.

The sampler (`run_measured`) is shared with bench/optimize_photos.py, which watches a whole
`leanvision optimize` process tree with it."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import CACHE, begin, clothing, console, print_table, result_record, write_result
from protocol import spread

MB = 1e6
WORK = CACHE / "memory"
SIZE = 224
CALIBRATION_IMAGES = 300
OLD_CALIBRATION_BATCH = 32  # what calibration used before CALIBRATION_PIXELS capped it
SCORING_BATCH = 256  # onnx_top1's default batch, which pixel_capped_batch lowers
# Each comparison's arms: before the pixel cap, and now.
ARMS = {"calibration": ("batch 32", "pixel-capped"), "scoring": ("batch 256", "pixel-capped")}


# ---- the sampler (also used by optimize_photos.py) ---------------------------------------------

try:
    import psutil
except ImportError:  # the /proc fallback below does the same on Linux
    psutil = None


def tree_rss_bytes(pid: int, skip_root: bool = False) -> int:
    """RSS of `pid` (unless `skip_root`) and all its descendants, summed (pages shared between
    processes count once per process: an upper bound on what the tree holds, which is what a
    limit must allow for)."""
    if psutil is None:
        return sum(_proc_rss(p) for p in _proc_tree(pid) if not (skip_root and p == pid))
    try:
        root = psutil.Process(pid)
        procs = [*([] if skip_root else [root]), *root.children(recursive=True)]
    except psutil.Error:
        return 0
    return sum(_psutil_rss(p) for p in procs)


def _psutil_rss(proc: Any) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:  # exited between listing and reading
        return 0


def _proc_tree(pid: int) -> set[int]:
    """`pid` and its descendants, from every process's parent in /proc/*/stat."""
    parents = {int(e.name): _proc_parent(e) for e in Path("/proc").iterdir() if e.name.isdigit()}
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        kids = [c for c, p in parents.items() if p == parent and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return tree


def _proc_parent(entry: Path) -> int:
    try:  # the command name may hold spaces and ")": the fields after its last ")" are fixed
        return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _proc_rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


class RssSampler:
    """Samples tree_rss_bytes(pid) every `interval` s on a thread until stopped; keeps the peak.
    `skip_root`: leave `pid` itself out (run_measured's launcher, not the measured command)."""

    def __init__(self, pid: int, interval: float, skip_root: bool = False) -> None:
        self.pid, self.interval, self.skip_root = pid, interval, skip_root
        self.peak, self.samples = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss_bytes(self.pid, self.skip_root))
            self.samples += 1
            if self._stop.wait(self.interval):
                return


@dataclass
class Measured:
    returncode: int
    wall_s: float
    sampled_peak_bytes: int  # the tree's summed RSS, sampled: may miss a short spike
    maxrss_bytes: int  # the high-water mark of the largest single process: exact, one process
    samples: int

    @property
    def peak_bytes(self) -> int:
        """Both figures are lower bounds of the tree's true peak, so the higher one is kept."""
        return max(self.sampled_peak_bytes, self.maxrss_bytes)


# A child's ru_maxrss starts at its parent's RSS when it was forked (Linux keeps the high-water
# mark of the memory it leaves at exec), so a command started straight from this process, which
# holds torch, would report at least this process's RSS. A bare interpreter in between starts it
# instead and writes getrusage(RUSAGE_CHILDREN).ru_maxrss (KiB; its only child) to argv[1].
_LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(command: list[str], *, interval: float = 1.0, stdout: Path | None = None,
                 env: dict[str, str] | None = None) -> Measured:
    """Run `command` to its end, its stdout to the file `stdout` (a pipe could fill and stall the
    child while this waits), stderr inherited; sample its tree's RSS every `interval` s."""
    with tempfile.TemporaryDirectory(prefix="lv-rss-") as scratch:
        report = Path(scratch) / "maxrss"
        with open(stdout or os.devnull, "wb") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(report),
                                     *command], stdout=out, env=env)
            with RssSampler(proc.pid, interval, skip_root=True) as sampler:
                code = proc.wait()
            wall = time.perf_counter() - t0
        maxrss = int(report.read_text()) * 1024 if report.is_file() else 0
    return Measured(code, wall, sampler.peak, maxrss, sampler.samples)


# ---- the measured work, one call per fresh process ---------------------------------------------

def worker(kind: str, arm: int, prep: Path) -> dict[str, Any]:
    """Load the prepared inputs, note the RSS, run one arm once; return what it used."""
    import numpy as np

    if kind == "calibration":
        calibration = np.load(prep / "calibration.npy")
        before = _rss_now()
        batch = _calibrate(prep / "model.onnx", calibration, old=arm == 0)
    else:
        images, labels = np.load(prep / "images.npy"), np.load(prep / "labels.npy")
        before = _rss_now()
        batch = _score(prep / "model.onnx", images, labels, uncapped=arm == 0)
    return {"batch": batch, "rss_before_bytes": before}


def _rss_now() -> int:
    return _proc_rss(os.getpid())


def _calibrate(model: Path, calibration: Any, old: bool) -> int:
    from leanvision.runtime import ort_quant

    if old:  # the cap lifted so that a batch of 32 at 224 px passes through whole
        ort_quant.CALIBRATION_PIXELS = OLD_CALIBRATION_BATCH * SIZE * SIZE
    with tempfile.TemporaryDirectory() as scratch:
        ort_quant.quantize_onnx_static(model, Path(scratch) / "model.int8.onnx", calibration)
    return len(ort_quant._ArrayReader(calibration[:OLD_CALIBRATION_BATCH])._batches[0])


def _score(model: Path, images: Any, labels: Any, uncapped: bool) -> int:
    import torch

    from leanvision.compress import ptq
    from leanvision.hardware import pixel_capped_batch

    if uncapped:  # what onnx_top1 did before its batches were capped in pixels
        ptq.pixel_capped_batch = lambda batch, height, width: batch
    scored = ptq.ScoringSet("val", torch.from_numpy(images), torch.from_numpy(labels),
                            [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                            [str(i) for i in range(10)], "none")
    ptq.onnx_top1(model, scored, batch_size=SCORING_BATCH)
    return SCORING_BATCH if uncapped else pixel_capped_batch(SCORING_BATCH, SIZE, SIZE)


# ---- preparation, once -----------------------------------------------------------------------

def prepare(data: Path) -> Path:
    """The exported model and the decoded photos, made once under WORK and reused."""
    prep = WORK / f"efficientnet_lite0-{SIZE}"
    if (prep / ".complete").is_file():
        return prep
    import numpy as np

    from leanvision.data import ImageChecks, decode_images, load_data, normalize
    from leanvision.models import create_model
    from leanvision.runtime.export import export_onnx

    prep.mkdir(parents=True, exist_ok=True)
    model = create_model("efficientnet_lite0", num_classes=10, pretrained=True)
    export_onnx(model, (SIZE, SIZE), prep / "model.onnx")
    source = load_data(data)
    pick = np.sort(np.random.default_rng(0).choice(len(source.train), CALIBRATION_IMAGES,
                                                   replace=False))
    train = decode_images(source.train.subset(pick), (SIZE, SIZE), ImageChecks(), skip_bad=True)
    calibration = normalize(train.images, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    np.save(prep / "calibration.npy", calibration.numpy())
    val = decode_images(source.val, (SIZE, SIZE), ImageChecks(), skip_bad=True)
    np.save(prep / "images.npy", val.images.numpy())
    np.save(prep / "labels.npy", val.labels.numpy())
    (prep / ".complete").write_text(str(data))
    return prep


# ---- the driver ------------------------------------------------------------------------------

def measure_arm(kind: str, arm: int, prep: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "worker.json"
        done = run_measured([sys.executable, __file__, "--worker", kind, "--arm", str(arm),
                             "--prep", str(prep)], interval=0.1, stdout=report)
        if done.returncode:
            raise SystemExit(f"{kind} arm {arm} exited with {done.returncode}")
        said = json.loads(report.read_text().strip().splitlines()[-1])
    return {**said, "maxrss_bytes": done.maxrss_bytes,
            "sampled_peak_bytes": done.sampled_peak_bytes, "wall_s": round(done.wall_s, 1)}


def compare(kind: str, prep: Path, repeats: int) -> dict[str, Any]:
    """Both arms of one comparison, rotated each round; every repeat kept."""
    runs: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for r in range(repeats):
        for arm in (r % 2, 1 - r % 2):
            runs[arm].append(measure_arm(kind, arm, prep))
            console.print(f"{kind} / {ARMS[kind][arm]}: peak "
                          f"{runs[arm][-1]['maxrss_bytes'] / MB:,.0f} MB")
    arms = {ARMS[kind][arm]: summarise_arm(runs[arm]) for arm in (0, 1)}
    before, now = (arms[name]["peak_mb"]["median"] for name in ARMS[kind])
    return {"arms": arms, "peak_ratio_before_over_now": round(before / now, 2),
            "peak_saved_mb": round(before - now, 1)}


def summarise_arm(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def mb(key: str) -> dict[str, Any]:
        return spread([r[key] / MB for r in runs])

    return {"batch": runs[0]["batch"], "peak_mb": mb("maxrss_bytes"),
            "sampled_tree_peak_mb": mb("sampled_peak_bytes"),
            "rss_before_mb": mb("rss_before_bytes"),
            "wall_s_median": statistics.median(r["wall_s"] for r in runs)}


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.arm, Path(args.prep))))
        return
    run = begin(["efficientnet_lite0 with ImageNet weights and a fresh 10-class head: "
                 "accuracy not measured", "peak = the process's ru_maxrss (high-water mark)"])
    data = Path(args.data) if args.data else clothing()
    prep = prepare(data)
    figures = {kind: compare(kind, prep, args.repeats) for kind in ARMS}
    config = {"data": str(data), "size": SIZE, "calibration_images": CALIBRATION_IMAGES,
              "scoring_images": "the val split", "repeats": args.repeats,
              "threads": "ONNX Runtime: torch's intra-op count"}
    write_result("memory", result_record("memory", figures, config, run))
    print_summary(figures, run)


def print_summary(figures: dict[str, Any], run: Any) -> None:
    rows = []
    for kind, f in figures.items():
        for name, arm in f["arms"].items():
            p = arm["peak_mb"]
            rows.append([kind, name, arm["batch"], round(p["median"]),
                         f"{p['min']:.0f}-{p['max']:.0f}", round(arm["rss_before_mb"]["median"]),
                         round(arm["sampled_tree_peak_mb"]["median"])])
    print_table("peak RSS in MB, a fresh process per repeat (median, range), RSS before the "
                "call, RSS sampled every 0.1 s", ["path", "arm", "batch", "peak", "range",
                                                  "before", "sampled"], rows, run)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", default=None, help="photo folder with train/ and val/ "
                   "(default: clothing)")
    p.add_argument("--worker", choices=list(ARMS), help=argparse.SUPPRESS)
    p.add_argument("--arm", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--prep", help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    main()
