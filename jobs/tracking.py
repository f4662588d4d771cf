"""MLflow tracking: one parent run per pipeline invocation, one nested run per stage.

Stages call the module-level `log_*` helpers, which write to the active run when
there is one and do nothing otherwise, so a stage never needs to know whether
it is tracked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import logs
from common.environment import environment
from common.identity import value_identity
from common.training import grouped
from jobs import generator_model, model_registry
from jobs.config import REDACTED, PipelineConfig, is_secret
from jobs.layout import Layout
from jobs.stages.base import StageResult
from jobs.tracking_store import tracking_uri
from pipeline import storage

log = logs.get("tracking")


# MLflow 3 opens an experiment of this kind in its model-training view (runs, charts, models),
# not the GenAI one (traces, prompts) it guesses for an experiment without the tag
DATASETS = ("raw", "latents")  # the inputs logged as MLflow datasets
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _mlflow():
    import mlflow

    # "Creating initial MLflow database tables..." on every new root is noise here.
    # and so are the system-metrics monitor's start and stop lines in every stage's log
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.system_metrics"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def active() -> bool:
    # Only a process that opened a run has imported mlflow; don't pay its import otherwise.
    return "mlflow" in sys.modules and _mlflow().active_run() is not None


# An MLflow server that stops answering must cost a stage seconds, not hours: its requests give
# up after a short, bounded wait (a user's own settings win), and the stage goes on untracked.
PATIENCE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


class Journal:
    """What could not be logged while MLflow was unreachable, kept in a JSON-lines file (with
    copies of the artifacts) and sent by the next tracked command once the server answers."""

    def __init__(self, folder: Path):
        self.folder, self.lost = folder, ""

    @property
    def path(self) -> Path:
        return self.folder / "journal.jsonl"

    def send(self, record: dict, call, even_if_lost: bool = False) -> None:
        """Make the MLflow call; once one has failed, keep the record instead (`even_if_lost`:
        try the call all the same, as ending a run must, and keep the record if it fails)."""
        if even_if_lost and self.lost:
            try:
                call()
                return
            except Exception:
                pass
        elif not self.lost:
            try:
                call()
                return
            except Exception as err:  # MlflowException, connection and timeout errors alike
                self.lose(err)
        self.keep(record)

    def keep(self, record: dict) -> None:
        """Add a record for the next time the server answers."""
        if record.get("kind") in ("artifact", "image"):  # the file may move (staging) or go: keep a copy
            copy = self.folder / "files" / f"{len(self._lines())}-{Path(record['local_path']).name}"
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record["local_path"], copy)
            record = {**record, "local_path": str(copy)}
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def lose(self, err: Exception) -> None:
        """From now on keep the records instead of sending them; say so once."""
        self.lost = logs.first_line(err)
        log.warning(
            f"MLflow stopped answering ({self.lost}); going on untracked. What could not be "
            f"logged is kept in {self.folder} and sent by the next tracked stvideo command."
        )

    def _lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def replay(self, client) -> int:
        """Send what was kept (metrics, tags, artifacts, run ends), oldest first; returns how many
        records went. At the first failure the rest is kept for the next time, and it raises."""
        lines = self._lines()
        for sent, line in enumerate(lines):
            record = json.loads(line)
            try:
                _replay(client, record)
            except Exception:
                self.path.write_text("".join(f"{rest}\n" for rest in lines[sent:]))
                raise
        shutil.rmtree(self.folder, ignore_errors=True)
        return len(lines)


def _replay(client, record: dict) -> None:
    from mlflow.entities import Metric

    run_id, kind = record["run_id"], record["kind"]
    if kind == "metrics":
        stamp = int(record["time"] * 1000)
        metrics = [Metric(key, value, stamp, record["step"] or 0) for key, value in record["metrics"].items()]
        client.log_batch(run_id, metrics=metrics)
    elif kind == "tags":
        _log_tags(client, run_id, record["tags"])
    elif kind == "params":
        _log_params(client, run_id, record["params"])
    elif kind == "artifact":
        client.log_artifact(run_id, record["local_path"], record["artifact_path"])
    elif kind == "image":
        client.log_image(run_id, _picture(record["local_path"]), key=record["key"], step=record["step"])
    elif kind == "end":
        client.set_terminated(run_id, record["status"])
    elif kind == "register":
        uri = model_registry.register(client, run_id, record["name"], record["tags"])
        _log_tags(client, run_id, {f"output.{record['model']}.model": uri})


_journal: Journal | None = None  # set by the Tracker of this process


def _send(record: dict, call) -> None:
    if _journal is None:
        call()
    else:
        _journal.send(record, call)


def _run_id() -> str:
    return _mlflow().active_run().info.run_id


def current_run_id() -> str | None:
    """The MLflow run this process logs to; None when it logs to none."""
    return _run_id() if active() else None


_quiet = False  # a stage whose run could not be opened: log nothing, not even to the parent run


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    if active() and not _quiet:
        values = {key: float(value) for key, value in metrics.items()}
        record = {
            "kind": "metrics",
            "run_id": _run_id(),
            "metrics": values,
            "step": step,
            "time": time.time(),
        }
        _send(record, lambda: _mlflow().log_metrics(values, step=step))


def log_artifact(local_path: str, artifact_path: str | None = None) -> None:
    if active() and not _quiet:
        record = {
            "kind": "artifact",
            "run_id": _run_id(),
            "local_path": local_path,
            "artifact_path": artifact_path,
        }
        _send(record, lambda: _mlflow().log_artifact(local_path, artifact_path))


def _picture(path: str):
    from PIL import Image

    with Image.open(path) as image:
        return image.copy()


def log_image(path: str, key: str, step: int) -> None:
    """A picture on the run's image charts, under `key` at `step` (MLflow shows a slider over the
    steps), where people look rather than read: recon grids, comparison figures."""
    if active() and not _quiet:
        record = {"kind": "image", "run_id": _run_id(), "local_path": path, "key": key, "step": step}
        _send(record, lambda: _mlflow().log_image(_picture(path), key=key, step=step))


def log_bytes(data: bytes, artifact_file: str) -> None:
    """Log in-memory bytes (a GIF, a PNG) as an artifact at `artifact_file`."""
    if active():
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / Path(artifact_file).name
            local.write_bytes(data)
            folder = str(Path(artifact_file).parent)
            log_artifact(str(local), None if folder == "." else folder)


def set_tags(tags: dict[str, str], run_id: str | None = None) -> None:
    run_id = run_id or _run_id()
    _send({"kind": "tags", "run_id": run_id, "tags": tags}, lambda: _log_tags(_client(), run_id, tags))


def _log_tags(client, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    try:
        client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
    except MlflowException as err:  # a value the run already holds otherwise: not an outage
        if err.error_code != "INVALID_PARAMETER_VALUE":
            raise
        log.debug(f"params not logged to run {run_id}: {logs.first_line(err)[:200]}")


def _client():
    return _mlflow().MlflowClient()


def log_scores_by_step(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Generation scores (`metrics.json`'s shape) by horizon step, the step as MLflow's step: each
    metric of the model's estimates and of every reference as `eval/<metric>/<estimate>` (a chart
    section per metric, a chart per estimate), the samples' diversity as `eval/diversity/mse`;
    a further protocol's under `eval_<prefix>`. Returns the overall means of the model and every
    reference, named `<prefix><estimate>_<metric>`, for the run's summary."""
    means = metrics["mean"]
    headline = {f"{prefix}{ref}_{name}": value for ref in means for name, value in means[ref].items()}
    if "diversity" in metrics:
        headline[f"{prefix}diversity_mse"] = metrics["diversity"]["mean"]
    for kind, value in metrics.get("prompt_identity", {}).items():
        headline[f"{prefix}prompt_identity_{kind}"] = value
    group = f"eval_{prefix.rstrip('_')}" if prefix else "eval"
    per_step = metrics["per_step"]
    for step in range(1, len(per_step.get("model", {}).get("mse", [])) + 1):
        by_step = {
            f"{group}/{name}/{ref}": values[step - 1]
            for ref, scores in per_step.items()
            for name, values in scores.items()
            if len(values) >= step and values[step - 1] is not None
        }
        if "diversity" in metrics:
            by_step[f"{group}/diversity/mse"] = metrics["diversity"]["per_step"][step - 1]
        log_metrics(by_step, step=step)
    return headline


