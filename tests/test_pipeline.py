"""The whole pipeline through the CLI on the tiny config: every stage, its MLflow run and
lineage, skipping what is complete, and generation on videos a user brings."""

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

from tests.conftest import (
    DEFAULT_TRACKING_URI,
    REPO,
    is_loopback,
    kill_when,
    run_stvideo,
    run_stvideo_listening,
    runs_of,
    untracked_tiny,
)
from tests.test_ingest_stage import read_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> SimpleNamespace:
    """The tiny config run from scratch, tracked, noting every socket it listens on. Both tests
    use its root: the second only adds a generation of its own to it."""
    root = tmp_path_factory.mktemp("pipeline") / "tiny"
    secret = ["--set", "submit.env.WANDB_API_KEY=hunter2"]  # must reach no log, artifact or manifest
    result, listening = run_stvideo_listening(
        "run",
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "--set",
        f"root={root}",
        *secret,
        env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"},  # a tiny stage lasts seconds
    )
    return SimpleNamespace(root=root, result=result, listening=listening)


def test_tiny_pipeline_runs_and_tracks_every_stage_in_mlflow(tiny_run, tmp_path):
    root, result, listening = tiny_run.root, tiny_run.result, tiny_run.listening
    assert result.returncode == 0, result.stderr[-3000:]
    # the embedded Ray (GCS, raylet, workers, agents) and all else listen on loopback only
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, listening
    exposed = {(name, ip, port) for name, ip, port in listening if not is_loopback(ip)}
    assert not exposed, f"listening beyond loopback: {sorted(exposed)}"
    manifest, _ = read_manifest(root)
    assert manifest["num_samples"] == 48
    assert (root / "raw" / "preview.gif").exists()

    from mlflow.tracking import MlflowClient

    # the user's one store (STVIDEO_HOME), not one per root
    client = MlflowClient(tracking_uri=DEFAULT_TRACKING_URI)
    runs = check_the_runs_up_to_encode(client, root)
    metrics = check_the_generations(root, runs, result.stdout + result.stderr)
    finished = check_lineage_logs_and_the_registry(client, root, runs, metrics, result, tmp_path)
    check_generate_resumes_and_a_rerun_redoes_only_it(root, metrics, finished)


