"""Stage manifests: what each stage records next to its outputs when it completes.

A stage is complete for a config when its manifest (`<output>/_stage.json`) holds
the same fingerprint as now: a hash of the stage's config sections and of the
identities of its inputs. Identities are read from the storage contracts (the raw
manifest, the checkpoints' weights, the latent store's attributes), so a
retrained tokenizer makes encode outdated without anyone saying so, and nothing
is ever judged complete because a file merely exists.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobs.config import PipelineConfig
from pipeline import storage

MANIFEST = "_stage.json"

# The config sections each stage's outputs depend on (also its MLflow params).
STAGE_SECTIONS = {
    "ingest": ("data", "ingest"),
    "train-tokenizer": ("data", "tokenizer"),
    "encode": ("data", "encode"),
    "train-dynamics": ("dynamics",),
    "generate": ("generate",),
}
# Outputs computed from earlier outputs: redone from scratch when outdated. Raw
# shards are the user's data, so replacing them is the user's call (ingest.overwrite).
DERIVED = {"train-tokenizer", "encode", "train-dynamics", "generate"}
# Keys that change how a stage runs (scale, logging, checkpoint cadence), not what it
# writes: changing them must not make a finished stage outdated, or redo it.
NOT_OUTPUT_SHAPING = re.compile(
    r"^(ingest\.overwrite|encode\.overwrite|encode\.batch_size|encode\.num_actors|encode\.num_gpus"
    r"|generate\.batch_size|generate\.num_actors|generate\.num_gpus"
    r"|(tokenizer|dynamics)\.(log_every|eval_every|checkpoint_every|num_workers))$"
)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _bytes_identity(uri: str) -> str | None:
    """The first 16 hex digits of the file's SHA-256, read in blocks (weights can be large)."""
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        return None
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _listing_identity(uri: str) -> str | None:
    """Names, sizes and modification times of every file under a folder, glob or file."""
    fs, path = storage.filesystem(uri)
    found = fs.glob(path, detail=True) if any(c in path for c in "*?[") else {}
    if not found and fs.exists(path):
        found = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    if not found:
        return None
    listing = sorted(
        [name, info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag"))]
        for name, info in found.items()
    )
    return _digest(listing)


def _store_identity(uri: str) -> str | None:
    """The latent store's attributes (tokenizer, grid, clip length…), less its `complete` flag."""
    attrs_uri = storage.join(uri, "zarr.json")
    if not storage.exists(attrs_uri):
        return None
    attrs = dict(storage.read_json(attrs_uri).get("attributes", {}))
    attrs.pop("complete", None)
    return _digest(attrs)


@dataclass(frozen=True)
class Artifact:
    """One thing a stage writes and a later one reads, and how to tell two of them apart."""

    name: str
    uri: Callable[[PipelineConfig], str]
    identity: Callable[[str], str | None]


def _tokenizer_uri(cfg: PipelineConfig) -> str:
    return cfg.encode.tokenizer or storage.join(cfg.root, "tokenizer")


def _hash_of(file: str) -> Callable[[str], str | None]:
    return lambda uri: _bytes_identity(storage.join(uri, file))


def _under_root(*parts: str) -> Callable[[PipelineConfig], str]:
    return lambda cfg: storage.join(cfg.root, *parts)


ARTIFACTS = {
    artifact.name: artifact
    for artifact in [
        Artifact("raw", _under_root("raw"), _hash_of("manifest.json")),
        Artifact("tokenizer", _tokenizer_uri, _hash_of("model.safetensors")),
        Artifact("latents", _under_root("latents.zarr"), _store_identity),
        Artifact("dynamics", _under_root("dynamics"), _hash_of("model.safetensors")),
        Artifact(
            "generations",
            lambda cfg: storage.join(cfg.root, "generations", cfg.generate.name),
            _hash_of("metrics.json"),
        ),
    ]
}

# stage -> (artifacts it reads, the artifact it writes)
STAGE_IO = {
    "ingest": ((), "raw"),
    "train-tokenizer": (("raw",), "tokenizer"),
    "encode": (("raw", "tokenizer"), "latents"),
    "train-dynamics": (("latents", "tokenizer"), "dynamics"),
    "generate": (("latents", "dynamics", "tokenizer"), "generations"),
}


def output_uri(cfg: PipelineConfig, stage: str) -> str:
    name = STAGE_IO[stage][1]
    if name == "tokenizer":  # train-tokenizer always writes under root, whatever encode reads
        return storage.join(cfg.root, "tokenizer")
    return ARTIFACTS[name].uri(cfg)


def manifest_uri(cfg: PipelineConfig, stage: str) -> str:
    return storage.join(output_uri(cfg, stage), MANIFEST)


def stage_config(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    """The stage's own config sections, flattened to dotted keys."""
    dumped = cfg.model_dump(mode="json")
    flat: dict[str, Any] = {}
    for section in STAGE_SECTIONS[stage]:
        flat.update(flatten(dumped[section], section))
    return {key: value for key, value in flat.items() if not NOT_OUTPUT_SHAPING.match(key)}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def input_identities(cfg: PipelineConfig, stage: str) -> dict[str, str | None]:
    """Each input's identity now; None where an input is missing (the stage will say why)."""
    identities: dict[str, str | None] = {}
    if stage == "ingest" and cfg.data.source == "folder" and cfg.data.path:
        identities["videos"] = _listing_identity(cfg.data.path)
    if stage == "generate" and cfg.generate.videos:
        identities["videos"] = _listing_identity(cfg.generate.videos)
    for name in STAGE_IO[stage][0]:
        artifact = ARTIFACTS[name]
        identities[name] = artifact.identity(artifact.uri(cfg))
    return identities


def fingerprint(config: dict[str, Any], inputs: dict[str, str | None]) -> str:
    return _digest({"config": config, "inputs": inputs})


@dataclass
class Completeness:
    stage: str
    state: str  # "done", "outdated" or "missing"
    manifest: dict[str, Any] | None
    changed: list[str]  # what differs from the recorded run, when outdated
    inputs_missing: list[str]  # inputs that are not there now: the stage cannot run

    @property
    def done(self) -> bool:
        return self.state == "done"


def check(cfg: PipelineConfig, stage: str) -> Completeness:
    """Is `stage` complete for this config and these inputs?"""
    config, inputs = stage_config(cfg, stage), input_identities(cfg, stage)
    absent = [name for name, identity in inputs.items() if identity is None]
    uri = manifest_uri(cfg, stage)
    try:
        recorded = storage.read_json(uri)
    except FileNotFoundError:  # never finished, or being cleared right now
        return Completeness(stage, "missing", None, [], absent)
    if not absent and recorded.get("fingerprint") == fingerprint(config, inputs):
        return Completeness(stage, "done", recorded, [], absent)
    changed = [
        key
        for key in sorted(set(config) | set(recorded.get("config", {})))
        if config.get(key) != recorded.get("config", {}).get(key)
    ]
    changed += [
        f"input {name}"
        for name in sorted(set(inputs) | set(recorded.get("input_identities", {})))
        if inputs.get(name) != recorded.get("input_identities", {}).get(name)
    ]
    return Completeness(stage, "outdated", recorded, changed, absent)


def clear(cfg: PipelineConfig, stage: str) -> None:
    """Remove what a stage wrote, so that it runs from scratch rather than resuming.

    Locally the folder is first renamed away, so that it vanishes at once: other
    ranks waiting for it to go never see it half deleted.
    """
    uri = output_uri(cfg, stage)
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        return
    if storage.is_local(uri):
        trash = f"{path.rstrip('/')}.removing-{uuid.uuid4().hex[:8]}"
        fs.mv(path, trash, recursive=True)
        path = trash
    fs.rm(path, recursive=True)


def record(
    cfg: PipelineConfig,
    stage: str,
    inputs: dict[str, str],
    outputs: dict[str, str],
    metrics: dict[str, float],
    provenance: dict[str, str | None],
) -> dict[str, Any]:
    """Write the stage's manifest once it has finished; returns what was written."""
    config, identities = stage_config(cfg, stage), input_identities(cfg, stage)
    output_name = STAGE_IO[stage][1]
    out = output_uri(cfg, stage)
    manifest = {
        "stage": stage,
        "fingerprint": fingerprint(config, identities),
        "config": config,
        "inputs": inputs,
        "input_identities": identities,
        "outputs": outputs,
        "output_identity": ARTIFACTS[output_name].identity(out),
        "metrics": metrics,
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **provenance,
    }
    storage.write_json(manifest_uri(cfg, stage), manifest)
    return manifest


def lineage_tags(manifest: dict[str, Any]) -> dict[str, str]:
    """MLflow tags that let a reader follow raw shards -> ... -> generations by identity."""
    tags = {f"input.{name}": uri for name, uri in manifest["inputs"].items()}
    tags.update({f"output.{name}": uri for name, uri in manifest["outputs"].items()})
    tags.update(
        {f"input.{name}.identity": str(value) for name, value in manifest["input_identities"].items()}
    )
    tags[f"output.{STAGE_IO[manifest['stage']][1]}.identity"] = str(manifest["output_identity"])
    tags["stvideo.fingerprint"] = manifest["fingerprint"]
    return tags
