"""Atomic writes: all or nothing, ordinary permissions, no temporary files left behind."""

from __future__ import annotations

import json
import os

import pytest

from leanvision.io import append_jsonl, read_jsonl, write_atomic, write_json


def test_write_json_is_complete_and_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "sub" / "card.json", {"a": 1})
    finally:
        os.umask(old)
    assert json.loads(path.read_text()) == {"a": 1}
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["card.json"]


def test_a_failed_write_leaves_the_old_file_untouched(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("old")

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_jsonl_reader_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1})
    with open(path, "a") as f:
        f.write('{"epoch": 2, "lo')
    assert read_jsonl(path) == [{"epoch": 1}]
