"""Kill each stage at a random moment, N times in a row, rerun it, and compare with a clean run.

    .venv/bin/python tests/fault_injection.py --runs 3 [--seed 0] [--stages encode,generate]

On the tiny config, tracking off. A clean run of the whole pipeline comes first and times each
stage. Then, for each stage and each of the N tries: a root holding the clean run's inputs of
that stage, the stage started and SIGKILLed (its whole process group and every process it
started) at a random moment within its clean duration, then run again to completion; its
output is compared with the clean run's:

- ingest: the shard keys, the videos in each shard and their frame counts (the video bytes
  themselves are not reproducible: libx264 encodes with several threads);
- train-tokenizer, train-dynamics: the weights, byte for byte;
- encode: the codes, sources, start frames and splits;
- generate: `metrics.json` (less `seconds`) and the generated codes (the killed and resumed
  runs record a batch per clip, the clean run batches of 8).

Prints one line per try and a total; exits 1 if any output differs. Not a pytest module (a few
minutes long): run it by hand, or from CI when a change touches resuming.

    .venv/bin/python tests/fault_injection.py --chaos 24 [--seed 0]

mixes faults instead: each of the N tries takes a stage and a fault at random, then runs the
stage again to completion and compares its output with the clean run's as above:

- kill: SIGKILL at a random moment, as above;
- full-disk: the root on a tmpfs with room for its inputs and a random part (10-90 %) of
  the stage's output; the stage must fail in one line saying "no space left on device" (no
  traceback), and the rerun, with room again, resumes (Linux, as root: mount(8));
- second-run: the same command started again while the first holds the root; it must be
  refused in one line naming the holder (exit 3), and the first must finish untouched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: `tests.conftest` is importable

from jobs.root_lock import current_holder  # noqa: E402
from pipeline.shards import RawManifest  # noqa: E402
from tests.conftest import kill_family, start_stvideo  # noqa: E402

STAGES = ["ingest", "train-tokenizer", "encode", "train-dynamics", "generate"]
OUTPUTS = {
    "ingest": "raw",
    "train-tokenizer": "tokenizer",
    "encode": "latents.zarr",
    "train-dynamics": "dynamics",
    "generate": "generations/default",
}

# the killed and resumed runs' own settings: generate records a batch of one clip at a time, so a
# kill leaves some recorded, and its output must still equal the clean run's (batches of 8)
RESUMED_WITH = {"generate": ["--set", "generate.batch_size=1"]}


def stvideo(root: Path, *args: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    config = ["--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"root={root}"]
    config += ["--set", "tracking.enabled=false"]
    return start_stvideo(*args, *config, stdout=stdout, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=900)
    if process.returncode:
        raise RuntimeError(f"exit {process.returncode}: {err[-2000:]}")


def kill_after(process: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL the process and all it started after `seconds`; False if it ended first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    kill_family(process)
    process.communicate(timeout=60)
    return True


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(stage: str, root: Path):
    """What must be equal between a clean and a killed-then-resumed run of `stage`."""
    out = root / OUTPUTS[stage]
    if stage == "ingest":
        return [
            (shard["name"], shard["samples"], [(v["key"], v["num_frames"]) for v in videos])
            for shard, videos in RawManifest.read(str(out)).shard_videos()
        ]
    if stage in ("train-tokenizer", "train-dynamics"):
        return sha(out / "model.safetensors")
    if stage == "encode":
        from pipeline.latents import key_strings

        group = zarr.open_group(str(out), mode="r")
        # the numbers by their bytes, the keys as text (a string array's bytes hold pointers)
        numbers = [
            np.ascontiguousarray(group[name][:]).tobytes() for name in ("codes", "start_frame", "split")
        ]
        return [hashlib.sha256(b"".join(numbers)).hexdigest(), key_strings(group["source"][:]).tolist()]
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("seconds")
    codes = zarr.open_group(str(out / "codes.zarr"), mode="r")["codes"][:]
    return json.dumps(metrics, sort_keys=True), hashlib.sha256(codes.tobytes()).hexdigest()


# what each part of a two-part fingerprint holds, to say which one differs
PARTS = {"encode": ("codes, start frames, splits", "sources"), "generate": ("metrics.json", "codes")}


def compared(stage: str, root: Path, clean: Path) -> tuple[bool, str]:
    """Whether the output equals the clean run's, and in words: which part differs if not."""
    made, expected = fingerprint(stage, root), fingerprint(stage, clean)
    if made == expected:
        return True, "equals the clean run's"
    parts = PARTS.get(stage)
    which = [name for name, a, b in zip(parts, made, expected, strict=True) if a != b] if parts else []
    return False, "DIFFERS FROM the clean run's" + (f" in {', '.join(which)}" if which else "")


