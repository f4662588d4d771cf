"""Identities of checkpoint files: what lets one stage name the exact input it used."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_identity(path: str | Path) -> str:
    """First 16 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
