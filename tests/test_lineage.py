"""Stage manifests (complete / outdated / missing), the Jobs API retry rule, and the cluster manifests."""

from __future__ import annotations

import json

import pytest
import yaml

from jobs import lineage
from jobs.config import load_config
from jobs.submit import SubmitError, retrying
from tests.conftest import REPO


def tiny(root, *overrides: str):
    return load_config(REPO / "configs" / "tiny.yaml", [f"root={root}", *overrides])


def fake_raw(root, content: str = "a") -> None:
    (root / "raw").mkdir(parents=True, exist_ok=True)
    (root / "raw" / "manifest.json").write_text(json.dumps({"shards": [content]}))


def fake_tokenizer(root, weights: bytes = b"weights") -> None:
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    (root / "tokenizer" / "model.safetensors").write_bytes(weights)


def record(cfg, stage: str) -> dict:
    return lineage.record(cfg, stage, {}, {}, {"loss": 1.0}, {"mlflow_run_id": "run-1"})


def test_a_recorded_stage_is_complete_until_its_config_changes(tmp_path):
    cfg = tiny(tmp_path)
    assert lineage.check(cfg, "ingest").state == "missing"
    fake_raw(tmp_path)
    assert lineage.check(cfg, "ingest").state == "missing"  # files alone prove nothing
    manifest = record(cfg, "ingest")
    assert (tmp_path / "raw" / "_stage.json").exists()
    assert lineage.check(cfg, "ingest").done
    assert manifest["output_identity"] == lineage.ARTIFACTS["raw"].identity(str(tmp_path / "raw"))

    changed = lineage.check(tiny(tmp_path, "ingest.crf=20"), "ingest")
    assert changed.state == "outdated" and changed.changed == ["ingest.crf"]
    # how a stage runs is not what it writes
    assert lineage.check(tiny(tmp_path, "ingest.overwrite=true", "ray.num_cpus=1"), "ingest").done
    # another stage's section does not concern ingest
    assert lineage.check(tiny(tmp_path, "dynamics.max_steps=3"), "ingest").done


def test_scale_and_logging_settings_do_not_outdate_a_training_stage(tmp_path):
    cfg = tiny(tmp_path)
    fake_raw(tmp_path)
    fake_tokenizer(tmp_path)
    record(cfg, "train-tokenizer")
    same = ["tokenizer.log_every=7", "tokenizer.checkpoint_every=3", "tokenizer.num_workers=0"]
    assert lineage.check(tiny(tmp_path, *same), "train-tokenizer").done
    assert lineage.check(tiny(tmp_path, "tokenizer.lr=0.1"), "train-tokenizer").changed == ["tokenizer.lr"]


def test_a_stage_is_outdated_when_an_input_it_read_changes(tmp_path):
    cfg = tiny(tmp_path)
    fake_raw(tmp_path)
    fake_tokenizer(tmp_path)
    record(cfg, "encode")
    assert lineage.check(cfg, "encode").done

    fake_tokenizer(tmp_path, b"retrained")
    status = lineage.check(cfg, "encode")
    assert status.state == "outdated" and status.changed == ["input tokenizer"]
    tags = lineage.lineage_tags(status.manifest)
    assert tags["input.tokenizer.identity"] == status.manifest["input_identities"]["tokenizer"]

    # an input that has gone missing never counts as complete, and is named
    (tmp_path / "raw" / "manifest.json").unlink()
    status = lineage.check(cfg, "encode")
    assert status.state == "outdated" and status.inputs_missing == ["raw"]


def test_folder_inputs_are_identified_by_their_listing(tmp_path, video_folder):
    cfg = tiny(tmp_path / "out", "data.source=folder", f"data.path={video_folder['path']}")
    fake_raw(tmp_path / "out")
    record(cfg, "ingest")
    assert lineage.check(cfg, "ingest").done
    (video_folder["path"] / "another.mp4").write_bytes((video_folder["path"] / "square.mp4").read_bytes())
    assert lineage.check(cfg, "ingest").changed == ["input videos"]


def test_clear_removes_only_that_stages_outputs(tmp_path):
    cfg = tiny(tmp_path)
    fake_raw(tmp_path)
    fake_tokenizer(tmp_path)
    record(cfg, "train-tokenizer")
    lineage.clear(cfg, "train-tokenizer")
    assert not (tmp_path / "tokenizer").exists() and (tmp_path / "raw" / "manifest.json").exists()


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


def kuberay(name: str) -> list[dict]:
    return list(yaml.safe_load_all((REPO / "infra" / "kuberay" / name).read_text()))


def test_the_raycluster_has_a_cpu_head_and_a_gpu_worker_group():
    (cluster,) = kuberay("raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["spec"]["rayVersion"] == "2.60.0"
    head = cluster["spec"]["headGroupSpec"]
    (head_container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    assert {port["containerPort"] for port in head_container["ports"]} >= {6379, 8265}
    (gpu,) = cluster["spec"]["workerGroupSpecs"]
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    for container in (head_container, worker):
        assert container["image"] and {"name": "RAY_AUTH_MODE", "value": "disabled"} in container["env"]
        assert any(m["mountPath"] == "/shared" for m in container["volumeMounts"])


def test_the_pipeline_rayjob_submits_the_cluster_config_to_that_cluster():
    (cluster,) = kuberay("raycluster.yaml")
    (job,) = kuberay("rayjob-pipeline.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    entrypoint = job["spec"]["entrypoint"].split()
    assert entrypoint[1:4] == ["-m", "jobs.cli", "submit"]
    assert (
        entrypoint[entrypoint.index("--address") + 1] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    )
    config_path = entrypoint[entrypoint.index("--config") + 1]
    assert config_path.startswith("/opt/stvideo/")
    cfg = load_config(REPO / config_path.removeprefix("/opt/stvideo/"))
    assert cfg.root.startswith("/shared/") and cfg.tracking.uri.startswith("http://mlflow.")
    assert cfg.submit.python == entrypoint[0]
    assert cfg.submit.resources.train_dynamics.num_gpus == 1


def test_the_mlflow_deployment_uses_postgres_and_s3():
    deployment, service = kuberay("mlflow.yaml")
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = " ".join(container["command"])
    assert "--artifacts-destination=s3://" in args and "--workers=2" in args
    # MLflow 3 answers 403 to a Host it was not told about: the jobs call it by its Service name
    allowed = next(arg for arg in container["command"] if arg.startswith("--allowed-hosts="))
    meta = service["metadata"]
    assert f"{meta['name']}.{meta['namespace']}.svc.cluster.local:5000" in allowed
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-postgres"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_submit_says_why_it_cannot_start_and_writes_nothing(tmp_path):
    from tests.conftest import free_port, run_stvideo

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
