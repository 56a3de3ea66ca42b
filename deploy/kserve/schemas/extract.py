"""Extract the openAPIV3Schema of KServe's CRDs into the JSON files tests/deploy validates against.

    git -C KSERVE show COMMIT:config/crd/full/serving.kserve.io_clusterservingruntimes.yaml > csr.yaml
    git -C KSERVE show COMMIT:config/crd/full/serving.kserve.io_inferenceservices.yaml > isvc.yaml
    python deploy/kserve/schemas/extract.py csr.yaml isvc.yaml --commit COMMIT

The files must keep their names from KServe (serving.kserve.io_*.yaml). Writes <kind>-<version>.json
beside this file: the CRD's schema of its served storage version, with
the "description" texts removed (they do not take part in validation) and an "x-origin" key naming
the source. Needs PyYAML (installed with the dev group).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
REPOSITORY = "github.com/kserve/kserve"
CRD_FOLDER = "config/crd/full"


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        kept = {k: v for k, v in node.items() if not (k == "description" and isinstance(v, str))}
        return {k: without_descriptions(v) for k, v in kept.items()}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def extract(crd_file: Path, commit: str) -> Path:
    crd = yaml.safe_load(crd_file.read_text())
    kind = crd["spec"]["names"]["kind"]
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = without_descriptions(version["schema"]["openAPIV3Schema"])
    schema["x-origin"] = {
        "repository": REPOSITORY,
        "path": f"{CRD_FOLDER}/{crd_file.name}",
        "commit": commit,
        "crd": crd["metadata"]["name"],
        "version": version["name"],
    }
    out = HERE / f"{kind.lower()}-{version['name']}.json"
    out.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("crd", nargs="+", type=Path, help=f"CRD YAML files from KServe's {CRD_FOLDER}/")
    parser.add_argument("--commit", required=True, help="the KServe commit the files come from")
    args = parser.parse_args()
    for crd_file in args.crd:
        print(extract(crd_file, args.commit))


if __name__ == "__main__":
    main()