def recorded(stage: str, root: Path) -> int | None:
    """How many progress records (shards, batches) a killed encode or generate left to resume."""
    progress = {"encode": "latents.zarr", "generate": "generations/default/codes.zarr"}.get(stage)
    if progress is None:
        return None
    return len(list((root / ".staging" / progress / "_progress").glob("*.json")))


def tree_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def with_inputs(root: Path, stage: str, clean: Path) -> None:
    """`root` holding the clean run's outputs of every stage before `stage`."""
    root.mkdir(parents=True, exist_ok=True)
    for earlier in STAGES[: STAGES.index(stage)]:
        shutil.copytree(clean / OUTPUTS[earlier], root / OUTPUTS[earlier])


def mount_tmpfs(folder: Path, size_kib: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)]
    subprocess.run(command, check=True, capture_output=True)


def resize_tmpfs(folder: Path, room_bytes: int) -> None:
    """Room for what `folder` holds now and `room_bytes` more."""
    used_kib = (shutil.disk_usage(folder).used + 1023) // 1024
    command = ["mount", "-o", f"remount,size={used_kib + (room_bytes + 1023) // 1024}k", str(folder)]
    subprocess.run(command, check=True, capture_output=True)


def one_line(stage: str, stderr: str, saying: str) -> str | None:
    """None when the failure was said in the one line expected; else what went wrong."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"stvideo {stage}:")]
    if "Traceback" in stderr:
        return "a traceback was printed"
    if len(lines) != 1 or saying not in lines[0]:
        return f"expected one line saying {saying!r}, got {lines or stderr[-300:]!r}"
    return None


def full_disk(stage: str, root: Path, clean: Path, rng: random.Random) -> tuple[str, str | None]:
    """Run `stage` with room for part of its output, then again with room. Leaves `root`'s
    tmpfs mounted (the caller compares, then unmounts)."""
    mount_tmpfs(root, 256 * 1024)
    with_inputs(root, stage, clean)
    part = rng.uniform(0.1, 0.9)
    resize_tmpfs(root, int(part * tree_bytes(clean / OUTPUTS[stage])))
    first = stvideo(root, stage, *RESUMED_WITH.get(stage, []))
    _, err = first.communicate(timeout=900)
    if first.returncode == 0:
        state = f"finished in room for {part:.0%} of its output"
        wrong = None
    else:
        state = f"filled the disk at {part:.0%} of its output"
        wrong = one_line(stage, err, "no space left on device") if first.returncode == 1 else None
        wrong = wrong or (None if first.returncode == 1 else f"exit {first.returncode}: {err[-300:]!r}")
    resize_tmpfs(root, 128 * 2**20)
    finish(stvideo(root, stage, *RESUMED_WITH.get(stage, [])))
    return state, wrong


def second_run(stage: str, root: Path, at: float) -> tuple[str, str | None]:
    """Start `stage`; `at` seconds later, once it holds the root, the same command again."""
    first = stvideo(root, stage, *RESUMED_WITH.get(stage, []))
    deadline = time.monotonic() + at
    while time.monotonic() < deadline or (first.poll() is None and current_holder(str(root)) is None):
        if first.poll() is not None:
            break
        time.sleep(0.05)
    if first.poll() is not None:
        finish_or_raise = first.communicate(timeout=60)[1]
        if first.returncode:
            raise RuntimeError(f"exit {first.returncode}: {finish_or_raise[-2000:]}")
        return "finished before the second run started", None
    second = stvideo(root, stage, *RESUMED_WITH.get(stage, []), stdout=subprocess.PIPE)
    out, err = second.communicate(timeout=900)
    said = err.strip().splitlines()
    refused = len(said) == 1 and "is in use by `stvideo" in said[0]
    wrong = None if refused or second.returncode != 3 else f"expected one line naming the holder: {said!r}"
    # the first may release the root and then take a few seconds to exit (Ray's shutdown): a second
    # run that got the root then finds the stage complete, and writes nothing
    after = second.returncode == 0 and f"{stage}: skipped, complete" in out
    if second.returncode != 3 and first.poll() is None and not after:
        wrong = f"the second run was not refused (exit {second.returncode}): {err[-300:]!r}"
    finish(first)
    if after:
        return f"a second run at {at:.1f}s came after the first released the root: skipped, complete", wrong
    return f"a second run at {at:.1f}s exited {second.returncode}", wrong


def chaos(tries: int, clean: Path, durations: dict, work: Path, rng: random.Random) -> int:
    """`tries` faults drawn at random (stage and kind), each followed by a run to completion."""
    faults = ["kill", "second-run"]
    if os.geteuid() == 0 and sys.platform.startswith("linux"):
        faults.append("full-disk")
    else:
        print("full-disk faults left out: a tmpfs needs Linux and root")
    mismatches = 0
    for attempt in range(tries):
        stage, fault = rng.choice(STAGES), rng.choice(faults)
        root, at = work / f"chaos-{attempt}", rng.uniform(0.4, 0.9) * durations[stage]
        wrong = None
        if fault == "full-disk":
            state, wrong = full_disk(stage, root, clean, rng)
        else:
            with_inputs(root, stage, clean)
            if fault == "kill":
                killed = kill_after(stvideo(root, stage, *RESUMED_WITH.get(stage, [])), at)
                state = f"killed at {at:.1f}s" if killed else "finished before the kill"
                finish(stvideo(root, stage, *RESUMED_WITH.get(stage, [])))
            else:
                state, wrong = second_run(stage, root, at)
        same, outcome = compared(stage, root, clean)
        left = sorted(path.name for path in (root / ".staging").glob("*"))
        if fault == "full-disk":
            subprocess.run(["umount", "-l", str(root)], check=True)
        shutil.rmtree(root, ignore_errors=True)
        mismatches += not same or bool(left) or wrong is not None
        print(
            f"#{attempt + 1} {stage}, {fault}: {state}; output {outcome}"
            + (f"; left in .staging: {left}" if left else "")
            + (f"; WRONG: {wrong}" if wrong else ""),
            flush=True,
        )
    print(f"{tries} runs with mixed faults, {mismatches} mismatches")
    return 1 if mismatches else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="kills per stage")
    parser.add_argument("--chaos", type=int, default=0, help="N tries of mixed faults instead of kills")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stvideo-faults"))
    parser.add_argument("--stages", default=",".join(STAGES), help="which stages to kill (all run clean)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.work, ignore_errors=True)
    clean = args.work / "clean"
    durations = {}
    for stage in STAGES:
        started = time.monotonic()
        finish(stvideo(clean, stage))
        durations[stage] = time.monotonic() - started
    print("clean run: " + ", ".join(f"{stage} {seconds:.0f}s" for stage, seconds in durations.items()))
    if args.chaos:
        return chaos(args.chaos, clean, durations, args.work, rng)

    tries = mismatches = kills = 0
    for position, stage in enumerate(STAGES):
        if stage not in args.stages.split(","):
            continue
        for attempt in range(args.runs):
            root = args.work / f"{stage}-{attempt}"
            root.mkdir(parents=True)
            for earlier in STAGES[:position]:  # the clean run's inputs of this stage
                shutil.copytree(clean / OUTPUTS[earlier], root / OUTPUTS[earlier])
            at = rng.uniform(0.4, 0.9) * durations[stage]  # past start-up (imports, Ray), before the end
            killed = kill_after(stvideo(root, stage, *RESUMED_WITH.get(stage, [])), at)
            kept = recorded(stage, root)
            finish(stvideo(root, stage, *RESUMED_WITH.get(stage, [])))
            same = fingerprint(stage, root) == fingerprint(stage, clean)
            left = (
                sorted(path.name for path in (root / ".staging").glob("*"))
                if (root / ".staging").exists()
                else []
            )
            tries, kills = tries + 1, kills + killed
            mismatches += not same or bool(left)
            state = "killed" if killed else "finished before the kill"
            print(
                f"{stage} #{attempt + 1}: {state} at {at:.1f}s; resumed output "
                f"{'equals' if same else 'DIFFERS FROM'} the clean run's"
                + (f" ({kept} progress records were kept for it)" if kept is not None else "")
                + (f"; left in .staging: {left}" if left else "")
            )
            shutil.rmtree(root)
    print(f"{tries} runs ({kills} killed mid-run, then resumed), {mismatches} mismatches")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
