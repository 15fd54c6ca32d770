"""Serving: the HTTP service (FastAPI on uvicorn) and its web page, for one artifact."""

from .api import run_app, serve
from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app", "run_app", "serve"]
