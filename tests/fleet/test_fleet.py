"""The fleet: three `ortserve serve` replicas on the real PostgreSQL and an S3 server, the Python SDK
given all three addresses, and 32 callers sending Predict all along. Each phase counts its calls
and failures and prints one summary line (`pytest -s` shows them):

1. a version registered and promoted through replica A reaches B and C (convergence measured from
   the promote's return to each one's first answer from the new version);
2. replica C killed with SIGKILL, then restarted on its port with its data dir (blob cache) wiped:
   it fetches the blob again from the store and serves;
3. replica B stopped with SIGTERM: it drains;
4. the object store unreachable for 5 s (a proxy in front of it drops and resets connections):
   registering answers UNAVAILABLE naming the store, and works again once the store is back; a
   version promoted then reaches the restarted replica C.
No phase may fail a single inference call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ortserve.client import Client, RetryPolicy
from tests import onnx_models
from tests.fleet.fleet import MODEL, Fleet, blob_matches, convergence_ms, first_answer, probe
from tests.fleet.load import Load, Tally
from tests.fleet.proxy import PausableProxy
from tests.store.conftest import S3Server, new_bucket

pytestmark = pytest.mark.postgres

CALLERS = 32
STEADY_S = 1.0  # load before each disturbance, and again after it
STEADY_CALLS = 200
OUTAGE_S = 5.0


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str, s3_server: S3Server) -> Iterator[Fleet]:
    host, _, port = s3_server.endpoint.removeprefix("http://").rpartition(":")
    proxy = PausableProxy(host, int(port))
    fleet = Fleet(tmp_path, pg_url, new_bucket(s3_server), proxy)
    try:
        yield fleet
    finally:
        fleet.close()
        proxy.close()


@pytest.fixture
def models(tmp_path: Path) -> dict[int, Path]:
    paths = {}
    for version in (1, 2, 3):
        paths[version] = tmp_path / f"v{version}.onnx"
        onnx_models.linear(paths[version], seed=version)
    return paths


def report(tally: Tally, name: str, **figures: object) -> None:
    print(tally.summary(name, **figures))
    assert tally.failures == [], f"{len(tally.failures)} failed calls in phase {name}: {tally.failures[:5]}"


def test_fleet_converges_and_survives_kill_term_and_store_outage(
    fleet: Fleet, models: dict[int, Path]
) -> None:
    started = time.monotonic()
    fleet.start_all("ABC")
    with Client(fleet.replicas["A"].address) as a:
        a.register(models[1], MODEL)
        a.promote(MODEL, 1)
        for name in "BC":  # every replica serves version 1
            with probe(fleet.replicas[name].address) as replica:
                first_answer(replica, 1)
        with Client(fleet.addresses(), retry=RetryPolicy()) as sdk:
            sdk.wait_ready(10)
            promote_through_a(fleet, sdk, a, models)
            kill_and_restart(fleet, sdk, models)
            drain_on_sigterm(fleet, sdk)
            store_outage(fleet, sdk, a, models)
    print(f"fleet total: {time.monotonic() - started:.1f} s")


def promote_through_a(fleet: Fleet, sdk: Client, a: Client, models: dict[int, Path]) -> None:
    probes = {name: probe(fleet.replicas[name].address) for name in "BC"}
    with Load(sdk, MODEL, callers=CALLERS) as load:
        load.steady(STEADY_S, STEADY_CALLS)
        a.register(models[2], MODEL)
        a.promote(MODEL, 2)
        delays = convergence_ms(probes, 2, time.perf_counter())
        load.steady(STEADY_S, STEADY_CALLS)
    for client in probes.values():
        client.close()
    report(load.tally, "promote", convergence_ms=delays)
    assert load.tally.versions[2] > 0, "the callers never got an answer from the promoted version"


def kill_and_restart(fleet: Fleet, sdk: Client, models: dict[int, Path]) -> None:
    with Load(sdk, MODEL, callers=CALLERS) as load:
        load.steady(STEADY_S, STEADY_CALLS)
        fleet.replicas["C"].process.kill()
        load.steady(STEADY_S, STEADY_CALLS)  # A and B carry the load
        began = time.monotonic()
        restarted = fleet.restart_wiped("C")
        with probe(restarted.address) as c:
            first_answer(c, 2)
        back_s = time.monotonic() - began
        load.steady(STEADY_S, STEADY_CALLS)
    report(load.tally, "kill-9", restart_to_answer_s=round(back_s, 1))
    sha256 = sdk.get_version(MODEL, 2).sha256
    assert blob_matches(restarted.cached_blob(sha256), models[2]), (
        "C's blob cache was not filled from the store"
    )


def drain_on_sigterm(fleet: Fleet, sdk: Client) -> None:
    with Load(sdk, MODEL, callers=CALLERS) as load:
        load.steady(STEADY_S, STEADY_CALLS)
        began = time.monotonic()
        code = fleet.replicas["B"].process.stop()
        stop_s = time.monotonic() - began
        load.steady(STEADY_S, STEADY_CALLS)
    report(load.tally, "sigterm", stop_s=round(stop_s, 2))
    assert code == 0, fleet.replicas["B"].process.output()


def store_outage(fleet: Fleet, sdk: Client, a: Client, models: dict[int, Path]) -> None:
    with Load(sdk, MODEL, callers=CALLERS) as load, Client(fleet.replicas["A"].address, retry=None) as once:
        load.steady(STEADY_S, STEADY_CALLS)
        resets = fleet.proxy.refused
        fleet.proxy.pause()
        paused = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            once.register(models[3], MODEL, timeout=60)
        refused_s = time.monotonic() - paused
        load.keep_going(OUTAGE_S - refused_s)
        fleet.proxy.resume()
        outage_s = time.monotonic() - paused
        resets = fleet.proxy.refused - resets
        version = a.register(models[3], MODEL).version
        a.promote(MODEL, version)
        with probe(fleet.replicas["C"].address) as c:  # the restarted replica hears of it
            delay = convergence_ms({"C": c}, version, time.perf_counter())
        load.steady(STEADY_S, STEADY_CALLS)
    report(
        load.tally,
        "store-outage",
        outage_s=round(outage_s, 1),
        register_refused_s=round(refused_s, 2),
        store_connections_reset=resets,
        convergence_ms=delay,
    )
    error: grpc.RpcError = info.value
    details = error.details() or ""  # type: ignore[attr-defined]
    assert error.code() == grpc.StatusCode.UNAVAILABLE, details  # type: ignore[attr-defined]
    assert f"the model store {fleet.store}" in details, details
    assert resets > 0, "nothing tried the store during the outage"
    assert version == 3
