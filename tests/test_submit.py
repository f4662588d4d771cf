"""`stvideo submit` without a cluster: the retry rule for the Jobs API, and refusals that write nothing."""

from __future__ import annotations

import pytest

from jobs.submit import SubmitError, retrying
from tests.conftest import REPO, free_port, run_stvideo


def test_transient_cluster_answers_are_retried_and_others_are_not():
    answers = iter([RuntimeError("No available agent to submit job, please try again later."), "job-1"])

    def submit():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retrying(submit, retries=2, what="submitting", pause=0.01) == "job-1"

    # a status code in the text counts, digits that happen to read 503 in an id do not
    calls = []

    def refuse():
        calls.append(1)
        raise RuntimeError("Request failed with status code 400: Job x-20260503-1 already exists")

    with pytest.raises(SubmitError, match="already exists"):
        retrying(refuse, retries=5, what="submitting", pause=0.01)
    assert len(calls) == 1

    def never():
        calls.append(1)
        raise ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:1.")

    calls.clear()
    with pytest.raises(SubmitError, match="Failed to connect"):
        retrying(never, retries=2, what="connecting", pause=0.01)
    assert len(calls) == 3


def test_submit_says_why_it_cannot_start_and_writes_nothing(tmp_path):
    tiny_config = ["--config", str(REPO / "configs" / "tiny.yaml")]
    remote = run_stvideo("submit", *tiny_config, "--set", "root=s3://bucket/run")
    assert remote.returncode == 2 and "tracking.uri: given None" in remote.stderr

    root = tmp_path / "run"
    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = run_stvideo(
        "submit", *tiny_config, "--set", f"root={root}", "--set", "submit.retries=0", "--address", nobody
    )
    assert unreachable.returncode == 1 and f"cannot reach the Jobs API at {nobody}" in unreachable.stderr
    assert not root.exists()
