"""The report's robustness section: per variant, what `leanvision robustness` measured (the
robustness.json beside its artifact), so pruning or INT8 that made a model more fragile shows as
a larger drop than its parent's."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from ..formatting import percent
from . import html
from .collect import Variant, parent_folder

# as shift.robust_eval writes it; not imported, so the report does not load the shift stack
ROBUSTNESS_FILE = "robustness.json"


def read_robustness(variant: Variant) -> dict[str, Any] | None:
    path = variant.path / ROBUSTNESS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    needed = ("clean_top1", "mean_corruption_top1", "families")
    return record if isinstance(record, dict) and all(k in record for k in needed) else None


def robustness_section(variants: list[Variant]) -> html.Section:
    title = "Robustness to corruptions"
    records = {v.name: r for v in variants if v.card is not None
               and (r := read_robustness(v)) is not None}
    missing = [v for v in variants if v.card is not None and v.name not in records]
    if not records:
        return html.Section("robustness", title, html.note(
            "No robustness figures: no variant folder holds robustness.json. Run `leanvision "
            "robustness ARTIFACT` on each variant to see whether compression made it more "
            "fragile."))
    families = [f for r in records.values() for f in r["families"]]
    families = list(dict.fromkeys(families))
    by_path = {v.path.resolve(): v.name for v in variants}
    headers = ["variant", "stage", "runtime", "images", "clean %", "mCA %", "drop pts",
               "Δ drop vs parent", *[f"{f} drop" for f in families]]
    rows, marks = [], []
    for v in variants:
        record = records.get(v.name)
        if record is None:
            continue
        parent = parent_folder(v)
        parent_record = records.get(by_path.get(parent.resolve())) if parent else None
        delta = (record["mean_drop"] - parent_record["mean_drop"]
                 if parent_record is not None else None)
        rows.append([v.label, v.stage, record.get("runtime", "—"),
                     f"{record.get('n', '—')} {record.get('split', '')}".strip(),
                     _pct(record["clean_top1"]), _pct(record["mean_corruption_top1"]),
                     _pct(record.get("mean_drop")),
                     "—" if delta is None else f"{100 * delta:+.2f}",
                     *[_pct((record["families"].get(f) or {}).get("drop")) for f in families]])
        marks.append("front" if delta is not None and delta > 0.01 else "")
    parts = [html.table(headers, rows, marks, text_columns=3),
             html.paragraph("Top-1 on the clean images and its mean over every corruption "
                            "family and severity measured (mCA, CIFAR-10-C style); drop = clean "
                            "− corrupted, in points. Δ drop vs parent > 0: the variant loses "
                            "more to corruption than the model it was made from (marked when "
                            "over 1 point).", "muted")]
    configs = {json.dumps([r.get("data"), r.get("split"), r.get("n"),
                           (r.get("config") or {}).get("severities"),
                           (r.get("config") or {}).get("seed")])
               for r in records.values()}
    if len(configs) > 1:
        parts.append(html.note("The variants were measured on different data, splits, "
                               "severities or seeds; compare their drops with care."))
    for name, record in records.items():
        severities = (record.get("config") or {}).get("severities") or []
        detail = [[family, *[_pct(row["top1"].get(str(s))) for s in severities],
                   _pct(row.get("mean_top1"))] for family, row in record["families"].items()]
        parts.append(html.heading(f"{name} · top-1 % per severity"))
        parts.append(html.table(["corruption", *[f"severity {s}" for s in severities], "mean"],
                                detail, compact=True))
    if missing:
        parts.append(html.note("Not measured: " + ", ".join(v.label for v in missing)
                               + " (run `leanvision robustness` on them)."))
    return html.Section("robustness", title, "".join(parts))


# the report's cells show the number alone (no % sign)
_pct = partial(percent, sign="")
