"""URIs for every store: a local path or anything fsspec speaks (`s3://bucket/prefix`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *(part.strip("/") for part in parts)])


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(uri)


def is_local(uri: str) -> bool:
    fs, _ = url_to_fs(uri)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def exists(uri: str) -> bool:
    fs, path = url_to_fs(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = url_to_fs(uri)
    fs.makedirs(path, exist_ok=True)


def read_bytes(uri: str) -> bytes:
    fs, path = url_to_fs(uri)
    return fs.cat_file(path)


@contextmanager
def naming(uri: str) -> Iterator[None]:
    """Name `uri` in an OSError raised without a file name: a write to a full disk says only
    `[Errno 28] No space left on device`, and zarr's writers do not add which store."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, uri) from err
        raise


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write so that readers see either nothing or the whole file.

    A local rename is atomic; object stores only ever show whole objects, and
    the temporary name keeps a killed writer from leaving a half file under the
    real name.
    """
    fs, path = url_to_fs(uri)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with naming(uri), fs.open(temporary, "wb") as handle:
            handle.write(data)
    except OSError:
        if fs.exists(temporary):  # half a file a full disk left: nothing may read it
            fs.rm(temporary)
        raise
    fs.mv(temporary, path)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, value: Any) -> None:
    write_bytes_atomic(uri, json.dumps(value, indent=2, sort_keys=True).encode())


def put_file_atomic(local_path: str, uri: str) -> None:
    """Move a finished local file to `uri`, appearing there whole or not at all."""
    fs, path = url_to_fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    fs.put_file(local_path, temporary)
    fs.mv(temporary, path)


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def list_names(uri: str) -> list[str]:
    """Names directly under a folder URI; empty when it does not exist."""
    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        return []
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))


def scratch_root(configured: str | None = None) -> Path:
    """The local cache of a remote root's files: the config's `scratch`, else $STVIDEO_SCRATCH,
    else ~/.cache/stvideo. Whatever lies there can be deleted at any time."""
    chosen = configured or os.environ.get("STVIDEO_SCRATCH") or "~/.cache/stvideo"
    return Path(chosen).expanduser().resolve()


def download_folder(uri: str, local: Path) -> None:
    """Every file under the folder `uri` into `local`, which is replaced."""
    fs, path = url_to_fs(uri)
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True, exist_ok=True)
    path = path.rstrip("/")
    for remote in fs.find(path):
        target = local / remote[len(path) :].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(target))


def upload_folder(local: Path, uri: str, skip: Callable[[Path], bool] = lambda relative: False) -> None:
    """Every file under `local` to the same place under `uri`, each appearing whole."""
    for file in sorted(local.rglob("*")):
        relative = file.relative_to(local)
        if file.is_file() and not skip(relative):
            put_file_atomic(str(file), join(uri, relative.as_posix()))


def local_copy(uri: str, scratch: Path, marker: str = "model.safetensors") -> Path:
    """A folder as a local path: itself when it is local, else a copy in the scratch cache, keyed
    by the URI and the checksum of its `marker` file so a folder rewritten in place is fetched anew.
    Processes on one machine share the copy: each downloads into its own folder and renames it
    into place; whoever comes second uses the first one's."""
    if is_local(uri):
        return Path(url_to_fs(uri)[1])
    fs, path = url_to_fs(uri)
    try:
        checksum = str(fs.checksum(f"{path.rstrip('/')}/{marker}"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no {marker} there") from None
    key = hashlib.sha256(f"{uri}\n{checksum}".encode()).hexdigest()[:16]
    target = scratch / "fetched" / f"{path.rstrip('/').rsplit('/', 1)[-1]}-{key}"
    if target.is_dir():
        return target
    partial = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:8]}")
    download_folder(uri, partial)
    try:
        partial.rename(target)
    except OSError:  # another process finished first: its copy is the same
        shutil.rmtree(partial, ignore_errors=True)
    return target


class MirroredFolder:
    """A training run's folder on a remote root, worked on in a local scratch copy.

    The local copy is what the training loop writes; `persist` sends each checkpoint: the model
    files one by one (each appears whole), the resumable state into a folder of its own, named
    by its step, then `train_state.json` pointing at it (the one write that switches resumes over),
    then older states are removed. A run killed at any point resumes from a whole state."""

    POINTER = "train_state.json"

    def __init__(self, uri: str, local: Path):
        self.uri, self.local = uri, local

    def restore(self) -> None:
        """The local copy's resumable state replaced by the remote one (none: started afresh)."""
        for stale in self.local.glob("train_state*"):
            shutil.rmtree(stale, ignore_errors=True)
        pointer = join(self.uri, self.POINTER)
        if exists(pointer):
            download_folder(join(self.uri, read_json(pointer)["folder"]), self.local / "train_state")

    def persist(self, step: int, summary: dict, main: bool) -> None:
        if not main:
            return
        upload_folder(self.local, self.uri, skip=lambda relative: relative.parts[0].startswith("train_state"))
        folder = f"train_state-{step:09d}"
        upload_folder(self.local / "train_state", join(self.uri, folder))
        write_json(join(self.uri, self.POINTER), {"folder": folder, "step": step})
        for name in list_names(self.uri):
            if name.startswith("train_state-") and name != folder:
                remove(join(self.uri, name), recursive=True)


def run_folder(uri: str, scratch: Path):
    """Where a training run at `uri` writes: the folder itself on a local root, else a
    scratch copy mirrored to it (`MirroredFolder`)."""
    from common.training import LocalFolder  # torch and Accelerate: only for a training stage

    if is_local(uri):
        return LocalFolder(Path(url_to_fs(uri)[1]))
    local = scratch / "runs" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    return MirroredFolder(uri, local)
