"""Asyncio load generator over grpc.aio: C requests in flight, for a duration or a count.

Every request carries the same pre-serialized message (random input made once from the model's
signature or from `--input`), so the generator's own cost per request is one gRPC call, one
response parse and a few list appends. Run it in its own process (the CLI is): it shares no
event loop or GIL with the server under test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import Any, TextIO

import grpc
import numpy as np
from grpc import aio

from ortserve import dtypes
from ortserve.api.inference import grpc_service_pb2 as oip
from ortserve.api.inference import grpc_service_pb2_grpc as oip_grpc
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import tensor_pb2 as tpb
from ortserve.bench.stats import Samples, Summary, server_timing, summarize
from ortserve.cli.bench import PROTOCOLS
from ortserve.errors import InvalidInput, Unavailable

MAX_MESSAGE_BYTES = 256 << 20
_PREDICT = "/ortserve.api.v1.InferenceService/Predict"
_PREDICT_STREAM = "/ortserve.api.v1.InferenceService/PredictStream"
_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
_ENUM_OF_NAME = {
    d.name: tpb.DataType.Value("DATA_TYPE_" + ("STRING" if d is dtypes.BYTES else d.name)) for d in dtypes.ALL
}
_NAME_OF_ENUM = {v: k for k, v in _ENUM_OF_NAME.items()}


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input: name, datatype name (FP32, INT64, ...), shape with -1 for free dims."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """`NAME:DTYPE:D0,D1,...`, e.g. `x:FP32:-1,16`."""
        parts = text.split(":")
        if len(parts) != 3 or not parts[0]:
            raise InvalidInput(f"--input takes NAME:DTYPE:DIMS (e.g. x:FP32:-1,16), got {text!r}")
        name, dtype, dims = parts
        dtypes.by_name(dtype.upper(), f"--input {text!r}")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if dims else ()
        except ValueError:
            raise InvalidInput(f"--input {text!r}: dims must be integers separated by commas") from None
        return cls(name, dtype.upper(), shape)

    def concrete(self, rows: int) -> tuple[int, ...]:
        """The shape of one request: axis 0 takes `rows` when free; other free dims take 1."""
        return tuple(rows if (d < 0 and i == 0) else (1 if d < 0 else d) for i, d in enumerate(self.shape))


@dataclass(frozen=True, slots=True)
class BenchOptions:
    target: str
    model: str
    protocol: str = "ortserve"
    version: str = ""
    concurrency: int = 1
    streams: int = 1
    duration_s: float | None = 10.0
    requests: int | None = None
    warmup_s: float = 2.0
    batch_rows: int = 1
    inputs: tuple[InputSpec, ...] = ()
    timeout_s: float = 30.0
    seed: int = 0
    progress: bool = False
    processes: int = 1

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InvalidInput(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.concurrency < 1 or self.batch_rows < 1:
            raise InvalidInput("--concurrency and --batch-rows must be >= 1")
        if self.protocol == "ortserve-stream" and not 1 <= self.streams <= self.concurrency:
            raise InvalidInput(
                f"--streams must be in 1..concurrency ({self.concurrency}), got {self.streams}"
            )
        if self.requests is None and (self.duration_s is None or self.duration_s <= 0):
            raise InvalidInput("give a --duration > 0 or a --requests count")
        if self.requests is not None and self.requests < 1:
            raise InvalidInput("--requests must be >= 1")
        if self.warmup_s < 0:
            raise InvalidInput("--warmup must be >= 0")
        if self.protocol == "echo" and not self.inputs:
            raise InvalidInput(
                "the echo protocol needs --input NAME:DTYPE:DIMS (the echo server has no models)"
            )
        self._check_processes()

    def _check_processes(self) -> None:
        """Each process carries a share of the load, so none may be left without one."""
        if self.processes < 1:
            raise InvalidInput(f"--processes must be >= 1, got {self.processes}")
        shares = [("--concurrency", self.concurrency), ("--requests", self.requests)]
        if self.protocol == "ortserve-stream":
            shares.append(("--streams", self.streams))
        for flag, total in shares:
            if total is not None and self.processes > total:
                raise InvalidInput(f"--processes {self.processes} exceeds {flag} {total}: each needs a share")


def even_shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` shares as even as possible, the first ones taking the remainder."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def random_inputs(specs: Sequence[InputSpec], rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One request's worth of random data per input, made once."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        dtype = dtypes.BY_NAME[spec.dtype]
        shape = spec.concrete(rows)
        if dtype is dtypes.BYTES:
            out[spec.name] = np.full(shape, b"bench", dtype=object)
        elif dtype.numpy.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype.numpy)
        elif dtype.numpy.kind == "b":
            out[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            out[spec.name] = rng.integers(0, 10, shape).astype(dtype.numpy)
    return out


def raw_bytes(array: np.ndarray) -> bytes:
    """Row-major little-endian element bytes; strings as 4-byte length + bytes."""
    if array.dtype == np.dtype(object):
        parts = []
        for item in array.ravel():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(data).to_bytes(4, "little") + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _dtype_name(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == np.dtype(object) else dtypes.of_array(array).name


def predict_request(model: str, version: str, feeds: dict[str, np.ndarray]) -> bytes:
    tensors = [
        tpb.Tensor(name=n, data_type=_ENUM_OF_NAME[_dtype_name(a)], shape=a.shape, raw_data=raw_bytes(a))
        for n, a in feeds.items()
    ]
    return ipb.PredictRequest(model=model, version=version, inputs=tensors).SerializeToString()


class SharedFeeds:
    """The inputs written once into a POSIX shared memory region registered with the server, and
    the Predict request that names them (`ortserve-shm`: a co-located client; every request reads
    the same bytes, the client's own per-request copy into the region is left out)."""

    def __init__(self, feeds: dict[str, np.ndarray]) -> None:
        self._data = {name: raw_bytes(array) for name, array in feeds.items()}
        self._feeds = feeds
        self.region = f"ortserve-bench-{uuid.uuid4().hex[:12]}"  # the server's default key prefix
        size = max(1, sum(len(d) for d in self._data.values()))
        self._shm = shared_memory.SharedMemory(name=self.region, create=True, size=size)

    async def open(self, channel: aio.Channel, model: str, version: str) -> bytes:
        offset, tensors, buf = 0, [], self._shm.buf
        assert buf is not None
        for name, data in self._data.items():
            buf[offset : offset + len(data)] = data
            array = self._feeds[name]
            ref = tpb.SharedMemoryRef(region=self.region, offset=offset, byte_size=len(data))
            tensors.append(
                tpb.Tensor(
                    name=name,
                    data_type=_ENUM_OF_NAME[_dtype_name(array)],
                    shape=array.shape,
                    shared_memory=ref,
                )
            )
            offset += len(data)
        register = oip.SystemSharedMemoryRegisterRequest(
            name=self.region, key="/" + self.region, byte_size=self._shm.size
        )
        await oip_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryRegister(register)
        return ipb.PredictRequest(model=model, version=version, inputs=tensors).SerializeToString()

    async def close(self, channel: aio.Channel) -> None:
        with contextlib.suppress(grpc.RpcError):
            unregister = oip.SystemSharedMemoryUnregisterRequest(name=self.region)
            await oip_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryUnregister(unregister)
        self._shm.close()
        self._shm.unlink()


def model_infer_request(model: str, version: str, feeds: dict[str, np.ndarray]) -> bytes:
    request = oip.ModelInferRequest(model_name=model, model_version=version)
    for name, array in feeds.items():
        request.inputs.add(name=name, datatype=_dtype_name(array), shape=array.shape)
        request.raw_input_contents.append(raw_bytes(array))
    return request.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def stream_message(message_id: bytes, request_field: bytes) -> bytes:
    """A serialized PredictStreamRequest: field 1 (id) then the pre-encoded field 2 (request)."""
    return b"\x0a" + _varint(len(message_id)) + message_id + request_field


def request_field(request: bytes) -> bytes:
    """Field 2 (request) of PredictStreamRequest, encoded once."""
    return b"\x12" + _varint(len(request)) + request


async def fetch_specs(channel: aio.Channel, options: BenchOptions) -> tuple[InputSpec, ...]:
    if options.protocol == "oip":
        from ortserve.api.inference import grpc_service_pb2_grpc as oip_grpc

        oip_stub = oip_grpc.GRPCInferenceServiceStub(channel)
        meta = await oip_stub.ModelMetadata(
            oip.ModelMetadataRequest(name=options.model, version=options.version), timeout=options.timeout_s
        )
        return tuple(InputSpec(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs)
    from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc

    stub = ipb_grpc.InferenceServiceStub(channel)
    response = await stub.GetModelSignature(
        ipb.GetModelSignatureRequest(model=options.model, version=options.version), timeout=options.timeout_s
    )
    return tuple(
        InputSpec(s.name, _NAME_OF_ENUM[s.data_type], tuple(s.shape)) for s in response.signature.inputs
    )


@dataclass(slots=True)
class _Run:
    """Shared state of one run; the hot path touches only plain attributes and list appends."""

    count_mode: bool
    budget: int  # requests still to issue in the measured phase (count mode)
    measuring: bool = False
    stopped: bool = False
    done: int = 0  # completions in the current phase, for the progress line
    latencies: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    queue_us: list[int] = field(default_factory=list)
    compute_us: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    outstanding: int = 0

    def may_send(self) -> bool:
        """Whether to issue another request; in count mode it spends the budget."""
        if self.stopped:
            return False
        if self.measuring and self.count_mode:
            if self.budget <= 0:
                return False
            self.budget -= 1
        return True

    def counts(self, tagged: bool) -> bool:
        """Count mode counts what was sent while measuring; duration mode what completes while measuring."""
        return tagged if self.count_mode else self.measuring

    def sent(self) -> None:
        self.outstanding += 1

    def completed(self) -> None:
        self.outstanding -= 1
        self.done += 1
        if self.count_mode and self.measuring and self.budget <= 0 and self.outstanding == 0:
            self.finished.set()

    def timing(self, t: ipb.Timing) -> None:
        if t.batch_size:
            self.queue_us.append(t.queue_us)
            self.compute_us.append(t.compute_us)
            self.batch_sizes.append(t.batch_size)


def _status_name(exc: BaseException) -> str:
    if isinstance(exc, aio.AioRpcError):
        return str(exc.code().name)
    return type(exc).__name__


async def _unary_worker(
    call: Any, payload: bytes, run: _Run, deadline_s: float, on_response: Callable[[Any], None] | None
) -> None:
    clock = time.perf_counter_ns
    while run.may_send():
        tagged = run.measuring
        run.sent()
        t0 = clock()
        try:
            response = await call(payload, timeout=deadline_s)
        except (TimeoutError, aio.AioRpcError) as exc:
            run.completed()
            if run.counts(tagged):
                run.errors[_status_name(exc)] += 1
            continue
        latency = clock() - t0
        if run.counts(tagged):
            run.latencies.append(latency)
            if on_response is not None:
                on_response(response)
        run.completed()


class _Stream:
    """One PredictStream keeping `window` messages outstanding; never waits on an answer to send."""

    def __init__(
        self, channel: aio.Channel, payload: bytes, window: int, run: _Run, deadline_s: float
    ) -> None:
        self._call: Any = channel.stream_stream(
            _PREDICT_STREAM,
            request_serializer=None,
            response_deserializer=ipb.PredictStreamResponse.FromString,
        )()
        self._field2 = request_field(payload)
        self._window = window
        self._slots = asyncio.Semaphore(window)
        self._pending: dict[str, tuple[int, bool]] = {}
        self._run = run
        self._deadline_s = deadline_s
        self._broken = False

    async def _read(self) -> None:
        run, pending, clock, call = self._run, self._pending, time.perf_counter_ns, self._call
        try:
            while True:
                answer: ipb.PredictStreamResponse = await call.read()
                if answer is aio.EOF:  # type: ignore[comparison-overlap]
                    return
                t0, tagged = pending.pop(answer.id)
                latency = clock() - t0
                if run.counts(tagged):
                    if answer.WhichOneof("result") == "error":
                        run.errors[_code_name(answer.error.code)] += 1
                    else:
                        run.latencies.append(latency)
                        run.timing(answer.response.timing)
                run.completed()
                self._slots.release()
        except BaseException:
            self._broken = True  # let the writer see it
            for _ in range(self._window):
                self._slots.release()
            raise

    async def _write(self) -> None:
        run, pending, clock, slots = self._run, self._pending, time.perf_counter_ns, self._slots
        n = 0
        while True:
            await slots.acquire()
            if self._broken or not run.may_send():
                slots.release()
                return
            n += 1
            key = str(n)
            pending[key] = (clock(), run.measuring)
            run.sent()
            await self._call.write(stream_message(key.encode(), self._field2))

    async def run(self) -> None:
        read_task = asyncio.create_task(self._read())
        try:
            await self._write()
            # wait for every outstanding answer (all slots back), then close our side
            async with asyncio.timeout(self._deadline_s):
                for _ in range(self._window):
                    await self._slots.acquire()
            if not self._broken:
                await self._call.done_writing()
            await asyncio.wait_for(read_task, self._deadline_s)
        except (aio.AioRpcError, TimeoutError) as exc:
            self._lose_pending(_status_name(exc))
        finally:
            read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aio.AioRpcError):
                await read_task
            self._call.cancel()

    def _lose_pending(self, code: str) -> None:
        """Messages a broken stream will never answer count as errors with the stream's status."""
        for _t0, tagged in self._pending.values():
            if self._run.counts(tagged):
                self._run.errors[code] += 1
            self._run.completed()
        self._pending.clear()


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return f"CODE_{code}"


@dataclass(slots=True)
class _Window:
    """The current phase's start, then the measured window: perf_counter, Unix time and process CPU."""

    start: float = field(default_factory=time.perf_counter)
    end: float = math.nan
    start_unix: float = 0.0
    end_unix: float = 0.0
    cpu_start: float = 0.0
    cpu_end: float = 0.0

    def open(self) -> None:
        self.start, self.start_unix, self.cpu_start = time.perf_counter(), time.time(), time.process_time()

    def close(self) -> None:
        self.end, self.end_unix, self.cpu_end = time.perf_counter(), time.time(), time.process_time()

    @property
    def elapsed(self) -> float:
        return self.end - self.start


async def _progress(run: _Run, out: TextIO, window: _Window) -> None:
    while True:
        await asyncio.sleep(0.5)
        phase = "measure" if run.measuring else "warm-up"
        elapsed = time.perf_counter() - window.start
        rate = run.done / elapsed if elapsed > 0 else 0.0
        errors = sum(run.errors.values())
        out.write(f"\r{phase:8s} {elapsed:6.1f}s {run.done:9d} done {errors:6d} errors {rate:10.1f} req/s ")
        out.flush()


async def _predict_payload(
    options: BenchOptions, channel: aio.Channel, feeds: dict[str, np.ndarray]
) -> tuple[bytes, SharedFeeds | None]:
    if options.protocol != "ortserve-shm":
        return predict_request(options.model, options.version, feeds), None
    shared = SharedFeeds(feeds)
    return await shared.open(channel, options.model, options.version), shared


async def run_bench(options: BenchOptions, progress_out: TextIO | None = None) -> dict[str, Any]:
    """Run one load test; the result is JSON-ready."""
    result, _samples = await measure(options, progress_out)
    return result


async def measure(
    options: BenchOptions,
    progress_out: TextIO | None = None,
    connected: Callable[[], Awaitable[None]] | None = None,
) -> tuple[dict[str, Any], Samples]:
    """Run one load test: the result and its raw samples (so that several processes' runs merge
    into exact percentiles). `connected` is awaited once the channel is ready and the request built,
    before any load: the rendezvous that lines up the measured windows of several processes."""
    channel_options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    async with aio.insecure_channel(options.target, options=channel_options) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), options.timeout_s)
        except TimeoutError:
            raise Unavailable(f"cannot reach {options.target} within {options.timeout_s:g} s") from None
        specs = options.inputs or await fetch_specs(channel, options)
        feeds = random_inputs(specs, options.batch_rows, options.seed)
        run = _Run(count_mode=options.requests is not None, budget=options.requests or 0)
        payload, shared = await _payload(options, channel, feeds)
        tasks: list[asyncio.Task[None]] = []
        ticker = None
        try:
            if connected is not None:
                await connected()
            tasks = _start_workers(options, channel, payload, run)
            window = _Window()
            ticker = asyncio.create_task(_progress(run, progress_out, window)) if progress_out else None
            await _phases(options, run, tasks, window)
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                assert progress_out is not None
                progress_out.write("\r" + " " * 72 + "\r")
                progress_out.flush()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if shared is not None:
                await shared.close(channel)
        elapsed = window.elapsed
    samples = Samples(run.latencies, run.queue_us, run.compute_us, run.batch_sizes)
    summary = summarize(
        samples.latencies_ns,
        elapsed if elapsed > 0 else 1e-9,
        rows_per_request=options.batch_rows,
        errors_by_code=run.errors,
        server=server_timing(samples.queue_us, samples.compute_us, samples.batch_sizes),
    )
    result = _result(options, specs, payload, summary)
    result["window_unix"] = [window.start_unix, window.end_unix]
    result["client_cpu_cores"] = (window.cpu_end - window.cpu_start) / elapsed if elapsed > 0 else None
    return result, samples


