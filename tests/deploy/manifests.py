"""Reading deploy/: rendered kustomizations, YAML documents, and Kubernetes quantities."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ortserve.config import ENV_PREFIX, ServerConfig, load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KSERVE = DEPLOY / "kserve"

_SUFFIXES = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}


@functools.cache
def render(folder: Path) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize folder`, as the documents it prints."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/kubernetes"
    done = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {folder} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def only(
    docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str, name: str = ""
) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (not name or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def quantity(value: str | int) -> float:
    """A Kubernetes quantity ("500m", "4", "8Gi") as a number."""
    text = str(value)
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)


def settings(env: dict[str, str]) -> ServerConfig:
    """The configuration these variables give `ortserve serve`; every ORTSERVE_* one must be a setting
    (load_config ignores variables it does not know, so a typo would go unnoticed)."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in ServerConfig.__dataclass_fields__}
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known)
    assert not unknown, f"not ortserve settings: {unknown}"
    return load_config(environ=env)
