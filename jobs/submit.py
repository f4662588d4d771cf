"""`stvideo submit` and `stvideo status`: each stage as its own Ray job, through the Jobs API.

The submitting process opens the MLflow parent run and hands its id to every
stage's job in the environment; each job runs `stvideo <stage>` on the cluster,
which opens its nested run and writes the stage manifest. Stages that are
complete for the config and their inputs are skipped, so a resubmission after a
failure runs only what is left.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from common import logs
from jobs import lineage
from jobs.config import REDACTED, PipelineConfig
from jobs.layout import Layout
from jobs.root_lock import HOLDER_ENV, RootLock, command_line
from jobs.stages import STAGES
from jobs.tracking import PARENT_RUN_ENV, SUBMISSION_ENV, Tracker

log = logs.get("submit")

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# What a cluster says while its dashboard or job agents are still starting (matched
# as phrases: a bare "503" would also match timestamps in submission ids).
TRANSIENT = (
    "no available agent",
    "try again later",
    "failed to connect to ray",
    "connection refused",
    "connection reset",
    "temporarily unavailable",
    "status code 502",
    "status code 503",
    "status code 504",
)
T = TypeVar("T")


class SubmitError(Exception):
    """Submission cannot go on; `log_tail` holds the failing job's last log lines, if any."""

    def __init__(self, message: str, log_tail: str = "", stage: str | None = None):
        super().__init__(message)
        self.log_tail, self.stage = log_tail, stage


def address_of(cfg: PipelineConfig, address: str | None) -> str:
    return address or cfg.submit.address or DEFAULT_ADDRESS


def retrying(action: Callable[[], T], retries: int, what: str, pause: float = 1.0) -> T:
    """Run `action`, retrying the cluster's transient answers with a growing pause."""
    for attempt in range(retries + 1):
        try:
            return action()
        except Exception as err:  # the Jobs client raises plain RuntimeError/ConnectionError
            text = str(err).lower()
            if attempt == retries or not any(marker in text for marker in TRANSIENT):
                hint = ""
                if "no available agent" in text:
                    hint = (
                        " (the head's job agent never came up: see dashboard_agent.log in its session"
                        " logs; another Ray on the host may hold its port, --dashboard-agent-listen-port)"
                    )
                raise SubmitError(f"{what}: {err}{hint}") from None
            wait = min(pause * 2**attempt, 10.0)
            log.warning(f"{what}: {logs.first_line(err)}; retrying in {wait:.0f}s")
            time.sleep(wait)
    raise AssertionError("unreachable")


def connect(address: str, retries: int):
    from ray.job_submission import JobSubmissionClient

    return retrying(lambda: JobSubmissionClient(address), retries, f"cannot reach the Jobs API at {address}")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "stvideo"


