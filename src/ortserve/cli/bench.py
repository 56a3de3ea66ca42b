"""Flags of `ortserve bench` (no heavy imports: the CLI builds its parser on every run)."""

from __future__ import annotations

import argparse

PROTOCOLS = ("ortserve", "ortserve-stream", "ortserve-shm", "oip", "echo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name (any name for the echo server)")
    p.add_argument("--server", default="127.0.0.1:8001", help="host:port of the server under load")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="ortserve",
        help="ortserve: Predict; ortserve-stream: PredictStream over --streams streams; oip: ModelInfer; "
        "echo: Predict against bench/echo_server.py (needs --input)",
    )
    p.add_argument("--version", default="", help="version selector (number or alias; empty: default)")
    p.add_argument("-c", "--concurrency", type=int, default=1, help="requests in flight in total")
    p.add_argument(
        "--streams", type=int, default=1, help="streams for ortserve-stream (C/S in flight on each)"
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="P",
        help="run the load from P processes, each with its own connection and a share of -c, --streams "
        "and -n (for a server with --workers: the kernel spreads connections, not requests); "
        "no progress line when P > 1",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-d", "--duration", type=float, help="seconds to measure (default 10)")
    mode.add_argument("-n", "--requests", type=int, help="measure this many requests instead of a duration")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    p.add_argument("--batch-rows", type=int, default=1, help="rows per request (size of the dynamic axis 0)")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME:DTYPE:DIMS",
        help="input spec instead of asking the server, e.g. x:FP32:-1,16 (-1 on axis 0 takes --batch-rows)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="per-request deadline in seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="live progress line on stderr (auto: when stderr is a terminal)",
    )