def log_generation(
    metrics_json: bytes,
    preview_gif: bytes,
    report: tuple[str, dict[str, bytes]] | None,
    preview_steps: list[tuple[int, bytes]],
    protocols: list[tuple[int, int]],
) -> dict[str, float]:
    """What generate made, on its run: `metrics.json`, the preview GIF and its generated frames on
    the image charts (a slider over the horizon steps), the report (`report.html` and each
    comparison figure, also on the image charts), and the scores by step of the run's protocol and
    of each further one (`log_scores_by_step`). Returns the headline metrics."""
    metrics = json.loads(metrics_json)
    log_bytes(preview_gif, "preview/preview.gif")
    log_bytes(metrics_json, "metrics.json")
    with tempfile.TemporaryDirectory() as folder:
        for step, png in preview_steps:
            path = Path(folder) / f"preview-step-{step:03d}.png"
            path.write_bytes(png)
            log_image(str(path), "eval/preview", step)
        if report is not None:
            page, figures = report
            for file, data in figures.items():
                path = Path(folder) / file
                path.write_bytes(data)
                log_artifact(str(path), "comparison")
                log_image(str(path), f"eval/{path.stem}", 0)
            log_bytes(page.encode(), "report.html")
    headline = log_scores_by_step(metrics)
    for prompt_frames, steps in protocols:
        scored = metrics.get("protocols", {}).get(f"{prompt_frames}->{steps}")
        if scored:
            headline.update(log_scores_by_step(scored, f"p{prompt_frames}_k{steps}_"))
    return headline