def _stamp() -> str:
    """One submission's tag: its UTC time and a short random suffix."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def _submission_id(cfg: PipelineConfig, stage: str, stamp: str) -> str:
    return f"stvideo-{_slug(cfg.name)}-{stage}-{stamp}"


CONFIG_ENV = "STVIDEO_CONFIG"  # the job's resolved config, as YAML: it travels with the job


def _job_config(cfg: PipelineConfig, tracking_uri: str | None) -> str:
    """The resolved config every job of this submission runs with, as YAML (secrets redacted:
    the jobs get their real values in their environment)."""
    resolved = cfg.model_copy(deep=True)
    if tracking_uri:
        # every job must log to the store the parent run lives in, whatever its own default
        resolved.tracking.uri = tracking_uri
    return resolved.to_yaml()


def _entrypoint(cfg: PipelineConfig, args: list[str]) -> str:
    # the cluster's interpreter by full path: a bare `python` may be another environment
    return shlex.join([cfg.submit.python or sys.executable, "-m", "jobs.cli", *args])


def _from_environment(values: dict[str, str]) -> dict[str, str]:
    """A stored config's redacted values replaced by this process's own: a detached submission
    was given the real ones in its environment, and passes them on."""
    return {
        name: os.environ.get(name, value) if value == REDACTED else value for name, value in values.items()
    }


def _runtime_env(
    cfg: PipelineConfig,
    parent_run_id: str | None,
    submission_id: str,
    config_yaml: str,
    lock_id: str | None = None,
) -> dict[str, Any]:
    """`submit.runtime_env` as given, with the job's own variables added to its env_vars: the
    config, the submission id, the parent run; `submit.env` and `submit.working_dir` as before."""
    runtime_env: dict[str, Any] = {key: value for key, value in cfg.submit.runtime_env.items()}
    env = {
        "PYTHONUNBUFFERED": "1",
        **_from_environment(dict(runtime_env.get("env_vars", {}))),
        **_from_environment(cfg.submit.env),
        SUBMISSION_ENV: submission_id,
        CONFIG_ENV: config_yaml,
    }
    if parent_run_id:
        env[PARENT_RUN_ENV] = parent_run_id
    if lock_id:  # the stage job shares the root's lock its submission holds
        env[HOLDER_ENV] = lock_id
    if os.environ.get(logs.LEVEL_ENV):  # `stvideo --quiet submit`: the jobs are quiet too
        env[logs.LEVEL_ENV] = os.environ[logs.LEVEL_ENV]
    runtime_env["env_vars"] = env
    if cfg.submit.working_dir:
        runtime_env["working_dir"] = cfg.submit.working_dir
    return runtime_env


def _metadata(cfg: PipelineConfig, stage: str, parent_run_id: str | None) -> dict[str, str]:
    return {
        "stvideo.name": cfg.name,
        "stvideo.root": cfg.root,
        "stvideo.stage": stage,
        "stvideo.parent_run": parent_run_id or "",
    }


def follow(client, submission_id: str, echo: Callable[[str], None], retries: int, poll: float = 1.0) -> str:
    """Stream a job's log lines until it ends; returns its final status.

    The status is polled beside the log stream, so a stream that stalls (a dropped
    port-forward, a half-open socket) cannot hold the submission forever.
    """

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            for line in chunk.splitlines():
                echo(line)

    def status_now() -> str:
        return str(retrying(lambda: client.get_job_status(submission_id), retries, "job status").value)

    async def watch() -> str:
        stream = asyncio.create_task(tail())
        while (status := await asyncio.to_thread(status_now)) not in TERMINAL:
            await asyncio.sleep(poll)
        try:  # the last lines arrive just after the job ends
            await asyncio.wait_for(stream, timeout=10)
        except TimeoutError:
            stream.cancel()
        except Exception as err:  # a dropped log stream must not lose the job's outcome
            echo(f"(log stream ended early: {err})")
        return status

    return asyncio.run(watch())


def _submit_once(client, submission_id: str, **job) -> None:
    """Submit, unless an earlier attempt whose answer was lost already did."""
    try:
        client.get_job_info(submission_id)
        return
    except RuntimeError:  # "Job ... does not exist": the usual case
        pass
    client.submit_job(submission_id=submission_id, **job)


def _active_jobs(client, cfg: PipelineConfig) -> list:
    """This root's stage jobs that are still pending or running."""
    return [
        job
        for job in client.list_jobs()
        if (job.metadata or {}).get("stvideo.root") == cfg.root
        and (job.metadata or {}).get("stvideo.stage") in STAGES
        and str(job.status.value) in ("PENDING", "RUNNING")
    ]


@dataclass
class Submission:
    cfg: PipelineConfig
    address: str
    stages: list[str]
    force: bool = False
    echo: Callable[[str], None] = print

    def run(self) -> str | None:
        """Submit the stages in order, each after the previous one succeeded; returns the parent run id."""
        tracker = Tracker(self.cfg)
        client = connect(self.address, self.cfg.submit.retries)
        busy = _active_jobs(client, self.cfg)
        if busy:
            job = busy[0]
            raise SubmitError(
                f"{job.metadata['stvideo.stage']} of {self.cfg.root} is already running as Ray job "
                f"{job.submission_id}; wait for it, or stop it: ray job stop {job.submission_id} "
                f"--address {self.address}"
            )
        stamp = _stamp()
        tags = {"stvideo.submit.address": self.address}
        with RootLock(self.cfg.root, command_line(), self.echo) as self.lock:
            with tracker.pipeline_run(self.stages, tags) as parent_id:
                config_yaml = _job_config(self.cfg, tracker.uri)
                for stage in self.stages:
                    self._stage(client, tracker, stage, config_yaml, stamp, parent_id)
        return parent_id

    def _stage(self, client, tracker: Tracker, stage: str, config_yaml: str, stamp: str, parent_id) -> None:
        spec = STAGES[stage]
        status = lineage.check(self.cfg, spec)
        if status.done and not self.force:
            self.echo(f"== {stage}: skipped, complete for this config and these inputs")
            tracker.note_skipped(stage, status.manifest)
            return
        resources = spec.resources_for(self.cfg)
        submission_id = _submission_id(self.cfg, stage, stamp)
        retrying(
            lambda: _submit_once(
                client,
                submission_id,
                entrypoint=_entrypoint(
                    self.cfg,
                    [stage, "--config", f"env:{CONFIG_ENV}", *(["--force"] if self.force else [])],
                ),
                runtime_env=_runtime_env(
                    self.cfg, parent_id, submission_id, config_yaml, lock_id=self.lock.holder.id
                ),
                metadata=_metadata(self.cfg, stage, parent_id),
                entrypoint_num_cpus=resources.num_cpus,
                entrypoint_num_gpus=resources.num_gpus,
                entrypoint_memory=resources.memory,
            ),
            self.cfg.submit.retries,
            f"submitting {stage}",
        )
        self.echo(f"== {stage}: Ray job {submission_id}")
        started = time.perf_counter()
        try:
            final = follow(
                client, submission_id, lambda line: self.echo(f"[{stage}] {line}"), self.cfg.submit.retries
            )
        except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C, or SIGTERM (`jobs.cli` raises SystemExit)
            # the job would go on writing this root with nobody watching; a resubmit would race it
            client.stop_job(submission_id)
            how = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
            raise SubmitError(f"{stage}: {how}; stopped Ray job {submission_id}", stage=stage) from None
        if final != "SUCCEEDED":
            info = client.get_job_info(submission_id)
            logs = client.get_job_logs(submission_id).splitlines()
            # Ray's message may carry the whole log; its first line says what happened
            message = (info.message or "").strip().splitlines()[:1]
            raise SubmitError(
                f"{stage}: Ray job {submission_id} {final}" + (f": {message[0]}" if message else ""),
                "\n".join(logs[-self.cfg.submit.log_tail :]),
                stage,
            )
        self.echo(f"== {stage}: SUCCEEDED in {time.perf_counter() - started:.1f}s")


