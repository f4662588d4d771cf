"""One writer per root: a lease in `<root>/_lock.json` that every run, stage and submission
holds while it writes there.

The record names its holder (host, pid, command, since when) and carries a heartbeat that a
thread renews every quarter lease. Every change of the record is a compare-and-swap, so two
processes can never both believe they hold it:

- on an object store (s3://), a conditional PUT: `If-None-Match: *` creates the record,
  `If-Match: <etag>` replaces exactly the version that was read, and S3 refuses the loser of a
  race with 412 (or 409);
- on a local or mounted disk, the same read-compare-write done under `flock` on
  `<root>/_lock.json.mutex`, held for the few milliseconds the swap takes.

A holder is dead, and its lock is taken over with a line saying so, when its heartbeat is
older than its lease, or at once when it ran on this very machine (same host, boot and pid
namespace) and its process is gone. A holder that finds the record no longer names it (its
heartbeats stalled past the lease and another run took over) says so, and the runner refuses
to swap in what it made.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline import storage

LOCK_NAME = "_lock.json"
LEASE_ENV = "STVIDEO_LOCK_LEASE_SECONDS"  # how long a holder may go without a heartbeat
HOLDER_ENV = "STVIDEO_LOCK_HOLDER"  # the lock a submission holds, passed to its stage jobs
DEFAULT_LEASE_SECONDS = 60.0


class RootLocked(RuntimeError):
    """Another live run holds the root; the message is one line that says who and what to do."""


class RootUnusable(RuntimeError):
    """The root cannot hold a run at all (a file, not writable); the message is one line."""


class Conflict(Exception):
    """The record changed between our read and our write."""


@dataclass
class Holder:
    id: str
    host: str
    machine: str  # host, boot and pid namespace: where `pid` means this very process
    pid: int
    pid_started: float  # the process's start time, so that a reused pid is not taken for it
    command: str
    since: str
    heartbeat: float
    lease_seconds: float
    stage: str = ""  # the stage it is running now
    released: bool = False
    renewed_by: str = ""  # machine#pid of the last heartbeat: a submission's stage job renews it too

    @classmethod
    def of(cls, value: dict, where: str) -> Holder:
        """The record read back; one that is not a lock record is refused in a line naming it."""
        try:
            known = {field: value[field] for field in cls.__dataclass_fields__ if field in value}
            return cls(**known)
        except TypeError as err:
            raise _not_a_record(where, str(err)) from None

    def describe(self, now: float | None = None) -> str:
        ago = max(0.0, (now or time.time()) - self.heartbeat)
        doing = f", running {self.stage}" if self.stage else ""
        return (
            f"`{self.command}` (pid {self.pid} on {self.host}, since {self.since}{doing}, "
            f"heartbeat {ago:.0f} s ago)"
        )

    def dead_because(self, now: float | None = None) -> str | None:
        """Why this holder is gone, or None while it may be alive."""
        if self.released:
            return "it released the lock"
        own_beat = self.renewed_by in ("", f"{self.machine}#{self.pid}")
        # a stage job that shares the lock outlives a submission killed on its machine: then only
        # the heartbeat it keeps renewing says whether the lock is in use
        if own_beat and self.machine == machine_identity() and not _process_alive(self.pid, self.pid_started):
            return f"its process (pid {self.pid} on {self.host}) is gone"
        silent = (now or time.time()) - self.heartbeat
        if silent > self.lease_seconds:
            return f"no heartbeat for {silent:.0f} s (lease {self.lease_seconds:.0f} s)"
        return None


def machine_identity() -> str:
    """Host name, boot id and pid namespace: two containers on one kernel differ in the last."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "/".join(parts)


