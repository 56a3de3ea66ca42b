"""Drive an ortserve through tritonclient.grpc and print what happened as one JSON object.

Runs in .venv-triton (tritonclient 2.73, protobuf<7), never in ortserve's own process: both define
the `inference.*` protobuf symbols. The caller (tests/integration/test_oip_tritonclient.py)
registers these models first:

    add-fp32   z = a + b, FP32 [N, 4]        add-int64  z = a + b, INT64 [N, 4]
    id-fp16    y = x, FP16 [N, 3]            id-bool    y = x, BOOL [N, 3]
    id-bytes   y = x, BYTES [N, 3]

and passes `--upload`, an add model over FP32 [N, 2] to load as a new version of add-fp32.
Every check computes its expected value here with numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

RNG = np.random.default_rng(7)


def inputs_of(arrays: dict[str, np.ndarray], datatype: str) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def error_of(call: Any) -> dict[str, Any]:
    try:
        call()
    except InferenceServerException as exc:
        return {"raised": True, "status": exc.status(), "message": exc.message()}
    return {"raised": False}


def params_of(result: grpcclient.InferResult) -> dict[str, Any]:
    params = result.get_response().parameters
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in params.items()}


def health(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    meta = client.get_server_metadata(as_json=True)
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server_name": meta["name"],
        "server_version": meta["version"],
        "extensions": meta.get("extensions", []),
        "model_ready": client.is_model_ready("add-fp32"),
        "model_ready_v1": client.is_model_ready("add-fp32", "1"),
        "model_ready_v9": client.is_model_ready("add-fp32", "9"),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
    }


def metadata(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    meta = client.get_model_metadata("add-fp32", as_json=True)
    config = client.get_model_config("add-fp32", as_json=True)["config"]
    return {"metadata": meta, "config": config}


def add_check(
    client: grpcclient.InferenceServerClient, model: str, a: np.ndarray, b: np.ndarray, **kw: Any
) -> Any:
    datatype = "FP32" if a.dtype == np.float32 else "INT64"
    result = client.infer(model, inputs_of({"a": a, "b": b}, datatype), request_id=f"{model}-1", **kw)
    z = result.as_numpy("z")
    return {
        "equal": bool(z is not None and z.dtype == a.dtype and np.array_equal(z, a + b)),
        "shape": list(z.shape) if z is not None else None,
        "id": result.get_response().id,
        "model_version": result.get_response().model_version,
        "params": params_of(result),
        "datatype": result.get_output("z").datatype,
    }


def identity_check(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray, datatype: str) -> Any:
    result = client.infer(
        model, inputs_of({"x": x}, datatype), outputs=[grpcclient.InferRequestedOutput("y")]
    )
    y = result.as_numpy("y")
    return {
        "equal": bool(y is not None and y.shape == x.shape and y.tolist() == x.tolist()),
        "dtype": str(y.dtype) if y is not None else None,
        "datatype": result.get_response().outputs[0].datatype,
    }


def inference(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    a32, b32 = RNG.standard_normal((3, 4)).astype(np.float32), RNG.standard_normal((3, 4)).astype(np.float32)
    a64, b64 = RNG.integers(-(2**40), 2**40, (2, 4)), RNG.integers(-(2**40), 2**40, (2, 4))
    strings = np.array(
        [[b"a", b"", "\u00e9t\u00e9".encode()], [b"nul\x00inside", b"xyz", b"q" * 300]], dtype=object
    )
    return {
        "fp32": add_check(client, "add-fp32", a32, b32, priority=1, timeout=5_000_000),
        "int64": add_check(client, "add-int64", a64.astype(np.int64), b64.astype(np.int64)),
        "fp16": identity_check(client, "id-fp16", RNG.standard_normal((2, 3)).astype(np.float16), "FP16"),
        "bool": identity_check(client, "id-bool", RNG.integers(0, 2, (4, 3)).astype(bool), "BOOL"),
        "bytes": identity_check(client, "id-bytes", strings, "BYTES"),
    }


def streaming(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = []
    try:
        for i in range(8):
            a = np.full((1, 4), i, np.float32)
            b = RNG.standard_normal((1, 4)).astype(np.float32)
            model = "no-such-model" if i == 3 else "add-fp32"
            sent.append(a + b)
            client.async_stream_infer(
                model,
                inputs_of({"a": a, "b": b}, "FP32"),
                request_id=f"s{i}",
                enable_empty_final_response=i == 5,
            )
        got = [answers.get(timeout=30) for _ in sent]
    finally:
        client.stop_stream()
    out: list[dict[str, Any]] = []
    for (result, error), expected in zip(got, sent, strict=True):
        if error is not None:
            out.append({"error": error.message()})
            continue
        response = result.get_response()
        final = response.parameters.get("triton_final_response")
        out.append(
            {
                "id": response.id,
                "equal": bool(np.array_equal(result.as_numpy("z"), expected)),
                "final": bool(final.bool_param) if final is not None else None,
            }
        )
    extra = answers.qsize()
    return {"answers": out, "extra_answers": extra}


def statistics(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    one = client.get_inference_statistics("add-fp32", as_json=True)
    every = client.get_inference_statistics(as_json=True)
    return {
        "add_fp32": one.get("model_stats", []),
        "all_names": sorted({s["name"] for s in every["model_stats"]}),
    }


def repository(client: grpcclient.InferenceServerClient, upload: Path) -> dict[str, Any]:
    index = client.get_model_repository_index(as_json=True).get("models", [])
    client.unload_model("id-bool")
    after_unload = client.is_model_ready("id-bool")
    infer_unloaded = error_of(
        lambda: client.infer("id-bool", inputs_of({"x": np.ones((1, 3), bool)}, "BOOL"))
    )
    client.load_model("id-bool")
    after_load = client.is_model_ready("id-bool")
    reloaded = identity_check(client, "id-bool", np.ones((2, 3), bool), "BOOL")
    client.load_model("add-fp32", files={"file:1/model.onnx": upload.read_bytes()})
    a, b = RNG.standard_normal((2, 2)).astype(np.float32), RNG.standard_normal((2, 2)).astype(np.float32)
    return {
        "index": index,
        "ready_after_unload": after_unload,
        "infer_unloaded": infer_unloaded,
        "ready_after_load": after_load,
        "reloaded": reloaded,
        "uploaded_latest": add_check(client, "add-fp32", a, b),
        "uploaded_v2": add_check(client, "add-fp32", a, b, model_version="2"),
        "old_v1_ready": client.is_model_ready("add-fp32", "1"),
        "index_after_upload": client.get_model_repository_index(as_json=True).get("models", []),
    }


def errors(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    x = np.ones((1, 4), np.float32)
    return {
        "unknown_model": error_of(lambda: client.infer("no-such-model", inputs_of({"a": x, "b": x}, "FP32"))),
        "wrong_datatype": error_of(
            lambda: client.infer(
                "add-fp32", inputs_of({"a": x.astype(np.float64), "b": x.astype(np.float64)}, "FP64")
            )
        ),
        "unknown_version": error_of(
            lambda: client.infer("add-fp32", inputs_of({"a": x, "b": x}, "FP32"), model_version="9")
        ),
        "metadata_unknown": error_of(lambda: client.get_model_metadata("no-such-model")),
    }


def shared_memory(client: grpcclient.InferenceServerClient) -> dict[str, Any]:
    """tritonclient's own helpers: inputs and the output in system shared memory, then unregister.

    Runs after repository(), which made version 2 of add-fp32 [N, 2]: these requests pin version 1.
    """
    a, b = RNG.random((2, 4), dtype=np.float32), RNG.random((2, 4), dtype=np.float32)
    key = f"/ortserve-tc-{os.getpid()}"
    inputs_region = shm.create_shared_memory_region("in", f"{key}-in", a.nbytes * 2)
    output_region = shm.create_shared_memory_region("out", f"{key}-out", a.nbytes)
    try:
        shm.set_shared_memory_region(inputs_region, [a, b])
        client.register_system_shared_memory("in", f"{key}-in", a.nbytes * 2)
        client.register_system_shared_memory("out", f"{key}-out", a.nbytes)
        status = client.get_system_shared_memory_status(as_json=True)
        inputs = [grpcclient.InferInput(n, [2, 4], "FP32") for n in ("a", "b")]
        inputs[0].set_shared_memory("in", a.nbytes)
        inputs[1].set_shared_memory("in", b.nbytes, offset=a.nbytes)
        output = grpcclient.InferRequestedOutput("z")
        output.set_shared_memory("out", a.nbytes)
        result = client.infer("add-fp32", inputs, model_version="1", outputs=[output])
        z = shm.get_contents_as_numpy(output_region, np.float32, list(result.get_output("z").shape))
        mixed = inputs_of({"b": b}, "FP32")  # a from shared memory, b and z over gRPC
        mixed_result = client.infer("add-fp32", [inputs[0], *mixed], model_version="1")
        client.unregister_system_shared_memory("in")
        after = error_of(lambda: client.infer("add-fp32", inputs, model_version="1"))
        client.unregister_system_shared_memory()
        return {
            "status": status,
            "equal": bool(np.array_equal(z, a + b)),
            "raw_outputs": len(result.get_response().raw_output_contents),
            "mixed_equal": bool(np.array_equal(mixed_result.as_numpy("z"), a + b)),
            "after_unregister": after,
            "status_after": client.get_system_shared_memory_status(as_json=True),
        }
    finally:
        shm.destroy_shared_memory_region(inputs_region)
        shm.destroy_shared_memory_region(output_region)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--upload", type=Path, required=True)
    args = parser.parse_args()
    client = grpcclient.InferenceServerClient(args.url)
    try:
        report = {
            "health": health(client),
            "metadata": metadata(client),
            "infer": inference(client),
            "stream": streaming(client),
            "statistics": statistics(client),
            "errors": errors(client),
            "repository": repository(client, args.upload),
            "shared_memory": shared_memory(client),
        }
    finally:
        client.close()
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
