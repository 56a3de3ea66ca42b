"""Three `ortserve serve` replicas on one PostgreSQL registry and one S3 bucket reached through a
pausable proxy; each replica has its own data dir, so its own blob cache."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from ortserve.client import Client
from ortserve.store import hash_file
from tests.fleet.proxy import PausableProxy
from tests.integration.processes import ServerProcess, start_server

MODEL = "fleet"
PREFIX = "fleet"
X = np.ones((1, 16), np.float32)
WAIT_S = 30.0
NOT_YET = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)


@dataclass
class Replica:
    name: str
    data_dir: Path
    process: ServerProcess

    @property
    def address(self) -> str:
        return self.process.address

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def cached_blob(self, sha256: str) -> Path:
        return self.data_dir / "blob-cache" / "sha256" / sha256[:2] / f"{sha256}.onnx"


class Fleet:
    def __init__(self, work: Path, pg_url: str, bucket: str, proxy: PausableProxy) -> None:
        self.work = work
        self.bucket = bucket
        self.proxy = proxy
        self.config = work / "fleet.toml"
        self.config.write_text(
            f'db = "{pg_url}"\n'
            f'store_url = "s3://{bucket}/{PREFIX}"\n'
            f's3_endpoint_url = "{proxy.endpoint}"\n'
            "grace_period_s = 5.0\n"
        )
        self.replicas: dict[str, Replica] = {}

    @property
    def store(self) -> str:
        return f"s3://{self.bucket}/{PREFIX}"

    def start(self, name: str, port: int = 0) -> Replica:
        """Replica `name` on `port` (0: a free one) with its data dir; returns once it serves."""
        data_dir = self.work / name
        args = ("--config", str(self.config), "--data-dir", str(data_dir), "--port", str(port))
        replica = Replica(name, data_dir, start_server(self.work, name, *args))
        self.replicas[name] = replica
        return replica

    def start_all(self, names: str) -> None:
        """The first replica alone (it creates the schema), then the others together."""
        self.start(names[0])
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(self.start, names[1:]))

    def restart_wiped(self, name: str) -> Replica:
        """Start a replica that was killed again, on its port, its data dir (blob cache) gone."""
        old = self.replicas[name]
        assert old.process.proc.poll() is not None, f"replica {name} is still running"
        shutil.rmtree(old.data_dir)
        return self.start(name, old.port)

    def addresses(self) -> list[str]:
        return [r.address for r in self.replicas.values()]

    def close(self) -> None:
        for replica in self.replicas.values():
            if replica.process.proc.poll() is None:
                replica.process.kill()


def probe(address: str) -> Client:
    """A client of one replica with its own connection: gRPC shares connections (subchannels)
    between the channels of a process by default, and a shared one to a replica that was down may
    still be waiting out its reconnect backoff, which says nothing about the replica."""
    return Client(address, options=[("grpc.use_local_subchannel_pool", 1)])


def first_answer(client: Client, version: int, limit_s: float = WAIT_S) -> float:
    """perf_counter time of the first Predict ("production") that `version` answers."""
    end = time.perf_counter() + limit_s
    while True:
        try:
            if client.predict(MODEL, {"x": X}, version="production", timeout=5).version == version:
                return time.perf_counter()
        except grpc.RpcError as exc:  # the model is not known there yet
            if exc.code() not in NOT_YET:  # type: ignore[attr-defined]
                raise
        if time.perf_counter() > end:
            raise AssertionError(f"no answer from version {version} within {limit_s} s at {client.target}")


def convergence_ms(probes: dict[str, Client], version: int, since: float) -> dict[str, float]:
    """Per replica, milliseconds from `since` to its first answer from `version` (probed at once)."""
    with ThreadPoolExecutor(len(probes)) as pool:
        seen = {name: pool.submit(first_answer, client, version) for name, client in probes.items()}
        return {name: round((done.result() - since) * 1000, 1) for name, done in seen.items()}


def blob_matches(path: Path, model: Path) -> bool:
    return path.is_file() and hash_file(path) == hash_file(model) and path.read_bytes() == model.read_bytes()
