"""`ortserve bench --processes P`: the load from P processes, each with its own channel (its own
TCP connection) and a share of the concurrency.

One process is bounded by one core and one connection; a server started with `--workers N` shares
its port with SO_REUSEPORT, and the kernel spreads connections, not requests, so loading all its
workers takes several connections from several cores. The children are spawned (no fork of the
parent's gRPC state), meet at a barrier once connected so that the measured windows coincide, and
send back their result with the raw samples, merged by `stats.merge_results`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier
from typing import Any

from grpc import aio

from ortserve.bench.loadgen import BenchOptions, even_shares, measure
from ortserve.bench.stats import Samples, merge_results
from ortserve.errors import OrtserveError

# How long a connected child waits for the others at the barrier: spawning and importing grpc and
# numpy takes seconds on a loaded machine, on top of each child's own connect (--timeout).
START_S = 60.0
STOP_S = 5.0


class LoadProcessFailed(OrtserveError):
    """A load process failed (its own message), so the whole run did."""


def shares(options: BenchOptions) -> list[BenchOptions]:
    """Each process's options: concurrency, streams and request count split as evenly as possible
    (the first ones take the remainder), the seed offset by the process's index."""
    n = options.processes
    concurrency = even_shares(options.concurrency, n)
    streams = even_shares(options.streams, n) if options.protocol == "ortserve-stream" else None
    requests = None if options.requests is None else even_shares(options.requests, n)
    return [
        dataclasses.replace(
            options,
            concurrency=concurrency[i],
            streams=options.streams if streams is None else streams[i],
            requests=None if requests is None else requests[i],
            seed=options.seed + i,
            progress=False,
            processes=1,
        )
        for i in range(n)
    ]


def run_processes(options: BenchOptions) -> dict[str, Any]:
    """Run the load from `options.processes` spawned children and merge their results."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(options.processes)
    children: list[BaseProcess] = []
    inbox: dict[Connection, int] = {}
    try:
        for i, share in enumerate(shares(options)):
            receive, send = context.Pipe(duplex=False)
            child = context.Process(
                target=_child, args=(i, share, barrier, send), name=f"ortserve-bench-{i}", daemon=True
            )
            child.start()
            send.close()  # the child holds the only writer: its death reads as EOF here
            children.append(child)
            inbox[receive] = i
        outcomes = _collect(inbox)
    finally:
        _stop(children)
    results = [outcomes[i][0] for i in range(options.processes)]
    samples = [outcomes[i][1] for i in range(options.processes)]
    return merge_results(results, samples)


def _collect(inbox: dict[Connection, int]) -> dict[int, tuple[dict[str, Any], Samples]]:
    """Every child's (result, samples); the first failure raises (the caller stops the others)."""
    outcomes: dict[int, tuple[dict[str, Any], Samples]] = {}
    pending = dict(inbox)
    while pending:
        for ready in wait(list(pending)):
            assert isinstance(ready, Connection)
            i = pending.pop(ready)
            try:
                message = ready.recv()
            except EOFError:
                raise LoadProcessFailed(f"load process {i} exited without a result") from None
            finally:
                ready.close()
            if message[0] == "error":
                raise LoadProcessFailed(f"load process {i}: {message[1]}")
            outcomes[i] = (message[1], message[2])
    return outcomes


def _stop(children: list[BaseProcess]) -> None:
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        child.join(STOP_S)
        if child.is_alive():
            child.kill()
            child.join()


def _child(index: int, options: BenchOptions, barrier: Barrier, out: Connection) -> None:
    """A child's whole life: connect, wait for the others, run, send the outcome back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the children
    _die_with_parent()

    async def connected() -> None:
        await asyncio.to_thread(barrier.wait, START_S + options.timeout_s)

    try:
        result, samples = asyncio.run(measure(options, connected=connected))
    except threading.BrokenBarrierError:
        out.send(
            ("error", f"the load processes did not all connect within {START_S + options.timeout_s:g} s")
        )
    except aio.AioRpcError as exc:
        out.send(("error", f"{exc.code().name}: {exc.details()}"))
    except OrtserveError as exc:
        out.send(("error", str(exc)))
    except Exception as exc:
        out.send(("error", f"unexpected {type(exc).__name__}"))
    else:
        out.send(("ok", result, samples))
    finally:
        out.close()


def _die_with_parent() -> None:
    """Exit when the parent does, even when it is killed: a spawned child's parent sentinel turns
    readable then; an orphaned load generator would go on loading the server unseen."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
