"""KServe peer for bench/run_all.py: KServe's Python ModelServer serving ONNX files with ONNX Runtime.

Runs in .venv-kserve (scripts/peer_venvs.sh), never in ortserve's venv. One `kserve.Model` per
file, named after it (tiny.onnx -> "tiny"); `predict` is synchronous, so KServe calls it on its
event loop, as its own sklearn/xgboost runtimes do. The session options match ortserve's defaults
on the 2-core machine and the in-process ceiling (bench/ort_ceiling.py): 1 intra-op thread,
sequential, no spinning, all graph optimizations. Outputs go back as raw bytes (raw_output_contents).

    .venv-kserve/bin/python bench/peers/kserve_onnx.py --model_dir DIR --grpc_port P --http_port H
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse
from kserve.model_server import parser as kserve_parser

# ONNX element type -> OIP datatype, for the types the benchmark models use
DATATYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64"}


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        self.session = session(self.path)
        self.outputs = [(o.name, DATATYPES[o.type]) for o in self.session.get_outputs()]
        self.ready = True
        return True

    def _types(self, args: list[Any]) -> list[dict[str, Any]]:
        return [{"name": a.name, "datatype": DATATYPES[a.type], "shape": list(a.shape)} for a in args]

    def get_input_types(self) -> list[dict[str, Any]]:
        assert self.session is not None
        return self._types(self.session.get_inputs())

    def get_output_types(self) -> list[dict[str, Any]]:
        assert self.session is not None
        return self._types(self.session.get_outputs())

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        assert self.session is not None
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        results = self.session.run(None, feeds)
        outputs = []
        for (name, datatype), array in zip(self.outputs, results, strict=True):
            out = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
            out.set_data_from_numpy(array, binary_data=True)
            outputs.append(out)
        return InferResponse(
            response_id=payload.id, model_name=self.name, infer_outputs=outputs, use_binary_outputs=True
        )


def main() -> None:
    p = argparse.ArgumentParser(parents=[kserve_parser], description=__doc__)
    p.add_argument("--model_dir", required=True, help="directory of <name>.onnx files to serve")
    args, _ = p.parse_known_args()
    models = []
    for path in sorted(Path(args.model_dir).glob("*.onnx")):
        model = OnnxModel(path.stem, path)
        model.load()
        models.append(model)
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1).start(models)


if __name__ == "__main__":
    main()
