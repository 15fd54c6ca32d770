"""bench/protocol.py and bench/common.py: a run is stamped at its start with the commit and a
hash of any uncommitted change, says so in its tables and JSON, and times comparisons in rotated
interleaved rounds reported as median, min, max and every repeat."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import protocol  # noqa: E402


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "bench" / "results").mkdir(parents=True)
    (root / "src" / "code.py").write_text("x = 1\n")
    (root / "bench" / "results" / "old.json").write_text("{}\n")
    _git(root, "init", "-q")
    _git(root, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    _git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "first")
    return root


def test_a_clean_tree_is_its_commit(repo: Path) -> None:
    stamp = protocol.revision(repo)
    assert stamp.commit and not stamp.dirty and stamp.diff_sha is None
    assert stamp.label == stamp.commit and stamp.changed == ()


def test_a_dirty_tree_is_stamped_with_a_hash_of_its_diff(repo: Path) -> None:
    (repo / "src" / "code.py").write_text("x = 2\n")
    first = protocol.revision(repo)
    assert first.dirty and first.changed == ("src/code.py",)
    assert first.label == f"{first.commit}+dirty:{first.diff_sha}" and len(first.diff_sha) == 12
    assert protocol.revision(repo).diff_sha == first.diff_sha  # the same code, the same hash
    (repo / "src" / "code.py").write_text("x = 3\n")
    assert protocol.revision(repo).diff_sha != first.diff_sha  # another diff, another hash


def test_untracked_code_counts_by_name_and_content(repo: Path) -> None:
    (repo / "bench" / "new.py").write_text("a = 1\n")
    one = protocol.revision(repo)
    assert one.dirty and one.changed == ("bench/new.py",)
    (repo / "bench" / "new.py").write_text("a = 2\n")
    assert protocol.revision(repo).diff_sha != one.diff_sha
    (repo / "bench" / "new.py").unlink()
    (repo / "bench" / "other.py").write_text("a = 1\n")  # same content, another name
    assert protocol.revision(repo).diff_sha not in (None, one.diff_sha)


def test_results_and_untracked_files_outside_the_code_do_not_make_a_tree_dirty(
        repo: Path) -> None:
    (repo / "bench" / "results" / "old.json").write_text('{"new": 1}\n')
    (repo / "bench" / "results" / "run.json").write_text("{}\n")
    (repo / "notes.txt").write_text("scratch\n")
    assert not protocol.revision(repo).dirty


def test_outside_git_the_revision_says_so(tmp_path: Path) -> None:
    stamp = protocol.revision(tmp_path)
    assert stamp.commit is None and stamp.label.startswith("unknown")


def test_the_stamp_is_taken_at_the_start_not_when_the_record_is_written(repo: Path) -> None:
    run = protocol.start_run(repo, caveats=["untrained model"])
    (repo / "src" / "code.py").write_text("x = 9\n")  # edited while the run goes on
    record = common.result_record("demo", {"ms": 1.0}, {}, run)
    assert record["git"] == run.revision.commit and record["dirty"] is False
    assert record["diff_sha"] is None and record["caveats"] == ["untrained model"]
    assert record["started_utc"] == run.started_utc


def test_a_dirty_run_says_so_in_its_json_and_its_table(repo: Path) -> None:
    (repo / "src" / "code.py").write_text("x = 2\n")
    run = protocol.start_run(repo)
    run.caveat("accuracy guard off")
    run.caveat("accuracy guard off")  # said once
    record = common.result_record("demo", {}, {}, run)
    assert record["dirty"] is True and record["diff_sha"] == run.revision.diff_sha
    assert record["git"].endswith(f"+dirty:{run.revision.diff_sha}")
    assert record["changed_files"] == ["src/code.py"]
    with common.console.capture() as captured:
        common.print_table("speed", ["model", "ms"], [["a", 1.0]], run=run)
    text = captured.get()
    assert "UNCOMMITTED CHANGES" in text and run.revision.diff_sha in text
    assert "src/code.py" in text and text.count("caveat: accuracy guard off") == 1


def test_a_clean_run_table_carries_its_revision_and_caveats_only(repo: Path) -> None:
    run = protocol.start_run(repo, caveats=["subset of 400 images"])
    with common.console.capture() as captured:
        common.print_table("speed", ["model", "ms"], [["a", 1.0]], run=run)
    text = captured.get()
    assert "UNCOMMITTED" not in text and f"revision {run.revision.commit}" in text
    assert "caveat: subset of 400 images" in text


def test_interleave_rotates_the_order_every_round() -> None:
    calls: list[str] = []

    def measure(name: str, value: float):
        def call() -> float:
            calls.append(name)
            return value
        return call

    out = protocol.interleave({"A": measure("A", 1.0), "B": measure("B", 2.0),
                               "C": measure("C", 3.0)}, repeats=5)
    assert calls == ["A", "B", "C", "B", "C", "A", "C", "A", "B",
                     "A", "B", "C", "B", "C", "A"]
    assert out["A"]["repeats"] == [1.0] * 5 and out["C"]["median"] == 3.0


def test_interleave_reports_median_min_max_and_every_repeat() -> None:
    values = iter([5.0, 50.0, 1.0, 10.0, 3.0, 30.0, 2.0, 20.0, 4.0, 40.0])
    # two measures, rotated: round order A B, B A, A B, B A, A B
    out = protocol.interleave({"A": lambda: next(values), "B": lambda: next(values)}, 5)
    assert out["A"] == {"median": 5.0, "min": 3.0, "max": 20.0,
                        "repeats": [5.0, 10.0, 3.0, 20.0, 4.0]}
    assert out["B"] == {"median": 30.0, "min": 1.0, "max": 50.0,
                        "repeats": [50.0, 1.0, 30.0, 2.0, 40.0]}


def test_interleave_refuses_too_few_repeats() -> None:
    with pytest.raises(ValueError, match="at least 5"):
        protocol.interleave({"A": lambda: 1.0}, repeats=4)
    with pytest.raises(ValueError, match="at least one"):
        protocol.interleave({}, repeats=5)


def test_ratio_pairs_the_rounds() -> None:
    slow = protocol.spread([10.0, 20.0, 12.0, 11.0, 10.0])
    fast = protocol.spread([5.0, 5.0, 4.0, 5.5, 4.0])
    got = protocol.ratio(slow, fast)
    assert got["median"] == round(11.0 / 5.0, 4)
    assert got["repeats"] == [2.0, 4.0, 3.0, 2.0, 2.5]
    assert (got["min"], got["max"]) == (2.0, 4.0)


def _cifar_tarball(path: Path, content: bytes) -> Path:
    import tarfile

    src = path.parent / f"src-{path.stem}"
    (src / "cifar10" / "train" / "cat").mkdir(parents=True)
    (src / "cifar10" / "train" / "cat" / "0001.jpg").write_bytes(content)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "cifar10", arcname="cifar10")
    return path


def test_a_changed_tarball_is_swapped_in_without_removing_the_live_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cache" / "cifar10"
    first = _cifar_tarball(tmp_path / "a.tar.gz", b"old")
    assert common._extract_once(first, target) == target
    link = tmp_path / "link.jpg"  # a subset folder's symlink into the extracted copy
    link.symlink_to(target / "train" / "cat" / "0001.jpg")
    removed: list[Path] = []
    real_rmtree = common.shutil.rmtree

    def spy(path, *args, **kwargs):
        removed.append(Path(path))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(common.shutil, "rmtree", spy)
    second = _cifar_tarball(tmp_path / "b.tar.gz", b"new")
    common._extract_once(second, target)
    assert target not in removed  # other runs read it through symlinks while this one extracts
    assert link.read_bytes() == b"new"
    assert (target / ".complete").read_text() == common._stamp(second)
    assert sorted(p.name for p in target.parent.iterdir()) == ["cifar10"]  # no staging left
