"""What optimize prints: one validation accuracy per line, saying what scored it, and a Pareto
table of short pipeline names that keeps each candidate on one line of a 100-column terminal."""

from __future__ import annotations

import io
import re

from rich.console import Console

from leanvision.search import Pipeline, SearchSpace
from leanvision.search.objective import SearchContext, stage_top1
from leanvision.search.output import pareto_table

WIDTH = 100


def _entry(number: int, p: Pipeline, *, test: float | None = None, chosen: bool = False,
           misses: dict | None = None) -> dict:
    return {"trial": number, "label": p.label(), "pipeline": p.to_dict(), "runtime": p.runtime,
            "val_top1": 0.9944, "drop_points": -10.56, "test_top1": test,
            "latency_ms": 12.345, "size_mb": 123.456, "vs_base_torch": {"speedup_b1": 12.3},
            "misses": misses or {}, "meets": not misses, "chosen": chosen}


def _rows(entries: list[dict]) -> list[str]:
    ctx = SearchContext.__new__(SearchContext)
    ctx.base_val = 0.9889
    out = io.StringIO()
    Console(file=out, width=WIDTH, color_system=None).print(pareto_table(entries, ctx))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= WIDTH for line in lines)
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    return [line for line in lines[rule + 1:] if line.strip()]


def test_the_front_table_keeps_each_candidate_on_one_line_at_100_columns() -> None:
    # The demo's space (a resnet20 base, a resnet8 student): every name whole, one line each.
    demo = [_entry(n, p, chosen=n == 3)
            for n, p in enumerate(SearchSpace(students=("resnet8",)).pipelines())]
    rows = _rows(demo)
    assert len(rows) == len(demo)
    for row, e in zip(rows, demo, strict=True):
        assert Pipeline(**e["pipeline"]).short() in row and e["runtime"] in row
    assert re.match(r"▶ 3 +resnet8 ← KD · FP32 ", rows[3]) is None  # 3 is the base FP32
    assert rows[3].startswith("▶ 3") and "base · prune 50% ← KD · INT8" in "\n".join(rows)
    # The widest: photo resolutions, OpenVINO, a test split, constraints missed.
    photo = SearchSpace(resolutions=(192, 160, 128),
                        runtimes=("torch", "openvino-fp32", "openvino-int8", "onnx-int8"))
    worst = [_entry(100 + n, p, test=0.9, misses={"max_drop": 1, "max_latency_ms": 1,
                                                  "max_size_mb": 1})
             for n, p in enumerate(photo.pipelines())]
    assert len(_rows(worst)) == len(worst)


def test_short_pipeline_names() -> None:
    assert Pipeline(source="resnet8", quant="ptq", runtime="onnx-int8").short() == \
        "resnet8 ← KD · INT8"
    assert Pipeline(prune_ratio=0.5, recovery="kd", quant="qat", runtime="onnx-int8",
                    resolution=160).short() == "base · 160px · prune 50% ← KD · INT8 QAT"
    assert Pipeline().short() == "base · FP32"


def test_a_stage_line_names_what_scored_its_one_accuracy() -> None:
    # A QAT stage's card keeps three figures of one weight set: the float network, the
    # fake-quant network and the INT8 file; the line shows what ships.
    qat = {"inference": {"tta": "none"},
           "metrics": {"val": {"top1": 1.0}, "fake_quant": {"val": {"top1": 0.9944}},
                       "int8": {"val": {"top1": 0.9778}}}}
    assert stage_top1(qat) == (0.9778, "onnx-int8, no TTA")
    pruned = {"inference": {"tta": "flip"}, "metrics": {"val": {"top1": 0.98}}}
    assert stage_top1(pruned) == (0.98, "torch fp32, TTA flip")
    openvino = {"metrics": {"val": {"top1": 1.0}, "openvino_int8": {"val": {"top1": 0.97}}}}
    assert stage_top1(openvino) == (0.97, "openvino-int8, no TTA")
