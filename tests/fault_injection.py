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
"""

from __future__ import annotations

import argparse
import hashlib
import json
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


def stvideo(root: Path, *args: str) -> subprocess.Popen:
    config = ["--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"root={root}"]
    config += ["--set", "tracking.enabled=false"]
    return start_stvideo(*args, *config, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


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


def recorded(stage: str, root: Path) -> int | None:
    """How many progress records (shards, batches) a killed encode or generate left to resume."""
    progress = {"encode": "latents.zarr", "generate": "generations/default/codes.zarr"}.get(stage)
    if progress is None:
        return None
    return len(list((root / ".staging" / progress / "_progress").glob("*.json")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="kills per stage")
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
