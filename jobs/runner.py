"""One stage's lifecycle, in one place: check -> clear -> run -> record -> track.

Every way of running a stage comes through here: `stvideo run`, a single-stage
command, and the Ray job that `stvideo submit` starts (it runs the single-stage
command on the cluster). The inputs' identities are computed once, by `check`,
and the manifest records exactly those.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from jobs import lineage
from jobs.config import PipelineConfig
from jobs.layout import Layout
from jobs.stages import STAGES, StageInputError, StageResult, StageSpec
from jobs.tracking import SUBMISSION_ENV, Tracker
from pipeline import storage


def rank() -> int:
    """This process's rank under torchrun or `accelerate launch`; 0 otherwise."""
    return int(os.environ.get("RANK", "0"))


@dataclass
class Outcome:
    spec: StageSpec
    result: StageResult | None  # None: skipped, complete for this config and these inputs
    seconds: float
    output: str


class Runner:
    """Runs stages of one config in order inside one MLflow parent run, skipping complete ones."""

    def __init__(self, cfg: PipelineConfig, force: bool = False, echo: Callable[[str], None] = print):
        self.cfg, self.force, self.echo = cfg, force, echo
        self.layout = Layout.of(cfg)
        self.tracker = Tracker(cfg)  # a config that cannot be tracked fails here, before any work
        self.parent_id: str | None = None

    def run(self, names: list[str]) -> list[Outcome]:
        with self.tracker.pipeline_run(names) as self.parent_id:
            return [self.run_stage(STAGES[name]) for name in names]

    def run_stage(self, spec: StageSpec) -> Outcome:
        self.echo(f"== {spec.name} ==")
        started, output = time.perf_counter(), spec.output(self.layout)
        status = lineage.check(self.cfg, spec, self.layout)
        if status.done and not self.force:
            self.echo(
                f"{spec.name}: skipped, complete for this config and these inputs "
                f"({output}, finished {status.manifest['finished_at']}); --force redoes it"
            )
            self.tracker.note_skipped(spec.name, status.manifest)
            return Outcome(spec, None, 0.0, output)
        self._clear_if_redoing(status)
        with self.tracker.stage_run(spec.name, status.config) as run_id:
            try:
                result = spec.run(self.cfg, self.layout)
            except StageInputError as err:
                raise StageInputError(str(err), stage=spec.name) from None
            tags: dict[str, str] = {}
            if rank() == 0:
                provenance = {
                    "mlflow_run_id": run_id,
                    "mlflow_parent_run_id": self.parent_id,
                    "ray_submission_id": os.environ.get(SUBMISSION_ENV),
                }
                manifest = lineage.record(
                    status, self.layout, result.inputs, result.outputs, result.metrics, provenance
                )
                tags = lineage.lineage_tags(spec, manifest)
            self.tracker.record(result, tags)
        seconds = time.perf_counter() - started
        self.echo(f"{result.summary}  [{seconds:.1f}s]")
        return Outcome(spec, result, seconds, output)

    def _clear_if_redoing(self, status: lineage.Completeness) -> None:
        """A completed stage is redone from scratch, never resumed: its training state belongs to
        other inputs. A stage whose inputs are missing is not cleared: it fails, saying what."""
        if status.inputs_missing:
            return
        redo = self.force
        if status.state == "outdated":
            self.echo(f"{status.spec.name}: outdated ({', '.join(status.changed[:6])})")
            redo = redo or status.spec.derived
        if not redo:
            return
        if status.state != "missing":
            self.echo(f"{status.spec.name}: redoing from scratch")
        if rank() == 0:
            lineage.clear(status.spec, self.layout)
        else:
            self._wait_until_cleared(status.spec)

    def _wait_until_cleared(self, spec: StageSpec, timeout: float = 600) -> None:
        """Under torchrun rank 0 clears; the others must not read what it is removing.

        Rank 0 cannot write the stage's output again before every rank has joined the
        process group inside the stage, so "the folder is gone" is a safe signal.
        """
        output = spec.output(self.layout)
        deadline = time.monotonic() + timeout
        while storage.exists(output):
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {rank()}: rank 0 did not clear {output}")
            time.sleep(0.5)
