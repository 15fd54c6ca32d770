"""Every number in the README's "Measured" table, and the main figures of docs/benchmarks.md, is
read from the results file it cites, at the rounding it is printed with (issue 37).

A row's text is cut into figure tokens (numbers and git stamps; names such as CIFAR-10, INT8 or
top-1, code spans and link targets are not figures). For a README row every token is accounted
for, in order: a value read from a JSON file under bench/results/ by its key path, or `said()`,
a number that is no measurement (a target, a confidence level, a batch size, a data set's size)
with the reason. For docs/benchmarks.md the figures after an anchor phrase are checked, in order.
A speed-up is always the median of the per-round ratios (protocol.SPEEDUP) and its range. A row
that cites a file from before the protocol (no `started_utc`) or stamped `+dirty` must say so."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
DOCS = ROOT / "docs" / "benchmarks.md"
sys.path.insert(0, str(ROOT / "bench"))

import protocol  # noqa: E402

SPEEDUP, SPEEDUP_RANGE = protocol.SPEEDUP, protocol.SPEEDUP_RANGE

LINK = re.compile(r"\[([^\]]*)\]\(([^)]*)\)")
CODE = re.compile(r"`[^`]*`")
NAME = re.compile(r"[A-Za-z]\w*(?:-\d+\w*)+")  # CIFAR-10, top-1: names, not figures
TOKEN = re.compile(r"(?<![\w.])(?:[0-9a-f]{7}(?:\+dirty)?(?![\w.])"
                   r"|[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)")

Figure = Callable[[], str]


# ---- reading the files -------------------------------------------------------------------------

@cache
def record(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def value(name: str, path: str) -> float:
    node = record(name)
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def fixed(number: float, digits: int, scale: float = 1, sign: bool = False) -> str:
    """`number` as printed: 7 significant digits first (float32 noise: 0.16249999 is 0.1625),
    then half up to `digits` decimals, thousands grouped; `sign` adds a + to a positive."""
    exact = Decimal(format(number, ".7g")) * Decimal(repr(scale))
    text = f"{exact.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP):,}"
    return f"+{text}" if sign and exact > 0 else text


def at(name: str, path: str, digits: int = 2, scale: float = 1, sign: bool = False) -> Figure:
    return lambda: fixed(value(name, path), digits, scale, sign)


def pct(name: str, path: str, digits: int = 2) -> Figure:
    return at(name, path, digits, scale=100)


def gain(name: str, path: str, digits: int = 2) -> Figure:
    """A drop in points printed as a gain: +0.12 for a drop of -0.12."""
    return at(name, path, digits, scale=-1, sign=True)


def quotient(name: str, top: str, bottom: str, digits: int = 2) -> Figure:
    return lambda: fixed(value(name, top) / value(name, bottom), digits)


def difference(name: str, a: str, b: str, digits: int = 2, scale: float = 100) -> Figure:
    return lambda: fixed(value(name, a) - value(name, b), digits, scale, sign=True)


def extreme(pick: Callable, names: tuple[str, ...], path: str, digits: int = 2) -> Figure:
    return lambda: fixed(pick(value(n, path) for n in names), digits)


def speedup(name: str, path: str, digits: int = 2) -> list[Figure]:
    """The one statistic and its range: three figures, median then min and max."""
    return [at(name, f"{path}.{SPEEDUP}", digits), at(name, f"{path}.{SPEEDUP_RANGE}.0", digits),
            at(name, f"{path}.{SPEEDUP_RANGE}.1", digits)]


def git(name: str) -> Figure:
    """The revision a row names: the commit, with +dirty when the tree was not clean."""
    def stamp() -> str:
        label = record(name)["git"]
        return label.split("+")[0] + ("+dirty" if "+dirty" in label else "")
    return stamp


def said(text: str, why: str) -> Figure:
    assert why, "a number that is not read from a file needs its reason"
    return lambda: text


def unfiled(why: str) -> Figure:
    """docs only: a figure in the text that no results file holds, so it is not checked."""
    assert why
    return lambda: None


# ---- reading the tables ------------------------------------------------------------------------

def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("|---")]


def measured_rows() -> list[str]:
    section = README.read_text().split("## Measured", 1)[1].split("\n## ", 1)[0]
    return table_rows(section)[1:]  # after the header


def row_with(rows: list[str], key: str) -> str:
    found = [row for row in rows if key in row.split(" | ")[0]]
    assert len(found) == 1, f"{len(found)} rows have {key!r} in their first cell"
    return found[0]


def linked_results(row: str) -> set[str]:
    return {Path(target).name for _, target in LINK.findall(row) if "bench/results/" in target}


def plain(text: str) -> str:
    """The prose of a row: links, code spans and names that hold digits taken out."""
    return NAME.sub("", CODE.sub("", LINK.sub("", text)))


def tokens(text: str) -> list[str]:
    return TOKEN.findall(plain(text))


def after(row: str, anchor: str) -> list[str]:
    text = plain(row)
    assert anchor in text, f"{anchor!r} not in the row: {text[:120]}..."
    return tokens(text.split(anchor, 1)[1])


def expected(figures: list[Figure]) -> list[str]:
    return [figure() for figure in figures]


# ---- the README's Measured table ---------------------------------------------------------------

R, T, TT = "recipe_validation.json", "transfer.json", "train_throughput-resnet20.json"
OPT, V, P, A = "optimize.json", "runtime_openvino.json", "optimize_photos.json", \
    "robustness-adabn.json"
PHOTO_RUNS = ("optimize_photos-run1.json", "optimize_photos-run2.json",
              "optimize_photos-run3.json", P)
BATCH_1, BATCH_32 = said("1", "batch size"), said("32", "batch size")
LEVEL_95, LEVEL_80 = said("95", "interval level"), said("80", "interval level")
RV = "figures.runs.default."
LAT = "figures.latency.ORT int8."
COMBINED, PTQ = "figures.pareto.0.", "figures.pareto.1."  # the refused candidate, INT8 alone

README_ROWS: dict[str, tuple[set[str], list[Figure]]] = {
    "CIFAR-10 with": ({R}, [
        at(R, "config.train", 0), at(R, "config.held_out", 0), at(R, RV + "batch_size", 0),
        at(R, RV + "epochs", 0), pct(R, RV + "test_top1"), LEVEL_95,
        pct(R, RV + "test_interval95.0"), pct(R, RV + "test_interval95.1"),
        at(R, RV + "wall_seconds", 0), said("91", "the target"), git(R)]),
    "10 classes of real photos": ({T}, [
        said("10", "the clothing set's classes"), said("3,068", "its training images"),
        pct(T, "figures.lp-ft.test_top1"), LEVEL_95,
        pct(T, "figures.lp-ft.test_interval95.0", 1), pct(T, "figures.lp-ft.test_interval95.1", 1),
        at(T, "figures.lp-ft.test_n", 0), pct(T, "figures.lp-ft.val_top1"),
        at(T, "figures.lp-ft.seconds", 0), pct(T, "figures.lp-ft.probe_val_top1"),
        pct(T, "figures.full.test_top1", 1), pct(T, "figures.plain.test_top1", 1), git(T)]),
    "training speed": ({TT}, [
        at(TT, "config.images", 0), at(TT, f"figures.speedup_images_per_second.{SPEEDUP}"),
        at(TT, "config.repeats", 0),
        *speedup(TT, "figures.speedup_images_per_second")[1:], git(TT)]),
    "`optimize` on CIFAR-10": ({OPT}, [
        at(OPT, "config.trials", 0), at(OPT, COMBINED + "paired.budget_points", 0),
        at(OPT, "figures.chosen.vs_base.size_ratio"), said("8", "the target"),
        at(OPT, f"figures.chosen.vs_base.speedup_b1.{SPEEDUP}"), BATCH_1,
        at(OPT, "config.repeats", 0), *speedup(OPT, "figures.chosen.vs_base.speedup_b1")[1:],
        said("4", "the target"), gain(OPT, "figures.chosen.val_drop_points"),
        pct(OPT, "figures.chosen.test_top1"), pct(OPT, "figures.base.test_top1"),
        said("1.5", "the target"), *speedup(OPT, "figures.chosen.vs_single.ptq_only"),
        at(OPT, COMBINED + "pipeline.prune_ratio", 0, scale=100),
        at(OPT, COMBINED + "vs_base_torch.size_ratio"),
        quotient(OPT, PTQ + "latency_ms", COMBINED + "latency_ms"),
        at(OPT, COMBINED + "paired.drop_points"), at(OPT, COMBINED + "paired.images", 0), LEVEL_95,
        at(OPT, COMBINED + "paired.interval95_points.0", 1),
        at(OPT, COMBINED + "paired.interval95_points.1", 1), LEVEL_80,
        at(OPT, COMBINED + "paired.interval80_points.1"),
        at(OPT, COMBINED + "paired.budget_points", 0), git(OPT)]),
    "ONNX Runtime INT8 on a trained": ({V}, [
        said("224", "the model's input size"),
        at(V, "figures.quantize.ort.guard.max_drop_points", 0),
        at(V, "config.rounds", 0),
        *speedup(V, LAT + "batch_1.speedup_over.ORT fp32")[:1], BATCH_1,
        *speedup(V, LAT + "batch_1.speedup_over.ORT fp32")[1:],
        *speedup(V, LAT + "batch_32.speedup_over.ORT fp32")[:1], BATCH_32,
        *speedup(V, LAT + "batch_32.speedup_over.ORT fp32")[1:],
        *speedup(V, LAT + "batch_1.speedup_over.torch eager fp32")[:1], BATCH_1,
        *speedup(V, LAT + "batch_1.speedup_over.torch eager fp32")[1:],
        pct(V, "figures.val.ORT int8.top1"), pct(V, "figures.val.ORT fp32.top1"),
        at(V, "figures.quantize.ort.guard.drop_points"),
        at(V, "figures.quantize.ort.guard.comparison.images", 0), LEVEL_80,
        at(V, "figures.quantize.ort.guard.comparison.interval80_points.1", 1),
        at(V, "figures.quantize.ort.guard.max_drop_points", 0), git(V)]),
    "`optimize photos/": ({P, *PHOTO_RUNS}, [
        at(P, f"figures.speedup_vs_base_torch_rounds.{SPEEDUP}"), BATCH_1,
        at(P, "config.rounds", 0), *speedup(P, "figures.speedup_vs_base_torch_rounds")[1:],
        at(P, "config.budget_minutes", 0), gain(P, "figures.chosen.val_drop_points"),
        pct(P, "figures.chosen.test_top1", 1), pct(P, "figures.base.test_top1", 1),
        extreme(min, PHOTO_RUNS, f"figures.speedup_vs_base_torch_rounds.{SPEEDUP}"),
        extreme(max, PHOTO_RUNS, f"figures.speedup_vs_base_torch_rounds.{SPEEDUP}"),
        git(PHOTO_RUNS[1]), git(P)]),
    "`adapt --method adabn`": ({A}, [
        at(A, "figures.test_images", 0), at(A, "figures.severity", 0),
        pct(A, "figures.mean_recovered.adabn", 1), pct(A, "figures.recovered_range.adabn.0", 1),
        pct(A, "figures.recovered_range.adabn.1", 1), git(A)]),
}


def test_every_measured_row_is_checked() -> None:
    firsts = [row.split(" | ")[0] for row in measured_rows()]
    assert len(firsts) == len(README_ROWS)
    for key in README_ROWS:
        assert sum(key in first for first in firsts) == 1, key


def test_readme_figures_are_all_read_or_said() -> None:
    for _, figures in README_ROWS.values():
        assert None not in expected(figures)


@pytest.mark.parametrize("key", list(README_ROWS))
def test_every_number_in_a_measured_row_is_read_from_its_file(key: str) -> None:
    files, figures = README_ROWS[key]
    row = row_with(measured_rows(), key)
    assert files <= linked_results(row), "the row must link the files its figures come from"
    what, result = row.split(" | ")[:2]
    assert tokens(f"{what} {result}") == expected(figures)


def is_pre_protocol(name: str) -> bool:
    return "started_utc" not in record(name)


def test_a_row_says_when_its_file_is_from_before_the_protocol_or_a_dirty_tree() -> None:
    rows = measured_rows() + table_rows(DOCS.read_text())
    for row in rows:
        for name in sorted(linked_results(row)):
            if is_pre_protocol(name):
                assert re.search(r"before the protocol|pre-protocol", row, re.I), (name, row[:80])
            if "+dirty" in record(name)["git"]:
                assert git(name)() in row, (name, row[:80])


def test_every_stored_speedup_carries_the_one_statistic() -> None:
    """The derived keys in bench/results are what protocol.with_round_statistics computes from
    the rounds each file holds: none is missing or stale."""
    for path in sorted(RESULTS.glob("*.json")):
        stored = json.loads(path.read_text())
        assert protocol.with_round_statistics(stored) == stored, path.name


# ---- docs/benchmarks.md ------------------------------------------------------------------------

F, F13, F10 = "fast_recipe.json", "fast_recipe-airnet_m-b1024-13ep.json", \
    "fast_recipe-airnet_m-b1024-10ep.json"
C, S = "compress.json", "train_throughput-airnet_s.json"
V1, RT, FL = "runtime_openvino-run1.json", "runtime.json", "few_labels.json"
SL, SLR, SL32 = "serve_load-resnet18-224.json", "serve_load-resnet18-224-repeat.json", \
    "serve_load.json"
DDP = "ddp_throughput.json"
PRUNED = "figures.prune.speed.pruned_vs_base."
QAT = "figures.qat.onnx_speed."
LEVEL32 = "figures.levels.32."


def run1(runtime: str, batch: str, digits: int) -> Figure:
    return at(V1, f"figures.latency.{runtime}.{batch}.median_ms", digits)


def run1_over(runtime: str, other: str, batch: str) -> list[Figure]:
    return speedup(V1, f"figures.latency.{runtime}.{batch}.speedup_over.{other}")


DOCS_CHECKS: list[tuple[str, str, list[Figure]]] = [
    ("`python bench/fast_recipe.py`", "| **", [
        pct(F, "figures.test_top1", 1), pct(F, "figures.test_top1_no_tta", 1),
        at(F, "figures.wall_seconds", 0), pct(F, "figures.target_top1", 0),
        at(F, "figures.budget_seconds", 0, scale=1 / 60)]),
    ("`python bench/fast_recipe.py`", "At airbench's batch 1024: ", [
        pct(F13, "figures.test_top1", 1), at(F13, "figures.wall_seconds", 0),
        at(F13, "config.epochs", 0), git(F13), pct(F10, "figures.test_top1", 1),
        at(F10, "figures.wall_seconds", 0), at(F10, "config.epochs", 0), git(F10)]),
    ("`python bench/recipe_validation.py`", "15 epochs): **", [
        pct(R, RV + "test_top1"), LEVEL_95, pct(R, RV + "test_interval95.0"),
        pct(R, RV + "test_interval95.1"), at(R, RV + "wall_seconds", 0), said("91", "target")]),
    ("`python bench/transfer.py`", "with defaults (LP-FT): **", [
        pct(T, "figures.lp-ft.val_top1"), pct(T, "figures.lp-ft.test_top1"), LEVEL_95,
        pct(T, "figures.lp-ft.test_interval95.0"), pct(T, "figures.lp-ft.test_interval95.1"),
        at(T, "figures.lp-ft.seconds", 0), at(T, "figures.lp-ft.peak_rss_gb", 1),
        pct(T, "figures.lp-ft.probe_val_top1"),
        difference(T, "figures.lp-ft.val_top1", "figures.lp-ft.probe_val_top1")]),
    ("`python bench/transfer.py`", "(1 epoch fits) ", [
        pct(T, "figures.full.val_top1", 1), pct(T, "figures.full.test_top1", 1),
        at(T, "figures.full.peak_rss_gb", 1)]),
    ("`python bench/train_throughput.py` (resnet20", "| leanvision ", [
        at(TT, "figures.images_per_second.leanvision.median", 0),
        at(TT, "figures.images_per_second.leanvision.min", 0),
        at(TT, "figures.images_per_second.leanvision.max", 0),
        at(TT, "figures.images_per_second.baseline.median", 0),
        at(TT, "figures.images_per_second.baseline.min", 0),
        at(TT, "figures.images_per_second.baseline.max", 0),
        *speedup(TT, "figures.speedup_images_per_second"),
        *speedup(TT, "figures.speedup_end_to_end"),
        at(TT, "figures.wall_seconds.leanvision.repeats.0", 0)]),
    ("--model airnet_s --batch-size 512", "one run of each, no rounds) | ", [
        at(S, "figures.leanvision.images_per_second", 0),
        at(S, "figures.baseline.images_per_second", 0),
        at(S, "figures.speedup_images_per_second"), at(S, "figures.speedup_end_to_end")]),
    ("(9e7ce16, clean", "fine-tuning epochs to **", [
        pct(C, "figures.prune.flops_fraction", 1), pct(C, "figures.prune.params_fraction", 0),
        said("8", "width multiple"), pct(C, "figures.prune.pruned_test_top1"),
        at(C, "figures.prune.test_drop_points", scale=-1, sign=True)]),
    ("(9e7ce16, clean", "PyTorch batch 1 **", [
        *speedup(C, PRUNED + "torch.b1"),
        at(C, "figures.prune.speed.base.torch.b1_ms.median"),
        at(C, "figures.prune.speed.pruned.torch.b1_ms.median"), BATCH_32,
        *speedup(C, PRUNED + "torch.b32"),
        at(C, "figures.prune.speed.base.torch.b32_img_s.median", 0),
        at(C, "figures.prune.speed.pruned.torch.b32_img_s.median", 0)]),
    ("(9e7ce16, clean", "ONNX Runtime batch 1 **", [
        *speedup(C, PRUNED + "onnx-fp32.b1"),
        at(C, "figures.prune.speed.base.onnx-fp32.b1_ms.median"),
        at(C, "figures.prune.speed.pruned.onnx-fp32.b1_ms.median"),
        at(C, "figures.prune.speed.pruned.onnx-fp32.b1_ms.min"),
        at(C, "figures.prune.speed.pruned.onnx-fp32.b1_ms.max"), BATCH_32,
        *speedup(C, PRUNED + "onnx-fp32.b32"),
        at(C, "figures.prune.speed.base.onnx-fp32.b32_img_s.median", 0),
        at(C, "figures.prune.speed.pruned.onnx-fp32.b32_img_s.median", 0)]),
    ("same — quantize", "(the QAT model, ", [
        said("5", "rounds"), BATCH_1, *speedup(C, QAT + "int8_vs_fp32.b1_ms"),
        at(C, QAT + "paired.qat/onnx-fp32.b1_ms.median"),
        at(C, QAT + "paired.qat/onnx-int8.b1_ms.median"), BATCH_32,
        *speedup(C, QAT + "int8_vs_fp32.b32_img_s"),
        at(C, QAT + "paired.qat/onnx-fp32.b32_img_s.median", 0),
        at(C, QAT + "paired.qat/onnx-int8.b32_img_s.median", 0)]),
    ("`python bench/runtime.py --base BASE`", "resnet18 at 224 px: INT8 **", [
        at(RT, "figures.224px.leanvision_int8_vs_fp32.throughput"), BATCH_32,
        at(RT, "figures.224px.leanvision_int8_vs_fp32.latency_b1"), BATCH_1,
        at(RT, "figures.224px.leanvision_size_ratio"),
        at(RT, "figures.224px.naive_int8_vs_fp32.throughput")]),
    ("`python bench/runtime.py --base BASE`", "resnet20: INT8 test drop ", [
        at(RT, "figures.cifar10.leanvision_int8_drop_points"), BATCH_1,
        at(RT, "figures.cifar10.onnx_fp32_vs_plain_eager_b1"), said("5", "target")]),
    ("--model ARTIFACT --rounds 7`", "paired per round: **", [
        *speedup(V, LAT + "batch_1.speedup_over.ORT fp32")[:1], BATCH_1,
        *speedup(V, LAT + "batch_1.speedup_over.ORT fp32")[1:],
        *speedup(V, LAT + "batch_32.speedup_over.ORT fp32")[:1], BATCH_32,
        *speedup(V, LAT + "batch_32.speedup_over.ORT fp32")[1:], BATCH_1, BATCH_32,
        at(V, "figures.latency.torch eager fp32.batch_1.median_ms", 1),
        at(V, "figures.latency.torch eager fp32.batch_32.median_ms", 0),
        at(V, "figures.latency.ORT fp32.batch_1.median_ms"),
        at(V, "figures.latency.ORT fp32.batch_32.median_ms", 0),
        at(V, LAT + "batch_1.median_ms"), at(V, LAT + "batch_32.median_ms", 0),
        at(V, "figures.val.ORT fp32.n", 0), pct(V, "figures.val.ORT fp32.top1"),
        pct(V, "figures.val.ORT int8.top1"), pct(V, "figures.val.OpenVINO int8.top1")]),
    ("--model ARTIFACT --rounds 7`", "(the FP32 model: ", [pct(T, "figures.lp-ft.test_top1")]),
    ("(an earlier model, before", "torch eager ", [
        run1("torch eager fp32", "batch_1", 1), run1("torch eager fp32", "batch_32", 0),
        pct(V1, "figures.val.torch eager fp32.top1"),
        run1("ORT fp32", "batch_1", 2), run1("ORT fp32", "batch_32", 0),
        pct(V1, "figures.val.ORT fp32.top1"),
        run1("ORT int8", "batch_1", 2), run1("ORT int8", "batch_32", 0),
        pct(V1, "figures.val.ORT int8.top1"),
        run1("OpenVINO fp32", "batch_1", 1), run1("OpenVINO fp32", "batch_32", 0),
        pct(V1, "figures.val.OpenVINO fp32.top1"),
        run1("OpenVINO int8", "batch_1", 2), run1("OpenVINO int8", "batch_32", 0),
        pct(V1, "figures.val.OpenVINO int8.top1"),
        at(V1, "figures.quantize.ort.guard.max_drop_points", 0)]),
    ("(an earlier model, before", "their range): FP32 ", [
        *run1_over("OpenVINO fp32", "ORT fp32", "batch_1"), BATCH_1,
        *run1_over("OpenVINO fp32", "ORT fp32", "batch_32"), BATCH_32,
        *run1_over("OpenVINO int8", "ORT int8", "batch_1"),
        *run1_over("OpenVINO int8", "ORT int8", "batch_32")]),
    ("--name serve_load-resnet18-224`", "32 clients: **", [
        at(SL, LEVEL32 + "requests_per_s", 0), pct(SL, LEVEL32 + "share_of_runtime", 1),
        at(SL, "figures.runtime_images_per_s", 0), at(SL, LEVEL32 + "errors", 0),
        at(SL, "figures.variants.spin-on." + LEVEL32[8:] + "requests_per_s", 0),
        pct(SL, "figures.variants.spin-on.share_at_32", 1)]),
    ("--name serve_load-resnet18-224`", "a repeat with spinning off: ", [
        pct(SLR, "figures.target.share_at_32", 1)]),
    ("--name serve_load-resnet18-224`", "the runtime alone measured ", [
        at(SL, "figures.runtime_images_per_s", 0), at(SLR, "figures.runtime_images_per_s", 0)]),
    ("--name serve_load-resnet18-224`", "resnet20 INT8: ", [
        at(SL32, LEVEL32 + "requests_per_s", 0), pct(SL32, "figures.target.share_at_32", 0),
        at(SL32, "figures.runtime_images_per_s", 0)]),
    ("(dd86e55, clean", "main search ", [
        at(OPT, "figures.search_seconds", 0), at(OPT, "config.trials", 0),
        pct(OPT, PTQ + "val_top1"), gain(OPT, PTQ + "drop_points"),
        at(OPT, COMBINED + "pipeline.prune_ratio", 0, scale=100), pct(OPT, COMBINED + "val_top1"),
        gain(OPT, COMBINED + "drop_points"), LEVEL_95,
        at(OPT, COMBINED + "paired.interval95_points.0", 1),
        at(OPT, COMBINED + "paired.interval95_points.1", 1), pct(OPT, COMBINED + "test_top1"),
        at(OPT, COMBINED + "size_mb"), LEVEL_80, at(OPT, COMBINED + "paired.budget_points", 0),
        at(OPT, COMBINED + "paired.interval80_points.1")]),
    ("(dd86e55, clean", "(others' CPU ", [
        pct(OPT, "figures.timing.cpu_share_of_others", 1),
        at(OPT, "figures.chosen.vs_base.size_ratio"),
        at(OPT, "figures.chosen.size_bytes", scale=1e-6), at(OPT, "figures.base.size_mb"),
        said("8", "target"), at(OPT, f"figures.chosen.vs_base.speedup_b1.{SPEEDUP}"), BATCH_1,
        at(OPT, "figures.timing.paired.chosen.b1_ms.median"),
        at(OPT, "figures.timing.paired.base.b1_ms.median"),
        *speedup(OPT, "figures.chosen.vs_base.speedup_b1")[1:], said("4", "target"),
        *speedup(OPT, "figures.chosen.vs_single.ptq_only"), said("1.5", "target"),
        at(OPT, COMBINED + "paired.budget_points", 0), said("30", "the pruning ratio"),
        at(OPT, "figures.prune_only.b1_p50_ms"), gain(OPT, "figures.prune_only.val_drop_points"),
        *speedup(OPT, "figures.chosen.vs_single.prune_only"),
        quotient(OPT, PTQ + "latency_ms", COMBINED + "latency_ms"),
        at(OPT, COMBINED + "latency_ms"), at(OPT, PTQ + "latency_ms")]),
    ("`python bench/optimize_photos.py` (=", "run 4 (", [
        git(P), pct(P, "figures.others_cpu_share", 1), at(P, "figures.wall_s", 0),
        said("160", "the chosen input size"), gain(P, "figures.chosen.val_drop_points"),
        pct(P, "figures.base.test_top1"), pct(P, "figures.chosen.test_top1"),
        at(P, "figures.timing.chosen: base at 160 px · int8 ptq @ onnx-int8.latency_ms_median"),
        at(P, "figures.timing.chosen: base at 160 px · int8 ptq @ onnx-int8.latency_ms_range.0"),
        at(P, "figures.timing.chosen: base at 160 px · int8 ptq @ onnx-int8.latency_ms_range.1"),
        at(P, "figures.timing.base (torch fp32 eager).latency_ms_median"),
        *speedup(P, "figures.speedup_vs_base_torch_rounds"),
        at(P, "figures.timing.base ptq (onnx-int8).latency_ms_median"),
        *speedup(P, "figures.speedup_vs_best_base_int8_rounds")]),
    ("`python bench/optimize_photos.py` (=", "file is stamped ", [git(PHOTO_RUNS[1])]),
    ("`python bench/optimize_photos.py` (=", "medians of rounds, ", [
        extreme(min, PHOTO_RUNS, f"figures.speedup_vs_base_torch_rounds.{SPEEDUP}"),
        extreme(max, PHOTO_RUNS, f"figures.speedup_vs_base_torch_rounds.{SPEEDUP}"),
        extreme(min, PHOTO_RUNS, f"figures.speedup_vs_best_base_int8_rounds.{SPEEDUP}"),
        extreme(max, PHOTO_RUNS, f"figures.speedup_vs_best_base_int8_rounds.{SPEEDUP}")]),
    ("--methods adabn --max-test", "| clean ", [
        pct(A, "figures.base.clean_top1"), pct(A, "figures.mean_recovered.adabn", 1),
        pct(A, "figures.target_recovered", 0), pct(A, "figures.recovered_range.adabn.0", 1),
        pct(A, "figures.recovered_range.adabn.1", 1),
        *[pct(A, f"figures.families.{family}.{key}", 1)
          for family in ("contrast", "gaussian_noise", "gaussian_blur", "pixelate",
                         "brightness", "jpeg_compression")
          for key in ("corrupted_top1", "adabn_top1")]]),
    ("`python bench/few_labels.py` (12188fb", "→ student **", [
        pct(FL, "figures.semi.test_top1"), *[unfiled("Wilson interval, not stored")] * 2,
        at(FL, "figures.semi.seconds", 0), pct(FL, "figures.alone.test_top1"),
        *[unfiled("Wilson interval, not stored")] * 2, at(FL, "figures.alone.epochs", 0),
        at(FL, "figures.alone.seconds", 0), pct(FL, "figures.alone_time_share", 0)]),
    ("`python bench/ddp_throughput.py`", "| 1 process ", [
        at(DDP, "figures.runs.0.images_per_second", 0), at(DDP, "figures.runs.1.processes", 0),
        at(DDP, "figures.runs.1.images_per_second", 0),
        quotient(DDP, "figures.runs.1.images_per_second", "figures.runs.0.images_per_second")]),
]


@pytest.mark.parametrize(("key", "anchor", "figures"), DOCS_CHECKS,
                         ids=[f"{key[:24]}|{anchor[:24]}" for key, anchor, _ in DOCS_CHECKS])
def test_docs_figures_are_read_from_their_files(key: str, anchor: str,
                                                figures: list[Figure]) -> None:
    row = row_with(table_rows(DOCS.read_text()), key)
    want = expected(figures)
    got = after(row, anchor)[:len(want)]
    assert len(got) == len(want), got
    assert [text if w is not None else None for text, w in zip(got, want, strict=True)] == want
