"""The report names variants by what made them and numbers the Pareto charts' points so that no
two labels overlap, however the variants cluster."""

from __future__ import annotations

import itertools

import pytest

from leanvision.reports.labels import GID, text_box
from leanvision.reports.names import describe
from leanvision.reports.plots import draw_pareto


def _card(stage: str, arch: str = "resnet20", **extra) -> dict:
    return {"stage": stage, "arch": arch, "input": {"size": [32, 32]}, **extra}


def test_a_lineage_reads_as_its_pipeline() -> None:
    base = _card("train")
    student = _card("distill", "resnet8")
    ptq = _card("quantize", "resnet8", quantization={"method": "ptq"})
    assert describe([base]) == "resnet20 · FP32"
    assert describe([base, student, ptq]) == "resnet8 ← KD · INT8"
    pruned = _card("prune", pruning={"config": {"ratio": 0.5}})
    qat = _card("quantize", quantization={"method": "qat"})
    assert describe([base, pruned, _card("distill"), qat]) == \
        "resnet20 · prune 50% ← KD · INT8 QAT"
    resized = _card("resize", input={"size": [160, 160]})
    assert describe([base, resized, pruned]) == "resnet20 · 160px · prune 50% · FP32"


def _boxes(fig) -> dict:
    renderer = fig.canvas.get_renderer()
    return {ax: [(t.get_text(), text_box(t, renderer)) for t in ax.texts
                 if t.get_gid() == GID] for ax in fig.axes}


def test_pareto_point_labels_never_overlap_where_variants_cluster() -> None:
    # Twelve variants in two tight clusters (INT8 twins, cached stages measured twice), three
    # of them on one spot, and one far away.
    names = [f"variant {i}" for i in range(1, 14)]
    accuracy = [0.99, 0.99, 0.99, 0.9899, 0.9898, 0.9901, 0.98, 0.9801, 0.9799, 0.98, 0.9802,
                0.9798, 0.90]
    latency = [0.10, 0.10, 0.10, 0.101, 0.099, 0.102, 0.20, 0.201, 0.199, 0.202, 0.198, 0.2,
               5.0]
    size = [1.0 + 0.001 * i for i in range(12)] + [9.0]
    fig = draw_pareto(names, accuracy, [("latency (ms)", latency), ("size (MB)", size)],
                      "val top-1")
    figure_box = fig.bbox
    panels = [(ax, labels) for ax, labels in _boxes(fig).items() if labels]
    assert len(panels) == 2
    for _, labels in panels:
        assert sorted(int(text) for text, _ in labels) == list(range(1, 14))
        for (a, box_a), (b, box_b) in itertools.combinations(labels, 2):
            assert not box_a.overlaps(box_b), f"labels {a} and {b} overlap"
        for text, box in labels:
            assert figure_box.contains(box.x0, box.y0) and figure_box.contains(box.x1, box.y1), \
                f"label {text} leaves the figure"
    # the key beside the charts names every number
    key = "\n".join(t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() != GID)
    assert all(f"{i}  variant {i}" in key for i in range(1, 14))


def test_an_interval_is_drawn_as_an_error_bar() -> None:
    fig = draw_pareto(["base", "pruned"], [0.99, 0.98], [("size (MB)", [2.0, 1.0])],
                      "val top-1", errors=[None, (0.01, 0.02)])
    (bar,) = fig.axes[0].containers
    (segment,) = bar.lines[2][0].get_segments()
    assert segment[:, 1].tolist() == pytest.approx([0.97, 1.0])  # 0.98 - 0.01 to + 0.02


def test_an_error_bar_never_reaches_past_a_perfect_or_zero_accuracy() -> None:
    fig = draw_pareto(["base", "int8", "broken"], [1.0, 1.0, 0.01],
                      [("size (MB)", [2.0, 1.0, 0.5])], "val top-1",
                      errors=[None, (0.02, 0.02), (0.05, 0.03)])
    tops = sorted(tuple(c.lines[2][0].get_segments()[0][:, 1]) for c in fig.axes[0].containers)
    assert tops == [pytest.approx((0.0, 0.04)), pytest.approx((0.98, 1.0))]