def submit_detached(cfg: PipelineConfig, address: str, submit_args: list[str]) -> str:
    """Submit the submission itself as a Ray job, so it goes on without this process."""
    Tracker(cfg)  # a config the submission cannot track with fails here, not in the detached job
    client = connect(address, cfg.submit.retries)
    stamp = _stamp()
    args = ["submit", "--config", f"env:{CONFIG_ENV}", "--address", address, *submit_args]
    submission_id = _submission_id(cfg, "pipeline", stamp)
    retrying(
        lambda: _submit_once(
            client,
            submission_id,
            entrypoint=_entrypoint(cfg, args),
            runtime_env=_runtime_env(cfg, None, submission_id, _job_config(cfg, None)),
            metadata=_metadata(cfg, "pipeline", None),
        ),
        cfg.submit.retries,
        "submitting the pipeline",
    )
    return submission_id


def stage_states(
    cfg: PipelineConfig, names: list[str], address: str | None, running: str = ""
) -> list[dict[str, str]]:
    """Each stage's state: done, outdated, running, pending, failed, stopped or not started.
    `running`: the stage the root's live lock holder says it runs (a `stvideo run`, not a job)."""
    jobs: dict[str, Any] = {}
    if address:
        client = connect(address, cfg.submit.retries)
        for job in client.list_jobs():
            meta = job.metadata or {}
            if meta.get("stvideo.root") != cfg.root or meta.get("stvideo.stage") not in names:
                continue
            stage = meta["stvideo.stage"]
            if stage not in jobs or (job.start_time or 0) > (jobs[stage].start_time or 0):
                jobs[stage] = job
    rows = []
    layout = Layout.of(cfg)
    for stage in names:
        status = lineage.check(cfg, STAGES[stage], layout)
        manifest = status.manifest or {}
        job = jobs.get(stage)
        job_status = str(job.status.value) if job is not None else None
        if job_status in ("RUNNING", "PENDING"):
            state = job_status.lower()
        elif stage == running:  # in a `stvideo run` or a stage command, not a Ray job
            state = "running"
        elif status.done:
            state = "done"
        elif job_status in ("FAILED", "STOPPED") and (job.start_time or 0) / 1000 > _finished_epoch(manifest):
            state = job_status.lower()
        elif status.state == "outdated":
            state = "outdated (" + ", ".join(status.changed[:3]) + ")"
        elif job_status == "SUCCEEDED":
            # the job finished, but its manifest is not where this process looks (another filesystem)
            state = "succeeded (outputs not visible here)"
        else:
            state = "not started"
        rows.append(
            {
                "stage": stage,
                "state": state,
                "outputs": STAGES[stage].output(layout) if status.state != "missing" else "-",
                "ray_job": (job.submission_id if job is not None else None)
                or manifest.get("ray_submission_id")
                or "-",
                "mlflow_run": manifest.get("mlflow_run_id") or "-",
            }
        )
    return rows


def _finished_epoch(manifest: dict) -> float:
    if not manifest.get("finished_at"):
        return 0.0
    return datetime.datetime.fromisoformat(manifest["finished_at"]).timestamp()
