"""The `stvideo` command: one subcommand per stage, plus `run` (all stages in-process)."""

from __future__ import annotations

import signal
import sys
import time
from typing import Annotated

import typer

from jobs.config import ConfigError, PipelineConfig, load_config
from jobs.root_lock import RootLocked, RootUnusable
from jobs.stages import STAGES, StageInputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="stvideo: a Spatial-Temporal Transformer video generator trained on precomputed VQGAN latents.",
)

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="Pipeline YAML: a file or URI (configs/), or env:NAME for one held in an environment "
        "variable (how submitted jobs get theirs). Default: built-in defaults.",
    ),
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
EXIT_ROOT_BUSY = 3  # another live run holds the root


def _fail(lines: list[str], code: int, header: str) -> None:
    typer.echo(header, err=True)
    for line in lines:
        typer.echo(f"  {line}", err=True)
    raise typer.Exit(code)


def _load(config: str | None, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        _fail(err.problems, EXIT_BAD_INPUT, "config error (nothing was written):")
        raise  # unreachable: _fail raises


def run_stages(cfg: PipelineConfig, names: list[str], force: bool = False) -> None:
    """Run `names` in order through the runner and say what each did."""
    from jobs.runner import Runner

    try:
        runner = Runner(cfg, force=force, echo=typer.echo)
    except ConfigError as err:
        _fail(err.problems, EXIT_BAD_INPUT, "config error (nothing was written):")
    began = time.perf_counter()
    try:
        outcomes = runner.run(names)
    except StageInputError as err:
        _fail([str(err)], EXIT_BAD_INPUT, f"stvideo {err.stage}: bad input.")
    except (RootLocked, RootUnusable) as err:
        _refuse_root(err, "stvideo")
    except Exception as err:
        _stage_failed(err, runner.current or names[0], cfg)
    if len(names) > 1:
        typer.secho(f"== done in {time.perf_counter() - began:.0f}s ==", bold=True)
        for outcome in outcomes:
            did = "skipped" if outcome.result is None else f"ran in {outcome.seconds:.1f}s"
            typer.echo(f"  {outcome.spec.name:<16} {did:<14} {outcome.output}")
    if names[-1] == "generate":
        out = runner.layout.generations
        typer.echo(f"preview: {out}/preview.gif  metrics: {out}/metrics.json")
    if runner.parent_id and runner.tracker.owns_parent:
        typer.echo(f"MLflow: run {runner.parent_id} in {runner.tracker.uri}")
        typer.echo(f"  look: {runner.tracker.ui_link(runner.parent_id)}")
        if runner.tracker.kept():  # the run exists; what the outage held back is not in it yet
            typer.echo(
                f"  not there yet: {runner.tracker.kept()} records MLflow could not take; the next "
                "tracked stvideo command sends them"
            )


def _refuse_root(err: RootLocked | RootUnusable, command: str) -> None:
    """Held by another live run (exit 3), or not a place a run can write (exit 2): one line."""
    typer.secho(f"{command}: {err}", err=True, fg="red")
    raise typer.Exit(EXIT_ROOT_BUSY if isinstance(err, RootLocked) else EXIT_BAD_INPUT) from None


def _stage_failed(err: Exception, stage: str, cfg: PipelineConfig) -> None:
    """One line for a failed stage, naming the file and what to do; the traceback goes to a
    file (and, with -v, here)."""
    import logging

    from common import logs
    from jobs.failures import explain, save_traceback
    from pipeline.storage import scratch_root

    if logs.level() <= logging.DEBUG:
        raise err
    saved = save_traceback(err, stage)
    line = explain(err, [cfg.root, str(scratch_root(cfg.scratch))])
    typer.secho(f"stvideo {stage}: {line}" + (f" (traceback: {saved})" if saved else ""), err=True, fg="red")
    raise typer.Exit(EXIT_STAGE_FAILED) from None


def _stage_command(name: str):
    def command(config: ConfigOption = None, overrides: SetOption = None, force: ForceOption = False) -> None:
        cfg = _load(config, overrides)
        run_stages(cfg, [name], force=force)

    return command


def _stage_help(spec) -> str:
    from rich.markup import escape

    from jobs.keys import describe_keys

    return escape(
        f"{spec.help}\n\nThe config keys it reads (set them in the YAML or with --set KEY=VALUE), "
        f"with their defaults:\n\n{describe_keys(spec.sections)}"
    )


for _name, _stage in STAGES.items():
    app.command(_name, help=_stage_help(_stage), short_help=_stage.help)(_stage_command(_name))


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"stvideo {version('stvideo')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Only warnings and errors on stderr: no progress, no step lines."),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug lines too, and the libraries' own (Ray, MLflow).")
    ] = False,
) -> None:
    """stvideo: a Spatial-Temporal Transformer video generator trained on precomputed VQGAN latents."""
    from common import logs

    if quiet and verbose:
        _fail(["--quiet and --verbose: give one"], EXIT_BAD_INPUT, "bad option:")
    logs.configure("quiet" if quiet else "verbose" if verbose else None)