async def _payload(
    options: BenchOptions, channel: aio.Channel, feeds: dict[str, np.ndarray]
) -> tuple[bytes, SharedFeeds | None]:
    """The one pre-serialized request of the run (and its shared memory region for ortserve-shm)."""
    if options.protocol == "oip":
        return model_infer_request(options.model, options.version, feeds), None
    return await _predict_payload(options, channel, feeds)


def _start_workers(
    options: BenchOptions, channel: aio.Channel, payload: bytes, run: _Run
) -> list[asyncio.Task[None]]:
    """The tasks that keep `options.concurrency` requests in flight; warm-up starts with them."""
    if options.protocol == "oip":
        infer: Any = channel.unary_unary(
            _MODEL_INFER, request_serializer=None, response_deserializer=oip.ModelInferResponse.FromString
        )
        return [
            asyncio.create_task(_unary_worker(infer, payload, run, options.timeout_s, None))
            for _ in range(options.concurrency)
        ]
    if options.protocol == "ortserve-stream":
        return [
            asyncio.create_task(_Stream(channel, payload, share, run, options.timeout_s).run())
            for share in even_shares(options.concurrency, options.streams)
        ]
    predict: Any = channel.unary_unary(
        _PREDICT, request_serializer=None, response_deserializer=ipb.PredictResponse.FromString
    )

    def on_response(response: ipb.PredictResponse) -> None:
        run.timing(response.timing)

    return [
        asyncio.create_task(_unary_worker(predict, payload, run, options.timeout_s, on_response))
        for _ in range(options.concurrency)
    ]


