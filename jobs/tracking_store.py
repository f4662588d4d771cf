"""Which MLflow store a config's runs and models go to: read by tracking (which writes them) and
by the model registry (which reads models from the same store)."""

from __future__ import annotations

import os
from pathlib import Path

from jobs.config import ConfigError, PipelineConfig
from pipeline import storage


def user_store() -> Path:
    """Where a user's runs go when nothing names a tracking store: one folder for all roots, so
    that runs of any two of them can be compared side by side."""
    return Path(os.environ.get("STVIDEO_HOME") or "~/.stvideo").expanduser().resolve()


def tracking_uri(cfg: PipelineConfig) -> str:
    """`tracking.uri`, else MLFLOW_TRACKING_URI, else the user's own sqlite store."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if not storage.is_local(cfg.root):
        raise ConfigError(
            [
                "tracking.uri: given None and MLFLOW_TRACKING_URI is not set; expected an MLflow URI "
                f"when root is remote ({cfg.root}): every machine must reach the same store"
            ]
        )
    return f"sqlite:///{user_store() / 'mlflow.db'}"
