"""MLServer peer for bench/run_all.py: a custom MLServer runtime that runs ONNX files with ONNX Runtime.

MLServer 1.7 ships no ONNX runtime (the old `mlserver-onnx` package is not on PyPI), so this is
the smallest one: `load` opens an InferenceSession on `parameters.uri`, `predict` decodes the
inputs with MLServer's NumpyCodec, runs the session and encodes the outputs with it. Runs in
.venv-mlserver (scripts/peer_venvs.sh), imported by `mlserver start` as
`mlserver_ort.OnnxRuntimeModel` with bench/peers on PYTHONPATH. Session options as in
kserve_onnx.py: 1 intra-op thread, sequential, no spinning, all graph optimizations.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        uri = self.settings.parameters.uri
        self.session = ort.InferenceSession(uri, opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self.session.run(None, feeds)
        outputs = [NumpyCodec.encode_output(n, a) for n, a in zip(self.output_names, results, strict=True)]
        return InferenceResponse(id=payload.id, model_name=self.name, outputs=outputs)
