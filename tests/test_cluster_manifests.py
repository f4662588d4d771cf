"""The cluster kit in infra/kuberay and infra/docker: every object valid as Kubernetes and
KubeRay define it, and the pieces fitting each other (names, secrets, image paths, config)."""

from __future__ import annotations

import re
import tomllib

import kubernetes_validate
import pytest
import yaml

from jobs.config import load_config
from tests.conftest import REPO

KIT = REPO / "infra" / "kuberay"
KUBERNETES = "1.33"  # the Kubernetes API the core objects are validated against
# The KubeRay v1 API's fields (ray-operator/apis/ray/v1/raycluster_types.go and rayjob_types.go
# of ray-project/kuberay, looked up at its master of 2026-11): what our Ray resources may use.
RAYCLUSTER_SPEC = {
    "upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
    "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "historyServerOptions", "networkPolicy", "tlsOptions", "headGroupSpec", "rayVersion",
    "workerGroupSpecs",
}  # fmt: skip
AUTH_OPTIONS = {"enableK8sTokenAuth", "secretName", "mode"}
AUTH_MODES = {"disabled", "token"}
HEAD_GROUP = {
    "template", "headService", "enableIngress", "ingressOptions", "resources", "labels",
    "rayStartParams", "serviceType",
}  # fmt: skip
WORKER_GROUP = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "priority", "resources", "labels", "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip
RAYJOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
    "entrypointNumGpus", "ttlSecondsAfterFinished", "preRunningDeadlineSeconds",
    "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def kuberay(name: str) -> list[dict]:
    return list(yaml.safe_load_all((KIT / name).read_text()))


