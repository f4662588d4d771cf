"""MLflow tracking: one parent run per pipeline invocation, one nested run per stage.

Stages call the module-level `log_*` helpers, which write to the active run when
there is one and do nothing otherwise, so a stage never needs to know whether
it is tracked.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.config import ConfigError, PipelineConfig
from jobs.stages.base import StageResult
from pipeline import storage

# The stage's own config sections, logged as its params.
STAGE_SECTIONS = {
    "ingest": ("data", "ingest"),
    "train-tokenizer": ("data", "tokenizer"),
    "encode": ("data", "encode"),
    "train-dynamics": ("dynamics",),
    "generate": ("generate",),
}


def tracking_uri(cfg: PipelineConfig) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if not storage.is_local(cfg.root):
        raise ConfigError(
            [f"tracking.uri: given None; expected an MLflow URI when root is remote ({cfg.root})"]
        )
    return f"sqlite:///{local_root(cfg) / 'mlflow.db'}"


def local_root(cfg: PipelineConfig) -> Path:
    """The root as a local folder (it may be written `file:///...`)."""
    return Path(storage.filesystem(cfg.root)[1]).resolve()


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: str(value)}


def _mlflow():
    import mlflow

    # "Creating initial MLflow database tables..." on every new root is noise here.
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def active() -> bool:
    # Only a process that opened a run has imported mlflow; don't pay its import otherwise.
    return "mlflow" in sys.modules and _mlflow().active_run() is not None


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    if active():
        _mlflow().log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(local_path: str, artifact_path: str | None = None) -> None:
    if active():
        _mlflow().log_artifact(local_path, artifact_path)


def log_bytes(data: bytes, artifact_file: str) -> None:
    """Log in-memory bytes (a GIF, a PNG) as an artifact at `artifact_file`."""
    if active():
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / Path(artifact_file).name
            local.write_bytes(data)
            _mlflow().log_artifact(str(local), str(Path(artifact_file).parent) or None)


def log_text(text: str, artifact_file: str) -> None:
    if active():
        _mlflow().log_text(text, artifact_file)


class Tracker:
    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        # under torchrun or `accelerate launch` every rank runs the command; one of them tracks
        self.enabled = cfg.tracking.enabled and int(os.environ.get("RANK", "0")) == 0
        self.uri = tracking_uri(cfg) if self.enabled else None

    def _experiment_id(self) -> str:
        mlflow = _mlflow()
        mlflow.set_tracking_uri(self.uri)
        experiment = mlflow.get_experiment_by_name(self.cfg.tracking.experiment)
        if experiment is not None:
            return experiment.experiment_id
        artifact_location = None
        if self.uri.startswith("sqlite:///") and storage.is_local(self.cfg.root):
            # Keep artifacts beside the database, not in whatever folder the command ran from.
            artifact_location = (local_root(self.cfg) / "mlartifacts").as_uri()
        return mlflow.create_experiment(self.cfg.tracking.experiment, artifact_location=artifact_location)

    @contextmanager
    def pipeline_run(self, stages: list[str]) -> Iterator[str | None]:
        if not self.enabled:
            yield None
            return
        if storage.is_local(self.cfg.root):
            local_root(self.cfg).mkdir(parents=True, exist_ok=True)
        mlflow = _mlflow()
        with mlflow.start_run(experiment_id=self._experiment_id(), run_name=self.cfg.name) as run:
            mlflow.set_tags({"stvideo.stages": ",".join(stages), "stvideo.root": self.cfg.root})
            mlflow.log_text(self.cfg.to_yaml(), "config.yaml")
            yield run.info.run_id

    @contextmanager
    def stage_run(self, stage: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        mlflow = _mlflow()
        parent = mlflow.active_run()
        # A nested run lands in the default experiment unless told the parent's.
        with mlflow.start_run(run_name=stage, nested=True, experiment_id=parent.info.experiment_id):
            config = self.cfg.model_dump(mode="json")
            params = {}
            for section in STAGE_SECTIONS.get(stage, ()):
                params.update(flatten(config[section], section))
            mlflow.log_params(params)
            mlflow.set_tags({"stvideo.stage": stage, "stvideo.root": self.cfg.root})
            mlflow.log_text(self.cfg.to_yaml(), "config.yaml")
            yield

    def record(self, result: StageResult) -> None:
        if not active():
            return
        mlflow = _mlflow()
        tags = {f"input.{name}": uri for name, uri in result.inputs.items()}
        tags.update({f"output.{name}": uri for name, uri in result.outputs.items()})
        mlflow.set_tags(tags)
        if result.metrics:
            mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()})
