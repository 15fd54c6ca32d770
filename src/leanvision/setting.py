"""`setting`: a config dataclass field with its one-line help, so the option the CLI builds from
it (cli/app.py) is written once, beside the setting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class SharedOptions:
    """Help of options that many verbs share; a verb's config field or its own text wins."""

    out: Any = setting(None, "Output folder (default: runs/<verb>/<name>).")
    track: Any = setting(None, "Record the run in MLflow (default store: runs/mlflow.db; see "
                         "--track-uri).")
    track_uri: Any = setting(None, "MLflow tracking URI (http://host:5000, sqlite:///file.db, "
                             "...); implies --track. Default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///runs/mlflow.db.")
    tta: Any = setting(None, "Test-time augmentation: none, flip, flip-translate or multi-crop "
                       "(default: the one the card stores).")
    artifact: Any = setting(None, "Artifact folder.")
    images: Any = setting(None, "Image files.")
    data: Any = setting(None, "Folder, CSV file or builtin:digits.")
    device: Any = setting(None, "auto, cpu or cuda.")
    skip_bad_images: Any = setting(None, "Leave out images that cannot be decoded.")
    nproc: Any = setting(None, "Data-parallel processes, as for train (--batch-size is global).")
