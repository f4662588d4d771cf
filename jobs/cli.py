"""The `stvideo` command: one subcommand per stage, plus `run` (all stages in-process)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from jobs.config import ConfigError, PipelineConfig, load_config
from jobs.stages import STAGES, StageInputError

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

EXIT_BAD_INPUT = 2
EXIT_NOT_BUILT = 3


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


def run_stages(cfg: PipelineConfig, names: list[str], stop_at_unbuilt: bool) -> None:
    """Run `names` in order inside one MLflow parent run, printing each stage's summary."""
    from jobs.tracking import Tracker

    unbuilt = [name for name in names if not STAGES[name].built]
    runnable = [name for name in names if STAGES[name].built]
    if unbuilt and not stop_at_unbuilt:
        stage = STAGES[unbuilt[0]]
        _fail(
            [
                f"'{stage.name}' comes with issue #{stage.issue}; built so far: "
                + ", ".join(n for n, s in STAGES.items() if s.built)
            ],
            EXIT_NOT_BUILT,
            f"stvideo {stage.name}: not built yet.",
        )
    try:
        tracker = Tracker(cfg)
    except ConfigError as err:
        _fail(err.problems, EXIT_BAD_INPUT, "config error (nothing was written):")
    results = []
    with tracker.pipeline_run(runnable) as parent_id:
        for name in runnable:
            typer.secho(f"== {name} ==", bold=True)
            started = time.perf_counter()
            with tracker.stage_run(name):
                try:
                    result = STAGES[name].run(cfg)
                except StageInputError as err:
                    _fail([str(err)], EXIT_BAD_INPUT, f"stvideo {name}: bad input.")
                tracker.record(result)
            typer.echo(f"{result.summary}  [{time.perf_counter() - started:.1f}s]")
            results.append(result)
    if unbuilt:
        typer.echo(f"not built yet, skipped: {', '.join(unbuilt)}")
    if parent_id:
        typer.echo(f"MLflow: run {parent_id} in {tracker.uri}  (mlflow ui --backend-store-uri {tracker.uri})")


def _stage_command(name: str):
    def command(config: ConfigOption = None, overrides: SetOption = None) -> None:
        cfg = _load(config, overrides)
        run_stages(cfg, [name], stop_at_unbuilt=False)

    return command


for _name, _stage in STAGES.items():
    _help = _stage.help if _stage.built else f"(not built yet: issue #{_stage.issue}) {_stage.help}"
    app.command(_name, help=_help)(_stage_command(_name))


@app.command("run")
def run_command(
    config: ConfigOption = None,
    overrides: SetOption = None,
    stages: Annotated[str | None, typer.Option(help="Comma-separated subset, in pipeline order.")] = None,
) -> None:
    """Run every stage in order, in this process (embedded Ray, local MLflow store)."""
    cfg = _load(config, overrides)
    names = list(STAGES)
    if stages:
        wanted = [part.strip() for part in stages.split(",") if part.strip()]
        unknown = [part for part in wanted if part not in STAGES]
        if unknown:
            _fail(
                [f"--stages: given {', '.join(unknown)}; expected some of {', '.join(STAGES)}"],
                EXIT_BAD_INPUT,
                "bad option:",
            )
        names = [name for name in STAGES if name in wanted]
    run_stages(cfg, names, stop_at_unbuilt=True)


@app.command("submit", help="(not built yet: issue #7) Submit each stage as its own Ray job to a cluster.")
def submit_command(config: ConfigOption = None, overrides: SetOption = None) -> None:
    _load(config, overrides)
    _fail(
        ["staged Ray job submission comes with issue #7; use `stvideo run` or a single stage for now"],
        EXIT_NOT_BUILT,
        "stvideo submit: not built yet.",
    )


def main() -> None:
    app(prog_name="stvideo")


if __name__ == "__main__":
    sys.exit(main())