def publish_generator(cfg: PipelineConfig, folders: dict[str, Path], settings, scored: dict) -> str:
    """generate's tokenizer and dynamics pair as one pyfunc model, logged to its run and
    registered (`jobs.generator_model.log_and_register`, which takes `scored`: the frame shape,
    grid, metrics and what they were scored on); a note for the stage's summary, "" where none."""
    name = cfg.tracking.generator_model
    if not active() or _quiet or not name or "model" not in scored["metrics"].get("mean", {}):
        return ""
    if _journal is not None and _journal.lost:
        log.warning(f"generate: not logged as a model of {name}: MLflow stopped answering")
        return ""
    try:
        uri, champion = generator_model.log_and_register(
            _client(), name, folders, settings, **scored, root=cfg.root
        )
    except Exception as err:  # the stage's outputs stand without it
        log.warning(f"generate: not logged as a model of {name} ({logs.first_line(err)[:200]})")
        return ""
    set_tags({"output.generator.model": uri})
    return f"; registered as {uri}" + (f" (@{generator_model.CHAMPION})" if champion else "")


class _Copied:
    """A stream that also writes into the stage's log file: whole lines, and of a progress bar
    redrawn in place (a terminal's "\r") only its last state."""

    def __init__(self, stream, copy):
        self._stream, self._copy, self._redraw = stream, copy, ""

    def write(self, text: str) -> int:
        if "\r" in text and not text.endswith("\n"):
            self._redraw = text.rsplit("\r", 1)[-1]
        else:
            if self._redraw and text.startswith("\n"):
                self._copy.write(self._redraw)
            self._redraw = ""
            self._copy.write(text.rsplit("\r", 1)[-1] if "\r" in text else text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()
        self._copy.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding: the stream's own
        return getattr(self._stream, name)


@contextmanager
def _stage_log(stage: str) -> Iterator:
    """What the stage's process prints while the block runs (step lines, progress, Ray's relayed
    worker output; the runner prints the stage's summary after), copied into a file that ends
    up on the stage's run."""
    with tempfile.TemporaryDirectory() as folder, open(Path(folder) / f"{stage}.log", "w") as copy:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Copied(sys.stdout, copy), _Copied(sys.stderr, copy)
        try:
            yield copy
        finally:
            sys.stdout, sys.stderr = saved


# `stvideo submit` opens the parent run; each stage's Ray job finds its id here.
PARENT_RUN_ENV = "STVIDEO_PARENT_RUN_ID"
# ...and the submission id of the job it runs in (Ray itself only tells a job RAY_ADDRESS).
SUBMISSION_ENV = "STVIDEO_RAY_SUBMISSION_ID"


class Tracker:
    def __init__(self, cfg: PipelineConfig):
        global _journal
        self.cfg = cfg
        # under torchrun or `accelerate launch` every rank runs the command; one of them tracks
        self.enabled = cfg.tracking.enabled and int(os.environ.get("RANK", "0")) == 0
        self.uri = tracking_uri(cfg) if self.enabled else None
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self.owns_parent = False  # False inside a submitted stage job: the submitter opened it
        if self.enabled:
            for name, value in PATIENCE.items():
                os.environ.setdefault(name, value)
            _journal = Journal(self._journal_folder())

    def ui_link(self, run_id: str) -> str:
        """Where to look at a run. MLflow 3's UI shows an experiment as GenAI or model training by
        a switch it remembers per browser, not by the experiment's kind: the link sets it."""
        page = f"#/experiments/{self.experiment_id}/runs/{run_id}?workflowType=machine_learning"
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/{page}"
        return f"mlflow ui --backend-store-uri {self.uri}, then http://127.0.0.1:5000/{page}"

    def _journal_folder(self) -> Path:
        if storage.is_local(self.cfg.root):
            return Layout.local(Layout.of(self.cfg).untracked)
        # a remote root: this machine's cache, one journal per tracking server
        return Path.home() / ".cache" / "stvideo" / "untracked" / value_identity(self.uri)

    def _experiment_id(self) -> str:
        mlflow = _mlflow()
        database = Path(self.uri.removeprefix("sqlite:///")) if self.uri.startswith("sqlite:///") else None
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)
        experiment = mlflow.get_experiment_by_name(self.cfg.tracking.experiment)
        if experiment is not None:
            for key, value in EXPERIMENT_KIND.items():
                if experiment.tags.get(key) is None:  # made before this tag was set; a user's own kind stays
                    _client().set_experiment_tag(experiment.experiment_id, key, value)
            return experiment.experiment_id
        artifact_location = None
        if database is not None:
            # Keep artifacts beside the database, not in whatever folder the command ran from.
            artifact_location = (database.parent / "mlartifacts").as_uri()
        return mlflow.create_experiment(
            self.cfg.tracking.experiment, artifact_location=artifact_location, tags=EXPERIMENT_KIND
        )

    def _open(self, start) -> str | None:
        """Start a run (or find the one a submitter opened) and return its id; None, saying so
        once, when MLflow does not answer: the work goes on untracked. After an outage each new
        run asks again, briefly: a server that is back gets what was kept, and the run."""
        if _journal.lost and not self._answers_again():
            return None
        try:
            experiment = self.experiment_id = self._experiment_id()  # also points mlflow at the URI
            if _journal.path.exists():
                sent = _journal.replay(_client())
                log.warning(f"MLflow answers again: sent {sent} records it could not take before")
            return start(experiment)
        except Exception as err:
            _journal.lose(err)
            return None

    def _answers_again(self) -> bool:
        """One quick request (no retries, 5 s): whether the server that stopped answering is back."""
        quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
        try:
            with environment(quick):
                self._experiment_id()
        except Exception:
            return False
        _journal.lost = ""
        return True

    def kept(self) -> int:
        """How many records wait in the journal for the server (0 when all went)."""
        return len(_journal._lines()) if _journal is not None else 0

    def _close(self, run_id: str, failure: BaseException | None) -> None:
        status = (
            "FINISHED"
            if failure is None
            else "KILLED"
            if isinstance(failure, KeyboardInterrupt | SystemExit)
            else "FAILED"
        )
        # end_run drops the run from this process first, then tells the server: tried even when
        # MLflow was lost, so that no run is left RUNNING once it answers (else kept for later)
        _journal.send(
            {"kind": "end", "run_id": run_id, "status": status},
            lambda: _mlflow().end_run(status),
            even_if_lost=True,
        )

    @contextmanager
    def _run(self, start) -> Iterator[str | None]:
        run_id = self._open(start)
        if run_id is None:
            yield None
            return
        failure: BaseException | None = None
        try:
            yield run_id
        except BaseException as err:
            failure = err
            raise
        finally:
            self._close(run_id, failure)

    @contextmanager
    def pipeline_run(self, stages: list[str], tags: dict[str, str] | None = None) -> Iterator[str | None]:
        """The parent run of one pipeline invocation, or the one a submitting process opened."""
        if not self.enabled:
            yield None
            return
        if storage.is_local(self.cfg.root):
            Layout.local(self.cfg.root).mkdir(parents=True, exist_ok=True)
        if os.environ.get(PARENT_RUN_ENV):
            self.parent_id = self._open(lambda experiment: os.environ[PARENT_RUN_ENV])
            yield self.parent_id
            return

        def start(experiment: str) -> str:
            return _mlflow().start_run(experiment_id=experiment, run_name=self.cfg.name).info.run_id

        with self._run(start) as run_id:
            if run_id is not None:
                set_tags({"stvideo.stages": ",".join(stages), "stvideo.root": self.cfg.root, **(tags or {})})
                self._log_config()
                self.parent_id, self.owns_parent = run_id, True
            yield run_id

    @contextmanager
    def stage_run(self, stage: str, params: dict) -> Iterator[str | None]:
        """A nested run under the parent, active for the stage's own `log_*` calls."""
        if not self.enabled:
            yield None
            return
        tags = {"stvideo.stage": stage, "stvideo.root": self.cfg.root}
        if os.environ.get(SUBMISSION_ENV):
            tags["ray.submission_id"] = os.environ[SUBMISSION_ENV]

        shown = {key: REDACTED if is_secret(key) else str(value) for key, value in params.items()}

        def start(experiment: str) -> str:
            run = _mlflow().start_run(
                run_name=stage,
                nested=self.owns_parent,
                parent_run_id=self.parent_id,
                experiment_id=experiment,
                tags=tags,
                log_system_metrics=self.cfg.tracking.system_metrics,
            )
            _mlflow().log_params(shown)
            return run.info.run_id

        global _quiet
        with self._run(start) as run_id:
            if run_id is not None:
                self._log_config()
                self._to_parent({"kind": "params", "params": shown})
            _quiet = run_id is None
            try:
                with _stage_log(stage) as log_file:
                    try:
                        yield run_id
                    finally:
                        log_file.flush()
                        log_artifact(log_file.name, "logs")  # even (above all) when the stage failed
            finally:
                _quiet = False

    def _log_config(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "config.yaml"
            path.write_text(self.cfg.to_yaml())
            log_artifact(str(path))

    def record(self, result: StageResult, lineage_tags: dict[str, str]) -> None:
        """The stage's metrics and lineage tags, on its nested run."""
        if not active() or _quiet:
            return
        tags = {f"input.{name}": uri for name, uri in result.inputs.items()}
        tags.update({f"output.{name}": uri for name, uri in result.outputs.items()})
        set_tags({**tags, **lineage_tags})
        if result.metrics:
            # the stage's figures in a chart section of their own; a training stage's at its last
            # step, where its curves end
            steps = result.metrics.get("steps")
            log_metrics(grouped("summary", result.metrics), step=None if steps is None else int(steps))
            # the parent shows every stage's figures, a chart section per stage
            values = {f"{result.stage}/{key}": float(value) for key, value in result.metrics.items()}
            self._to_parent({"kind": "metrics", "metrics": values, "step": None, "time": time.time()})
        self._log_datasets(result, lineage_tags)

    def _to_parent(self, record: dict) -> None:
        """A stage's params or figures, also on the parent run (params keep their section's name,
        which no two stages share but `data`, logged alike by each)."""
        if self.parent_id and self.parent_id != _run_id():
            record = {**record, "run_id": self.parent_id}
            _send(record, lambda: _replay(_client(), record))

    def _log_datasets(self, result: StageResult, lineage_tags: dict[str, str]) -> None:
        """The raw shards and the latent store a stage read, as MLflow datasets (the runs table's
        dataset column), named and digested by their identity: two runs on the same data show it."""
        if _journal is not None and _journal.lost:
            return
        try:
            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset

            context = "training" if result.stage.startswith("train-") else "input"
            for name in DATASETS:
                if name in result.inputs:
                    uri = result.inputs[name]
                    with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local
                        warnings.simplefilter("ignore", UserWarning)
                        source = resolve_dataset_source(uri if "://" in uri else Path(uri).as_uri())
                    digest = lineage_tags.get(f"input.{name}.identity", "")[:36] or None
                    dataset = MetaDataset(source, name=f"{self.cfg.name}-{name}", digest=digest)
                    _mlflow().log_input(dataset, context=context)
        except Exception as err:  # a dataset record is a nicety: the stage's result is logged
            log.warning(f"MLflow: the stage's datasets were not logged ({type(err).__name__}: {err})")

    def publish_checkpoint(self, kind: str, folder: str, lineage_tags: dict[str, str]) -> str | None:
        """A training stage's checkpoint: its files logged to the stage's run under `checkpoint/`
        and registered as a new version of the configured model, tagged with its identity and
        lineage. Returns the version's `models:/` URI, or None where nothing was registered."""
        name = {"tokenizer": self.cfg.tracking.tokenizer_model, "dynamics": self.cfg.tracking.dynamics_model}[
            kind
        ]
        if not active() or _quiet or not name:
            return None
        for file in model_registry.CHECKPOINT_FILES:
            uri = storage.join(folder, file)
            if storage.exists(uri):
                log_bytes(storage.read_bytes(uri), f"{model_registry.ARTIFACT_PATH}/{file}")
        tags = {
            model_registry.KIND_TAG: kind,
            model_registry.IDENTITY_TAG: lineage_tags.get(f"output.{kind}.identity", ""),
            "stvideo.root": self.cfg.root,
            "stvideo.fingerprint": lineage_tags.get("stvideo.fingerprint", ""),
            **{key: value for key, value in lineage_tags.items() if key.startswith("input.")},
        }
        if _journal is not None and _journal.lost:  # registered when the checkpoint's files are sent
            record = {"kind": "register", "run_id": _run_id(), "name": name, "model": kind, "tags": tags}
            _journal.keep(record)
            log.warning(f"{kind}: to be registered as a version of {name} once MLflow answers again")
            return None
        try:
            uri = model_registry.register(_client(), _run_id(), name, tags)
        except Exception as err:
            first = logs.first_line(err)
            log.warning(f"{kind}: not registered as a version of {name} ({first[:200]})")
            return None
        set_tags({f"output.{kind}.model": uri})
        return uri

    def note_skipped(self, stage: str, manifest: dict) -> None:
        """A skipped stage opens no run; the parent names the run that produced its outputs."""
        if self.enabled and self.parent_id:
            set_tags(
                {f"stvideo.skipped.{stage}": manifest.get("mlflow_run_id") or "untracked"}, self.parent_id
            )
