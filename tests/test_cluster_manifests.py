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
        assert container["image"] and any(m["mountPath"] == "/shared" for m in container["volumeMounts"])


def env_names(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def secrets_of(container: dict) -> set[str]:
    """Every Secret a container reads, by env entry or envFrom."""
    named = {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", []) if "valueFrom" in e}
    return named | {
        source["secretRef"]["name"] for source in container.get("envFrom", []) if "secretRef" in source
    }


def test_the_cluster_is_closed_by_default():
    """Token auth on every Ray endpoint, the submitter holding the same token, a NetworkPolicy for
    the Ray pods and MLflow, and bucket keys only where they are used."""
    (cluster,) = kuberay("raycluster.yaml")
    (job,) = kuberay("rayjob-pipeline.yaml")
    mlflow, _ = kuberay("mlflow.yaml")
    ray_policy, mlflow_policy = kuberay("networkpolicy.yaml")
    name = cluster["metadata"]["name"]

    auth = cluster["spec"]["authOptions"]
    assert auth["mode"] == "token"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    for container in (head, worker):  # the operator sets RAY_AUTH_MODE: nothing may turn it off
        assert "RAY_AUTH_MODE" not in env_names(container)
    submitter_pod = job["spec"]["submitterPodTemplate"]
    (submitter,) = submitter_pod["spec"]["containers"]
    submitter_env = env_names(submitter)
    assert submitter_env["RAY_AUTH_MODE"]["value"] == "token"
    assert submitter_env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": auth["secretName"],
        "key": "auth_token",
    }
    config_path = job["spec"]["entrypoint"].split()[job["spec"]["entrypoint"].split().index("--config") + 1]
    cfg = load_config(REPO / config_path.removeprefix("/opt/stvideo/"))
    assert "RAY_AUTH_MODE" not in cfg.submit.env  # the jobs inherit the cluster's token mode

    # the Ray pods admit their own cluster, the labelled submitter and the operator's namespace
    assert ray_policy["kind"] == "NetworkPolicy" and ray_policy["spec"]["policyTypes"] == ["Ingress"]
    assert ray_policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": name}
    (rule,) = ray_policy["spec"]["ingress"]
    peers = [peer.get("podSelector", {}).get("matchLabels") for peer in rule["from"]]
    assert {"ray.io/cluster": name} in peers
    assert submitter_pod["metadata"]["labels"] in peers
    assert any("namespaceSelector" in peer and "podSelector" not in peer for peer in rule["from"])
    # MLflow admits those two on its port alone
    assert mlflow_policy["metadata"]["namespace"] == mlflow["metadata"]["namespace"]
    assert mlflow_policy["spec"]["podSelector"]["matchLabels"] == mlflow["spec"]["selector"]["matchLabels"]
    (rule,) = mlflow_policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 5000, "protocol": "TCP"}]
    assert [peer["podSelector"]["matchLabels"] for peer in rule["from"]] == [
        {"ray.io/cluster": name},
        submitter_pod["metadata"]["labels"],
    ]

    # MLflow's bucket keys live on MLflow alone; the submitter holds no bucket keys at all
    (mlflow_container,) = mlflow["spec"]["template"]["spec"]["containers"]
    artifact_keys = secrets_of(mlflow_container) - {"mlflow-postgres"}
    assert len(artifact_keys) == 1
    for container in (head, worker, submitter):
        assert not secrets_of(container) & artifact_keys
    assert secrets_of(submitter) == {auth["secretName"]}
    for container in (head, worker):  # data-bucket keys: optional, for a root on s3:// only
        assert all(source["secretRef"].get("optional") for source in container.get("envFrom", []))


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
