"""A training stage on Ray Train: its training function in `ray.train_workers` workers.
Imported by the training stages only when they run on Ray Train.

Each worker trains in a scratch folder of its own machine (`RayTrainFolder`). Rank 0's
checkpoints reach the run's storage (`<root>/ray_results`, on whatever filesystem the root
is) through `ray.train.report`; when a worker dies, the group restarts from the last of
them, up to `ray.max_failures` times (`FailureConfig`). Metrics travel with the checkpoints:
the steps logged since the last one are reported together, and the driver logs them to
MLflow as they arrive, so the curve has every step once, even across restarts. When the
run ends, the driver copies its last checkpoint to the stage's output.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import Checkpoint, UserCallback

from common.identity import value_identity
from jobs import tracking
from jobs.config import PipelineConfig
from jobs.layout import Layout, started_with
from jobs.ray_runtime import ray_session
from pipeline import storage


class RayTrainFolder:
    """The `Persistence` of a Ray Train worker: its machine's scratch folder for the run, the
    last reported checkpoint brought back on a (re)start, each new one reported with the
    metrics logged since the one before. Every worker reports (Ray Train needs each to), rank 0
    with the checkpoint and the metrics."""

    def __init__(self, local: Path):
        self.local, self.history = local, []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.history.append({"step": step, "metrics": {key: float(value) for key, value in metrics.items()}})

    def restore(self) -> None:
        shutil.rmtree(self.local, ignore_errors=True)  # whatever a killed attempt left
        self.local.mkdir(parents=True, exist_ok=True)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            checkpoint.to_directory(str(self.local))

    def persist(self, step: int, summary: dict[str, float], main: bool) -> None:
        report = {"step": step, "summary": summary, "history": self.history if main else []}
        ray.train.report(report, checkpoint=Checkpoint.from_directory(str(self.local)) if main else None)
        self.history = []


def worker_folder(config: dict) -> RayTrainFolder:
    """The folder a worker trains in: one per run and machine, under the scratch cache."""
    return RayTrainFolder(Path(config["scratch"]) / "ray-train" / config["run_name"])


def fit(
    cfg: PipelineConfig,
    layout: Layout,
    stage: str,
    output: str,
    worker: Callable[[dict], None],
    loop_config: dict[str, Any],
) -> dict[str, float]:
    """Run `worker(loop_config + run details)` in Ray Train workers; its last checkpoint goes to
    `output` (any URI). Returns rank 0's last summary, with `world_size`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    settings = cfg.ray
    # a run of another config must not resume this one's checkpoints: the name holds the output
    # and the fingerprint its staging started with
    run_name = f"{stage}-{value_identity([output, started_with(output)])[:12]}"
    storage_path, filesystem = _storage(layout.ray_results)
    resources = {"CPU": settings.train_cpus, **settings.train_resources}
    if settings.train_gpus:
        resources["GPU"] = settings.train_gpus
    with ray_session(settings):
        inbox = _Inbox.remote()
        trainer = TorchTrainer(
            worker,
            train_loop_config={
                **loop_config,
                "run_name": run_name,
                "scratch": str(storage.scratch_root(cfg.scratch)),
            },
            scaling_config=ScalingConfig(
                num_workers=settings.train_workers,
                use_gpu=settings.train_gpus > 0,
                resources_per_worker=resources,
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=storage_path,
                storage_filesystem=filesystem,
                failure_config=FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                callbacks=[_Relay(inbox)],
            ),
        )
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as err:  # handed to the main thread, which raises it
                outcome["error"] = err

        # fit() blocks: it runs beside this thread, which logs the metrics as they come (MLflow's
        # active run belongs to this thread)
        thread = threading.Thread(target=run, name=f"{stage}-fit", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(timeout=1.0)
            _log(ray.get(inbox.take.remote()))
        _log(ray.get(inbox.take.remote()))
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
    if result.checkpoint is None:
        raise RuntimeError(f"{stage}: the Ray Train run {run_name} reported no checkpoint")
    _publish(result.checkpoint, output)
    return {**(result.metrics or {}).get("summary", {}), "world_size": settings.train_workers}


def _log(history: list[dict]) -> None:
    for record in history:
        tracking.log_metrics(record["metrics"], record["step"])


def _publish(checkpoint, output: str) -> None:
    """The checkpoint's files at `output`, replacing what was there. Ray Train stored it under
    the root (`_storage`), on the output's own filesystem: copied there, server-side on an
    object store, never through this machine."""
    storage.remove(output, recursive=True)
    fs, target = storage.filesystem(output)
    fs.copy(checkpoint.path, target, recursive=True)


def _storage(uri: str) -> tuple[str, Any]:
    """Ray Train's `storage_path` and `storage_filesystem` for a folder URI: a local path as it
    is; anything else through fsspec, so it is reached with the same settings as the root."""
    if storage.is_local(uri):
        return str(Layout.local(uri)), None
    import pyarrow.fs

    fs, path = storage.filesystem(uri)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


@ray.remote(num_cpus=0)
class _Inbox:
    """Metrics on their way from Ray Train's controller to the driver."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def put(self, records: list[dict]) -> None:
        self.records.extend(records)

    def take(self) -> list[dict]:
        records, self.records = self.records, []
        return records


class _Relay(UserCallback):
    """Runs in Ray Train's controller: hands rank 0's reported metrics to the driver's inbox."""

    def __init__(self, inbox) -> None:
        self.inbox = inbox

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if metrics and metrics[0].get("history"):
            self.inbox.put.remote(metrics[0]["history"])
