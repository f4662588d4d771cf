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

from jobs.config import ConfigError, PipelineConfig
from jobs.layout import Layout
from jobs.stages.base import StageResult
from pipeline import storage


def tracking_uri(cfg: PipelineConfig) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if not storage.is_local(cfg.root):
        raise ConfigError(
            [f"tracking.uri: given None; expected an MLflow URI when root is remote ({cfg.root})"]
        )
    return f"sqlite:///{Layout.local(Layout.of(cfg).tracking_store)}"


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


def log_scores_by_step(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Generation scores (`metrics.json`'s shape): MSE and SSIM per horizon step, the step as
    MLflow's step, for the model and every reference, and the samples' diversity. Returns the
    overall means, for the run's summary metrics."""
    means = metrics["mean"]
    headline = {f"{prefix}{ref}_{name}": value for ref in means for name, value in means[ref].items()}
    if "diversity" in metrics:
        headline[f"{prefix}diversity_mse"] = metrics["diversity"]["mean"]
    for step in range(1, len(metrics["per_step"].get("model", {}).get("mse", [])) + 1):
        by_step = {
            f"{prefix}{ref}_{name}_by_step": metrics["per_step"][ref][name][step - 1]
            for ref in metrics["per_step"]
            for name in ("mse", "ssim")
        }
        if "diversity" in metrics:
            by_step[f"{prefix}diversity_mse_by_step"] = metrics["diversity"]["per_step"][step - 1]
        log_metrics(by_step, step=step)
    return headline


# `stvideo submit` opens the parent run; each stage's Ray job finds its id here.
PARENT_RUN_ENV = "STVIDEO_PARENT_RUN_ID"
# ...and the submission id of the job it runs in (Ray itself only tells a job RAY_ADDRESS).
SUBMISSION_ENV = "STVIDEO_RAY_SUBMISSION_ID"


class Tracker:
    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        # under torchrun or `accelerate launch` every rank runs the command; one of them tracks
        self.enabled = cfg.tracking.enabled and int(os.environ.get("RANK", "0")) == 0
        self.uri = tracking_uri(cfg) if self.enabled else None
        self.parent_id: str | None = None
        self.owns_parent = False  # False inside a submitted stage job: the submitter opened it

    def _experiment_id(self) -> str:
        mlflow = _mlflow()
        mlflow.set_tracking_uri(self.uri)
        experiment = mlflow.get_experiment_by_name(self.cfg.tracking.experiment)
        if experiment is not None:
            return experiment.experiment_id
        artifact_location = None
        if self.uri.startswith("sqlite:///") and storage.is_local(self.cfg.root):
            # Keep artifacts beside the database, not in whatever folder the command ran from.
            artifact_location = Layout.local(Layout.of(self.cfg).tracking_artifacts).as_uri()
        return mlflow.create_experiment(self.cfg.tracking.experiment, artifact_location=artifact_location)

    @contextmanager
    def pipeline_run(self, stages: list[str], tags: dict[str, str] | None = None) -> Iterator[str | None]:
        """The parent run of one pipeline invocation, or the one a submitting process opened."""
        if not self.enabled:
            yield None
            return
        if storage.is_local(self.cfg.root):
            Layout.local(self.cfg.root).mkdir(parents=True, exist_ok=True)
        if os.environ.get(PARENT_RUN_ENV):
            self._experiment_id()  # sets the tracking URI
            self.parent_id = os.environ[PARENT_RUN_ENV]
            yield self.parent_id
            return
        mlflow = _mlflow()
        with mlflow.start_run(experiment_id=self._experiment_id(), run_name=self.cfg.name) as run:
            mlflow.set_tags(
                {"stvideo.stages": ",".join(stages), "stvideo.root": self.cfg.root, **(tags or {})}
            )
            mlflow.log_text(self.cfg.to_yaml(), "config.yaml")
            self.parent_id, self.owns_parent = run.info.run_id, True
            yield self.parent_id

    @contextmanager
    def stage_run(self, stage: str, params: dict) -> Iterator[str | None]:
        """A nested run under the parent, active for the stage's own `log_*` calls."""
        if not self.enabled:
            yield None
            return
        mlflow = _mlflow()
        tags = {"stvideo.stage": stage, "stvideo.root": self.cfg.root}
        if os.environ.get(SUBMISSION_ENV):
            tags["ray.submission_id"] = os.environ[SUBMISSION_ENV]
        with mlflow.start_run(
            run_name=stage,
            nested=self.owns_parent,
            parent_run_id=self.parent_id,
            experiment_id=self._experiment_id(),
            tags=tags,
        ) as run:
            mlflow.log_params({key: str(value) for key, value in params.items()})
            mlflow.log_text(self.cfg.to_yaml(), "config.yaml")
            yield run.info.run_id

    def record(self, result: StageResult, lineage_tags: dict[str, str]) -> None:
        """The stage's metrics and lineage tags, on its nested run."""
        if not active():
            return
        mlflow = _mlflow()
        tags = {f"input.{name}": uri for name, uri in result.inputs.items()}
        tags.update({f"output.{name}": uri for name, uri in result.outputs.items()})
        mlflow.set_tags({**tags, **lineage_tags})
        if result.metrics:
            mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()})

    def note_skipped(self, stage: str, manifest: dict) -> None:
        """A skipped stage opens no run; the parent names the run that produced its outputs."""
        if self.enabled and self.parent_id:
            _mlflow().MlflowClient().set_tag(
                self.parent_id, f"stvideo.skipped.{stage}", manifest.get("mlflow_run_id") or "untracked"
            )