def check_the_runs_up_to_encode(client, root) -> dict:
    """Ingest, the tokenizer and encode: their runs under the parent, lineage and outputs;
    returns every run by stage ("parent" for the parent)."""
    from pipeline.latents import open_latents
    from tokenizer.tokenizer import Tokenizer

    # the user's one store (STVIDEO_HOME), not one per root; the experiment opens as model training
    experiment = client.get_experiment_by_name("stvideo-tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert not (root / "mlflow.db").exists()
    runs = {run.data.tags.get("stvideo.stage", "parent"): run for run in runs_of(root)}
    parent = runs["parent"]
    assert parent.info.run_name == "tiny"
    ingest, tokenizer = runs["ingest"], runs["train-tokenizer"]
    for stage in (ingest, tokenizer):
        assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert ingest.data.metrics["summary/videos_kept"] == 48
    assert ingest.data.tags["output.raw"] == f"{root}/raw"
    assert ingest.data.params["data.moving_mnist.num_videos"] == "48"
    assert [a.path for a in client.list_artifacts(ingest.info.run_id, "preview")] == ["preview/raw.gif"]

    # the tokenizer: a loadable checkpoint, its identity as lineage, quality above the mean frame
    assert tokenizer.data.tags["input.raw"] == f"{root}/raw"
    loaded = Tokenizer.from_pretrained(root / "tokenizer")
    assert tokenizer.data.tags["output.tokenizer.identity"] == loaded.identity
    assert tokenizer.data.params["tokenizer.model.codebook_size"] == "128"
    metrics = tokenizer.data.metrics
    assert metrics["val/psnr"] > metrics["val/psnr_mean_frame"] + 3, metrics
    assert metrics["summary/psnr"] == metrics["val/psnr"]  # the stage's figure: its last evaluation
    assert len(client.get_metric_history(tokenizer.info.run_id, "train/recon_loss")) >= 4
    grids = [a.path for a in client.list_artifacts(tokenizer.info.run_id, "recon")]
    assert grids and all(path.endswith(".png") for path in grids)

    # encode: latents of exactly that tokenizer, lineage readable from the tags
    encode = runs["encode"]
    assert encode.data.tags["input.tokenizer.identity"] == loaded.identity
    assert encode.data.tags["output.latents"] == f"{root}/latents.zarr"
    store = open_latents(f"{root}/latents.zarr", tokenizer_identity=loaded.identity)
    assert store.num_clips == 48 and encode.data.metrics["summary/clips"] == 48
    assert encode.data.metrics["summary/clips_missing"] == 0
    return runs


def check_the_generations(root, runs: dict, output: str) -> dict:
    """Dynamics and generate: the continuations, their scores and videos; returns metrics.json."""
    parent, dynamics = runs["parent"], runs["train-dynamics"]
    assert dynamics.data.metrics["val/mse"] > 0 and dynamics.data.metrics["train/tokens_per_s"] > 0
    out = root / "generations" / "default"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_step"]) == {
        "model",
        "model_samples",
        "model_best",
        "model_average",
        "model_median",
        "copy_last",
        "copy_last_latent",
        "black",
        "train_mean",
        "reconstruction",
        "truth",  # the originals' digit identity (that score's ceiling) and moving-region detail
    }
    assert set(metrics["per_step"]["truth"]) == {"identity", "detail"}
    # what the figures come from: each model's steps against its budget, neither cut by its guard
    assert metrics["trained"] == {
        "tokenizer": {"steps": 40, "max_steps": 40, "stopped_by_time": 0.0},
        "dynamics": {"steps": 30, "max_steps": 30, "stopped_by_time": 0.0},
    }
    assert all(len(metrics["per_step"][ref]["detail"]) == 10 for ref in metrics["per_step"])
    assert all(len(metrics["per_step"][ref]["identity"]) == 10 for ref in metrics["per_step"])
    ceiling, prompt = metrics["mean"]["truth"]["identity"], metrics["prompt_identity"]
    assert ceiling > 0.8 and prompt["original"] > 0.8 and 0 <= prompt["reconstructed"] <= 1
    assert metrics["mean"]["black"]["identity"] < ceiling
    assert "digits named right: sample 0" in output
    # the mean frame (from the train split) is the best constant guess, so it beats black on MSE
    assert metrics["mean"]["train_mean"]["mse"] < metrics["mean"]["black"]["mse"]
    assert set(metrics["beats_references"]) == {"mse", "ssim", "steps", "model_average", "model_median"}
    assert all(len(metrics["per_step"]["model"][m]) == 10 for m in ("mse", "mae", "psnr", "ssim"))
    assert metrics["mean"]["reconstruction"]["mse"] < metrics["mean"]["copy_last"]["mse"]
    videos = sorted((out / "videos").glob("*.mp4"))
    assert (
        len(videos)
        == metrics["clips"]
        == zarr.open_group(str(out / "codes.zarr"), mode="r")["codes"].shape[0]
    )
    import av

    with av.open(str(videos[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 20  # P + K frames
    assert (out / "preview.gif").stat().st_size > 0 and (out / "preview.mp4").stat().st_size > 0
    generate = runs["generate"]
    assert generate.data.metrics["summary/model_mse"] == metrics["mean"]["model"]["mse"]
    assert generate.data.metrics["summary/truth_identity"] == ceiling
    assert generate.data.metrics["summary/prompt_identity_original"] == prompt["original"]
    # the parent carries every stage's params and figures (a chart section per stage), and
    # generate registered the trained pair as one model
    assert parent.data.params["tokenizer.max_steps"] == "40" and parent.data.params["generate.samples"] == "1"
    assert parent.data.metrics["generate/model_mse"] == metrics["mean"]["model"]["mse"]
    assert parent.data.metrics["train-tokenizer/psnr"] > 0 and "encode/clips" in parent.data.metrics
    assert generate.data.tags["output.generator.model"].startswith("models:/stvideo-generator/")
    return metrics


def check_lineage_logs_and_the_registry(client, root, runs: dict, metrics: dict, result, tmp_path) -> str:
    """Every stage's completion record, logs, datasets and system metrics; the registered models;
    no secret anywhere; generate's actors wrote its outputs. Returns when generate finished."""
    parent, dynamics, generate = runs["parent"], runs["train-dynamics"], runs["generate"]
    out = root / "generations" / "default"
    # every stage recorded its completion, with the run that produced it
    for stage, folder in [
        ("ingest", "raw"),
        ("train-tokenizer", "tokenizer"),
        ("encode", "latents.zarr"),
        ("train-dynamics", "dynamics"),
        ("generate", "generations/default"),
    ]:
        recorded = json.loads((root / folder / "_stage.json").read_text())
        assert recorded["stage"] == stage and recorded["mlflow_run_id"] == runs[stage].info.run_id
    metrics_finished = recorded["finished_at"]
    assert [a.path for a in client.list_artifacts(generate.info.run_id, "preview")] == ["preview/preview.gif"]
    # the preview's generated frames on the image charts, one per horizon step
    steps = [a.path for a in client.list_artifacts(generate.info.run_id, "images")]
    assert sum("preview" in path and path.endswith(".png") for path in steps) == 10, steps
    figures = {a.path for a in client.list_artifacts(generate.info.run_id, "comparison")}
    assert {"comparison/mse_by_step.png", "comparison/ssim_by_step.png"} <= figures, figures
    assert (out / "report.html").stat().st_size > 0
    # each stage's own log, the data it read as datasets, its process's CPU and memory
    for stage, run in runs.items():
        if stage == "parent":
            continue
        [log] = [a.path for a in client.list_artifacts(run.info.run_id, "logs")]
        text = open(client.download_artifacts(run.info.run_id, log, str(tmp_path))).read()
        assert log == f"logs/{stage}.log" and f"{stage}:" in text, (stage, text[-500:])
        assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics), stage
    # every metric in a chart section (train/, val/, eval/<metric>/, summary/, system/; the
    # parent's per stage): none in MLflow's catch-all "Model metrics"
    for stage, run in runs.items():
        assert all("/" in key for key in run.data.metrics), (stage, sorted(run.data.metrics)[:5])
    assert (
        "eval/mse/model" in runs["generate"].data.metrics
        and "eval/ssim/copy_last" in runs["generate"].data.metrics
    )
    datasets = {stage: [d.dataset.name for d in runs[stage].inputs.dataset_inputs] for stage in runs}
    assert datasets["encode"] == ["tiny-raw"] and datasets["generate"] == ["tiny-latents"], datasets
    # both models registered, tagged with the identity of what the root holds
    [version] = client.search_model_versions(f"run_id='{dynamics.info.run_id}'")
    assert version.name == "stvideo-dynamics" and version.tags["stvideo.root"] == str(root)
    assert version.tags["stvideo.identity"] == dynamics.data.tags["output.dynamics.identity"]
    logged = client.download_artifacts(parent.info.run_id, "config.yaml", str(root.parent))
    assert "WANDB_API_KEY: <redacted>" in open(logged).read()
    assert not [path for path in root.rglob("*") if path.is_file() and b"hunter2" in path.read_bytes()]

    # generate's actors wrote the codes and recorded each batch; the driver (the CLI) wrote none
    records = [json.loads(p.read_text()) for p in (out / "codes.zarr" / "_progress").glob("batch-*.json")]
    assert sum(len(record["clips"]) for record in records) == metrics["clips"]
    assert all(record["writer"]["pid"] not in (result.pid, 0) for record in records)

    return metrics_finished


def check_generate_resumes_and_a_rerun_redoes_only_it(root, metrics: dict, metrics_finished: str) -> None:
    out = root / "generations" / "default"
    # the same seed gives the same continuations and scores whatever the batching and the number
    # of actors, and a generate killed mid-run resumes with the clips no batch record names
    config = untracked_tiny(root)
    two_actors = ["generate", *config, "--set", "generate.name=two-actors"]
    two_actors += ["--set", "generate.num_actors=2", "--set", "generate.batch_size=3"]
    staging = root / ".staging" / "generations" / "two-actors" / "codes.zarr" / "_progress"
    recorded = kill_when(two_actors, staging, "batch-*.json", 1)
    batches = -(-metrics["clips"] // 3)
    assert 1 <= recorded < batches, f"the kill landed after {recorded} of {batches} batch records"
    again = run_stvideo(*two_actors)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "generate: resuming the unfinished run" in again.stdout
    assert "clips were already generated and kept" in again.stdout
    resumed = root / "generations" / "two-actors"
    first = zarr.open_group(str(out / "codes.zarr"), mode="r")["codes"][:]
    second = zarr.open_group(str(resumed / "codes.zarr"), mode="r")["codes"][:]
    assert np.array_equal(first, second)
    scores = json.loads((resumed / "metrics.json").read_text())
    assert {**scores, "seconds": 0} == {**metrics, "seconds": 0}
    assert len(list((resumed / "videos").glob("*.mp4"))) == metrics["clips"]

    # a rerun skips every complete stage; a changed generate setting redoes generate alone
    rerun = run_stvideo("run", *config, "--set", "generate.seed=1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for stage in ("ingest", "train-tokenizer", "encode", "train-dynamics"):
        assert f"{stage}: skipped, complete for this config and these inputs" in rerun.stdout
    assert "generate: outdated (generate.seed)" in rerun.stdout
    assert "generate: redoing from scratch" in rerun.stdout
    redone = json.loads((root / "generations" / "default" / "_stage.json").read_text())
    assert redone["config"]["generate.seed"] == 1 and redone["finished_at"] >= metrics_finished


def test_generate_continues_videos_a_user_brings(tiny_run, video_folder, tmp_path):
    """Brought videos are encoded on the way in; one shorter than the prompt is rejected, the rest
    go on. The trained pair, registered as one MLflow model, continues a prompt as generate did."""
    assert tiny_run.result.returncode == 0, tiny_run.result.stderr[-3000:]
    root = tiny_run.root  # its trained models; this test's generation goes under a name of its own
    config = ["--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"root={root}"]  # tracked
    folder = video_folder["path"]
    result = run_stvideo(
        "generate", *config, "--set", f"generate.videos={folder}/*.mp4", "--set", "generate.name=mine"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    registered = re.search(r"registered as (models:/stvideo-generator/\d+)", result.stdout)
    assert registered, result.stdout[-3000:]
    assert_the_registered_model_continues_as_generate_did(registered.group(1), root, folder, tmp_path)
    # generate takes that model in place of both checkpoints, and continues the same
    again = run_stvideo(
        "generate",
        *untracked_tiny(root),
        *("--set", f"generate.videos={folder}/*.mp4", "--set", "generate.name=from-model"),
        *("--set", f"generate.model={registered.group(1)}"),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    codes = [
        zarr.open_group(str(root / "generations" / name / "codes.zarr"), mode="r")["codes"][:]
        for name in ("mine", "from-model")
    ]
    assert np.array_equal(*codes)
    metrics = json.loads((root / "generations" / "mine" / "metrics.json").read_text())
    reasons = {r["clip"]: r["reason"] for r in metrics["rejected"]}
    # square.mp4 (24 frames) goes on; the broken files and short.mp4 (8 frames < 10 prompt frames) do not
    assert metrics["clips"] == 1 and (root / "generations" / "mine" / "videos" / "square.mp4").exists()
    assert "fewer than the 10 prompt frames" in reasons["short"]
    assert {"empty", "notes", "truncated", "damaged", "dangling", "short"} <= set(reasons)
    # brought videos have no digit tracks: no identity score, rather than a wrong one
    assert set(metrics["per_step"]["truth"]) == {"detail"} and "prompt_identity" not in metrics
    assert "identity" not in metrics["per_step"]["model"]


def assert_the_registered_model_continues_as_generate_did(uri: str, root, folder, tmp_path) -> None:
    """`mlflow.pyfunc.load_model(uri)` in a fresh process, given square.mp4's prompt with the clip
    and seed generate used, returns the codes generate wrote for it and the frames of its video."""
    from mlflow.tracking import MlflowClient

    from pipeline.generations import read_names
    from pipeline.truth import video_start
    from pipeline.video import read_frames

    name, number = uri.removeprefix("models:/").split("/")
    version = MlflowClient(tracking_uri=DEFAULT_TRACKING_URI).get_model_version(name, number)
    assert "Scored on 1 clips" in version.description and "MSE per frame" in version.description
    out = root / "generations" / "mine"
    position = read_names(str(out / "codes.zarr")).index("square")
    prompt = video_start(str(folder / "square.mp4"), 10, 20, 64, 1)[:10]
    np.save(tmp_path / "prompt.npy", prompt[None])
    script = (
        "import sys, mlflow, numpy as np\n"
        f"model = mlflow.pyfunc.load_model({uri!r})\n"
        f"out = model.predict(np.load(sys.argv[1]), params={{'clip': {position}, 'seed': 0}})\n"
        "np.save(sys.argv[2], out['codes']); np.save(sys.argv[3], out['frames'])\n"
    )
    files = [str(tmp_path / name) for name in ("prompt.npy", "codes.npy", "frames.npy")]
    loaded = subprocess.run(
        [sys.executable, "-c", script, *files],
        env={**os.environ, "MLFLOW_TRACKING_URI": DEFAULT_TRACKING_URI},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    written = zarr.open_group(str(out / "codes.zarr"), mode="r")["codes"][position]
    assert np.array_equal(np.load(files[1])[0], written)
    frames = np.load(files[2])[0, 0]  # sample 0's 10 generated frames, [K, C, H, W]
    video = (out / "videos" / "square.mp4").read_bytes()
    shown = read_frames(video, indices=range(10, 20))[..., 0]  # the mp4 is lossy
    assert frames.shape == (10, 1, 64, 64) and np.abs(frames[:, 0].astype(int) - shown).mean() < 3


def test_a_corrupt_chunk_a_truncated_shard_and_stale_inputs_are_named_in_one_line(tiny_run, tmp_path):
    """A copy of the tiny run's root: random bytes in one `codes` chunk reject that shard's test
    clips at generate, naming the shard and clip, and the rest go on; a raw shard cut in half
    fails encode in one line naming the shard and the last sample read whole; encode run alone
    under another data config is refused."""
    import shutil

    assert tiny_run.result.returncode == 0, tiny_run.result.stderr[-3000:]
    root = tmp_path / "copy"
    shutil.copytree(tiny_run.root, root, ignore=shutil.ignore_patterns("generations", ".staging"))
    split = zarr.open_group(str(root / "latents.zarr"), mode="r")["split"][:]
    shard = int(np.flatnonzero(split == 2)[0]) // 8  # a shard with a test clip (8 clips a shard)
    chunk = root / "latents.zarr" / "codes" / "c" / str(shard) / "0" / "0" / "0"
    damaged = bytearray(chunk.read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, len(damaged[20::7]), dtype=np.uint8)
    damaged[20::7] = noise.tobytes()
    chunk.write_bytes(bytes(damaged))
    quick = {"generate.name": "corrupt", "generate.samples": 2, "generate.protocols": "[]"}
    quick = [arg for key, value in quick.items() for arg in ("--set", f"{key}={value}")]
    generated = run_stvideo("generate", *untracked_tiny(root), *quick)
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert f"array 'codes', shard {shard} (clips {shard * 8}..{shard * 8 + 7}) does not decode at clip" in (
        generated.stdout
    )
    metrics = json.loads((root / "generations" / "corrupt" / "metrics.json").read_text())
    assert metrics["clips"] == int((split == 2).sum()) - len(metrics["rejected"]) > 0

    tar = root / "raw" / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    encoded = run_stvideo("encode", *untracked_tiny(root), "--force")
    assert encoded.returncode == 1, encoded.stderr[-3000:]
    [line] = [line for line in encoded.stderr.splitlines() if line.startswith("stvideo encode:")]
    assert f"{tar}: raw shard unreadable after mmnist-" in line and "ingest again with --force" in line, line
    assert "Traceback" not in encoded.stderr

    # a stage run alone with a data config other than the one its raw shards were made with is
    # refused, naming what changed, before it builds on them
    other = ["--set", "data.source=folder", "--set", f"data.path={tmp_path}"]
    refused = run_stvideo("encode", *untracked_tiny(root), *other)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"{root}/raw was made by ingest with settings other than this config's" in refused.stderr
    assert "data.path, data.source" in refused.stderr and "run `stvideo ingest` first" in refused.stderr

    # `status --verify` reads every stored byte back and names both
    verified = run_stvideo("status", *untracked_tiny(root), "--verify")
    assert verified.returncode == 1, verified.stdout[-3000:] + verified.stderr[-3000:]
    bad = [line for line in verified.stdout.splitlines() if line.startswith("verify: bad: ")]
    assert len(bad) == 2, verified.stdout
    assert bad[0].startswith(f"verify: bad: {tar}: raw shard unreadable after mmnist-")
    assert bad[1].startswith(f"verify: bad: {root}/latents.zarr shard {shard}: array 'codes', shard {shard}")
    assert "verify: 2 bad of 3 raw shards, 6 latents.zarr shards, 2 checkpoints" in verified.stdout


def test_a_disk_that_fills_at_encode_or_generate_is_one_line_naming_the_store_and_the_rerun_resumes(
    tiny_run, small_disk
):
    """The tiny run's inputs of encode on a tmpfs with room for part of its store: encode fails
    in one line naming the store it was writing; with room again it resumes its staging and
    writes the tiny run's very codes. The same for generate."""
    import shutil

    from tests.conftest import disk_room

    assert tiny_run.result.returncode == 0, tiny_run.result.stderr[-3000:]
    root = small_disk / "tiny"
    disk_room(small_disk, 32 * 1024)
    for output in ("raw", "tokenizer", "dynamics"):
        shutil.copytree(tiny_run.root / output, root / output)
    # the settings the tiny run's generation has now (an earlier test of this module redoes it)
    made_with = json.loads((tiny_run.root / "generations" / "default" / "_stage.json").read_text())["config"]
    same_seed = ["--set", f"generate.seed={made_with['generate.seed']}"]
    for stage, store, room_kib in (("encode", "latents.zarr", 140), ("generate", "generations/default", 900)):
        config = [*untracked_tiny(root), *(same_seed if stage == "generate" else [])]
        disk_room(small_disk, room_kib)
        full = run_stvideo(stage, *config)
        assert full.returncode == 1, full.stdout[-2000:] + full.stderr[-2000:]
        [line] = [line for line in full.stderr.splitlines() if line.startswith(f"stvideo {stage}:")]
        said = f"stvideo {stage}: no space left on device writing {root}/.staging/{store}"
        assert line.startswith(said) and "run again" in line, line
        assert "Traceback" not in full.stderr and " ERROR " not in full.stderr, full.stderr[-3000:]
        disk_room(small_disk, 16 * 1024)
        again = run_stvideo(stage, *config)
        assert again.returncode == 0, again.stderr[-3000:]
        assert (
            f"{stage}: resuming the unfinished run in {root}/.staging/{store}" in again.stdout + again.stderr
        )
        assert not (root / ".staging").exists()
    for store in ("latents.zarr", "generations/default/codes.zarr"):
        made, clean = (zarr.open_group(str(where / store), mode="r") for where in (root, tiny_run.root))
        assert np.array_equal(made["codes"][:], clean["codes"][:]), store
    # no clip was taken for a bad one because the disk was full: every score is the clean run's
    made, clean = (
        json.loads((where / "generations/default/metrics.json").read_text())
        for where in (root, tiny_run.root)
    )
    assert made["rejected"] == [] and {**made, "seconds": 0} == {**clean, "seconds": 0}
