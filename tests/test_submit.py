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


def test_a_job_carries_its_config_and_the_runtime_env_given(monkeypatch):
    """What a stage's job is handed: `submit.runtime_env` as given, its env_vars joined by the
    job's own (the resolved config among them, secrets redacted and filled in from this
    process's environment), so the cluster needs nothing from the submitting machine."""
    import yaml

    from jobs.config import CONFIG_ENV_PREFIX, PipelineConfig, load_config
    from jobs.submit import CONFIG_ENV, _entrypoint, _job_config, _runtime_env
    from jobs.tracking import PARENT_RUN_ENV, SUBMISSION_ENV

    # a detached submission's own job was handed the real values: they are in its environment
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-real-secret")
    monkeypatch.setenv("A", "1")
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            "root=s3://bucket/run",
            "tracking.uri=http://mlflow:5000",
            "submit.runtime_env={pip: [extra-package], excludes: [out/], "
            "env_vars: {A: '1', AWS_SECRET_ACCESS_KEY: x}}",
        ],
    )
    stored = yaml.safe_load(_job_config(cfg, "http://mlflow:5000"))
    # the config a job carries holds no secret (every env_vars value counts as one) ...
    assert stored["submit"]["runtime_env"]["env_vars"] == {
        "A": "<redacted>",
        "AWS_SECRET_ACCESS_KEY": "<redacted>",
    }
    detached = PipelineConfig.model_validate(stored)
    runtime_env = _runtime_env(detached, "parent-1", "job-1", _job_config(cfg, None))
    assert runtime_env["pip"] == ["extra-package"] and runtime_env["excludes"] == ["out/"]
    env = runtime_env["env_vars"]
    # ... and its jobs get the real values from the submitting process's environment
    assert env["A"] == "1" and env["AWS_SECRET_ACCESS_KEY"] == "the-real-secret"
    assert env[SUBMISSION_ENV] == "job-1" and env[PARENT_RUN_ENV] == "parent-1"
    assert yaml.safe_load(env[CONFIG_ENV])["root"] == "s3://bucket/run"
    entrypoint = _entrypoint(cfg, ["encode", "--config", f"{CONFIG_ENV_PREFIX}{CONFIG_ENV}"])
    assert entrypoint.endswith(f"-m jobs.cli encode --config env:{CONFIG_ENV}")
    # the job's CLI reads that variable back as its config
    monkeypatch.setenv(CONFIG_ENV, env[CONFIG_ENV])
    assert load_config(f"env:{CONFIG_ENV}").root == "s3://bucket/run"
