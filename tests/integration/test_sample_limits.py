"""Sample inputs at registration: STRING samples whose stored form would be far larger than the request."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np

from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import tensor_pb2 as tpb
from ortserve.client.client import to_tensor
from ortserve.toolkit.samples import MAX_STORED_TEXT_BYTES
from tests.integration.conftest import Running, expect_error
from tests.server_calls import upload as upload_blocking


def upload(data: bytes, samples: list[tpb.Tensor]) -> list[rpb.RegisterModelRequest]:
    manifest = rpb.RegisterManifest(
        name="strings", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), samples=samples
    )
    return [rpb.RegisterModelRequest(manifest=manifest), rpb.RegisterModelRequest(chunk=data)]


async def test_one_long_string_among_many_is_refused_not_stored_at_full_width(running: Running) -> None:
    data = running.models["strings"].read_bytes()
    rows = 1024
    longest = MAX_STORED_TEXT_BYTES // (4 * rows) + 1  # 16 KiB of text: under 40 KB on the wire
    texts = np.array(["a"] * (rows - 1) + ["b" * longest], dtype=object)
    await expect_error(
        upload_blocking(running.address, upload(data, [to_tensor("x", texts)])),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"STRING input 'x': {rows} values stored as long as the longest ({longest} characters)",
    )
    listed = await running.registry.ListModelVersions(rpb.ListModelVersionsRequest(name="strings"))
    assert len(listed.versions) == 1  # nothing registered

    short = np.array(["a", "bc", "def"], dtype=object)
    answer = await running.registry.RegisterModel(iter(upload(data, [to_tensor("x", short)])))
    assert (answer.version.version, answer.version.sample_rows) == (2, 3)
