"""Stage manifests: what each stage records next to its output when it completes.

A stage is complete for a config when its manifest (`<output>/_stage.json`) holds
the same fingerprint as now: a hash of the stage's config sections and of the
identities of its inputs. Identities are read from the storage contracts (the raw
manifest, the checkpoints' weights, the latent store's attributes), so a
retrained tokenizer makes encode outdated without anyone saying so, and nothing
is ever judged complete because a file merely exists.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any

from common.identity import listing_identity, value_identity
from jobs import model_registry
from jobs.config import PipelineConfig
from jobs.layout import MANIFEST, Layout, started_marker, started_with
from jobs.stages import ARTIFACTS, StageSpec
from pipeline import storage


def stage_config(cfg: PipelineConfig, spec: StageSpec) -> dict[str, Any]:
    """The stage's own config sections as dotted keys, less the keys that only change how it runs."""
    dumped = cfg.model_dump(mode="json")
    flat: dict[str, Any] = {}
    for section in spec.sections:
        flat.update(flatten(dumped[section], section))
    return {key: value for key, value in flat.items() if key not in spec.run_only_keys}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def input_identities(cfg: PipelineConfig, spec: StageSpec, layout: Layout) -> dict[str, str | None]:
    """Each input's identity now; None where an input is missing (the stage will say why)."""
    identities = {name: listing_identity(uri) for name, uri in spec.user_inputs(cfg).items()}
    for name in spec.reads:
        artifact = ARTIFACTS[name]
        location = artifact.location(layout)
        if model_registry.is_model_uri(location):  # the weights an MLflow model URI names now
            registry = model_registry.registry_uri(cfg, location)
            identities[name] = model_registry.identity(location, storage.scratch_root(cfg.scratch), registry)
        else:
            identities[name] = artifact.identity(location)
    return identities


@dataclass
class Completeness:
    """Where a stage stands for one config, with what was computed to decide it."""

    spec: StageSpec
    state: str  # "done", "outdated" or "missing"
    manifest: dict[str, Any] | None
    changed: list[str]  # what differs from the recorded run, when outdated
    inputs_missing: list[str]  # inputs that are not there now: the stage cannot run
    config: dict[str, Any]
    inputs: dict[str, str | None]

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def fingerprint(self) -> str:
        return value_identity({"config": self.config, "inputs": self.inputs})


def check(cfg: PipelineConfig, spec: StageSpec, layout: Layout | None = None) -> Completeness:
    """Is the stage complete for this config and these inputs?"""
    layout = layout or Layout.of(cfg)
    config, inputs = stage_config(cfg, spec), input_identities(cfg, spec, layout)
    absent = [name for name, identity in inputs.items() if identity is None]
    try:
        recorded = storage.read_json(layout.manifest(spec.output(layout)))
    except FileNotFoundError:  # never finished, or being cleared right now
        return Completeness(spec, "missing", None, [], absent, config, inputs)
    status = Completeness(spec, "outdated", recorded, [], absent, config, inputs)
    if not absent and recorded.get("fingerprint") == status.fingerprint:
        status.state = "done"
        return status
    was_config, was_inputs = recorded.get("config", {}), recorded.get("input_identities", {})
    status.changed = [
        key for key in sorted(set(config) | set(was_config)) if config.get(key) != was_config.get(key)
    ]
    status.changed += [
        f"input {name}"
        for name in sorted(set(inputs) | set(was_inputs))
        if inputs.get(name) != was_inputs.get(name)
    ]
    return status


def clear(uri: str) -> None:
    """Remove a folder. Locally it is first renamed away, so that it vanishes at once: other
    ranks waiting for it never see it half deleted."""
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        return
    if storage.is_local(uri):
        trash = f"{path.rstrip('/')}.removing-{uuid.uuid4().hex[:8]}"
        fs.mv(path, trash, recursive=True)
        path = trash
    fs.rm(path, recursive=True)


