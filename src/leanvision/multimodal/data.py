"""CSV rows with text: load them, apply the empty-text policy (with counts, never silently), and
turn the text of the rows that decoded into token ids aligned with the decoded images."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..data import DataSource, ImageRecords, load_data
from ..errors import DatasetError
from .config import MultimodalConfig
from .text import Tokenizer, join_columns

_SHOW = 5


def prepare_source(spec: str, cfg: MultimodalConfig) -> tuple[DataSource, dict[str, Any]]:
    """The data with its text columns, after the empty-text policy; and a report of the counts
    (rows, rows without text per split, rows dropped). Training and evaluation both come
    through here, so a dropped row is dropped the same way before any split is cut."""
    source = load_data(spec, text_columns=cfg.text_columns)
    _check_columns_used(source, cfg, spec)
    report: dict[str, Any] = {"rows": 0, "empty_text": {}, "dropped_empty_text": 0,
                              "empty_text_policy": cfg.empty_text}
    splits = {}
    for name in ("train", "val", "test"):
        records = getattr(source, name)
        if records is None:
            splits[name] = None
            continue
        records, empty, dropped = _apply_policy(records, cfg.empty_text, spec, name)
        report["rows"] += len(records) + dropped
        report["empty_text"][name] = empty
        report["dropped_empty_text"] += dropped
        splits[name] = records
    if not len(splits["train"]):
        raise DatasetError(f"every training row of {spec} has empty text and --empty-text drop "
                           "removed them all; fill the text or use --empty-text keep")
    return replace(source, train=splits["train"], val=splits["val"], test=splits["test"]), report


def texts_of(records: ImageRecords, rows: np.ndarray | None = None) -> list[str]:
    """The joined, cleaned text of each record (of `rows` only, when given)."""
    if records.texts is None:
        raise DatasetError("these records carry no text columns; load the CSV with its text "
                           "columns (--text-columns)")
    index = range(len(records)) if rows is None else rows
    return [join_columns(records.texts[int(i)]) for i in index]


def encode_rows(tokenizer: Tokenizer, records: ImageRecords, kept: np.ndarray) -> torch.Tensor:
    """Token ids of the rows whose image decoded (`kept`), aligned with the decoded images."""
    return tokenizer.encode(texts_of(records, kept)).ids


def _apply_policy(records: ImageRecords, policy: str, spec: str,
                  split: str) -> tuple[ImageRecords, int, int]:
    empty = [i for i in range(len(records)) if not join_columns(records.texts[i])]
    if not empty:
        return records, 0, 0
    if policy == "error":
        shown = ", ".join(records.describe(i) for i in empty[:_SHOW])
        more = f" and {len(empty) - _SHOW} more" if len(empty) > _SHOW else ""
        raise DatasetError(f"{len(empty)} of {len(records)} {split} rows of {spec} have empty "
                           f"text (images: {shown}{more}). Fill the text in, or pass "
                           "--empty-text keep (those rows train the image branch only) or "
                           "--empty-text drop (leave them out, counted)")
    if policy == "drop":
        keep = np.setdiff1d(np.arange(len(records)), np.asarray(empty))
        return records.subset(keep), len(empty), len(empty)
    return records, len(empty), 0


def _check_columns_used(source: DataSource, cfg: MultimodalConfig, spec: str) -> None:
    """A column that is empty in every training row is almost surely the wrong column."""
    texts = source.train.texts or []
    for c, name in enumerate(cfg.text_columns or []):
        if texts and not any(row[c].strip() for row in texts):
            raise DatasetError(f"text column {name!r} of {spec} is empty in all {len(texts)} "
                               "training rows; check --text-columns (or fill the column)")


def describe_report(report: dict[str, Any]) -> str:
    empty = report["empty_text"]
    parts = [f"{n} {s}" for s, n in empty.items() if n]
    text = f"{report['rows']} rows"
    if parts:
        verb = "dropped" if report["empty_text_policy"] == "drop" else \
            "kept (image branch only)"
        text += f"; rows with empty text: {', '.join(parts)} — {verb}"
    return text