def _process_started(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def _process_alive(pid: int, started: float) -> bool:
    import psutil

    try:
        return abs(_process_started(pid) - started) < 1.0
    except psutil.Error:
        return False


def lease_seconds() -> float:
    value = os.environ.get(LEASE_ENV)
    try:
        return float(value) if value else DEFAULT_LEASE_SECONDS
    except ValueError:
        raise RootLocked(f"{LEASE_ENV}={value!r}: expected a number of seconds") from None


# ---- compare-and-swap on one small record, locally or on an object store ----


class LocalRecord:
    """The record on a local (or mounted) disk; its version is a hash of its bytes."""

    def __init__(self, uri: str):
        self.path = Path(storage.filesystem(uri)[1])
        self.mutex = self.path.with_name(self.path.name + ".mutex")

    def check_writable(self) -> None:
        folder = self.path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise RootUnusable(f"root: {folder} is a file, not a folder; point root at a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise RootUnusable(
                f"root: {folder} is not writable by this user; use another root or grant access"
            )

    def read(self) -> tuple[dict | None, str | None]:
        try:
            data = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # no record; a root that is a file has none
            return None, None
        return _parsed(data, str(self.path)), _digest(data)

    def swap(self, value: dict, expected: str | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(value, indent=2).encode()
        with open(self.mutex, "a") as mutex:
            fcntl.flock(mutex, fcntl.LOCK_EX)
            try:
                if self.read()[1] != expected:
                    raise Conflict
                temporary = self.path.with_name(f"{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
                try:
                    temporary.write_bytes(data)
                    os.replace(temporary, self.path)
                except OSError:  # a full disk: leave no half record behind
                    temporary.unlink(missing_ok=True)
                    raise
            finally:
                fcntl.flock(mutex, fcntl.LOCK_UN)


class ObjectRecord:
    """The record on an object store; its version is the object's ETag."""

    def __init__(self, uri: str):
        self.fs, self.path = storage.filesystem(uri)

    def read(self) -> tuple[dict | None, str | None]:
        for _ in range(20):
            self.fs.invalidate_cache(self.path)  # another process may have replaced it since we looked
            try:
                # an open S3 file reads with If-Match on the ETag it found: the bytes are that version's
                with self.fs.open(self.path, "rb") as handle:
                    data, etag = handle.read(), handle.details.get("ETag")
            except FileNotFoundError:
                return None, None
            except OSError as err:
                # replaced between finding its ETag and reading its bytes (s3fs's FileExpired):
                # a contender swapped it in that moment, so the next look sees the new version
                if err.errno == errno.EBUSY:
                    continue
                raise
            return _parsed(data, self.path), etag
        raise RootLocked(f"{self.path}: the lock record kept changing as it was read; try again")

    def swap(self, value: dict, expected: str | None) -> None:
        data = json.dumps(value, indent=2).encode()
        condition = {"IfMatch": expected} if expected else {"IfNoneMatch": "*"}
        try:
            self.fs.pipe_file(self.path, data, **condition)
        except (FileExistsError, OSError) as err:
            if _refused_by_condition(err):
                raise Conflict from None
            raise
        self.fs.invalidate_cache(self.path)


def _refused_by_condition(err: BaseException) -> bool:
    if isinstance(err, FileExistsError):
        return True
    cause = err.__cause__
    code = str(getattr(cause, "response", {}).get("Error", {}).get("Code", "")) if cause else ""
    text = f"{code} {err}"
    return any(word in text for word in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"))


def _not_a_record(where: str, why: str) -> RootLocked:
    return RootLocked(f"{where} is not a lock record ({why}); remove it if no run is using the root")


def _parsed(data: bytes, where: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError as err:
        raise _not_a_record(where, str(err)) from None
    if not isinstance(value, dict):
        raise _not_a_record(where, "not a JSON object")
    return value


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _where(record: LocalRecord | ObjectRecord) -> str:
    return str(record.path)


def record_at(root: str) -> LocalRecord | ObjectRecord:
    uri = storage.join(root, LOCK_NAME)
    return LocalRecord(uri) if storage.is_local(root) else ObjectRecord(uri)


# ---- the lock ----


def current_holder(root: str) -> Holder | None:
    """Who holds `root` now (None: nobody, or it was released)."""
    record = record_at(root)
    value, _ = record.read()
    if value is None:
        return None
    holder = Holder.of(value, _where(record))
    return None if holder.released else holder


class RootLock:
    """Held for a block: `with RootLock(root, command, echo): ...`. Inside a stage job of a
    submission that holds the root (HOLDER_ENV names its lock), the job shares that lock: it
    renews the heartbeat but leaves the release to the submission."""

    def __init__(self, root: str, command: str, echo=print):
        self.root, self.command, self.echo = root, command, echo
        self.record = record_at(root)
        self.holder: Holder | None = None
        self.borrowed = False
        self.lost: str | None = None
        self.stage = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RootLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        lease, shared = lease_seconds(), os.environ.get(HOLDER_ENV)
        if isinstance(self.record, LocalRecord):
            self.record.check_writable()
        for _ in range(20):  # each turn reads afresh: another process changed the record
            value, version = self.record.read()
            current = Holder.of(value, _where(self.record)) if value else None
            now = time.time()
            if current and shared and current.id == shared and not current.released:
                self.holder, self.borrowed = current, True
                break
            dead = current.dead_because(now) if current else None
            if current and dead is None:
                raise RootLocked(
                    f"root {self.root} is in use by {current.describe(now)}; wait for it to finish or use "
                    f"another root (a holder that died loses the lock {current.lease_seconds:.0f} s after "
                    "its last heartbeat, or at once on its own machine)"
                )
            mine = Holder(
                id=uuid.uuid4().hex,
                host=socket.gethostname(),
                machine=machine_identity(),
                pid=os.getpid(),
                pid_started=_process_started(os.getpid()),
                command=self.command,
                since=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                heartbeat=now,
                lease_seconds=lease,
            )
            try:
                self.record.swap(asdict(mine), version)
            except Conflict:
                continue
            self.holder = mine
            if current and not current.released:
                self.echo(f"root: took over the lock of {current.describe(now)}: {dead}")
            break
        else:
            raise RootLocked(f"root {self.root}: its lock record kept changing under us; try again")
        self._thread = threading.Thread(target=self._beat, name="root-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.holder.lease_seconds / 4):
            try:
                self._renew()
            except Exception as err:  # a store that does not answer now may answer at the next beat
                self.echo(f"root: could not renew the lock on {self.root} ({err}); trying again")
            if self.lost:
                self.echo(f"root: lost the lock on {self.root}: {self.lost}")
                return

    def _renew(self) -> None:
        for _ in range(5):
            value, version = self.record.read()
            if not value or value.get("id") != self.holder.id or value.get("released"):
                taker = "nobody"
                if value and not value.get("released"):
                    taker = Holder.of(value, _where(self.record)).describe()
                self.lost = f"its record now names {taker}"
                return
            renewed = {
                **value,
                "heartbeat": time.time(),
                "stage": self.stage or value.get("stage", ""),
                "renewed_by": f"{machine_identity()}#{os.getpid()}",
            }
            try:
                self.record.swap(renewed, version)
                return
            except Conflict:  # the submission and its stage job renew the same lock
                continue

    def working_on(self, stage: str) -> None:
        """Name the stage in the record, for `stvideo status` and for whoever is refused."""
        self.stage = stage
        with contextlib.suppress(Exception):  # the next heartbeat writes it if this cannot
            self._renew()

    def check(self) -> None:
        """Raise, in one line, when another run has taken the root over from us."""
        if self.lost:
            raise RootLocked(f"lost the lock on {self.root} ({self.lost}): nothing was swapped in")

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self.borrowed or self.holder is None or self.lost:
            return
        for _ in range(5):
            try:
                value, version = self.record.read()
                if not value or value.get("id") != self.holder.id:
                    return
                self.record.swap({**value, "released": True, "heartbeat": time.time()}, version)
                return
            except Conflict:
                continue
            except Exception:  # a full disk, a store gone: the next run takes over, and says so
                return


def command_line() -> str:
    """What a user would recognise: `stvideo run --config configs/demo.yaml`, without values of
    --set (they may hold secrets)."""
    program = Path(sys.argv[0]).name
    words, hide = ["stvideo" if program in ("stvideo", "cli.py", "__main__.py") else program], False
    for word in sys.argv[1:]:
        words.append("…" if hide else word)
        hide = word in ("--set", "-s")
    return " ".join(words)
