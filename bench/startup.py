"""Start-up time of the command line (issue 27's target: `leanvision --help` within 1.5 s):
fresh processes of `leanvision --help` and `leanvision train --help`, this tree against an
earlier revision checked out beside it, interleaved under the bench protocol.

    python bench/startup.py --before e4b73ce~1   # the revision before the lazy import
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import REPO, begin, interleave, print_table, ratio, result_record, write_result

COMMANDS = {"leanvision --help": ["--help"], "leanvision train --help": ["train", "--help"]}


def _timer(src: Path, args: list[str]) -> Callable[[], float]:
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "100"}

    def run() -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "leanvision", *args], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        return time.perf_counter() - started
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="e4b73ce~1", help="revision to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run = begin(["wall time of a fresh process, Python start-up included"])
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.before],
                       cwd=REPO, check=True)
        try:
            figures = {}
            for label, cli_args in COMMANDS.items():
                timed = interleave({"before": _timer(old / "src", cli_args),
                                    "now": _timer(REPO / "src", cli_args)}, args.repeats)
                figures[label] = {**timed, "speed_up": ratio(timed["before"], timed["now"])}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO,
                           check=False)
    rows = [[label, f["before"]["median"], f"{f['before']['min']}–{f['before']['max']}",
             f["now"]["median"], f"{f['now']['min']}–{f['now']['max']}",
             f["speed_up"]["median"]] for label, f in figures.items()]
    print_table(f"start-up, seconds (median of {args.repeats}, interleaved; before = "
                f"{args.before})", ["command", "before", "range", "now", "range", "x"], rows,
                run)
    write_result("startup", result_record("startup", figures,
                                          {"before": args.before, "repeats": args.repeats},
                                          run))


if __name__ == "__main__":
    main()
