"""The Python SDK's PredictStream: AsyncClient and Client side by side against one server.

Two figures per client, rounds alternating between them: answers per second over one stream of
`--sets` input sets, and streams per second for `--short` streams of 5 sets opened one after
another. The model is `make serve`'s `linear` (x FP32 [N,16]). To compare two trees of the SDK, run
this once per tree against the same server (PYTHONPATH=<tree>/src), alternating.

    make serve &   # or any ortserve with `linear`
    .venv/bin/python bench/sdk_streams.py 127.0.0.1:8001 [--sets 5000] [--short 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import numpy as np

from ortserve.client import AsyncClient, Client

X = {"x": np.ones((1, 16), np.float32)}


async def async_figures(address: str, sets: int, short: int) -> tuple[float, float]:
    async with AsyncClient(address) as client:
        async for _ in client.predict_stream("linear", [X] * 50):  # connect and warm up
            pass
        start = time.perf_counter()
        answers = 0
        async for _ in client.predict_stream("linear", [X] * sets):
            answers += 1
        one = answers / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(short):
            async for _ in client.predict_stream("linear", [X] * 5):
                pass
        return one, short / (time.perf_counter() - start)


def sync_figures(address: str, sets: int, short: int) -> tuple[float, float]:
    with Client(address) as client:
        for _ in client.predict_stream("linear", [X] * 50):
            pass
        start = time.perf_counter()
        answers = sum(1 for _ in client.predict_stream("linear", [X] * sets))
        one = answers / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(short):
            for _ in client.predict_stream("linear", [X] * 5):
                pass
        return one, short / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("--sets", type=int, default=5000)
    parser.add_argument("--short", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, Callable[[], tuple[float, float]]] = {
        "AsyncClient": lambda: asyncio.run(async_figures(args.address, args.sets, args.short)),
        "Client": lambda: sync_figures(args.address, args.sets, args.short),
    }
    print("| round | client | answers/s, one stream | 5-set streams/s |")
    print("|---|---|---|---|")
    for round_ in range(1, args.rounds + 1):
        for name, run in runs.items():
            one, streams = run()
            print(f"| {round_} | {name} | {one:,.0f} | {streams:,.0f} |")


if __name__ == "__main__":
    main()