def mark_started(staging: str, fingerprint: str) -> None:
    storage.write_json(started_marker(staging), {"fingerprint": fingerprint})


def clear_staging(staging: str) -> None:
    clear(staging)
    storage.remove(started_marker(staging))


def recorded_fingerprint(output: str) -> str | None:
    try:
        return storage.read_json(storage.join(output, MANIFEST)).get("fingerprint")
    except (FileNotFoundError, ValueError):
        return None


def swap_in(staging: str, final: str) -> None:
    """Replace `final` with the complete output in `staging`; until now `final` stayed as it was.

    Locally the old output is renamed away first and removed last. On an object store the old
    one is removed, then the new one moved: a crash between the two leaves the complete staged
    output, with its manifest, and the next run finishes the swap."""
    storage.remove(started_marker(staging))
    fs, source = storage.filesystem(staging)
    _, target = storage.filesystem(final)
    trash = None
    if fs.exists(target):
        if storage.is_local(final):
            trash = f"{target.rstrip('/')}.removing-{uuid.uuid4().hex[:8]}"
            fs.mv(target, trash, recursive=True)
        else:
            fs.rm(target, recursive=True)
    if storage.is_local(final):
        fs.makedirs(target.rstrip("/").rsplit("/", 1)[0], exist_ok=True)
        fs.mv(source, target, recursive=True)  # a rename
    else:  # object by object: an object store has no folders to rename
        source = source.rstrip("/")
        for path in fs.find(source):
            fs.copy(path, target.rstrip("/") + path[len(source) :])
        fs.rm(source, recursive=True)
    if trash:
        fs.rm(trash, recursive=True)


def record(
    status: Completeness,
    layout: Layout,
    inputs: dict[str, str],
    outputs: dict[str, str],
    metrics: dict[str, float],
    provenance: dict[str, str | None],
) -> dict[str, Any]:
    """Write the stage's manifest once it has finished, with the identities `check` computed."""
    spec, out = status.spec, status.spec.output(layout)
    manifest = {
        "stage": spec.name,
        "fingerprint": status.fingerprint,
        "config": status.config,
        "inputs": inputs,
        "input_identities": status.inputs,
        "outputs": outputs,
        "output_identity": ARTIFACTS[spec.writes].identity(out),
        "metrics": metrics,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **provenance,
    }
    storage.write_json(layout.manifest(out), manifest)
    return manifest


def lineage_tags(spec: StageSpec, manifest: dict[str, Any]) -> dict[str, str]:
    """MLflow tags that let a reader follow raw shards -> ... -> generations by identity."""
    tags = {f"input.{name}": uri for name, uri in manifest["inputs"].items()}
    tags.update({f"output.{name}": uri for name, uri in manifest["outputs"].items()})
    tags.update(
        {f"input.{name}.identity": str(value) for name, value in manifest["input_identities"].items()}
    )
    tags[f"output.{spec.writes}.identity"] = str(manifest["output_identity"])
    tags["stvideo.fingerprint"] = manifest["fingerprint"]
    return tags


def made_by(cfg: PipelineConfig, layout: Layout, attrs, run_id: str | None) -> dict[str, str]:
    """What generate's report names as having made it: the MLflow run, the models (a registered
    version as its pinned `models:/name/N`) with their weights' identity (from `codes.zarr`'s
    `attrs`), the clips and the config's fingerprint."""
    fingerprint = started_with(layout.generations) or "unrecorded"
    gen = cfg.generate
    clips = f"videos {gen.videos}" if gen.videos else f"{gen.split} split of {layout.latents}"
    return {
        "MLflow run": run_id or "none (tracking off, or its server did not answer)",
        "dynamics": f"{layout.dynamics} (weights {attrs['dynamics_identity'][:12]})",
        "tokenizer": f"{layout.tokenizer} (weights {attrs['tokenizer_identity'][:12]})",
        "clips": clips,
        "config": f"{cfg.name}; generate's fingerprint {fingerprint[:12]} (its settings and inputs)",
    }
