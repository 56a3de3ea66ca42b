"""deploy/kubernetes: each overlay renders with `kubectl kustomize`, every object validates offline and
strictly (an unknown field fails) against the Kubernetes schemas kubernetes-validate ships, and the
objects agree with each other and with ortserve's own settings."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from ortserve.config import ServerConfig
from tests.deploy.manifests import KUBERNETES, only, quantity, render, settings

OVERLAYS = ("cpu", "gpu")
# 1.27: the first release with native gRPC probes enabled by default (GA); and the newest schemas.
VERSIONS = ("1.27", kubernetes_validate.latest_version())
KINDS = ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Service"]
SECRET_REFERENCES = {
    "ORTSERVE_DB": ("ortserve-db", "url", False),
    "ORTSERVE_ADMIN_TOKENS": ("ortserve-tokens", "admin", False),
    "ORTSERVE_INFER_TOKENS": ("ortserve-tokens", "infer", False),
    "AWS_ACCESS_KEY_ID": ("ortserve-store", "access-key-id", True),
    "AWS_SECRET_ACCESS_KEY": ("ortserve-store", "secret-access-key", True),
}


def _objects(overlay: str) -> tuple[dict[str, Any], ...]:
    return render(KUBERNETES / "overlays" / overlay)


def _server(overlay: str) -> tuple[dict[str, Any], dict[str, Any], ServerConfig]:
    """The Deployment's pod spec, its one container, and the settings its ConfigMap gives ortserve."""
    objects = _objects(overlay)
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_map = only(objects, "ConfigMap")
    assert container["envFrom"] == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]
    return pod, container, settings(config_map["data"])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str, version: str) -> None:
    objects = _objects(overlay)
    assert sorted(o["kind"] for o in objects) == KINDS
    for item in objects:
        name = f"{item['kind']}/{item['metadata']['name']}"
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{overlay}: {name} is not valid Kubernetes {version}: {path}: {exc.message}")


def test_the_validation_rejects_an_unknown_field() -> None:
    deployment = dict(only(_objects("cpu"), "Deployment"))
    deployment["spec"] = {**deployment["spec"], "replica": 3}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_shutdown_follow_the_settings(overlay: str) -> None:
    pod, container, config = _server(overlay)
    assert config.host == "0.0.0.0"
    assert container["command"] == ["ortserve"] and container["args"] == ["serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": config.port}, probe  # service "": the server
    # preStop lets the endpoint drop out, then ortserve drains; the pod is killed only after both.
    sleep, seconds = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(seconds) + config.grace_period_s + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_runs_as_non_root_on_a_read_only_root(overlay: str) -> None:
    pod, container, config = _server(overlay)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in (config.data_dir, "/tmp"):
        assert "emptyDir" in volumes[mounts[path]], f"{path} must be writable"
    # The blob cache lives in the data volume: past its size limit the kubelet evicts the pod.
    data_limit = quantity(volumes[mounts[config.data_dir]]["emptyDir"]["sizeLimit"])
    assert 0 < config.blob_cache_bytes < data_limit


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_included(overlay: str) -> None:
    _pod, container, _config = _server(overlay)
    assert not [o for o in _objects(overlay) if o["kind"] == "Secret"]
    references = {
        e["name"]: (ref["name"], ref["key"], ref.get("optional", False))
        for e in container["env"]
        if (ref := e.get("valueFrom", {}).get("secretKeyRef"))
    }
    assert references == SECRET_REFERENCES
    assert all("value" not in e for e in container["env"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_threads_and_memory_budget_fit_the_limits(overlay: str) -> None:
    _pod, container, config = _server(overlay)
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    for resource in ("cpu", "memory"):
        assert 0 < quantity(requests[resource]) <= quantity(limits[resource]), resource
    # os.cpu_count() in a pod is the node's: the settings size the threads from the CPU limit.
    assert 1 <= config.intra_op_threads < quantity(limits["cpu"])
    assert 1 <= config.executor_threads <= quantity(limits["cpu"])
    assert 0 < config.memory_budget_bytes < quantity(limits["memory"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_autoscaler_and_budget_select_the_pods(overlay: str) -> None:
    objects = _objects(overlay)
    deployment = only(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for name in ("ortserve", "ortserve-headless"):
        service = only(objects, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items(), name
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names, name
    assert only(objects, "Service", "ortserve-headless")["spec"]["clusterIP"] == "None"
    autoscaler = only(objects, "HorizontalPodAutoscaler")["spec"]
    assert autoscaler["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    budget = only(objects, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert budget["maxUnavailable"] < autoscaler["minReplicas"]


def test_the_overlays_differ_in_image_gpus_and_providers() -> None:
    _pod, cpu, cpu_config = _server("cpu")
    gpu_pod, gpu, gpu_config = _server("gpu")
    assert (cpu["image"], gpu["image"]) == ("ortserve:latest", "ortserve:latest-gpu")
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert (
        gpu["resources"]["limits"]["nvidia.com/gpu"] == gpu["resources"]["requests"]["nvidia.com/gpu"] == "1"
    )
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod["tolerations"]
    assert cpu_config.providers == ("CPUExecutionProvider",)
    assert gpu_config.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
