"""deploy/kserve: the ClusterServingRuntime and the InferenceService example validate against the
openAPIV3Schema of KServe's own CRDs (kept in deploy/kserve/schemas/ with their origin), strictly as
the API server prunes (a field the schema does not name fails), and the runtime's command is one
`ortserve serve` accepts, serving what KServe mounts under the name KServe routes by."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from ortserve import cli
from ortserve.config import ServerConfig, load_config
from ortserve.registry.service import check_name
from tests.deploy.manifests import KSERVE, load, only, quantity, settings

SCHEMAS = KSERVE / "schemas"
GROUP = "serving.kserve.io"
# KServe's InferenceServiceProtocol values (pkg/constants/constants.go) and its model mount.
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
MODEL_MOUNT = "/mnt/models"


def _strict(schema: Any) -> Any:
    """The schema with additionalProperties false wherever an object lists its properties and does
    not keep unknown fields: what Kubernetes' pruning and strict field validation enforce."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items() if key != "properties"}
    if "properties" in schema:
        strict["properties"] = {name: _strict(value) for name, value in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            strict["additionalProperties"] = False
    return strict


@functools.cache
def _validator(kind: str) -> tuple[jsonschema.Draft7Validator, str]:
    (path,) = SCHEMAS.glob(f"{kind.lower()}-*.json")
    schema = json.loads(path.read_text())
    origin = schema["x-origin"]
    assert origin["repository"] == "github.com/kserve/kserve" and len(origin["commit"]) == 40
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(_strict(schema)), f"{GROUP}/{origin['version']}"


def _errors(item: dict[str, Any]) -> list[str]:
    validator, api_version = _validator(item["kind"])
    assert item["apiVersion"] == api_version
    found = sorted(validator.iter_errors(item), key=lambda e: list(map(str, e.absolute_path)))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in found]
    # The CRD leaves metadata to the API server: check it as the ObjectMeta of any object.
    holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": item["metadata"]}
    try:
        kubernetes_validate.validate(holder, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        errors.append(f"{'.'.join(map(str, exc.path))}: {exc.message}")
    return errors


def _runtime() -> dict[str, Any]:
    return only(load(KSERVE / "cluster-serving-runtime.yaml"), "ClusterServingRuntime")


def _example() -> dict[str, Any]:
    return only(load(KSERVE / "inference-service.yaml"), "InferenceService")


@pytest.mark.parametrize("item", [_runtime(), _example()], ids=["ClusterServingRuntime", "InferenceService"])
def test_the_resources_validate_against_kserve_crd_schemas(item: dict[str, Any]) -> None:
    assert _errors(item) == []


def test_the_schemas_reject_what_kserve_would_refuse_or_prune() -> None:
    runtime = copy.deepcopy(_runtime())
    runtime["spec"]["containers"][0]["portz"] = []
    runtime["spec"]["protocolVersions"] = "grpc-v2"
    del runtime["spec"]["containers"][0]["name"]
    runtime["metadata"]["labels"] = {"replicas": 2}
    assert _errors(runtime) == [
        "spec.containers.0: 'name' is a required property",
        "spec.containers.0: Additional properties are not allowed ('portz' was unexpected)",
        "spec.protocolVersions: 'grpc-v2' is not of type 'array'",
        "metadata.labels.replicas: 2 is not of type 'string', 'null'",
    ]


def test_the_example_selects_the_runtime_for_onnx_over_grpc_v2() -> None:
    runtime, model = _runtime(), _example()["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats == {"onnx"}
    assert set(runtime["spec"]["protocolVersions"]) <= PROTOCOLS
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] == ["grpc-v2"]


def test_the_runtime_command_is_an_ortserve_serve_of_the_mounted_models() -> None:
    name = _example()["metadata"]["name"]
    (container,) = _runtime()["spec"]["containers"]
    assert container["command"] == ["ortserve"]
    # KServe fills in {{.Name}} with the InferenceService's name.
    argv = [arg.replace("{{.Name}}", name) for arg in container["args"]]
    args = cli._parser().parse_args(argv)
    assert args.run is cli._serve
    env = {e["name"]: e["value"] for e in container["env"]}
    settings(env)  # every ORTSERVE_* variable is a setting
    config: ServerConfig = load_config(args.config, environ=env, overrides=cli._overrides(args))
    check_name(config.model_name)
    assert (config.model_dir, config.model_name, config.host) == (MODEL_MOUNT, name, "0.0.0.0")
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("h2c", config.port)  # KServe's gRPC port name
    assert container["readinessProbe"]["grpc"] == {"port": config.port}
    assert 1 <= config.intra_op_threads <= quantity(container["resources"]["limits"]["cpu"])
    assert _runtime()["spec"]["annotations"]["prometheus.kserve.io/port"] == str(config.metrics_port)