def kit() -> list[dict]:
    """Every object `kubectl apply -k infra/kuberay` applies, in the kustomization's order."""
    kustomization = yaml.safe_load((KIT / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in kuberay(name)]


def of_kind(kind: str, name: str | None = None) -> dict:
    [found] = [d for d in kit() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def ray_pods() -> dict[str, dict]:
    """The pod specs of the Ray cluster and of the pipeline's submitter, by role."""
    cluster, job = of_kind("RayCluster"), of_kind("RayJob")
    return {
        "head": cluster["spec"]["headGroupSpec"]["template"]["spec"],
        "worker": cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"],
        "submitter": job["spec"]["submitterPodTemplate"]["spec"],
    }


def env_names(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def secrets_of(container: dict) -> set[str]:
    """Every Secret a container reads, by env entry or envFrom."""
    named = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    return named | {
        source["secretRef"]["name"] for source in container.get("envFrom", []) if "secretRef" in source
    }


def test_the_kustomization_applies_every_manifest_into_one_namespace():
    kustomization = yaml.safe_load((KIT / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        path.name for path in KIT.glob("*.yaml") if path.name != "kustomization.yaml"
    )
    namespace = of_kind("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    for doc in kit():  # the kustomization places them; none pins another namespace
        assert doc["metadata"].get("namespace") in (None, namespace), doc["metadata"]["name"]


CORE = [doc for doc in kit() if not doc["apiVersion"].startswith("ray.io/")]  # KubeRay's: below


@pytest.mark.parametrize("doc", CORE, ids=[f"{doc['kind']}/{doc['metadata']['name']}" for doc in CORE])
def test_every_core_object_is_valid_kubernetes(doc):
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_ray_resources_use_only_kuberay_v1_fields():
    cluster, job = of_kind("RayCluster"), of_kind("RayJob")
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert set(spec) <= RAYCLUSTER_SPEC
    assert set(spec["authOptions"]) <= AUTH_OPTIONS and spec["authOptions"]["mode"] in AUTH_MODES
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP and {"groupName", "minReplicas", "maxReplicas"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert set(job["spec"]) <= RAYJOB_SPEC and job["spec"]["submissionMode"] in SUBMISSION_MODES
    assert all(isinstance(value, str) for value in spec["headGroupSpec"]["rayStartParams"].values())
    # their pod templates are core PodTemplateSpecs: validated strictly as such
    templates = [spec["headGroupSpec"]["template"], job["spec"]["submitterPodTemplate"]]
    templates += [group["template"] for group in spec["workerGroupSpecs"]]
    for template in templates:
        holder = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        kubernetes_validate.validate(holder, KUBERNETES, strict=True)


def test_the_cluster_shares_no_volume_and_reaches_the_root_on_s3():
    job = of_kind("RayJob")
    entrypoint = job["spec"]["entrypoint"].split()
    config_path = entrypoint[entrypoint.index("--config") + 1]
    cfg = load_config(REPO / config_path.removeprefix("/opt/stvideo/"))
    assert cfg.root.startswith("s3://")
    for role, pod in ray_pods().items():
        assert not any("persistentVolumeClaim" in volume for volume in pod.get("volumes", [])), role
        (container,) = pod["containers"]
        assert "stvideo-data-s3" in secrets_of(container), role  # the root's bucket
        assert {"configMapRef": {"name": "stvideo-s3-endpoint"}} in container["envFrom"], role
        assert "STVIDEO_SCRATCH" in env_names(container), role
    # both training stages in Ray Train workers, one GPU each, on the GPU group
    assert cfg.ray.train_workers >= 2 and cfg.ray.train_gpus == 1
    (worker,) = ray_pods()["worker"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    bucket = cfg.root.removeprefix("s3://").split("/")[0]
    assert (
        f'"{bucket}:$DATA_KEY:$DATA_SECRET"'
        in of_kind("Job", "minio-buckets")["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    )


def test_the_cluster_is_closed_by_default():
    """Token auth on every Ray endpoint, the submitter holding the same token, NetworkPolicies
    for the Ray pods, MLflow, MinIO and PostgreSQL, and bucket keys only where they are used."""
    cluster, job = of_kind("RayCluster"), of_kind("RayJob")
    auth = cluster["spec"]["authOptions"]
    assert auth["mode"] == "token"
    pods = ray_pods()
    for role in ("head", "worker"):  # the operator sets RAY_AUTH_MODE: nothing may turn it off
        assert "RAY_AUTH_MODE" not in env_names(pods[role]["containers"][0])
    (submitter,) = pods["submitter"]["containers"]
    assert env_names(submitter)["RAY_AUTH_MODE"]["value"] == "token"
    assert env_names(submitter)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": auth["secretName"],
        "key": "auth_token",
    }
    labels = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    name = cluster["metadata"]["name"]
    policies = {doc["metadata"]["name"]: doc for doc in kit() if doc["kind"] == "NetworkPolicy"}

    def admitted(policy: str) -> list[dict]:
        (rule,) = policies[policy]["spec"]["ingress"]
        return [peer.get("podSelector", {}).get("matchLabels") for peer in rule["from"]]

    assert policies["stvideo-ray"]["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": name}
    assert {"ray.io/cluster": name} in admitted("stvideo-ray") and labels in admitted("stvideo-ray")
    assert admitted("mlflow") == [{"ray.io/cluster": name}, labels]
    assert admitted("postgres") == [{"app": "mlflow"}]
    assert {"app": "mlflow"} in admitted("minio") and labels in admitted("minio")

    # MLflow's bucket keys live on MLflow (and the job that makes the buckets) alone
    (mlflow,) = of_kind("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    assert secrets_of(mlflow) == {"mlflow-postgres", "mlflow-artifacts-s3"}
    for role, pod in pods.items():
        assert "mlflow-artifacts-s3" not in secrets_of(pod["containers"][0]), role
    assert secrets_of(submitter) == {auth["secretName"], "stvideo-data-s3"}


def test_the_pipeline_rayjob_submits_the_cluster_config_to_that_cluster():
    cluster, job = of_kind("RayCluster"), of_kind("RayJob")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    entrypoint = job["spec"]["entrypoint"].split()
    assert entrypoint[1:4] == ["-m", "jobs.cli", "submit"]
    assert (
        entrypoint[entrypoint.index("--address") + 1] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    )
    config_path = entrypoint[entrypoint.index("--config") + 1]
    cfg = load_config(REPO / config_path.removeprefix("/opt/stvideo/"))
    assert cfg.submit.python == entrypoint[0]
    service = of_kind("Service", "mlflow")["metadata"]["name"]
    namespace = of_kind("Namespace")["metadata"]["name"]
    assert cfg.tracking.uri == f"http://{service}.{namespace}.svc.cluster.local:5000"
    for role, pod in ray_pods().items():
        if role != "submitter":
            assert env_names(pod["containers"][0])["MLFLOW_TRACKING_URI"]["value"] == cfg.tracking.uri


def test_mlflow_runs_on_its_stock_image_with_postgres_and_s3():
    deployment = of_kind("Deployment", "mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    image, version = container["image"].split(":")
    assert image == "ghcr.io/mlflow/mlflow"
    pinned = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [mlflow_range] = [spec for spec in pinned if spec.startswith("mlflow")]
    low = re.search(r">=(\d+\.\d+)", mlflow_range).group(1)
    assert version.startswith(f"v{low}."), (version, mlflow_range)  # the server speaks the client's version
    args = " ".join(container["command"])
    assert "--backend-store-uri=postgresql://" in args and "@postgres:5432/" in args
    assert "--artifacts-destination=s3://stvideo-mlflow/" in args
    allowed = next(arg for arg in container["command"] if arg.startswith("--allowed-hosts="))
    namespace = of_kind("Namespace")["metadata"]["name"]
    assert f"mlflow.{namespace}.svc.cluster.local:5000" in allowed
    (drivers,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert drivers["image"] == container["image"] and "psycopg2-binary" in " ".join(drivers["command"])
    assert env_names(container)["PYTHONPATH"]["value"] == "/deps"


def test_the_image_definition_installs_the_project_as_the_manifests_expect():
    dockerfile = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in dockerfile and "torch==${TORCH_VERSION}" in dockerfile
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in dockerfile  # cpu or a CUDA build
    assert "ARG TORCH_VARIANT=cpu" in dockerfile and "TORCH_VARIANT=cu" in dockerfile
    assert "python -m venv /opt/stvideo/.venv" in dockerfile
    assert 'pip install -c constraints.txt ".[cluster]"' in dockerfile  # the versions CI tests
    pins = (REPO / "constraints.txt").read_text()
    assert "torch==2.13.0" in pins and "ray==2.60.0" in pins
    assert "COPY configs /opt/stvideo/configs" in dockerfile
    for package in ("common", "pipeline", "tokenizer", "dynamics", "jobs"):
        assert f"COPY {package} ./{package}" in dockerfile
    job = of_kind("RayJob")
    assert job["spec"]["entrypoint"].split()[0] == "/opt/stvideo/.venv/bin/python"
    images = {pod["containers"][0]["image"] for pod in ray_pods().values()}
    assert images == {"ghcr.io/stvideo/stvideo:0.1.0-cpu", "ghcr.io/stvideo/stvideo:0.1.0-cuda"}
    assert ray_pods()["worker"]["containers"][0]["image"].endswith("-cuda")
