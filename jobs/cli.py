"""The `stvideo` command: one subcommand per stage, plus `run` (all stages in-process)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from jobs.config import ConfigError, PipelineConfig, load_config
from jobs.stages import STAGES, StageInputError
from jobs.tracking import SUBMISSION_ENV
from pipeline import storage

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="stvideo: a Spatial-Temporal Transformer video generator trained on precomputed VQGAN latents.",
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Pipeline YAML (configs/). Default: built-in defaults.")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a key: --set dotted.key=value (repeatable).", show_default=False
    ),
]

ForceOption = Annotated[
    bool, typer.Option("--force", help="Redo stages even when their outputs are complete for this config.")
]

EXIT_BAD_INPUT = 2
EXIT_STAGE_FAILED = 1


def _fail(lines: list[str], code: int, header: str) -> None:
    typer.echo(header, err=True)
    for line in lines:
        typer.echo(f"  {line}", err=True)
    raise typer.Exit(code)


def _load(config: Path | None, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        _fail(err.problems, EXIT_BAD_INPUT, "config error (nothing was written):")
        raise  # unreachable: _fail raises


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _wait_until_cleared(cfg: PipelineConfig, name: str, timeout: float = 600) -> None:
    """Under torchrun rank 0 clears; the others must not read what it is removing.

    Rank 0 cannot write the stage's outputs again before every rank has joined the
    process group inside the stage, so "the folder is gone" is a safe signal.
    """
    from jobs import lineage

    deadline = time.monotonic() + timeout
    while storage.exists(lineage.output_uri(cfg, name)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {_rank()}: rank 0 did not clear {lineage.output_uri(cfg, name)}")
        time.sleep(0.5)


def _prepare(cfg: PipelineConfig, name: str, force: bool):
    """Decide whether `name` runs: returns its manifest when it is complete and may be skipped."""
    from jobs import lineage

    status = lineage.check(cfg, name)
    if status.done and not force:
        return status.manifest
    if status.inputs_missing:
        # nothing is cleared for a stage that cannot run: it fails below, saying what is missing
        return None
    redo = force
    if status.state == "outdated":
        typer.echo(f"{name}: outdated ({', '.join(status.changed[:6])})")
        redo = redo or name in lineage.DERIVED
    if redo:
        if status.state != "missing":
            typer.echo(f"{name}: redoing from scratch")
        # a completed stage is redone, never resumed: its training state belongs to other inputs
        if _rank() == 0:
            lineage.clear(cfg, name)
        else:
            _wait_until_cleared(cfg, name)
    return None


def run_stages(cfg: PipelineConfig, names: list[str], force: bool = False) -> None:
    """Run `names` in order inside one MLflow parent run, skipping the complete ones."""
    from jobs import lineage
    from jobs.tracking import Tracker

    try:
        tracker = Tracker(cfg)
    except ConfigError as err:
        _fail(err.problems, EXIT_BAD_INPUT, "config error (nothing was written):")
    began, outcomes = time.perf_counter(), []
    with tracker.pipeline_run(names) as parent_id:
        for name in names:
            typer.secho(f"== {name} ==", bold=True)
            started = time.perf_counter()
            done = _prepare(cfg, name, force)
            if done is not None:
                typer.echo(
                    f"{name}: skipped, complete for this config and these inputs "
                    f"({lineage.output_uri(cfg, name)}, finished {done['finished_at']}); --force redoes it"
                )
                tracker.note_skipped(name, done)
                outcomes.append((name, "skipped"))
                continue
            with tracker.stage_run(name) as run_id:
                try:
                    result = STAGES[name].run(cfg)
                except StageInputError as err:
                    _fail([str(err)], EXIT_BAD_INPUT, f"stvideo {name}: bad input.")
                manifest = None
                if _rank() == 0:
                    manifest = lineage.record(
                        cfg,
                        name,
                        result.inputs,
                        result.outputs,
                        result.metrics,
                        {
                            "mlflow_run_id": run_id,
                            "mlflow_parent_run_id": parent_id,
                            "ray_submission_id": os.environ.get(SUBMISSION_ENV),
                        },
                    )
                tracker.record(result, manifest)
            seconds = time.perf_counter() - started
            typer.echo(f"{result.summary}  [{seconds:.1f}s]")
            outcomes.append((name, f"ran in {seconds:.1f}s"))
    if len(names) > 1:
        typer.secho(f"== done in {time.perf_counter() - began:.0f}s ==", bold=True)
        for name, outcome in outcomes:
            typer.echo(f"  {name:<16} {outcome:<14} {lineage.output_uri(cfg, name)}")
    if names[-1] == "generate":
        out = lineage.output_uri(cfg, "generate")
        typer.echo(f"preview: {out}/preview.gif  metrics: {out}/metrics.json")
    if parent_id and tracker.owns_parent:
        typer.echo(f"MLflow: run {parent_id} in {tracker.uri}  (mlflow ui --backend-store-uri {tracker.uri})")


def _stage_command(name: str):
    def command(config: ConfigOption = None, overrides: SetOption = None, force: ForceOption = False) -> None:
        cfg = _load(config, overrides)
        run_stages(cfg, [name], force=force)

    return command


for _name, _stage in STAGES.items():
    app.command(_name, help=_stage.help)(_stage_command(_name))


StagesOption = Annotated[
    str | None, typer.Option("--stages", help="Comma-separated subset, in pipeline order.")
]
AddressOption = Annotated[
    str | None,
    typer.Option("--address", help="The cluster's Jobs API, http://HOST:8265 (default: submit.address)."),
]


def _stage_names(stages: str | None) -> list[str]:
    if not stages:
        return list(STAGES)
    wanted = [part.strip() for part in stages.split(",") if part.strip()]
    unknown = [part for part in wanted if part not in STAGES]
    if unknown:
        _fail(
            [f"--stages: given {', '.join(unknown)}; expected some of {', '.join(STAGES)}"],
            EXIT_BAD_INPUT,
            "bad option:",
        )
    return [name for name in STAGES if name in wanted]


@app.command("run")
def run_command(
    config: ConfigOption = None,
    overrides: SetOption = None,
    stages: StagesOption = None,
    force: ForceOption = False,
) -> None:
    """Run every stage in order, in this process (embedded Ray, local MLflow store)."""
    cfg = _load(config, overrides)
    run_stages(cfg, _stage_names(stages), force=force)


@app.command("submit")
def submit_command(
    config: ConfigOption = None,
    overrides: SetOption = None,
    address: AddressOption = None,
    stages: StagesOption = None,
    force: ForceOption = False,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="--no-wait: run the submission itself as a Ray job.")
    ] = True,
) -> None:
    """Submit each stage as its own Ray job, in order, each after the previous one succeeded."""
    from jobs.submit import Submission, SubmitError, address_of, submit_detached

    cfg = _load(config, overrides)
    names = _stage_names(stages)
    url = address_of(cfg, address)
    try:
        if not wait:
            args = [*(["--stages", ",".join(names)] if stages else []), *(["--force"] if force else [])]
            job, stored = submit_detached(cfg, url, args)
            typer.echo(f"submitted the pipeline as Ray job {job}")
            typer.echo(f"  follow: ray job logs -f {job} --address {url}")
            typer.echo(f"  stages: stvideo status --config {stored} --address {url}")
            return
        parent = Submission(cfg, url, names, force=force, echo=typer.echo).run()
    except ConfigError as err:
        _fail(err.problems, EXIT_BAD_INPUT, "config error (nothing was submitted):")
    except SubmitError as err:
        typer.secho(f"stvideo submit: {err}", err=True, fg="red")
        if err.log_tail:
            typer.echo("---- last lines of its log ----", err=True)
            typer.echo(err.log_tail, err=True)
        if err.stage:
            typer.echo("earlier stages' outputs are kept; fix the cause and submit again", err=True)
        raise typer.Exit(EXIT_STAGE_FAILED) from None
    typer.echo(f"all stages done: {', '.join(names)}")
    if parent:
        typer.echo(f"MLflow: parent run {parent} in {cfg.tracking.uri or 'the sqlite store under root'}")


@app.command("status")
def status_command(
    config: ConfigOption = None, overrides: SetOption = None, address: AddressOption = None
) -> None:
    """Each stage's state (done, running, failed, outdated, not started), outputs, Ray job and MLflow run."""
    from jobs.submit import SubmitError, stage_states

    cfg = _load(config, overrides)
    try:
        rows = stage_states(cfg, list(STAGES), address or cfg.submit.address)
    except SubmitError as err:
        _fail([str(err)], EXIT_STAGE_FAILED, "stvideo status: the cluster did not answer.")
    columns = ["stage", "state", "outputs", "ray_job", "mlflow_run"]
    widths = {col: max(len(col), *(len(row[col]) for row in rows)) for col in columns}
    typer.echo("  ".join(col.ljust(widths[col]) for col in columns).rstrip())
    for row in rows:
        typer.echo("  ".join(row[col].ljust(widths[col]) for col in columns).rstrip())


def _terminated(signum, frame) -> None:
    # `ray job stop` and Kubernetes send SIGTERM: unwind, so open MLflow runs end as failed
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    app(prog_name="stvideo")


if __name__ == "__main__":
    sys.exit(main())
