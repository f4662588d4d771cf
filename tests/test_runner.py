"""The runner's lifecycle on real files: a stage writes into its staging location, the previous
complete output stays until the new one is complete, a resume checks the config it resumes,
and a completed output holds exactly what its run wrote.

The stage here is a small real one (it writes `generate.max_clips` files, and fails or stops
where a test asks it to), so each rule is checked in seconds rather than a pipeline's minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from jobs.config import load_config
from jobs.runner import Runner
from jobs.stages import STAGES, StageInputError, StageResult
from tests.conftest import REPO, run_stvideo


class Stopped(Exception):
    """Stands in for a kill: the stage stops half way through its writing."""


STOP_AFTER = "STVIDEO_TEST_STOP_AFTER"  # clips after which the stage stops, as if killed


def write_clips(cfg, layout) -> StageResult:
    """A stage: `generate.max_clips` files under its output, a resumed run keeping those written."""
    out = Path(layout.generations)
    if cfg.generate.seed == 99:
        raise StageInputError("generate.seed: 99 makes this stage refuse its inputs")
    (out / "videos").mkdir(parents=True, exist_ok=True)
    for clip in range(cfg.generate.max_clips):
        path = out / "videos" / f"{clip:06d}.txt"
        if not path.exists():
            path.write_text(f"clip {clip} seed {cfg.generate.seed}")
        if clip + 1 == int(os.environ.get(STOP_AFTER, -1)):
            raise Stopped(f"stopped after {clip + 1} clips")
    (out / "metrics.json").write_text(json.dumps({"clips": cfg.generate.max_clips}))
    summary = f"wrote {cfg.generate.max_clips} clips to {layout.generations}"
    return StageResult("generate", outputs={"generations": layout.generations}, summary=summary)


SPEC = replace(STAGES["generate"], entry="tests.test_runner:write_clips", reads=())


def run(root, *overrides: str, force: bool = False) -> tuple[Runner, list[str]]:
    said: list[str] = []
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"root={root}", "tracking.enabled=false", *overrides])
    runner = Runner(cfg, force=force, echo=said.append)
    runner.run_stage(SPEC)
    return runner, said


def contents(folder) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_stage_writes_to_staging_and_its_output_appears_complete(tmp_path):
    _, said = run(tmp_path, "generate.max_clips=3")
    final = tmp_path / "generations" / "default"
    assert sorted(contents(final)) == [
        "_stage.json",
        "metrics.json",
        *[f"videos/{i:06d}.txt" for i in range(3)],
    ]
    assert not (tmp_path / ".staging").exists()
    manifest = json.loads((final / "_stage.json").read_text())
    assert manifest["outputs"] == {"generations": str(final)}  # named where it lives, not where it was made
    assert said[-1].startswith(f"wrote 3 clips to {final}")


def test_a_refused_stage_leaves_the_previous_output_as_it_was(tmp_path, monkeypatch):
    run(tmp_path, "generate.max_clips=3")
    final = tmp_path / "generations" / "default"
    before = contents(final)
    with pytest.raises(StageInputError, match="refuse its inputs"):
        run(tmp_path, "generate.max_clips=3", "generate.seed=99")
    assert contents(final) == before
    # ...and so does a stage that dies half way
    monkeypatch.setenv(STOP_AFTER, "2")
    with pytest.raises(Stopped):
        run(tmp_path, "generate.max_clips=5")
    assert contents(final) == before


def test_a_resume_under_another_config_starts_over_and_leaves_nothing_stale(tmp_path, monkeypatch):
    monkeypatch.setenv(STOP_AFTER, "4")
    with pytest.raises(Stopped):
        run(tmp_path, "generate.max_clips=23")
    staging = tmp_path / ".staging" / "generations" / "default"
    assert len(list((staging / "videos").iterdir())) == 4

    monkeypatch.delenv(STOP_AFTER)
    _, said = run(tmp_path, "generate.max_clips=10")
    assert any("starting over (it started with another config or other inputs)" in line for line in said)
    final = tmp_path / "generations" / "default"
    assert sorted(path.name for path in (final / "videos").iterdir()) == [f"{i:06d}.txt" for i in range(10)]
    assert json.loads((final / "_stage.json").read_text())["config"]["generate.max_clips"] == 10


def test_a_resume_under_the_same_config_keeps_what_was_written(tmp_path, monkeypatch):
    monkeypatch.setenv(STOP_AFTER, "3")
    with pytest.raises(Stopped):
        run(tmp_path, "generate.max_clips=6")
    staging = tmp_path / ".staging" / "generations" / "default"
    written = {path.name: path.stat().st_mtime_ns for path in (staging / "videos").iterdir()}
    assert len(written) == 3

    monkeypatch.delenv(STOP_AFTER)
    _, said = run(tmp_path, "generate.max_clips=6")
    assert any("resuming the unfinished run" in line for line in said)
    final = tmp_path / "generations" / "default" / "videos"
    assert {name: (final / name).stat().st_mtime_ns for name in written} == written  # not rewritten
    assert len(list(final.iterdir())) == 6
    # --force starts over even an unfinished run of the same config
    monkeypatch.setenv(STOP_AFTER, "1")
    with pytest.raises(Stopped):
        run(tmp_path, "generate.max_clips=6", force=True)
    monkeypatch.delenv(STOP_AFTER)
    _, said = run(tmp_path, "generate.max_clips=6", force=True)
    assert any("starting over (--force)" in line for line in said)


def test_a_swap_that_was_interrupted_is_finished_by_the_next_run(tmp_path):
    run(tmp_path, "generate.max_clips=2")
    final = tmp_path / "generations" / "default"
    staging = tmp_path / ".staging" / "generations" / "default"
    staging.parent.mkdir(parents=True)
    final.rename(staging)  # as if the run died between removing the old output and moving the new one
    _, said = run(tmp_path, "generate.max_clips=2")
    assert any("moving it to" in line for line in said) and any("skipped" in line for line in said)
    assert sorted(path.name for path in (final / "videos").iterdir()) == ["000000.txt", "000001.txt"]


def test_a_name_that_leaves_the_root_is_refused_and_nothing_changes(tmp_path):
    outside = tmp_path / "somewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    root = tmp_path / "a" / "b"
    result = run_stvideo(
        "generate", "--force", "--set", f"root={root}", "--set", "generate.name=../../somewhere"
    )
    assert result.returncode == 2 and "generate.name: given '../../somewhere'" in result.stderr
    assert (outside / "keep.txt").read_text() == "mine" and not root.exists()
