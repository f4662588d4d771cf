"""A failed stage in one line: what went wrong, the file it concerns, what to do.

The cause is looked for along the whole chain of exceptions, a Ray task's included (its
error carries the one raised in the worker). The traceback goes to a file the line names, and
to the terminal with `stvideo -v`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import traceback
from collections.abc import Iterator

from common.logs import first_line
from pipeline import storage

# a write that fails with less than this left is taken for a full disk, whatever it raised
# (torch's checkpoint writer says only "iostream error … unexpected pos")
NEARLY_FULL_BYTES = 64 * 2**20
OUR_PACKAGES = ("common", "pipeline", "tokenizer", "dynamics", "jobs")
OUR_ERROR_LINE = re.compile(rf"^(?:{'|'.join(OUR_PACKAGES)})\.[\w.]*(?:Error|Video): (.+)$", re.MULTILINE)
NO_SPACE_WORDS = ("No space left on device", "os error 28")
# a worker's OSError crosses to the driver as the text of its traceback, not as an object
NAMED_NO_SPACE = re.compile(r"\[Errno 28\] No space left on device: '([^']+)'")
_AND_AGAIN = "; free some space there and run again: the stage resumes from what it finished"


def causes(err: BaseException) -> Iterator[BaseException]:
    """`err`, then what caused it, as far as the chain goes: `raise … from`, the exception
    being handled, and a Ray task's own (`RayTaskError.cause`)."""
    seen: set[int] = set()
    pending = [err]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]


def explain(err: BaseException, places: list[str]) -> str:
    """One line for `err`; `places` are the folders the stage writes (root, scratch), checked
    for free space when nothing in the chain says what happened."""
    full = next(filter(None, map(_nearly_full, places)), None)
    chain = list(causes(err))
    # an OSError names the file; safetensors and torch say it in words of their own
    no_space = [cause for cause in chain if getattr(cause, "errno", None) == errno.ENOSPC]
    if no_space or any(words in str(cause) for cause in chain for words in NO_SPACE_WORDS):
        named = (cause.filename for cause in no_space if getattr(cause, "filename", None))
        said = (found.group(1) for cause in chain for found in [NAMED_NO_SPACE.search(str(cause))] if found)
        where = next(named, None) or next(said, "")
        if where:
            return f"no space left on device writing {where} ({_free_in(where)}){_AND_AGAIN}"
        return f"no space left on device: {full or 'a disk is full'}{_AND_AGAIN}"
    for cause in chain:
        where = getattr(cause, "filename", None) or ""
        code = getattr(cause, "errno", None)
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            why = os.strerror(code)
            return (
                f"cannot write {where or 'a file'} ({why}): give this user write access or use another root"
            )
        if code == errno.ENOTDIR:
            return (
                f"{where or 'a path'} is a file where a folder must be: point root (or scratch) at a folder"
            )
    if full:  # torch's checkpoint writer says only "iostream error … unexpected pos"
        return f"no space left on device, it seems: {full} ({first_line(err)}){_AND_AGAIN}"
    # our own errors are written to be read (the file, the key, what to do); a wrapper such as a
    # Ray task's error starts with where it ran
    ours = [cause for cause in chain if type(cause).__module__.split(".")[0] in OUR_PACKAGES]
    if ours:
        return first_line(ours[0], 400)
    # a worker's exception can reach here only as the text of its traceback
    for cause in chain:
        found = OUR_ERROR_LINE.search(str(cause))
        if found:
            return found.group(1)[:400]
    return f"{type(chain[-1]).__name__}: {first_line(chain[-1])}"


def _free_in(path: str) -> str:
    folder = _existing_folder(path)
    return (
        f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free in {folder}" if folder else "no such folder"
    )


def _nearly_full(place: str) -> str | None:
    if not place or not storage.is_local(place):
        return None
    folder = _existing_folder(str(storage.filesystem(place)[1]))
    if folder is None:
        return None
    free = shutil.disk_usage(folder).free
    return f"{folder} has only {free / 2**20:.1f} MiB free" if free < NEARLY_FULL_BYTES else None


def _existing_folder(path: str) -> str | None:
    folder = os.path.abspath(path)
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    return folder


def save_traceback(err: BaseException, stage: str) -> str | None:
    """The full traceback in a file of its own (the line names it); its path, or None where
    even that cannot be written (the disk that filled may be this one)."""
    try:
        handle, path = tempfile.mkstemp(prefix=f"stvideo-{stage}-", suffix=".txt")
        with os.fdopen(handle, "w") as out:
            out.write("".join(traceback.format_exception(err)))
    except OSError:
        return None
    return path
