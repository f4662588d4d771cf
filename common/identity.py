"""Identities: short hashes that let one stage name the exact input it used.

A file is identified by its bytes, a folder of inputs by its listing, and any
JSON-able value (settings, a store's attributes) by its canonical JSON. Every
identity in the project comes from here, so two places never disagree on one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs

LENGTH = 16  # hex digits kept: plenty to tell two checkpoints apart, short enough to read


def value_identity(value: Any) -> str:
    """A JSON-able value's identity (dict keys sorted, so their order does not matter)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:LENGTH]


def file_identity(uri: str | Path) -> str:
    """A file's identity: its SHA-256, read in blocks (weights can be large). Local or fsspec URI."""
    fs, path = url_to_fs(str(uri))
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:LENGTH]


def file_identity_or_none(uri: str) -> str | None:
    """As `file_identity`, None where there is no such file."""
    fs, path = url_to_fs(uri)
    return file_identity(uri) if fs.exists(path) else None


def listing_identity(uri: str) -> str | None:
    """Names, sizes and modification times of every file under a folder, glob or file; None if none."""
    fs, path = url_to_fs(uri)
    found = fs.glob(path, detail=True) if any(c in path for c in "*?[") else {}
    if not found and fs.exists(path):
        found = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    if not found:
        return None
    listing = sorted(
        [name, info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag"))]
        for name, info in found.items()
    )
    return value_identity(listing)


def store_identity(attrs: dict) -> str:
    """A latent store's identity: its attributes (tokenizer, grid, clip length…) less `complete`."""
    return value_identity({key: value for key, value in attrs.items() if key != "complete"})
