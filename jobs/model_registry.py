"""Checkpoints in MLflow: each training stage logs its checkpoint folder to its run and
registers it as a version of a named model; encode, train-dynamics and generate read
`models:/<name>/<version>`, `models:/<name>@<alias>` and `runs:/<run id>/<path>`
wherever they take a checkpoint folder.

A model URI is pinned once (an alias to the version it names now, so every actor of a
stage reads the same one) and downloaded once per machine into the scratch cache.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from pathlib import Path

from common import logs
from common.environment import environment
from common.identity import file_identity
from jobs.config import MODEL_URI_SCHEMES
from jobs.tracking_store import tracking_uri
from pipeline import storage

# What a checkpoint is: the weights and what it takes to rebuild and judge them; not the
# resumable training state or the discriminator, which no later stage reads
CHECKPOINT_FILES = ("model.safetensors", "config.json", "metrics.json")
ARTIFACT_PATH = "checkpoint"  # under the training stage's run
# tags on a registered version: what it is and what it was made from
IDENTITY_TAG = "stvideo.identity"
KIND_TAG = "stvideo.kind"


class ModelURIError(ValueError):
    """A model URI that names nothing this registry has, or one MLflow cannot reach."""


def is_model_uri(uri: str | None) -> bool:
    return bool(uri) and uri.startswith(MODEL_URI_SCHEMES)


def _client(tracking_uri: str | None):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _part(uri: str) -> tuple[str, str | None]:
    """`<model URI>#<part>` names one checkpoint of a generator model (`generate.model`): its
    artifact `tokenizer` or `dynamics`. Returns (the model URI, the part or None)."""
    base, _, part = uri.partition("#")
    return base, part or None


def pin(uri: str, tracking_uri: str | None) -> str:
    """`models:/<name>@<alias>` (or `/latest`) -> `models:/<name>/<version>` it names now; any
    other URI as it is."""
    uri, part = _part(uri)
    if part:
        return f"{pin(uri, tracking_uri)}#{part}"
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/latest)", uri)
    if not match:
        return uri
    name, alias = match.groups()
    client = _client(tracking_uri)
    try:
        if alias:
            version = client.get_model_version_by_alias(name, alias).version
        else:
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise ModelURIError(f"{uri}: model {name!r} has no version")
            version = max(int(v.version) for v in versions)
    except ModelURIError:
        raise
    except Exception as err:
        first = logs.first_line(err)
        raise ModelURIError(f"{uri}: {first} (MLflow at {tracking_uri})") from None
    return f"models:/{name}/{version}"


def pinned(cfg, named: dict[str, tuple[str, str]]) -> tuple[dict[str, str], str | None]:
    """Checkpoint URIs, each under a name with the config key it came from (name -> (key, URI)),
    pinned (`pin`) so that every worker of a stage reads the same versions; and the MLflow they come
    from (None when all are folders). Raises `ModelURIError` naming the key."""
    registry = registry_uri(cfg, *(uri for _, uri in named.values()))
    found = {}
    for name, (key, uri) in named.items():
        try:
            found[name] = pin(uri, registry)
        except ModelURIError as err:
            raise ModelURIError(f"{key}: {err}") from None
    return found, registry


def checkpoint_folder(uri: str, scratch: Path, tracking_uri: str | None) -> Path:
    """A checkpoint as a local folder: a model URI downloaded into the scratch cache once per
    machine (a version's files never change), any other URI through `storage.local_copy`."""
    if not is_model_uri(uri):
        return storage.local_copy(uri, scratch)
    pinned, part = _part(pin(uri, tracking_uri))
    # version numbers are per registry: two stores' stvideo-generator/1 are different models
    store = hashlib.sha256((tracking_uri or "").encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", pinned.split(":/", 1)[1]).strip("_")
    target = scratch / "models" / store / name
    if part:  # one checkpoint of a generator model, which is fetched whole
        folder = _fetched(uri, pinned, target, "MLmodel", tracking_uri) / "artifacts" / part
        if not (folder / "model.safetensors").exists():
            raise ModelURIError(f"{uri}: the model has no {part} checkpoint; it is not a stvideo generator")
        return folder
    return _fetched(uri, pinned, target, "model.safetensors", tracking_uri)


def _fetched(uri: str, pinned: str, target: Path, marker: str, tracking_uri: str | None) -> Path:
    """The files of a pinned model URI in `target`, downloaded once (a version never changes)."""
    if (target / marker).exists():
        return target
    import mlflow

    partial = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    # a models:/ URI is resolved by the registry MLflow finds in the environment, whatever
    # tracking_uri says: name the store for both (else it opens ./mlflow.db and finds nothing)
    store = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri} if tracking_uri else {}
    try:
        with environment(store):
            fetched = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=pinned, dst_path=str(partial), tracking_uri=tracking_uri
                )
            )
    except Exception as err:
        shutil.rmtree(partial, ignore_errors=True)
        first = logs.first_line(err)
        raise ModelURIError(f"{uri}: could not download it ({first}; MLflow at {tracking_uri})") from None
    if not (fetched / marker).exists():
        shutil.rmtree(partial, ignore_errors=True)
        raise ModelURIError(f"{uri}: no {marker} there; it is not a stvideo checkpoint")
    # runs:/<id>/<path> lands in <dst>/<last part of path>: keep the folder with the files
    try:
        fetched.rename(target)
    except OSError:  # another process on this machine finished first: its copy is the same
        pass
    shutil.rmtree(partial, ignore_errors=True)
    return target


def identity(uri: str, scratch: Path, tracking_uri: str | None) -> str | None:
    """The identity of the weights a model URI names (as a folder's is), None where MLflow has
    no such model or does not answer."""
    try:
        return file_identity(checkpoint_folder(uri, scratch, tracking_uri) / "model.safetensors")
    except ModelURIError:
        return None


def registry_uri(cfg, *uris: str) -> str | None:
    """The MLflow that model URIs among `uris` are read from (the tracking store); None when
    none of them is one."""
    if not any(is_model_uri(uri) for uri in uris):
        return None
    return tracking_uri(cfg)


def register(client, run_id: str, name: str, tags: dict[str, str]) -> str:
    """A new version of `name` from the checkpoint logged to `run_id`; its `models:/` URI."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="stvideo checkpoints (safetensors + config.json)")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name, source=f"runs:/{run_id}/{ARTIFACT_PATH}", run_id=run_id, tags=tags
    )
    return f"models:/{name}/{version.version}"
