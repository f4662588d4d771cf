"""One writer per root: the lease in `<root>/_lock.json`, on a local disk and on S3 (moto), and
two real `stvideo` processes on one root."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import asdict

import pytest

from jobs.root_lock import LOCK_NAME, Holder, RootLock, RootLocked, current_holder, machine_identity
from tests.conftest import environment, kill_family, moto_s3, run_stvideo, start_stvideo, untracked_tiny


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "root")
        return
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # one made for another test's server would be reused
    with moto_s3("locks") as env, environment(env):
        yield f"s3://locks/{tmp_path.name}"
    s3fs.S3FileSystem.clear_instance_cache()


def holder_pid(root) -> int | None:
    holder = current_holder(str(root))
    return holder.pid if holder else None


def race(root: str, contenders: int) -> tuple[list[RootLock], list[str]]:
    """`contenders` threads take the free lock at the same moment; returns the winners (still
    holding) and the refusals."""
    start, winners, refused = threading.Barrier(contenders), [], []

    def contend(number: int) -> None:
        lock = RootLock(root, f"contender {number}", echo=lambda line: None)
        start.wait()
        try:
            lock.acquire()
            winners.append(lock)
        except RootLocked as err:
            refused.append(str(err))

    threads = [threading.Thread(target=contend, args=(number,)) for number in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return winners, refused


def test_of_many_contenders_exactly_one_holds_the_root_and_the_rest_are_told_who(root):
    winners, refused = race(root, 6)
    assert len(winners) == 1 and len(refused) == 5, (len(winners), refused)
    [winner] = winners
    assert current_holder(root).id == winner.holder.id
    assert all(f"in use by `{winner.holder.command}`" in line and "\n" not in line for line in refused)
    winner.release()
    assert current_holder(root) is None
    again, refused = race(root, 3)  # released: free again, and still one at a time
    assert len(again) == 1 and len(refused) == 2
    again[0].release()


def test_a_holder_whose_heartbeat_stopped_is_taken_over_and_learns_it_lost(root, monkeypatch):
    monkeypatch.setenv("STVIDEO_LOCK_LEASE_SECONDS", "0.8")
    said: list[str] = []
    first = RootLock(root, "first", echo=said.append)
    first.acquire()
    first._stop.set()  # its heartbeats stop, as when its machine is cut off
    first._thread.join()
    # from another machine: its pid cannot be looked at, only its heartbeat's age
    monkeypatch.setattr("jobs.root_lock.machine_identity", lambda: "another-machine")
    with pytest.raises(RootLocked, match="in use by `first`"):
        RootLock(root, "second", echo=said.append).acquire()
    time.sleep(1.0)
    second = RootLock(root, "second", echo=said.append)
    second.acquire()
    assert any(
        line.startswith("root: took over the lock of `first`") and "no heartbeat" in line for line in said
    )
    first._renew()
    with pytest.raises(RootLocked, match="lost the lock .* nothing was swapped in"):
        first.check()
    first.release()  # a lost lock is not released: it is someone else's now
    assert current_holder(root).command == "second"
    second.release()


def test_a_dead_process_on_this_machine_loses_the_lock_at_once(tmp_path):
    root = str(tmp_path / "root")
    gone = Holder(
        id="gone",
        host="here",
        machine=machine_identity(),
        pid=2**22 + 7,  # above the kernel's largest pid: no such process
        pid_started=0.0,
        command="stvideo run",
        since="earlier",
        heartbeat=time.time(),
        lease_seconds=3600,
    )
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / LOCK_NAME).write_text(json.dumps(asdict(gone)))
    said: list[str] = []
    with RootLock(root, "next", echo=said.append):
        assert current_holder(root).command == "next"
    assert said == [
        f"root: took over the lock of {gone.describe()}: its process (pid {gone.pid} on here) is gone"
    ]


@pytest.mark.slow
def test_a_second_run_on_a_busy_root_is_refused_and_a_killed_ones_lock_is_taken_over(tmp_path):
    """Real processes: `stvideo ingest` holds the root; a second one is refused in one line
    naming it, and `status` shows it; the first finishes intact. A holder killed with SIGKILL is
    taken over by the next run at once, which says so."""
    root = tmp_path / "tiny"
    config = untracked_tiny(root)
    first = start_stvideo(
        "ingest", *config, stdout=open(tmp_path / "first.out", "w"), stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while holder_pid(root) != first.pid:
        assert time.monotonic() < deadline and first.poll() is None, "the first run never took the lock"
        time.sleep(0.1)
    second = run_stvideo("ingest", *config)
    assert second.returncode == 3, second.stderr[-2000:]
    [line] = second.stderr.strip().splitlines()
    assert "in use by `stvideo ingest" in line and f"pid {first.pid}" in line and "running ingest" in line
    status = run_stvideo("status", *config)
    assert status.stdout.splitlines()[-1].startswith("lock: held by `stvideo ingest"), status.stdout
    [row] = [line.split() for line in status.stdout.splitlines() if line.startswith("ingest ")]
    assert row[1] == "running", status.stdout
    assert first.wait(timeout=300) == 0
    assert "kept 48 of 48 videos" in (tmp_path / "first.out").read_text()
    assert current_holder(str(root)) is None  # released at its end

    killed = start_stvideo("ingest", *config, "--force", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while holder_pid(root) != killed.pid:
        assert time.monotonic() < deadline + 120 and killed.poll() is None
        time.sleep(0.1)
    kill_family(killed)
    killed.wait(timeout=60)
    after = run_stvideo("ingest", *config)
    assert after.returncode == 0, after.stderr[-2000:]
    assert "root: took over the lock of `stvideo ingest --config" in after.stdout
    assert f"its process (pid {killed.pid} on" in after.stdout
    manifest = json.loads((root / "raw" / "manifest.json").read_text())
    assert manifest["num_samples"] == 48


def test_a_submission_killed_while_its_stage_job_runs_keeps_the_lock_while_the_job_renews_it():
    alive_elsewhere = f"{machine_identity()}#{os.getpid()}"  # the stage job: this process
    gone = dict(id="s", host="here", machine=machine_identity(), pid=2**22 + 7, pid_started=0.0)
    record = Holder(
        **gone, command="stvideo submit", since="earlier", heartbeat=time.time(), lease_seconds=60
    )
    assert record.dead_because() is not None  # the submission alone: gone at once
    record.renewed_by = alive_elsewhere
    assert record.dead_because() is None  # its job renews the heartbeat: in use
    record.heartbeat -= 61
    assert record.dead_because().startswith("no heartbeat for 61 s")


def test_a_lock_file_that_is_not_a_record_is_named_and_nothing_is_run(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / LOCK_NAME).write_text("left by an editor")
    with pytest.raises(RootLocked, match=f"{tmp_path}/root/{LOCK_NAME} is not a lock record .* remove it"):
        RootLock(str(tmp_path / "root"), "next").acquire()


def test_a_record_replaced_while_it_is_read_is_read_again_not_raised():
    """S3 reads an open file with If-Match on the ETag it found at open; a contender's swap
    between that look and the read is the next version to read, not a crash (a CI race)."""
    import s3fs

    from jobs.root_lock import ObjectRecord

    s3fs.S3FileSystem.clear_instance_cache()
    with moto_s3("locks") as env, environment(env):
        record = ObjectRecord("s3://locks/replaced/_lock.json")
        record.swap({"id": "first"}, None)
        _, first_version = record.read()
        opened = record.fs.open

        def open_then_replace(path, mode="rb", **kwargs):
            handle = opened(path, mode, **kwargs)  # its ETag is fixed now
            if handle.details.get("ETag") == first_version:
                record.fs.pipe_file(record.path, json.dumps({"id": "second"}).encode())
            return handle

        record.fs.open = open_then_replace
        value, version = record.read()
        assert value == {"id": "second"} and version not in (None, first_version)
    s3fs.S3FileSystem.clear_instance_cache()
