"""URIs for every store: a local path or anything fsspec speaks (`s3://bucket/prefix`)."""

from __future__ import annotations

import json
import uuid
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
    with fs.open(temporary, "wb") as handle:
        handle.write(data)
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
