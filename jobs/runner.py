"""One stage's lifecycle, in one place: check -> clear -> run -> record -> track.

Every way of running a stage comes through here: `stvideo run`, a single-stage
command, and the Ray job that `stvideo submit` starts (it runs the single-stage
command on the cluster). The inputs' identities are computed once, by `check`,
and the manifest records exactly those.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from jobs import lineage
from jobs.config import PipelineConfig
from jobs.layout import Layout, started_with
from jobs.root_lock import RootLock, command_line
from jobs.stages import ARTIFACTS, STAGES, StageInputError, StageResult, StageSpec
from jobs.tracking import SUBMISSION_ENV, Tracker
from pipeline import storage
from pipeline.decoders import use_decoder


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
        self.lock: RootLock | None = None
        self.current: str | None = None  # the stage running now, for whoever reports its failure

    def run(self, names: list[str]) -> list[Outcome]:
        # one writer per root: a second run is refused before it touches anything (rank 0 holds
        # the lock for the others of a torchrun)
        self.lock = RootLock(self.layout.root, command_line(), self.echo) if rank() == 0 else None
        with self.lock or contextlib.nullcontext():
            if self.cfg.expected and rank() == 0:
                self._say_expected_time(names)
            with self.tracker.pipeline_run(names) as self.parent_id:
                return [self.run_stage(STAGES[name]) for name in names]

    def run_stage(self, spec: StageSpec) -> Outcome:
        self.echo(f"== {spec.name} ==")
        self.current = spec.name
        if self.lock:
            self.lock.working_on(spec.name)
        started, final = time.perf_counter(), spec.output(self.layout)
        staged = self.layout.staged(spec.output_field)  # the stage writes here until it is complete
        staging = spec.output(staged)
        status = lineage.check(self.cfg, spec, self.layout)
        if not status.done and rank() == 0 and lineage.recorded_fingerprint(staging) == status.fingerprint:
            self.echo(f"{spec.name}: the last run finished in {staging}; moving it to {final}")
            lineage.swap_in(staging, final)
            status = lineage.check(self.cfg, spec, self.layout)
        if status.done and not self.force:
            self.echo(
                f"{spec.name}: skipped, complete for this config and these inputs "
                f"({final}, finished {status.manifest['finished_at']}); --force redoes it"
            )
            self.tracker.note_skipped(spec.name, status.manifest)
            return Outcome(spec, None, 0.0, final)
        self._check_inputs_current(spec)
        self._say_what_changed(status, final)
        self._prepare_staging(status, staging)
        try:  # read by every decode of the stage, in this process and those it starts
            use_decoder(self.cfg.data.decoder)
        except ValueError as err:
            raise StageInputError(f"data.{err}", stage=spec.name) from None
        with self.tracker.stage_run(spec.name, status.config) as run_id:
            try:
                result = spec.run(self.cfg, staged)
            except StageInputError as err:
                raise StageInputError(str(err), stage=spec.name) from None
            result = _named_where_it_goes(result, staging, final)
            # this process's high-water mark (it includes the stages it ran before, under `run`)
            result.metrics["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            tags: dict[str, str] = {}
            if rank() == 0:
                if self.lock:
                    self.lock.check()  # a run that took the root over from us keeps what it made
                provenance = {
                    "mlflow_run_id": run_id,
                    "mlflow_parent_run_id": self.parent_id,
                    "ray_submission_id": os.environ.get(SUBMISSION_ENV),
                }
                manifest = lineage.record(
                    status, staged, result.inputs, result.outputs, result.metrics, provenance
                )
                lineage.swap_in(staging, final)
                self._remove_empty_folders(staging)
                tags = lineage.lineage_tags(spec, manifest)
            self.tracker.record(result, tags)
            if rank() == 0 and spec.writes in ("tokenizer", "dynamics"):
                registered = self.tracker.publish_checkpoint(spec.writes, final, tags)
                if registered:
                    result.summary += f"; registered as {registered}"
        seconds = time.perf_counter() - started
        self.echo(f"{result.summary}  [{seconds:.1f}s]")
        return Outcome(spec, result, seconds, final)

    def _check_inputs_current(self, spec: StageSpec) -> None:
        """A stage reads what earlier stages left under the root. When one of them was made with
        settings other than this config's (a stage run on its own after the config changed),
        refuse, rather than build on it and record this config as if it had been used."""
        for name in spec.reads:
            producer = next((stage for stage in STAGES.values() if stage.writes == name), None)
            location = ARTIFACTS[name].location(self.layout)
            if producer is None or location != producer.output(self.layout):  # one the config names
                continue
            made = lineage.check(self.cfg, producer, self.layout)
            # settings only: a changed input of its own (another tokenizer) the stage checks itself
            changed = [
                key
                for key in made.changed
                if not key.startswith("input ") and key not in producer.location_keys
            ]
            if made.state == "outdated" and changed:
                raise StageInputError(
                    f"{location} was made by {producer.name} with settings other than this config's "
                    f"({', '.join(changed[:4])}): run `stvideo {producer.name}` first (or `stvideo run`), "
                    "or set them back",
                    stage=spec.name,
                )

    def _say_expected_time(self, names: list[str]) -> None:
        """Measure this machine's matmul rates (a second or two) and say how long the stages that
        will run should take here, scaled from the config's reference runs."""
        import torch

        from common.machine import PRECISIONS, expected_seconds, matmul_rate
        from common.training import resolve_precision

        if torch.cuda.is_available():  # the reference runs are CPU runs: no honest scale to a GPU
            return
        todo = [name for name in names if not self._complete(name)]
        references = self.cfg.expected
        precision_of = {
            "train-tokenizer": resolve_precision(self.cfg.tokenizer.mixed_precision, "cpu"),
            "train-dynamics": resolve_precision(self.cfg.dynamics.mixed_precision, "cpu"),
        }
        precision_of = {stage: "fp32" if p == "no" else p for stage, p in precision_of.items()}
        needed = {precision_of.get(name, "fp32") for name in todo}
        gflops = {p: matmul_rate("cpu", PRECISIONS[p], seconds=0.6) / 1e9 for p in sorted(needed)}
        plan = expected_seconds(todo, references, gflops, precision_of)
        if not plan:
            return
        rates = ", ".join(f"{gflops[p]:.0f} GFLOP/s {p}" for p in sorted(gflops))
        by_stage = ", ".join(f"{name} {seconds / 60:.1f}" for name, (seconds, _) in plan.items())
        machines = " and ".join(
            " / ".join(f"{rate:.0f} {p}" for p, rate in sorted(run.matmul_gflops.items()))
            for run in references
        )
        caveats = [caveat for _, caveat in plan.values() if caveat]
        guess = f"; a rough guess where {'; '.join(caveats)}" if caveats else ""
        count = torch.get_num_threads()
        threads = f"{count} thread{'s' if count > 1 else ''}"
        self.echo(
            f"this machine multiplies at {rates} ({threads}): expect about "
            f"{sum(seconds for seconds, _ in plan.values()) / 60:.0f} min here ({by_stage}), scaled from "
            f"the config's reference runs at {machines} GFLOP/s{guess}. The figures are set by step "
            "budgets, not by this time."
        )

    def _complete(self, name: str) -> bool:
        """Whether a stage would be skipped; a check that fails here fails again, with its
        reason, when the stage runs: for the forecast it counts as a stage to run."""
        try:
            return lineage.check(self.cfg, STAGES[name], self.layout).done
        except Exception:
            return False

    def _say_what_changed(self, status: lineage.Completeness, final: str) -> None:
        """Say why the stage runs; refuse to replace the user's own data made another way unless
        the user said so (raw shards: `ingest.overwrite`)."""
        spec = status.spec
        if status.state != "outdated":
            return
        self.echo(f"{spec.name}: outdated ({', '.join(status.changed[:6])})")
        key = spec.overwrite_key
        if key and not self.force and not _setting(self.cfg, key):
            raise StageInputError(
                f"root: {final} already holds the output of other inputs or another "
                f"{'/'.join(spec.sections)} config; use another root, or --set {key}=true to replace it",
                stage=spec.name,
            )
        self.echo(
            f"{spec.name}: redoing from scratch; {final} stays as it is until the new output is complete"
        )

    def _prepare_staging(self, status: lineage.Completeness, staging: str) -> None:
        """Resume the unfinished run in `staging` only if it started with this very fingerprint
        (same config sections, same inputs); otherwise start it over, saying so."""
        spec, fingerprint = status.spec, status.fingerprint
        if rank() != 0:  # rank 0 prepares; the others wait until it has
            self._wait_for(lambda: started_with(staging) == fingerprint, staging)
            return
        previous = started_with(staging)
        if previous == fingerprint and not self.force:
            self.echo(f"{spec.name}: resuming the unfinished run in {staging}")
            return
        if previous is not None or storage.exists(staging):
            why = "--force" if self.force else "it started with another config or other inputs"
            if previous is None and not self.force:
                why = "it left no record of what it started with"
            self.echo(f"{spec.name}: starting over ({why}): removing the unfinished run in {staging}")
            lineage.clear_staging(staging)
        lineage.mark_started(staging, fingerprint)

    def _remove_empty_folders(self, staging: str) -> None:
        """Leave no empty `.staging/generations/` behind (object stores have no empty folders)."""
        if not storage.is_local(staging):
            return
        folder, root = Layout.local(staging).parent, Layout.local(self.layout.root)
        while folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent

    def _wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 600) -> None:
        """Under torchrun rank 0 prepares the staging location; the others must not write into
        what it is still removing."""
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {rank()}: rank 0 did not prepare {what}")
            time.sleep(0.5)


def _setting(cfg: PipelineConfig, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _named_where_it_goes(result: StageResult, staging: str, final: str) -> StageResult:
    """The stage wrote to its staging location; what it reports names where the output lives
    once it is swapped in."""
    spellings = [staging] + ([str(Layout.local(staging))] if storage.is_local(staging) else [])

    def moved(text: str) -> str:
        for spelling in spellings:
            text = text.replace(spelling, final)
        return text

    return replace(
        result,
        inputs={name: moved(uri) for name, uri in result.inputs.items()},
        outputs={name: moved(uri) for name, uri in result.outputs.items()},
        summary=moved(result.summary),
    )
