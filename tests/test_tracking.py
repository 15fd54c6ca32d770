"""MLflow tracking: parameters, per-epoch metrics, the card and report attached, stages linked to
their parent run, resume continuing the same run, and clear errors. All on a local SQLite store."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import FAST

import leanvision as lv
from leanvision.errors import TrackingError
from leanvision.training import loop as loop_module

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module: creating its schema takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def tracked_train(store, tmp_path_factory):
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("tracked")
    data = make_image_folder(root / "data")
    summary = lv.train(data, root / "run", track_uri=store, **FAST)
    return root / "run", summary


def _run_of(folder, store):
    card = json.loads((folder / "model.json").read_text())
    return card, MlflowClient(store).get_run(card["tracking"]["run_id"])


def test_a_tracked_run_has_params_metrics_and_attachments(tracked_train, store):
    out, summary = tracked_train
    card, run = _run_of(out, store)
    assert run.info.status == "FINISHED"
    assert run.data.tags["leanvision.stage"] == "train"
    params = run.data.params
    assert params["model"] == "resnet8" and params["epochs"] == "2"
    assert params["optimizer"] == "adamw"  # chosen by the recipe, logged once resolved
    assert params["processes"] == "1"
    history = MlflowClient(store).get_metric_history(run.info.run_id, "train_loss")
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([e["train_loss"] for e in epochs])
    assert run.data.metrics["final.val.top1"] == pytest.approx(summary["metrics"]["val"]["top1"])
    files = {f.path for f in MlflowClient(store).list_artifacts(run.info.run_id)}
    assert {"model.json", "config.json", "metrics.jsonl", "report.html"} <= files
    assert card["tracking"]["run_id"] == run.info.run_id
    assert json.loads((out / "tracking.json").read_text())["run_id"] == run.info.run_id


def test_a_stage_run_is_linked_to_its_parent_run(tracked_train, store, tmp_path):
    parent, _ = tracked_train
    summary = lv.prune(parent, out=tmp_path / "pruned", ratio=0.3, finetune_epochs=1,
                       check=False, progress=False, track_uri=store)
    _, parent_run = _run_of(parent, store)
    card, run = _run_of(tmp_path / "pruned", store)
    assert run.data.tags["mlflow.parentRunId"] == parent_run.info.run_id
    assert run.data.tags["leanvision.parent_run_id"] == parent_run.info.run_id
    assert run.data.tags["leanvision.stage"] == "prune"
    assert run.data.params["ratio"] == "0.3"
    assert card["parent"] == str(parent) and summary["stage"] == "prune"
    steps = MlflowClient(store).get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in steps] == [1]


def test_resume_continues_the_same_mlflow_run(tiny_folder, tmp_path, store, monkeypatch):
    real_save = loop_module.save_checkpoint

    def save_then_die(folder, state):
        real_save(folder, state)
        if state["epoch"] == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        lv.train(tiny_folder, tmp_path / "run", track_uri=store, **FAST)
    run_id = json.loads((tmp_path / "run" / "tracking.json").read_text())["run_id"]
    assert MlflowClient(store).get_run(run_id).info.status == "KILLED"

    monkeypatch.setattr(loop_module, "save_checkpoint", real_save)
    lv.train(resume=tmp_path / "run", track_uri=store, progress=False)
    card, run = _run_of(tmp_path / "run", store)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    history = MlflowClient(store).get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]


def test_tracking_is_off_unless_asked(tiny_folder, tmp_path):
    lv.train(tiny_folder, tmp_path / "run", **FAST)
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert "tracking" not in card
    assert not (tmp_path / "run" / "tracking.json").exists()


def test_an_unreachable_server_is_a_clear_error(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(TrackingError, match=r"http://127\.0\.0\.1:9 cannot be used"):
        lv.train(tiny_folder, tmp_path / "run", track_uri="http://127.0.0.1:9", **FAST)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before training


def test_missing_mlflow_names_the_extra(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(TrackingError, match=r"leanvision\[track\]"):
        lv.train(tiny_folder, tmp_path / "run", track=True, **FAST)
