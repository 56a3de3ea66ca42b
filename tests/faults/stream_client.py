"""A PredictStream client that sends a burst of messages and then holds its stream open; it prints
"streaming" once answers flow and waits to be killed (tests/faults/test_cancellation.py SIGKILLs it;
it gives up by itself after HOLD_S).

usage: python stream_client.py ADDRESS MODEL ROWS WIDTH MESSAGES
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import grpc
import numpy as np

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.client.client import to_tensor

ANSWERS_BEFORE_READY = 4
HOLD_S = 60.0


def main(address: str, model: str, rows: int, width: int, count: int) -> None:
    request = ipb.PredictRequest(model=model, inputs=[to_tensor("x", np.ones((rows, width), np.float32))])

    def messages() -> Iterator[ipb.PredictStreamRequest]:
        for n in range(count):
            yield ipb.PredictStreamRequest(id=str(n), request=request)
        threading.Event().wait(HOLD_S)  # the stream stays open, its answers pending, until the kill

    with grpc.insecure_channel(address) as channel:
        answers = ipb_grpc.InferenceServiceStub(channel).PredictStream(messages(), timeout=2 * HOLD_S)
        for n, _answer in enumerate(answers, 1):
            if n == ANSWERS_BEFORE_READY:
                print("streaming", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