config_app = typer.Typer(no_args_is_help=True, help="The resolved config: what a run would use.")
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show_command(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Print the config as a run would use it (the file, the --set overrides and every default) as
    YAML. Fed back as --config it gives the same stages' fingerprints; secrets print as <redacted>."""
    typer.echo(_load(config, overrides).to_yaml(), nl=False)


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
            job = submit_detached(cfg, url, args)
            typer.echo(f"submitted the pipeline as Ray job {job}")
            typer.echo(f"  follow: ray job logs -f {job} --address {url}")
            typer.echo(f"  stages: stvideo status --config {config or '<this config>'} --address {url}")
            return
        parent = Submission(cfg, url, names, force=force, echo=typer.echo).run()
    except ConfigError as err:
        _fail(err.problems, EXIT_BAD_INPUT, "config error (nothing was submitted):")
    except (RootLocked, RootUnusable) as err:
        _refuse_root(err, "stvideo submit")
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
        from jobs.tracking_store import tracking_uri

        typer.echo(f"MLflow: parent run {parent} in {tracking_uri(cfg)}")


@app.command("status")
def status_command(
    config: ConfigOption = None,
    overrides: SetOption = None,
    address: AddressOption = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also read back every raw shard, latent shard, checkpoint and generated clip, and "
            "name those that do not read (exit 1 if any).",
        ),
    ] = False,
) -> None:
    """Each stage's state (done, running, failed, outdated, not started), outputs, Ray job and MLflow run."""
    from jobs.submit import SubmitError, stage_states

    cfg = _load(config, overrides)
    lock_line, running = _lock_state(cfg)
    try:
        rows = stage_states(cfg, list(STAGES), address or cfg.submit.address, running)
    except SubmitError as err:
        _fail([str(err)], EXIT_STAGE_FAILED, "stvideo status: the cluster did not answer.")
    except OSError as err:  # a root that is a file, a store that refuses
        _fail(
            [f"{err.filename or cfg.root}: {err.strerror or err}"],
            EXIT_BAD_INPUT,
            "stvideo status: cannot read the root.",
        )
    columns = ["stage", "state", "outputs", "ray_job", "mlflow_run"]
    widths = {col: max(len(col), *(len(row[col]) for row in rows)) for col in columns}
    typer.echo("  ".join(col.ljust(widths[col]) for col in columns).rstrip())
    for row in rows:
        typer.echo("  ".join(row[col].ljust(widths[col]) for col in columns).rstrip())
    typer.echo(lock_line)
    if verify:
        _verify(cfg)


def _lock_state(cfg: PipelineConfig) -> tuple[str, str]:
    """The root's lock as a line, and the stage its live holder runs ("" when none), read once."""
    from jobs.root_lock import current_holder

    try:
        holder = current_holder(cfg.root)
    except (RootLocked, RootUnusable) as err:  # a file there that is not a lock record
        return f"lock: {err}", ""
    if holder is None:
        return "lock: free", ""
    dead = holder.dead_because()
    if dead:
        return f"lock: left by {holder.describe()}; {dead}: the next run takes it over", ""
    return f"lock: held by {holder.describe()}", holder.stage


def _verify(cfg: PipelineConfig) -> None:
    from jobs.layout import Layout
    from jobs.verify import verify

    checked = verify(Layout.of(cfg), progress=lambda line: typer.echo(line, err=True))
    bad = [line for result in checked for line in result.bad]
    summary = ", ".join(f"{result.count} {result.what}" for result in checked) or "nothing stored yet"
    if not bad:
        typer.echo(f"verify: every byte read back: {summary}")
        return
    for line in bad:
        typer.secho(f"verify: bad: {line}", fg="red")
    typer.echo(f"verify: {len(bad)} bad of {summary}")
    raise typer.Exit(EXIT_STAGE_FAILED)


models_app = typer.Typer(
    no_args_is_help=True,
    help="Checkpoints registered in MLflow: each training stage registers a version of "
    "tracking.tokenizer_model / tracking.dynamics_model. Give one to a stage as "
    "models:/<name>/<version> or models:/<name>@<alias> (encode.tokenizer, generate.dynamics).",
)
app.add_typer(models_app, name="models")


