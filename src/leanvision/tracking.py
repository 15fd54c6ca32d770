"""Experiment tracking with MLflow: off unless asked (`--track`, `--track-uri URL`).

One MLflow run per `train` / `prune` / `distill` / `quantize`: the settings as parameters, every
epoch's figures (metrics.jsonl) as metrics, the final card's figures, and the card, config,
per-epoch log and an HTML report as artifacts. A stage's run is linked to the run of the
artifact it started from: the card of every tracked artifact records its run
(`card["tracking"]`), and the stage tags its own run with that id (`mlflow.parentRunId`, which
the MLflow UI shows as nesting, and `leanvision.parent_run_id`).

Where runs go: `--track-uri` (any MLflow tracking URI: http://server:5000, sqlite:///file.db,
databricks, ...), else $MLFLOW_TRACKING_URI, else a SQLite store `runs/mlflow.db` under the
current folder with artifacts in `runs/mlartifacts/` (beside the runs themselves; MLflow 3
refuses a plain-folder store). Browse with
`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --default-artifact-root runs/mlartifacts`.

Only rank 0 of a multi-process run tracks. A resumed training run continues its MLflow run (the
id is kept in `RUN/tracking.json`). MLflow is an optional extra: `pip install 'leanvision[track]'`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .artifact import CARD_FILE
from .errors import LeanvisionError, TrackingError
from .hardware import world_rank_is_main
from .io import read_jsonl, write_json

TRACKING_FILE = "tracking.json"
DEFAULT_DB = Path("runs") / "mlflow.db"
DEFAULT_ARTIFACTS = Path("runs") / "mlartifacts"
DEFAULT_EXPERIMENT = "leanvision"
# MLflow caps a parameter value at 6000 characters; a long list (class names) is cut to fit.
MAX_PARAM_CHARS = 500
ATTACHED = (CARD_FILE, "config.json", "metrics.jsonl")

_active: TrackedRun | None = None  # the run the fit loop reports epochs to (rank 0 only)
# Writes the HTML report of an artifact folder to a file, attached to its run. The reports
# package sits above the stages that track, so it plugs this in when imported (set_report_writer)
# instead of being imported from here; a run's end imports it by name (REPORT_PLUGIN) if nothing
# has yet.
_report_writer: Callable[[Path, Path], None] | None = None
REPORT_PLUGIN = "leanvision.reports"


def set_report_writer(write: Callable[[Path, Path], None]) -> None:
    global _report_writer
    _report_writer = write


def default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB.resolve()}"


class TrackedRun:
    """One MLflow run, written through an explicit client (no global MLflow state, so a
    user's own active run is never touched)."""

    def __init__(self, client: Any, run_id: str, uri: str, experiment_id: str) -> None:
        self.client, self.run_id, self.uri, self.experiment_id = client, run_id, uri, experiment_id
        self._base_step = 0  # earlier fits in this run (prune steps), so steps keep rising
        self._last_step = 0

    def log_epoch(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        epoch = int(record.get("epoch", self._last_step + 1))
        if self._base_step + epoch <= self._last_step:  # a new fit began (next prune step)
            self._base_step = self._last_step
        step = self._base_step + epoch
        self._last_step = step
        stamp = _now_ms()
        metrics = [Metric(key, float(value), stamp, step) for key, value in record.items()
                   if key != "epoch" and _is_number(value)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        done = set(self.client.get_run(self.run_id).data.params)
        fresh = [Param(k, _param_text(v)) for k, v in _flatten(params).items()
                 if k not in done and v is not None]
        for start in range(0, len(fresh), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=fresh[start:start + 100])

    def finish(self, folder: str | Path) -> None:
        """Attach the finished artifact: its card figures, files and a report; then record
        this run in the card, so a stage started from it links back here."""
        from mlflow.entities import Metric

        folder = Path(folder)
        card_file = folder / CARD_FILE
        if not card_file.is_file():
            return
        card = json.loads(card_file.read_text(encoding="utf-8"))
        self.log_params(card.get("config", {}))
        if self._last_step == 0 and (folder / "metrics.jsonl").is_file():
            # The epochs ran in another process (a stage with nproc > 1): replay its log.
            for record in read_jsonl(folder / "metrics.jsonl"):
                self.log_epoch(record)
        stamp = _now_ms()
        figures = [Metric(f"final.{k}", float(v), stamp, 0)
                   for k, v in _flatten(_headline(card.get("metrics", {}))).items()
                   if _is_number(v)]
        if figures:
            self.client.log_batch(self.run_id, metrics=figures)
        for name in ATTACHED:
            if (folder / name).is_file():
                self.client.log_artifact(self.run_id, str(folder / name))
        self._attach_report(folder)
        card["tracking"] = {"uri": _safe_uri(self.uri), "run_id": self.run_id,
                            "experiment_id": self.experiment_id}
        write_json(card_file, card)

    def _attach_report(self, folder: Path) -> None:
        if _report_writer is None:
            importlib.import_module(REPORT_PLUGIN)
        if _report_writer is None:
            return
        with tempfile.TemporaryDirectory(prefix="leanvision-track-") as scratch:
            target = Path(scratch) / "report.html"
            try:
                _report_writer(folder, target)
            except LeanvisionError as exc:
                self.client.set_tag(self.run_id, "leanvision.report_error", str(exc)[:500])
                return
            self.client.log_artifact(self.run_id, str(target))


@contextmanager
def tracked_run(track: bool, uri: str | None, *, stage: str, params: dict[str, Any],
                folder: str | Path | None = None, parent: str | Path | None = None
                ) -> Iterator[TrackedRun | None]:
    """An MLflow run for the block, or None when tracking is off. `folder`: the run folder,
    known up front for `train` (its tracking.json lets --resume continue the same run);
    `parent`: the artifact a stage starts from. The run ends FINISHED, or FAILED / KILLED when
    the block raises."""
    global _active
    if not (track or uri):
        yield None
        return
    run = _start(uri or default_uri(), stage, params, folder, parent)
    _active = run
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _active = None
        run.client.set_terminated(run.run_id, status=status)


def log_epoch(record: dict[str, Any]) -> None:
    """Called by the fit loop after every epoch; nothing happens unless a run is tracked."""
    if _active is not None:
        _active.log_epoch(record)


def tracked(stage: str, parent_args: str | tuple[str, ...]) -> Callable:
    """Give a stage function `track` / `track_uri` keywords. `parent_args`: the argument(s)
    that may name the artifact the stage starts from; the first that is an artifact counts."""
    names = (parent_args,) if isinstance(parent_args, str) else parent_args

    def decorate(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, track: bool = False, track_uri: str | None = None,
                    **kwargs: Any) -> dict[str, Any]:
            if not (track or track_uri) or not world_rank_is_main():
                return fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            values = {k: v for k, v in bound.arguments.items() if k != "console"}
            values.update(values.pop("train_settings", None) or values.pop("settings", None)
                          or {})
            parent = next((p for p in map(_artifact_path, map(values.get, names)) if p), None)
            with tracked_run(track, track_uri, stage=stage, params=values,
                             parent=parent) as run:
                summary = fn(*args, **kwargs)
                run.finish(summary["artifact"])
            return summary

        # help() and introspection show the two keywords the wrapper adds
        keyword = inspect.Parameter.KEYWORD_ONLY
        params = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
        params += [inspect.Parameter("track", keyword, default=False, annotation="bool"),
                   inspect.Parameter("track_uri", keyword, default=None,
                                     annotation="str | None")]
        params += [p for p in signature.parameters.values() if p.kind == p.VAR_KEYWORD]
        wrapper.__signature__ = signature.replace(parameters=params)
        return wrapper

    return decorate


# ---- starting a run ---------------------------------------------------------------------------


def _start(uri: str, stage: str, params: dict[str, Any], folder: str | Path | None,
           parent: str | Path | None) -> TrackedRun:
    client = _client(uri)
    experiment_id = _experiment(client, uri)
    previous = _previous_run(folder)
    if previous is not None:  # --resume: the same MLflow run carries on
        client.update_run(previous, status="RUNNING")
        return TrackedRun(client, previous, uri, experiment_id)
    tags = {"leanvision.stage": stage}
    if folder is not None:
        tags["leanvision.artifact"] = str(Path(folder).resolve())
    if parent is not None:
        tags["leanvision.parent_artifact"] = str(parent)
        parent_id = parent_run_id(parent)
        if parent_id is not None:
            tags["mlflow.parentRunId"] = tags["leanvision.parent_run_id"] = parent_id
    name = f"{stage}:{Path(folder).name}" if folder is not None else stage
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    run = TrackedRun(client, run_id, uri, experiment_id)
    run.log_params(params)
    if folder is not None:
        write_json(Path(folder) / TRACKING_FILE, {"uri": _safe_uri(uri), "run_id": run_id,
                                                  "experiment_id": experiment_id})
    return run


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError("--track needs MLflow: pip install 'leanvision[track]' (or "
                            "mlflow-skinny), or drop --track") from None
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # MLflow announces every schema migration of a new SQLite store at INFO level.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _experiment(client: Any, uri: str) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    try:
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if uri.startswith("sqlite:///"):
            # Artifacts beside the store, not in ./mlruns of whatever folder a run started in.
            db = Path(uri.removeprefix("sqlite:///"))
            location = (db.parent / DEFAULT_ARTIFACTS.name).resolve().as_uri()
        return client.create_experiment(name, artifact_location=location)
    except Exception as exc:  # an unreachable server, a bad URI: one message, no traceback
        raise TrackingError(f"the MLflow tracking store at {_safe_uri(uri)} cannot be used "
                            f"({type(exc).__name__}: {str(exc)[:300]}); check --track-uri / "
                            "MLFLOW_TRACKING_URI, or drop --track") from None


def _previous_run(folder: str | Path | None) -> str | None:
    if folder is None or not (Path(folder) / TRACKING_FILE).is_file():
        return None
    return json.loads((Path(folder) / TRACKING_FILE).read_text(encoding="utf-8"))["run_id"]


def parent_run_id(artifact: str | Path, hops: int = 20) -> str | None:
    """The MLflow run of `artifact`, or of its nearest tracked ancestor (a prune step's
    folder is untracked; its parent may be)."""
    folder: Path | None = Path(artifact)
    for _ in range(hops):
        if folder is None or not (folder / CARD_FILE).is_file():
            return None
        card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
        run_id = (card.get("tracking") or {}).get("run_id")
        if run_id:
            return run_id
        folder = Path(card["parent"]) if card.get("parent") else None
    return None


# ---- small helpers ----------------------------------------------------------------------------


def _artifact_path(value: Any) -> Path | None:
    if value is None:
        return None
    path = Path(getattr(value, "path", value))  # an Artifact or a path
    return path if (path / CARD_FILE).is_file() else None


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The card's scalar figures; per-class tables and confusion matrices stay in the card."""
    keep = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            keep[key] = {k: v for k, v in value.items()
                         if k not in ("per_class", "confusion") and not isinstance(v, list)}
        else:
            keep[key] = value
    return keep


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    text = str(value) if isinstance(value, str | Path) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 3] + "..."


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _safe_uri(uri: str) -> str:
    """The URI without a password (user:secret@host), fit to store in a card or file."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else uri
    return uri


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
