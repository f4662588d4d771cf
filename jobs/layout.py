"""Where everything lives under the root, decided once from the config.

Every stage reads and writes through a `Layout`; none joins paths by hand. A
location is a URI: a local path or anything fsspec speaks (`s3://bucket/prefix`),
handled alike. The one rule with a choice in it, "the checkpoint the config
names, else the root's", is written here and nowhere else. A checkpoint the config
names may also be an MLflow model URI (`models:/…`, `runs:/…`; see `jobs.model_registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from jobs.config import PipelineConfig
from pipeline import storage

MANIFEST = "_stage.json"  # what a stage records beside its output when it completes
STARTED_SUFFIX = ".started.json"  # beside a staging folder: the fingerprint its run started with
STAGING = ".staging"


@dataclass(frozen=True)
class Layout:
    root: str
    raw: str  # webdataset shards, their manifest, rejects and preview
    trained_tokenizer: str  # where train-tokenizer writes
    tokenizer: str  # the checkpoint later stages read: encode.tokenizer, else the trained one
    latents: str  # latents.zarr
    trained_dynamics: str  # where train-dynamics writes
    dynamics: str  # the checkpoint generate reads: generate.dynamics, else the trained one
    generations: str  # generations/<generate.name>
    untracked: str  # what MLflow could not take while it was unreachable, sent later
    ray_results: str  # Ray Train's own run folder (train-dynamics with `ray.train_workers`)

    @classmethod
    def of(cls, cfg: PipelineConfig) -> Layout:
        root = cfg.root.rstrip("/")

        def under(*parts: str) -> str:
            return storage.join(root, *parts)

        # a generator model holds both checkpoints: `<model URI>#<which>` (see jobs.model_registry)
        model = cfg.generate.model
        return cls(
            root=root,
            raw=under("raw"),
            trained_tokenizer=under("tokenizer"),
            tokenizer=f"{model}#tokenizer" if model else cfg.encode.tokenizer or under("tokenizer"),
            latents=under("latents.zarr"),
            trained_dynamics=under("dynamics"),
            dynamics=f"{model}#dynamics" if model else cfg.generate.dynamics or under("dynamics"),
            generations=under("generations", cfg.generate.name),
            untracked=under("_untracked"),
            ray_results=under("ray_results"),
        )

    @property
    def raw_manifest(self) -> str:
        return storage.join(self.raw, "manifest.json")

    @property
    def raw_rejects(self) -> str:
        return storage.join(self.raw, "rejects.jsonl")

    @property
    def raw_preview(self) -> str:
        return storage.join(self.raw, "preview.gif")

    def staging(self, output: str) -> str:
        """Where a stage writes `output` until it is complete: the same path under
        `<root>/.staging/`. No name a config can give starts with a dot, so it never collides."""
        return storage.join(self.root, STAGING, output.removeprefix(self.root).lstrip("/"))

    def staged(self, field: str) -> Layout:
        """This layout with one output location (a field name) moved to its staging location."""
        return replace(self, **{field: self.staging(getattr(self, field))})

    def manifest(self, output: str) -> str:
        """The stage manifest beside an output location."""
        return storage.join(output, MANIFEST)

    @staticmethod
    def local(uri: str) -> Path:
        """A local location as a resolved path (it may be written `file:///...`)."""
        return Path(storage.filesystem(uri)[1]).resolve()

    @property
    def is_local(self) -> bool:
        return storage.is_local(self.root)


def started_marker(staging: str) -> str:
    """Where an unfinished run records the fingerprint it started with: beside the staging
    folder, not in it (a stage may recreate its folder: a Zarr store opened with mode "w"
    empties it), so the record survives that."""
    return f"{staging.rstrip('/')}{STARTED_SUFFIX}"


def started_with(staging: str) -> str | None:
    """The fingerprint an unfinished run in `staging` started with; None when there is none."""
    try:
        return storage.read_json(started_marker(staging))["fingerprint"]
    except (FileNotFoundError, KeyError, ValueError):
        return None
