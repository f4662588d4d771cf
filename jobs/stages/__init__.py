"""The pipeline's stages, in order: one `StageSpec` each, the only description of a stage.

The CLI makes a command of each, the runner fingerprints and records it, `submit`
sends it to a cluster with its resources, and `status` reports it, all from the
entries below. A stage is a module with a `run_<stage>(cfg, layout) -> StageResult`;
adding one means that module and one entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from common.identity import file_identity_or_none, store_identity
from jobs.config import PipelineConfig, StageResources
from jobs.layout import Layout
from jobs.stages.base import StageInputError, StageResult
from pipeline import storage


@dataclass(frozen=True)
class Artifact:
    """What one stage writes and later ones read, and how to tell two versions of it apart."""

    name: str
    location: Callable[[Layout], str]  # where later stages read it
    identity: Callable[[str], str | None]  # None: not there


def _identity_of(file: str) -> Callable[[str], str | None]:
    return lambda uri: file_identity_or_none(storage.join(uri, file))


def _latents_identity(uri: str) -> str | None:
    attrs_uri = storage.join(uri, "zarr.json")
    if not storage.exists(attrs_uri):
        return None
    return store_identity(storage.read_json(attrs_uri).get("attributes", {}))


ARTIFACTS = {
    artifact.name: artifact
    for artifact in [
        Artifact("raw", lambda layout: layout.raw, _identity_of("manifest.json")),
        Artifact("tokenizer", lambda layout: layout.tokenizer, _identity_of("model.safetensors")),
        Artifact("latents", lambda layout: layout.latents, _latents_identity),
        Artifact("dynamics", lambda layout: layout.dynamics, _identity_of("model.safetensors")),
        Artifact("generations", lambda layout: layout.generations, _identity_of("metrics.json")),
    ]
}


def _no_user_inputs(cfg: PipelineConfig) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class StageSpec:
    name: str
    help: str
    entry: str  # "module:function", a `run(cfg, layout) -> StageResult`; imported on use (fast `--help`)
    sections: tuple[str, ...]  # config sections its output depends on (and its MLflow params)
    reads: tuple[str, ...]  # artifacts of earlier stages
    writes: str  # the artifact it produces
    output_field: str  # the `Layout` field it writes to (moved to staging while it runs)
    # keys of its sections that change how it runs (scale, logging cadence), not what it writes:
    # changing them must not make a finished stage outdated
    run_only_keys: tuple[str, ...] = ()
    # keys that only say where an input is read from (its identity is checked instead): a later
    # stage does not take a change of them for other settings
    location_keys: tuple[str, ...] = ()
    # folders of the user's own videos it reads, identified by their listing
    user_inputs: Callable[[PipelineConfig], dict[str, str]] = _no_user_inputs
    # None: a derived output, redone whenever it is outdated. Raw shards are the user's data, so
    # replacing them with another config's is the user's call: this key must say so
    overwrite_key: str | None = None
    # what its job's driver holds on a cluster unless `submit.resources.<name>` says otherwise
    resources: StageResources = field(default_factory=StageResources)

    def output(self, layout: Layout) -> str:
        return getattr(layout, self.output_field)

    def run(self, cfg: PipelineConfig, layout: Layout) -> StageResult:
        module, function = self.entry.split(":")
        return getattr(importlib.import_module(module), function)(cfg, layout)

    def resources_for(self, cfg: PipelineConfig) -> StageResources:
        return cfg.submit.resources.get(self.name, self.resources)


def _training_cadence(section: str) -> tuple[str, ...]:
    return tuple(
        f"{section}.{key}" for key in ("log_every", "eval_every", "checkpoint_every", "num_workers", "device")
    )


def _actor_scale(section: str) -> tuple[str, ...]:
    return tuple(f"{section}.{key}" for key in ("batch_size", "num_actors", "num_gpus", "actor_resources"))


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in [
        StageSpec(
            "ingest",
            "Videos (a folder or Moving MNIST) -> raw webdataset shards, in Ray tasks.",
            "jobs.stages.ingest:run_ingest",
            sections=("data", "ingest"),
            reads=(),
            writes="raw",
            output_field="raw",
            run_only_keys=("ingest.overwrite", "data.decoder"),
            user_inputs=lambda cfg: {"videos": cfg.data.path} if cfg.data.source == "folder" else {},
            overwrite_key="ingest.overwrite",
        ),
        StageSpec(
            "train-tokenizer",
            "Train the per-frame VQGAN on decoded frames.",
            "jobs.stages.train_tokenizer:run_train_tokenizer",
            sections=("data", "tokenizer"),
            reads=("raw",),
            writes="tokenizer",
            # under the root, whatever checkpoint `encode.tokenizer` makes later stages read
            output_field="trained_tokenizer",
            run_only_keys=(*_training_cadence("tokenizer"), "data.decoder"),
        ),
        StageSpec(
            "encode",
            "Encode every clip into codebook indices in latents.zarr (Ray Data).",
            "jobs.stages.encode:run_encode",
            sections=("data", "encode"),
            reads=("raw", "tokenizer"),
            writes="latents",
            output_field="latents",
            run_only_keys=(*_actor_scale("encode"), "encode.threads", "data.decoder"),
            location_keys=("encode.tokenizer",),
        ),
        StageSpec(
            "train-dynamics",
            "Train the ST-transformer on streamed latents.",
            "jobs.stages.train_dynamics:run_train_dynamics",
            sections=("dynamics",),
            reads=("latents", "tokenizer"),
            writes="dynamics",
            output_field="trained_dynamics",
            run_only_keys=_training_cadence("dynamics"),
        ),
        StageSpec(
            "generate",
            "Batch-generate continuations, previews and metrics (Ray Data).",
            "jobs.stages.generate:run_generate",
            sections=("generate",),
            reads=("latents", "dynamics", "tokenizer"),
            writes="generations",
            output_field="generations",
            run_only_keys=_actor_scale("generate"),
            location_keys=("generate.dynamics", "generate.model", "generate.videos"),
            user_inputs=lambda cfg: {"videos": cfg.generate.videos} if cfg.generate.videos else {},
        ),
    ]
}

__all__ = ["ARTIFACTS", "STAGES", "Artifact", "StageInputError", "StageResult", "StageSpec"]
