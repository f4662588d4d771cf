"""Where everything lives under the root, decided once from the config.

Every stage reads and writes through a `Layout`; none joins paths by hand. A
location is a URI: a local path or anything fsspec speaks (`s3://bucket/prefix`),
handled alike. The one rule with a choice in it, "the checkpoint the config
names, else the root's", is written here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs.config import PipelineConfig
from pipeline import storage

MANIFEST = "_stage.json"  # what a stage records beside its output when it completes


@dataclass(frozen=True)
class Layout:
    root: str
    raw: str  # webdataset shards, their manifest, rejects and preview
    raw_manifest: str
    raw_rejects: str
    raw_preview: str
    trained_tokenizer: str  # where train-tokenizer writes
    tokenizer: str  # the checkpoint later stages read: encode.tokenizer, else the trained one
    latents: str  # latents.zarr
    dynamics: str
    generations: str  # generations/<generate.name>
    tracking_store: str  # the default MLflow store of a local root (sqlite), artifacts beside it
    tracking_artifacts: str
    ray_results: str  # Ray Train's own run folder (train-dynamics with `ray.train_workers`)

    @classmethod
    def of(cls, cfg: PipelineConfig) -> Layout:
        root = cfg.root.rstrip("/")

        def under(*parts: str) -> str:
            return storage.join(root, *parts)

        return cls(
            root=root,
            raw=under("raw"),
            raw_manifest=under("raw", "manifest.json"),
            raw_rejects=under("raw", "rejects.jsonl"),
            raw_preview=under("raw", "preview.gif"),
            trained_tokenizer=under("tokenizer"),
            tokenizer=cfg.encode.tokenizer or under("tokenizer"),
            latents=under("latents.zarr"),
            dynamics=under("dynamics"),
            generations=under("generations", cfg.generate.name),
            tracking_store=under("mlflow.db"),
            tracking_artifacts=under("mlartifacts"),
            ray_results=under("ray_results"),
        )

    def raw_shard(self, name: str) -> str:
        return storage.join(self.raw, name)

    def manifest(self, output: str) -> str:
        """The stage manifest beside an output location."""
        return storage.join(output, MANIFEST)

    def submission_config(self, stamp: str) -> str:
        return storage.join(self.root, "_submissions", stamp, "config.yaml")

    @staticmethod
    def local(uri: str) -> Path:
        """A local location as a resolved path (it may be written `file:///...`)."""
        return Path(storage.filesystem(uri)[1]).resolve()

    @property
    def is_local(self) -> bool:
        return storage.is_local(self.root)
