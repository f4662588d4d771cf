"""The KubeRay and MLflow manifests in infra/kuberay: their shape, and that they fit each other."""

from __future__ import annotations

import yaml

from jobs.config import load_config
from jobs.stages import STAGES
from tests.conftest import REPO


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
    assert STAGES["train-dynamics"].resources_for(cfg).num_gpus == 1
    assert STAGES["encode"].resources_for(cfg).num_gpus == 0


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
