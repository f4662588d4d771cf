"""Stage manifests: complete, outdated or missing, judged by config and input identities."""

from __future__ import annotations

import json

from jobs import lineage
from jobs.config import load_config
from jobs.layout import Layout, started_with
from jobs.stages import ARTIFACTS, STAGES
from tests.conftest import REPO


def tiny(root, *overrides: str):
    return load_config(REPO / "configs" / "tiny.yaml", [f"root={root}", *overrides])


def fake_raw(root, content: str = "a") -> None:
    (root / "raw").mkdir(parents=True, exist_ok=True)
    (root / "raw" / "manifest.json").write_text(json.dumps({"shards": [content]}))


def fake_tokenizer(root, weights: bytes = b"weights") -> None:
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    (root / "tokenizer" / "model.safetensors").write_bytes(weights)


def check(cfg, stage: str) -> lineage.Completeness:
    return lineage.check(cfg, STAGES[stage])


def record(cfg, stage: str) -> dict:
    return lineage.record(
        check(cfg, stage), Layout.of(cfg), {}, {}, {"loss": 1.0}, {"mlflow_run_id": "run-1"}
    )


def test_a_recorded_stage_is_complete_until_its_config_changes(tmp_path):
    cfg = tiny(tmp_path)
    assert check(cfg, "ingest").state == "missing"
    fake_raw(tmp_path)
    assert check(cfg, "ingest").state == "missing"  # files alone prove nothing
    manifest = record(cfg, "ingest")
    assert (tmp_path / "raw" / "_stage.json").exists()
    assert check(cfg, "ingest").done
    assert manifest["output_identity"] == ARTIFACTS["raw"].identity(str(tmp_path / "raw"))

    changed = check(tiny(tmp_path, "ingest.crf=20"), "ingest")
    assert changed.state == "outdated" and changed.changed == ["ingest.crf"]
    # how a stage runs is not what it writes
    assert check(tiny(tmp_path, "ingest.overwrite=true", "ray.num_cpus=1"), "ingest").done
    # another stage's section does not concern ingest
    assert check(tiny(tmp_path, "dynamics.max_steps=3"), "ingest").done


def test_scale_and_logging_settings_do_not_outdate_a_training_stage(tmp_path):
    cfg = tiny(tmp_path)
    fake_raw(tmp_path)
    fake_tokenizer(tmp_path)
    record(cfg, "train-tokenizer")
    same = ["tokenizer.log_every=7", "tokenizer.checkpoint_every=3", "tokenizer.num_workers=0"]
    assert check(tiny(tmp_path, *same), "train-tokenizer").done
    assert check(tiny(tmp_path, "tokenizer.lr=0.1"), "train-tokenizer").changed == ["tokenizer.lr"]


def test_a_stage_is_outdated_when_an_input_it_read_changes(tmp_path):
    cfg = tiny(tmp_path)
    fake_raw(tmp_path)
    fake_tokenizer(tmp_path)
    record(cfg, "encode")
    assert check(cfg, "encode").done

    fake_tokenizer(tmp_path, b"retrained")
    status = check(cfg, "encode")
    assert status.state == "outdated" and status.changed == ["input tokenizer"]
    tags = lineage.lineage_tags(STAGES["encode"], status.manifest)
    assert tags["input.tokenizer.identity"] == status.manifest["input_identities"]["tokenizer"]

    # an input that has gone missing never counts as complete, and is named
    (tmp_path / "raw" / "manifest.json").unlink()
    status = check(cfg, "encode")
    assert status.state == "outdated" and status.inputs_missing == ["raw"]


def test_folder_inputs_are_identified_by_their_listing(tmp_path, video_folder):
    cfg = tiny(tmp_path / "out", "data.source=folder", f"data.path={video_folder['path']}")
    fake_raw(tmp_path / "out")
    record(cfg, "ingest")
    assert check(cfg, "ingest").done
    (video_folder["path"] / "another.mp4").write_bytes((video_folder["path"] / "square.mp4").read_bytes())
    assert check(cfg, "ingest").changed == ["input videos"]


def test_a_staged_output_is_swapped_in_whole_and_only_that_output_changes(tmp_path):
    cfg = tiny(tmp_path)
    fake_raw(tmp_path)
    fake_tokenizer(tmp_path, b"old weights")
    (tmp_path / "tokenizer" / "stale.txt").write_text("from an earlier, larger run")
    layout = Layout.of(cfg)
    staging = layout.staging(layout.trained_tokenizer)
    lineage.mark_started(staging, "fingerprint")
    (tmp_path / ".staging" / "tokenizer").mkdir(parents=True, exist_ok=True)
    (tmp_path / ".staging" / "tokenizer" / "model.safetensors").write_bytes(b"new weights")
    lineage.swap_in(staging, layout.trained_tokenizer)
    assert sorted(p.name for p in (tmp_path / "tokenizer").iterdir()) == ["model.safetensors"]
    assert (tmp_path / "tokenizer" / "model.safetensors").read_bytes() == b"new weights"
    assert (tmp_path / "raw" / "manifest.json").exists() and started_with(staging) is None
    lineage.clear(str(tmp_path / "tokenizer"))
    assert not (tmp_path / "tokenizer").exists() and (tmp_path / "raw" / "manifest.json").exists()


def test_the_layout_owns_every_location_and_the_checkpoint_rule(tmp_path):
    layout = Layout.of(tiny(tmp_path, "generate.name=run-2"))
    assert layout.raw == f"{tmp_path}/raw" and layout.latents == f"{tmp_path}/latents.zarr"
    assert layout.tokenizer == layout.trained_tokenizer == f"{tmp_path}/tokenizer"
    assert layout.generations == f"{tmp_path}/generations/run-2"
    given = Layout.of(tiny(tmp_path, f"encode.tokenizer={tmp_path / 'elsewhere'}"))
    assert given.tokenizer == f"{tmp_path}/elsewhere" and given.trained_tokenizer == f"{tmp_path}/tokenizer"
    assert STAGES["train-tokenizer"].output(given) == given.trained_tokenizer
    remote = Layout.of(tiny("s3://bucket/run"))
    assert remote.dynamics == "s3://bucket/run/dynamics" and not remote.is_local


def test_every_stage_reads_only_what_an_earlier_stage_writes():
    written = set()
    for spec in STAGES.values():
        assert set(spec.reads) <= written, f"{spec.name} reads {set(spec.reads) - written} before it exists"
        assert spec.writes in ARTIFACTS
        written.add(spec.writes)