def _registry(config: str | None, overrides: list[str] | None):
    from mlflow import MlflowClient

    from jobs.tracking_store import tracking_uri

    cfg = _load(config, overrides)
    try:
        uri = tracking_uri(cfg)
    except ConfigError as err:
        _fail(err.problems, EXIT_BAD_INPUT, "config error:")
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


@models_app.command("list")
def models_list_command(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Every registered version: its aliases, identity, the run that made it and its root."""
    from jobs.model_registry import IDENTITY_TAG

    client, uri = _registry(config, overrides)
    typer.echo(f"models in {uri}")
    for model in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for version in sorted(
            client.search_model_versions(f"name='{model.name}'"), key=lambda v: -int(v.version)
        ):
            typer.echo(
                f"  models:/{model.name}/{version.version}  "
                f"@{','.join(aliases.get(str(version.version), [])) or '-'}  "
                f"identity {version.tags.get(IDENTITY_TAG, '?')}  run {version.run_id}  "
                f"root {version.tags.get('stvideo.root', '?')}"
            )


@models_app.command("promote")
def models_promote_command(
    name: Annotated[str, typer.Argument(help="Registered model, e.g. stvideo-dynamics.")],
    version: Annotated[str | None, typer.Argument(help="Its version; default: the newest.")] = None,
    alias: Annotated[str, typer.Option(help="The alias to point at it.")] = "champion",
    config: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Point an alias (default: champion) at a version, so models:/<name>@<alias> names it."""
    client, uri = _registry(config, overrides)
    try:
        if version is None:
            version = str(max(int(v.version) for v in client.search_model_versions(f"name='{name}'")))
        client.set_registered_model_alias(name, alias, version)
    except Exception as err:  # no such model or version; MLflow unreachable
        from common import logs

        first = logs.first_line(err)
        _fail(
            [f"{name} {version or ''}: {first}"],
            EXIT_BAD_INPUT,
            f"stvideo models promote: nothing changed ({uri}).",
        )
    typer.echo(f"models:/{name}@{alias} -> models:/{name}/{version}  ({uri})")


@app.command("tables")
def tables_command(
    config: ConfigOption = None,
    overrides: SetOption = None,
    metrics: Annotated[
        str | None,
        typer.Option(help="A generate stage's metrics.json (default: the config's generations)."),
    ] = None,
    video: Annotated[
        str | None,
        typer.Option(help="One source video's clips alone (its key, as the raw manifest names it)."),
    ] = None,
) -> None:
    """Print a generate run's per-step scores as markdown tables (MSE, SSIM, digit identity,
    moving-region detail), then those of each further protocol."""
    from dynamics.evaluate import markdown_tables
    from jobs.layout import Layout
    from pipeline import storage

    cfg = _load(config, overrides)
    path = metrics or storage.join(Layout.of(cfg).generations, "metrics.json")
    try:
        scores = storage.read_json(path)
    except (OSError, ValueError) as err:
        _fail([f"{path}: {err}"], EXIT_BAD_INPUT, "stvideo tables: no metrics to show; run generate first.")
    samples = int(scores.get("samples", cfg.generate.samples))
    for name, reached in scores.get("trained", {}).items():  # what the figures come from
        line = f"{name}: {reached.get('steps', '?')} of {reached.get('max_steps', '?')} training steps"
        if reached.get("stopped_by_time"):
            line += " (STOPPED by its time guard: these figures are from a shorter run than the config's)"
        typer.echo(line)
    if scores.get("trained"):
        typer.echo("")
    if video is not None:
        videos = scores.get("by_video", {})
        if video not in videos:
            _fail(
                [f"{path}: no video {video!r}; scored: {', '.join(sorted(videos)) or 'none'}"],
                EXIT_BAD_INPUT,
                "stvideo tables: no such video in this run.",
            )
        scores = videos[video]
        typer.echo(f"{video}: {scores['clips']} clips\n")
    typer.echo(markdown_tables(scores, samples), nl=False)
    for name, protocol in scores.get("protocols", {}).items():
        typer.echo(f"\n{name.replace('->', ' -> ')} frames:\n")
        typer.echo(markdown_tables(protocol, samples), nl=False)
    if "prompt_identity" in scores:
        prompt = scores["prompt_identity"]
        typer.echo(
            f"\nPrompt frames, digits named right: reconstructed {prompt['reconstructed']:.0%}, "
            f"original {prompt['original']:.0%}"
        )


def _terminated(signum, frame) -> None:
    # `ray job stop` and Kubernetes send SIGTERM: unwind, so open MLflow runs end as failed
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    app(prog_name="stvideo")


if __name__ == "__main__":
    sys.exit(main())