async def _phases(options: BenchOptions, run: _Run, tasks: list[asyncio.Task[None]], window: _Window) -> None:
    """Warm up, then measure; `window` ends up holding the measured window."""
    if options.warmup_s > 0:
        await _sleep_or_fail(options.warmup_s, tasks)
    run.latencies.clear()
    run.errors.clear()
    run.done = 0
    run.measuring = True
    window.open()
    if run.count_mode:
        finished = asyncio.create_task(run.finished.wait())
        await asyncio.wait([finished, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if not finished.done():  # a worker died: wait for the rest, then stop
            await asyncio.wait(tasks, timeout=options.timeout_s)
        finished.cancel()
        window.close()
    else:
        assert options.duration_s is not None
        await _sleep_or_fail(options.duration_s, tasks)
        run.measuring = False
        window.close()
    run.stopped = True
    await asyncio.wait(tasks, timeout=options.timeout_s)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _sleep_or_fail(seconds: float, tasks: list[asyncio.Task[None]]) -> None:
    """Sleep, but surface a worker that crashed meanwhile."""
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def _result(
    options: BenchOptions, specs: Sequence[InputSpec], payload: bytes, summary: Summary
) -> dict[str, Any]:
    return {
        "protocol": options.protocol,
        "target": options.target,
        "model": options.model,
        "version": options.version,
        "concurrency": options.concurrency,
        "processes": options.processes,
        "streams": options.streams if options.protocol == "ortserve-stream" else None,
        "batch_rows": options.batch_rows,
        "warmup_s": options.warmup_s,
        "duration_s": options.duration_s if options.requests is None else None,
        "requests_target": options.requests,
        "inputs": [
            {"name": s.name, "dtype": s.dtype, "shape": list(s.concrete(options.batch_rows))} for s in specs
        ],
        "request_bytes": len(payload),
        **summary.as_dict(),
    }


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    progress = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    return BenchOptions(
        target=args.server,
        model=args.model,
        protocol=args.protocol,
        version=args.version,
        concurrency=args.concurrency,
        streams=args.streams,
        duration_s=None
        if args.requests is not None
        else (args.duration if args.duration is not None else 10.0),
        requests=args.requests,
        warmup_s=args.warmup,
        batch_rows=args.batch_rows,
        inputs=tuple(InputSpec.parse(s) for s in args.input),
        timeout_s=args.timeout,
        seed=args.seed,
        progress=progress and args.processes == 1,
        processes=args.processes,
    )


def format_text(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]

    def ms(key: str) -> str:
        value = lat.get(key)
        return "-" if value is None else f"{value:.3f}"

    lines = [
        f"{result['protocol']} {result['model']} @ {result['target']}: concurrency {result['concurrency']}"
        + (f" over {result['streams']} streams" if result["streams"] else "")
        + (f" from {result['processes']} processes" if result.get("processes", 1) > 1 else "")
        + f", {result['batch_rows']} rows/request",
        f"  requests   {result['requests']} ok, {result['errors']} errors in {result['elapsed_s']:.2f} s",
        f"  throughput {result['throughput_rps']:.1f} req/s, {result['rows_per_s']:.1f} rows/s",
        f"  latency ms p50 {ms('p50')}  p90 {ms('p90')}  p99 {ms('p99')}  max {ms('max')}",
    ]
    if result["errors_by_code"]:
        lines.append("  errors     " + ", ".join(f"{k} {v}" for k, v in result["errors_by_code"].items()))
    server = result.get("server")
    if server:
        lines.append(
            f"  server     queue {server['queue_us_mean']:.0f} us,"
            f" compute {server['compute_us_mean']:.0f} us mean"
            f" (p50 {server['compute_us_p50']:.0f}), batch size {server['batch_size_mean']:.1f} mean"
            f" / {server['batch_size_max']} max"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Entry point of `ortserve bench`; exit status 1 when any request failed."""
    from ortserve.bench.processes import LoadProcessFailed, run_processes

    options = options_from_args(args)
    try:
        if options.processes > 1:
            result = run_processes(options)
        else:
            result = asyncio.run(run_bench(options, sys.stderr if options.progress else None))
    except aio.AioRpcError as exc:  # before the run starts (signature lookup) or a crashed worker
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except LoadProcessFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else format_text(result))
    return 1 if result["errors"] else 0
