"""`stvideo submit` against a real Ray head and a real MLflow server, both on 127.0.0.1 (infra/local)."""

from __future__ import annotations

import json
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import zarr

from tests.conftest import REPO, run_stvideo

pytestmark = [pytest.mark.slow, pytest.mark.integration]
STAGES = ["ingest", "train-tokenizer", "encode", "train-dynamics", "generate"]
# what each stage reads, by the name its producer writes it under
READS = {
    "train-tokenizer": {"raw": "ingest"},
    "encode": {"raw": "ingest", "tokenizer": "train-tokenizer"},
    "train-dynamics": {"latents": "encode", "tokenizer": "train-tokenizer"},
    "generate": {"latents": "encode", "dynamics": "train-dynamics", "tokenizer": "train-tokenizer"},
}


def wait_for(client, submission_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(submission_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise TimeoutError(submission_id)


@pytest.fixture(scope="module")
def submitted(ray_head, mlflow_server, tmp_path_factory) -> SimpleNamespace:
    """The tiny pipeline submitted stage by stage to the Ray head, tracked on the MLflow server:
    first with generate pointed at videos that are not there (it fails, the four before it
    stand), then again (only generate runs)."""
    tmp_path = tmp_path_factory.mktemp("submitted")
    root = tmp_path / "tiny"
    config = [
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "--set",
        f"root={root}",
        "--set",
        f"tracking.uri={mlflow_server['uri']}",
        "--address",
        ray_head["dashboard"],
    ]
    failed = run_stvideo("submit", *config, "--set", f"generate.videos={tmp_path}/missing/*.mp4")
    fixed = run_stvideo("submit", *config)
    return SimpleNamespace(
        root=root, config=config, failed=failed, fixed=fixed, tmp_path=tmp_path, uri=mlflow_server["uri"]
    )


def stage_runs(client, root: Path) -> tuple[list, dict, dict]:
    """The parent runs of the submissions (the fixture's two first), and the run that made each
    stage's output."""
    experiment = client.get_experiment_by_name("stvideo-tiny")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`stvideo.root` = '{root}'",
        order_by=["attributes.start_time ASC"],
    )
    parents = [run for run in runs if "stvideo.stage" not in run.data.tags]
    children = {
        parent.info.run_id: {
            run.data.tags["stvideo.stage"]: run
            for run in runs
            if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        }
        for parent in parents
    }
    made = {stage: run for stage, run in children[parents[0].info.run_id].items() if stage != "generate"}
    made["generate"] = children[parents[1].info.run_id]["generate"]  # the second submission
    return parents, children, made


def test_submit_runs_every_stage_as_a_ray_job_with_lineage_in_mlflow(ray_head, submitted):
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobSubmissionClient

    root, config, failed, fixed = submitted.root, submitted.config, submitted.failed, submitted.fixed
    # generate is pointed at videos that are not there: it fails, the four before it stand
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "generate: Ray job stvideo-tiny-generate-" in failed.stderr
    assert "generate.videos" in failed.stderr  # the stage's own error, from the job's log tail
    for stage in STAGES[:4]:
        assert f"== {stage}: SUCCEEDED" in failed.stdout
    assert "[ingest] ingest: kept 48 of 48 videos" in failed.stdout  # logs stream through
    for folder in ("raw", "tokenizer", "latents.zarr", "dynamics"):
        assert (root / folder / "_stage.json").exists(), folder
    # the jobs' logs stream through with their progress as a line every so often, not a redraw
    logs = failed.stdout + failed.stderr + fixed.stdout + fixed.stderr
    progress = [line for line in logs.splitlines() if "%|" in line]
    assert 0 < len(progress) < 300, f"{len(progress)} progress lines"

    # fixed: only generate runs
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    for stage in STAGES[:4]:
        assert f"== {stage}: skipped" in fixed.stdout
    assert "== generate: SUCCEEDED" in fixed.stdout

    jobs = JobSubmissionClient(ray_head["dashboard"])
    ours = [job for job in jobs.list_jobs() if (job.metadata or {}).get("stvideo.root") == str(root)]
    outcomes = sorted((job.metadata["stvideo.stage"], str(job.status.value)) for job in ours)
    assert outcomes == sorted([(stage, "SUCCEEDED") for stage in STAGES] + [("generate", "FAILED")]), outcomes

    # outputs validate
    metrics = json.loads((root / "generations" / "default" / "metrics.json").read_text())
    assert metrics["clips"] > 0 and len(metrics["per_step"]["model"]["mse"]) == 10
    assert (root / "generations" / "default" / "preview.gif").stat().st_size > 0
    from pipeline.latents import open_latents

    assert open_latents(str(root / "latents.zarr")).num_clips == 48

    # MLflow: two parent runs (failed, then finished); one nested run per stage job
    client = MlflowClient(tracking_uri=submitted.uri)
    parents, children, made = stage_runs(client, root)
    assert [run.info.status for run in parents] == ["FAILED", "FINISHED"]
    first, second = parents
    assert sorted(children[first.info.run_id]) == sorted(STAGES)
    assert children[first.info.run_id]["generate"].info.status == "FAILED"
    assert list(children[second.info.run_id]) == ["generate"]
    # the second invocation names the runs that made what it skipped
    for stage in STAGES[:4]:
        assert second.data.tags[f"stvideo.skipped.{stage}"] == made[stage].info.run_id
        assert made[stage].info.status == "FINISHED"

    # each stage run: its config as params and YAML, its Ray job, and lineage by identity
    for stage, run in made.items():
        tags = run.data.tags
        assert tags["ray.submission_id"].startswith(f"stvideo-tiny-{stage}-")
        assert any(a.path == "config.yaml" for a in client.list_artifacts(run.info.run_id))
        assert run.data.params, stage
        for name, producer in READS.get(stage, {}).items():
            produced = made[producer].data.tags[f"output.{name}.identity"]
            assert produced not in ("", "None")
            assert tags[f"input.{name}.identity"] == produced, (stage, name)
    assert made["train-tokenizer"].data.params["tokenizer.model.codebook_size"] == "128"
    assert made["generate"].data.metrics["summary/model_mse"] == metrics["mean"]["model"]["mse"]

    status = run_stvideo("status", *config)
    assert status.returncode == 0, status.stderr[-3000:]
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    for stage in STAGES:
        assert lines[stage].split()[1] == "done", status.stdout
        assert made[stage].info.run_id in lines[stage]
        assert made[stage].data.tags["ray.submission_id"] in lines[stage]

    # --no-wait: the submission itself runs as a Ray job; everything is already done
    detached = run_stvideo("submit", *config, "--no-wait")
    assert detached.returncode == 0, detached.stderr[-3000:]
    job_id = detached.stdout.split("as Ray job ")[1].split()[0]
    assert wait_for(jobs, job_id) == "SUCCEEDED", jobs.get_job_logs(job_id)[-3000:]
    assert "== generate: skipped" in jobs.get_job_logs(job_id)


def test_models_registered_in_mlflow_generate_the_same_codes_in_a_fresh_root(submitted, tmp_path):
    """Each training stage registered its checkpoint; generate in a fresh root from
    models:/...@champion gives the codes the run from the root's folders gave."""
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file, save_file

    root, uri = submitted.root, submitted.uri
    client = MlflowClient(tracking_uri=uri)
    _, _, made = stage_runs(client, root)

    versions = {}
    for stage, kind in (("train-tokenizer", "tokenizer"), ("train-dynamics", "dynamics")):
        run = made[stage]
        [version] = [
            v for v in client.search_model_versions(f"name='stvideo-{kind}'") if v.run_id == run.info.run_id
        ]
        assert version.tags["stvideo.identity"] == run.data.tags[f"output.{kind}.identity"]
        assert version.tags["stvideo.kind"] == kind and version.tags["stvideo.root"] == str(root)
        assert run.data.tags[f"output.{kind}.model"] == f"models:/stvideo-{kind}/{version.version}"
        logged = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert {"checkpoint/model.safetensors", "checkpoint/config.json"} <= logged, logged
        promoted = run_stvideo(
            "models", "promote", f"stvideo-{kind}", version.version, "--set", f"tracking.uri={uri}"
        )
        assert promoted.returncode == 0, promoted.stderr[-2000:]
        versions[kind] = version.version
    listed = run_stvideo("models", "list", "--set", f"tracking.uri={uri}")
    assert f"models:/stvideo-dynamics/{versions['dynamics']}  @champion" in listed.stdout, listed.stdout

    # a fresh root holding only the data (as a copy from another machine would): the models come
    # from MLflow, downloaded into the scratch cache
    fresh = tmp_path / "fresh"
    for folder in ("raw", "latents.zarr"):
        shutil.copytree(root / folder, fresh / folder)
    overrides = {
        "root": fresh,
        "tracking.uri": uri,
        "scratch": tmp_path / "scratch",
        "generate.dynamics": "models:/stvideo-dynamics@champion",
        "encode.tokenizer": "models:/stvideo-tokenizer@champion",
    }
    config = ["--config", str(REPO / "configs" / "tiny.yaml")]
    config += [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    again = run_stvideo("run", "--stages", "generate", *config)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    first = zarr.open_group(str(root / "generations" / "default" / "codes.zarr"), mode="r")
    second = zarr.open_group(str(fresh / "generations" / "default" / "codes.zarr"), mode="r")
    assert np.array_equal(first["codes"][:], second["codes"][:])
    assert second.attrs["dynamics_identity"] == made["train-dynamics"].data.tags["output.dynamics.identity"]
    assert len(list((tmp_path / "scratch" / "models").glob("*/*"))) == 2  # downloaded once each
    manifest = json.loads((fresh / "generations" / "default" / "_stage.json").read_text())
    assert manifest["inputs"]["dynamics"] == f"models:/stvideo-dynamics/{versions['dynamics']}"  # pinned

    # a tokenizer other than the one that made the latents is refused, before any work
    other = tmp_path / "other-tokenizer"
    shutil.copytree(root / "tokenizer", other, ignore=shutil.ignore_patterns("train_state", "recon"))
    weights = load_file(other / "model.safetensors")
    name = next(key for key in weights if key.startswith("encoder."))  # a weight, not the derived codebook
    weights[name] = weights[name] + 1e-3
    save_file(weights, other / "model.safetensors")
    with mlflow_run(uri) as run_id:
        mlflow.log_artifacts(str(other), "checkpoint")
    stranger = client.create_model_version("stvideo-tokenizer", f"runs:/{run_id}/checkpoint", run_id=run_id)
    refused = run_stvideo(
        "run",
        "--stages",
        "generate",
        *config,
        "--set",
        f"encode.tokenizer=models:/stvideo-tokenizer/{stranger.version}",
        "--set",
        "generate.name=stranger",
    )
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "was made with tokenizer" in refused.stderr
    assert not (fresh / "generations" / "stranger").exists()


# where the browser test keeps its screenshots (out/ is not committed; CI may keep it)
SCREENSHOTS = REPO / "out" / "test-artifacts"


def test_report_and_the_mlflow_ui_show_the_comparison_in_a_browser(submitted):
    """Debian's chromium, headless: generate's report.html loads with no error and shows its
    figures and the preview; the MLflow UI opens the experiment in its model-training view and
    shows the comparison figure on the generate run."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed: `make setup` installs Debian's chromium where apt-get can")
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    client = MlflowClient(tracking_uri=submitted.uri)
    _, _, made = stage_runs(client, submitted.root)
    generate = made["generate"]
    report = submitted.root / "generations" / "default" / "report.html"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.goto(report.as_uri(), wait_until="load")
            shown = page.eval_on_selector_all(
                "img", "images => images.map(image => [image.alt, image.complete && image.naturalWidth])"
            )
            page.screenshot(path=SCREENSHOTS / "report.png", full_page=True)
            assert not errors, errors
            widths = dict(shown)
            assert widths[next(alt for alt in widths if alt.startswith("preview"))] > 0, shown
            for figure in ("mse_by_step.png", "ssim_by_step.png", "15->5 mse_by_step.png"):
                assert widths.get(figure, 0) > 300, (figure, shown)
            assert "copy-last" in page.inner_text("body")
            # what made the page, and what its numbers mean
            made_by = page.inner_text("#made-by")
            assert generate.info.run_id in made_by and "generate's fingerprint" in made_by, made_by
            assert "summed over its" in page.inner_text("#units")

            # the link the CLI prints: the experiment in MLflow's model-training view
            experiment = generate.info.experiment_id
            page.goto(f"{submitted.uri}/#/experiments/{experiment}?workflowType=machine_learning")
            navigation = page.get_by_role("link", name="Model registry")
            navigation.wait_for(timeout=60_000)
            page.screenshot(path=SCREENSHOTS / "mlflow-experiment.png")
            assert page.get_by_role("link", name="Judges").count() == 0  # the GenAI view's
            # the generate run's comparison figure, as a user reaches it: a fresh page on the run's
            # artifacts tab, then the tree (a deep link's selection races the tree's loading)
            artifacts = (
                f"{submitted.uri}/#/experiments/{experiment}/runs/{generate.info.run_id}/artifacts"
                "?workflowType=machine_learning"
            )
            shown = open_comparison_figure(browser, artifacts)
            shown.screenshot(path=SCREENSHOTS / "mlflow-comparison.png")
            check_the_runs_in_the_mlflow_ui(browser, client, submitted, made)
        finally:
            browser.close()
    assert (SCREENSHOTS / "mlflow-comparison.png").stat().st_size > 0


def check_the_runs_in_the_mlflow_ui(browser, client, submitted, made: dict) -> None:
    """As a user sees the runs: the parent (the run `stvideo run` links to) holds its stages'
    params and figures, a chart section per stage (the second submission ran generate alone); a
    stage run's charts are in sections by prefix (train/, val/, eval/<metric>/, summary/), none
    left in MLflow's catch-all "Model metrics"."""
    parents, _, _ = stage_runs(client, submitted.root)
    parent = parents[1].info.run_id  # the second submission's, whose generate succeeded
    experiment = made["generate"].info.experiment_id

    def run_page(run_id: str, tab: str = "") -> str:
        return f"{submitted.uri}/#/experiments/{experiment}/runs/{run_id}/{tab}?workflowType=machine_learning"

    overview = page_text(browser, run_page(parent), "Child runs", "mlflow-parent.png")
    counts = {kind: int(n) for kind, n in re.findall(r"(Metrics|Parameters) \((\d+)\)", overview)}
    assert counts.get("Metrics", 0) > 10 and counts.get("Parameters", 0) > 10, (counts, overview[:2000])
    charts = page_text(browser, run_page(parent, "model-metrics"), "generate", "mlflow-parent-charts.png")
    assert chart_sections(charts).get("generate", 0) > 10, chart_sections(charts)
    for stage, expected in (
        ("train-tokenizer", {"train", "val", "summary"}),
        ("generate", {"eval/mse", "eval/ssim", "eval/identity", "summary"}),
    ):
        url = run_page(made[stage].info.run_id, "model-metrics")
        sections = chart_sections(page_text(browser, url, "summary", f"mlflow-{stage}-charts.png"))
        assert expected <= set(sections) and sections.get("Model metrics", 0) == 0, (stage, sections)


def chart_sections(text: str) -> dict[str, int]:
    """The chart sections a run's "Model metrics" tab shows, each with its number of charts."""
    headers = re.findall(r"^([^\n()]+?)[\n ]\((\d+)\)$", text, re.MULTILINE)  # "summary\n(13)"
    return {name: int(count) for name, count in headers}


def page_text(browser, url: str, shown: str, screenshot: str) -> str:
    """A fresh page at `url`, once the exact text `shown` is on it: its text at the top and then
    scrolled to the bottom (MLflow renders a long chart page as it scrolls); a screenshot kept."""
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    try:
        page.goto(url, wait_until="load")
        try:
            page.get_by_text(shown, exact=True).first.wait_for(timeout=60_000)
        finally:
            page.screenshot(path=SCREENSHOTS / screenshot, full_page=True)
        top = page.inner_text("body")
        page.evaluate(
            "() => document.querySelectorAll('*').forEach(element => {"
            " if (element.scrollHeight > element.clientHeight + 10)"
            " element.scrollTop = element.scrollHeight; })"
        )
        page.wait_for_timeout(3000)
        return top + "\n" + page.inner_text("body")
    finally:
        page.close()


def open_comparison_figure(browser, artifacts_url: str, tries: int = 2):
    """The run's Artifacts tab on a fresh page, `comparison/mse_by_step.png` clicked open and its
    image rendered; the page. A page that does not get there is kept (screenshot, text) and a
    fresh one tried once more: a UI that loads slowly passes, one that never shows it fails."""
    seen = []
    for attempt in range(1, tries + 1):
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(artifacts_url, wait_until="load")
        try:
            page.get_by_text("comparison", exact=True).first.click(timeout=60_000)
            page.get_by_text("mse_by_step.png", exact=True).first.click(timeout=60_000)
            page.get_by_text("comparison/mse_by_step.png").first.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => [...document.images].some(image => image.complete && image.naturalWidth > 300)",
                timeout=60_000,
            )
            return page
        except Exception as error:  # the page as it was, so a failure in CI says what it showed
            page.screenshot(path=SCREENSHOTS / f"mlflow-comparison-failed-{attempt}.png")
            seen.append(f"try {attempt}: {error}\n--- the page showed:\n{page.inner_text('body')[:3000]}")
            print(seen[-1])
            page.close()
    raise AssertionError("\n\n".join(seen))


@contextmanager
def mlflow_run(uri: str):
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment("stvideo-test-strangers")
    with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
        yield run.info.run_id


def test_sigterm_to_submit_stops_its_ray_job_and_says_so(ray_head, tmp_path):
    """`ray job stop` of a detached submission, or Kubernetes, sends SIGTERM: the stage's job
    must not go on writing the root with nobody watching."""
    import signal
    import subprocess

    from ray.job_submission import JobSubmissionClient

    from tests.conftest import start_stvideo

    root = tmp_path / "run"
    args = ["submit", "--stages", "ingest", "--address", ray_head["dashboard"], "--set", f"root={root}"]
    args += ["--set", "tracking.enabled=false", "--set", "data.moving_mnist.num_videos=3000"]
    submit = start_stvideo(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = JobSubmissionClient(ray_head["dashboard"])
    deadline, running = time.monotonic() + 120, None
    while running is None and time.monotonic() < deadline and submit.poll() is None:
        jobs = [job for job in client.list_jobs() if (job.metadata or {}).get("stvideo.root") == str(root)]
        running = next((job for job in jobs if str(job.status.value) == "RUNNING"), None)
        time.sleep(0.5)
    assert running is not None, submit.communicate(timeout=30)
    submit.send_signal(signal.SIGTERM)
    out, err = submit.communicate(timeout=90)
    assert submit.returncode == 1, out[-2000:] + err[-2000:]
    assert f"ingest: terminated; stopped Ray job {running.submission_id}" in err
    assert wait_for(client, running.submission_id, timeout=60) == "STOPPED"
