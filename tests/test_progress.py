"""Progress that fits where it runs: no terminal, few whole lines."""

import io

import pytest

from common.progress import progress_bar


def test_without_a_terminal_a_bar_writes_a_few_whole_lines(monkeypatch):
    monkeypatch.setenv("STVIDEO_PROGRESS_SECONDS", "1000")
    log = io.StringIO()  # not a TTY, like a job log or CI
    with progress_bar(total=5000, desc="encode", unit="clip", file=log) as bar:
        for _ in range(5000):
            bar.update(1)
            bar.set_postfix(rejected=0, refresh=False)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 2 <= len(lines) <= 3  # the start, maybe one, the end
    assert lines[-1].startswith("encode: 100%") and "5000/5000" in lines[-1] and "clip/s" in lines[-1]


@pytest.mark.slow
def test_quiet_keeps_only_warnings_and_verbose_adds_the_libraries_lines(tmp_path):
    """`stvideo -q`: the stage's result on stdout, nothing on stderr but warnings; `-v`: Ray
    Data's own INFO lines too, which the default level keeps out of the way."""
    from tests.conftest import FEW_VIDEOS, REPO, run_stvideo

    config = ["--config", str(REPO / "configs" / "tiny.yaml"), "--set", "tracking.enabled=false"]
    # what is logged, not what is learnt: few videos, a few tokenizer steps
    small = {"data.moving_mnist.num_videos": 12, "tokenizer.max_steps": 4, "tokenizer.eval_videos": 2}
    config += [*FEW_VIDEOS, *(arg for key, value in small.items() for arg in ("--set", f"{key}={value}"))]
    quiet = run_stvideo("-q", "ingest", *config, "--set", f"root={tmp_path / 'quiet'}")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "ingest: kept 12 of 12 videos" in quiet.stdout
    assert "%|" not in quiet.stderr and "ray: started an embedded Ray" not in quiet.stderr, quiet.stderr
    normal = run_stvideo("ingest", *config, "--set", f"root={tmp_path / 'normal'}")
    assert "%|" in normal.stderr and "ray: started an embedded Ray" in normal.stderr, normal.stderr
    # generate runs Ray Data: its execution plan is an INFO line of its own logger
    trained = run_stvideo(
        "run", *config, "--set", f"root={tmp_path / 'normal'}", "--stages", "train-tokenizer,encode"
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "Execution plan of Dataset" not in trained.stderr
    verbose = run_stvideo("-v", "encode", *config, "--set", f"root={tmp_path / 'normal'}", "--force")
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert "Execution plan of Dataset" in verbose.stderr
    both = run_stvideo("-q", "-v", "ingest", *config)
    assert both.returncode == 2 and "--quiet and --verbose: give one" in both.stderr
