"""The `ortserve` command: serve, manage models through a running server, predict, configure."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ortserve import dtypes
from ortserve.errors import InvalidInput, OrtserveError
from ortserve.provider_specs import parse_spec_list
from ortserve.records import ProviderSpec

DEFAULT_SERVER = "127.0.0.1:8001"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
        return result
    except (OrtserveError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        import grpc

        if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ortserve", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_db(sub)
    _add_models(sub)
    _add_predict(sub)
    _add_config(sub)
    _add_token(sub)
    _add_bench(sub)
    _add_health(sub)
    return parser


def _provider_specs(text: str) -> tuple[ProviderSpec, ...]:
    """argparse type of --provider: specs (';'-separated), or a usage error naming what is wrong."""
    try:
        specs = parse_spec_list(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not specs:
        raise argparse.ArgumentTypeError(f"provider spec {text!r} has no provider name")
    return specs


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file (default: $ORTSERVE_CONFIG)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--data-dir")
    p.add_argument("--db", help="SQLAlchemy URL (default: SQLite in the data dir)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys: tuple[str, ...] = ("host", "port", "metrics_port", "data_dir", "db", "log_level", "model_dir")
    keys += ("model_name", "workers", "providers")
    return {k: getattr(args, k, None) for k in keys}


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the server")
    _server_flags(p)
    p.add_argument("--port-file", help="write the bound port here once serving (useful with --port 0)")
    p.add_argument(
        "--examples", action="store_true", help="register the example models when the registry is empty"
    )
    p.add_argument(
        "--model-dir",
        help="register at start what DIR holds: a model.onnx, or <name>/<version>/model.onnx (Triton layout)",
    )
    p.add_argument("--model-name", help="name of --model-dir's single model.onnx (default: the folder name)")
    p.add_argument("--workers", type=int, help="server processes sharing the port (default 1)")
    p.add_argument(
        "--providers",
        metavar="SPECS",
        help="default execution providers, ';'-separated specs NAME[:key=value,...] in order of preference",
    )
    p.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ortserve.config import load_config
    from ortserve.logging import configure_logging

    config = load_config(args.config, overrides=_overrides(args))
    configure_logging(config.log_level, config.log_format)
    if args.examples or config.examples:  # the flag, or ORTSERVE_EXAMPLES / the file
        _register_examples(config)
    if config.workers > 1:
        from ortserve.server.workers import supervise

        return supervise(config, args.port_file)  # the supervisor does not import the server
    from ortserve.server.app import serve

    asyncio.run(serve(config, args.port_file))
    return 0


def _register_examples(config: Any) -> None:
    from ortserve.examples import write_examples
    from ortserve.registry.db import open_registry
    from ortserve.registry.service import Registry
    from ortserve.store import open_store

    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    engine = open_registry(config.db_url)
    registry = Registry(engine, open_store(config), max_model_bytes=config.max_model_bytes)
    if not registry.list_models(1, "")[0]:
        for name, path in write_examples(Path(config.data_dir) / "examples").items():
            record = registry.register_file(
                path, name, description=f"example model {name}", created_by="examples"
            )
            print(f"registered example model {name!r} version {record.version}", file=sys.stderr)
    engine.dispose()
    print(_EXAMPLES_HINT.format(server=f"{config.host}:{config.port}"), file=sys.stderr)


_EXAMPLES_HINT = """
Example models: linear (x FP32 [N,16] -> y FP32 [N,4]) and add (a, b FP32 [N,4] -> z).
Call them from another terminal:
  .venv/bin/ortserve models list --server {server}
  .venv/bin/ortserve predict add --server {server} --input a='[[1,2,3,4]]' --input b='[[10,20,30,40]]'
  .venv/bin/ortserve predict linear --server {server} --input x="$(python3 -c 'print([[0.5]*16])')"
"""


def _add_db(sub: Any) -> None:
    p = sub.add_parser("db", help="registry database")
    dsub = p.add_subparsers(required=True, metavar="ACTION")
    up = dsub.add_parser("upgrade", help="apply migrations")
    _server_flags(up)
    up.set_defaults(run=_db_upgrade)
    gc = dsub.add_parser(
        "gc", help="remove model-store files no version references (left by crashed or aborted uploads)"
    )
    _server_flags(gc)
    gc.add_argument(
        "--grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="keep files written less than this long ago (default: 3600); uploads in flight on a file "
        "store are kept whatever it is (they hold a lock), on S3 keep it longer than a registration",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    gc.set_defaults(run=_db_gc)


def _db_upgrade(args: argparse.Namespace) -> int:
    from ortserve.config import load_config
    from ortserve.registry.db import open_registry

    config = load_config(args.config, overrides=_overrides(args))
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    open_registry(config.db_url).dispose()
    print(f"registry at {config.db_url_shown} is up to date")
    return 0


def _db_gc(args: argparse.Namespace) -> int:
    from ortserve.config import load_config
    from ortserve.registry.db import engine_for
    from ortserve.registry.service import Registry
    from ortserve.store import open_store

    if args.grace < 0:
        raise OrtserveError(f"--grace must be >= 0 seconds, got {args.grace:g}")
    config = load_config(args.config, overrides=_overrides(args))
    engine = engine_for(config.db_url)
    try:
        # collect_garbage refuses a database not at this ortserve's migration head before removing anything.
        registry = Registry(engine, open_store(config), max_model_bytes=config.max_model_bytes)
        found = registry.collect_garbage(
            blob_grace_s=args.grace, stale_temp_s=args.grace, dry_run=args.dry_run
        )
    finally:
        engine.dispose()
    verb = "would remove" if args.dry_run else "removed"
    for item in found:
        print(f"{verb} {item.location} ({item.size_bytes} bytes)")
    freed = sum(item.size_bytes for item in found)
    print(f"{verb} {len(found)} file(s), {freed} bytes{' (dry run)' if args.dry_run else ' freed'}")
    return 0


def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="register, list, show and roll out models (through a running server)")
    msub = p.add_subparsers(required=True, metavar="ACTION")
    reg = msub.add_parser("register", help="upload an ONNX file as a new version")
    reg.add_argument("path", type=Path)
    reg.add_argument("--name", required=True)
    reg.add_argument("--description", default="")
    reg.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    reg.add_argument(
        "--provider",
        action="extend",
        default=[],
        type=_provider_specs,
        metavar="SPEC",
        help="execution provider, repeated (or ';'-separated) in order of preference: "
        "NAME[:key=value,...], e.g. cuda:device_id=0,gpu_mem_limit=2147483648 (short names: cpu, "
        "cuda, tensorrt, ...)",
    )
    reg.add_argument("--max-batch-size", type=int)
    reg.add_argument("--no-load", action="store_true", help="store only; do not load on the server")
    given = reg.add_mutually_exclusive_group()
    given.add_argument(
        "--sample",
        action="append",
        default=[],
        metavar="NAME=FILE.npy",
        help="sample rows of an input, stored with the version (derived versions are compared on them)",
    )
    given.add_argument("--samples", type=Path, metavar="FILE.npz", help="sample rows of every input, by name")
    reg.set_defaults(run=_models_register)
    ls = msub.add_parser("list", help="list models and versions")
    ls.set_defaults(run=_models_list)
    show = msub.add_parser("show", help="one model: aliases, traffic, shadow comparison, versions")
    show.add_argument("name")
    show.set_defaults(run=_models_show)
    imp = msub.add_parser(
        "import-triton",
        help="register the ONNX models of a Triton model repository (config.pbtxt: batching, "
        "version_policy, accelerators); lists what it cannot carry over",
    )
    imp.add_argument("directory", type=Path, metavar="DIR")
    imp.add_argument("--dry-run", action="store_true", help="print the plan; register nothing")
    imp.add_argument("--load", action="store_true", help="load and warm up each version as it is registered")
    imp.set_defaults(run=_models_import_triton)
    for q in (reg, ls, show, imp):
        _client_flags(q)
    from ortserve.cli.export import add_export_command
    from ortserve.cli.rollout import add_rollout_commands
    from ortserve.cli.toolkit import add_toolkit_commands

    add_rollout_commands(msub, _client_flags)
    add_toolkit_commands(msub, _client_flags)
    add_export_command(msub, _client_flags)


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=DEFAULT_SERVER)
    _token_flag(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _token_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=os.environ.get("ORTSERVE_TOKEN") or None,
        help="bearer token for a server with tokens configured (default: $ORTSERVE_TOKEN)",
    )


def _client(args: argparse.Namespace) -> Any:
    from ortserve.client import Client

    return Client(args.server, token=args.token)


def _models_register(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ortserve.cli.toolkit import read_samples

    labels = dict(_pair(item, "--label") for item in args.label)
    samples = read_samples(args.sample, args.samples)
    total = args.path.stat().st_size
    with (
        _client(args) as client,
        tqdm(total=total, unit="B", unit_scale=True, desc=args.name, disable=None) as bar,
    ):

        def progress(sent: int, _total: int) -> None:
            bar.update(sent - bar.n)

        info = client.register(
            args.path,
            args.name,
            description=args.description,
            labels=labels,
            providers=args.provider,
            max_batch_size=args.max_batch_size,
            load=not args.no_load,
            progress=progress,
            samples=samples,
        )
    from ortserve.cli.tables import version_json

    _emit(args, version_json(info), f"registered {info.model} version {info.version} ({info.state})")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from ortserve.cli import tables as cli_tables

    with _client(args) as client:
        models = client.list_models()
    if args.json:
        cli_tables.print_json([cli_tables.model_json(m) for m in models])
    else:
        cli_tables.emit([cli_tables.models_table(models)])
    return 0


def _models_show(args: argparse.Namespace) -> int:
    from ortserve.cli import tables as cli_tables

    with _client(args) as client:
        model = client.get_model(args.name)
    if args.json:
        cli_tables.print_json(cli_tables.model_json(model))
    else:
        cli_tables.emit(cli_tables.model_tables(model))
    return 0


def _models_import_triton(args: argparse.Namespace) -> int:
    """Exit 1 when a configuration could not be read or a version was refused (the rest is imported)."""
    from ortserve import triton_import
    from ortserve.cli import tables as cli_tables

    plans = triton_import.plan_repository(args.directory)
    if not args.dry_run:
        with _client(args) as client:
            triton_import.apply_plan(plans, client, load=args.load)
    if args.json:
        cli_tables.print_json(cli_tables.import_json(args.directory, plans, args.dry_run))
    else:
        cli_tables.emit(cli_tables.import_tables(args.directory, plans, args.dry_run))
        print(cli_tables.import_summary(plans, args.dry_run))
    return 1 if triton_import.failed(plans) else 0


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="run a model once")
    p.add_argument("model")
    p.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="NAME=FILE.npy|JSON",
        help="an input from a .npy file or inline JSON (cast to the model's input type)",
    )
    p.add_argument("--version", default="")
    p.add_argument("--server", default=DEFAULT_SERVER)
    _token_flag(p)
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(run=_predict)


def _predict(args: argparse.Namespace) -> int:
    with _client(args) as client:
        signature = client.signature(args.model, args.version or None)
        types = {name: dtype for name, dtype, _ in signature.inputs}
        feeds = {}
        for item in args.input:
            name, value = _pair(item, "--input")
            feeds[name] = _read_input(value, types.get(name, "FP32"))
        result = client.predict(args.model, feeds, args.version or None, timeout=args.timeout)
    out = {
        "model": result.model,
        "version": result.version,
        "outputs": {k: _jsonable(v) for k, v in result.outputs.items()},
        "timing": {
            "queue_us": result.queue_us,
            "compute_us": result.compute_us,
            "batch_size": result.batch_size,
            "provider": result.provider,
        },
    }
    print(json.dumps(out))
    return 0


def _add_token(sub: Any) -> None:
    p = sub.add_parser("token", help="bearer tokens")
    tsub = p.add_subparsers(required=True, metavar="ACTION")
    new = tsub.add_parser(
        "new", help="make a random token: the secret for the client, the hashed entry for the server"
    )
    new.add_argument("name", help="the name the audit log records for changes made with it")
    new.set_defaults(run=_token_new)
    hashed = tsub.add_parser("hash", help="the hashed entry (NAME:sha256:HEX) for a secret read from stdin")
    hashed.add_argument("name")
    hashed.set_defaults(run=_token_hash)


def _token_new(args: argparse.Namespace) -> int:
    import secrets

    from ortserve.server.auth import token_line

    secret = secrets.token_urlsafe(32)
    print(json.dumps({"secret": secret, "entry": token_line(args.name, secret)}))
    return 0


def _token_hash(args: argparse.Namespace) -> int:
    from ortserve.server.auth import token_line

    secret = sys.stdin.readline().rstrip("\n")
    if not secret:
        print("error: no secret on standard input", file=sys.stderr)
        return 2
    print(token_line(args.name, secret))
    return 0


def _read_input(value: str, dtype_name: str) -> np.ndarray:
    if value.endswith(".npy"):
        loaded: np.ndarray = np.load(value, allow_pickle=False)
        return loaded
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        raise OrtserveError(f"input {value!r} is neither a .npy file nor valid JSON") from None
    dtype = dtypes.BY_NAME[dtype_name]
    return np.array(data, dtype=object) if dtype is dtypes.BYTES else np.asarray(data, dtype=dtype.numpy)


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in array.ravel().tolist()]
    return array.tolist()


def _pair(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise OrtserveError(f"{flag} takes NAME=VALUE, got {item!r}")
    return key, value


def _add_config(sub: Any) -> None:
    p = sub.add_parser("config", help="configuration")
    csub = p.add_subparsers(required=True, metavar="ACTION")
    show = csub.add_parser("show", help="print the effective settings (flags > env > file > defaults)")
    _server_flags(show)
    show.set_defaults(run=_config_show)


def _config_show(args: argparse.Namespace) -> int:
    from ortserve.config import load_config

    config = load_config(args.config, overrides=_overrides(args))
    print(json.dumps({**config.as_dict(), "db_url": config.db_url_shown}, indent=2))
    return 0


def _add_bench(sub: Any) -> None:
    from ortserve.cli.bench import add_arguments

    p = sub.add_parser("bench", help="load generator: throughput and latency percentiles of a server")
    add_arguments(p)
    p.set_defaults(run=_bench)


def _bench(args: argparse.Namespace) -> int:
    from ortserve.bench.loadgen import main as bench_main

    return bench_main(args)


def _add_health(sub: Any) -> None:
    p = sub.add_parser(
        "health",
        help="ask a server's grpc.health.v1 service: exit 0 when SERVING, 1 otherwise (for container probes)",
    )
    p.add_argument("--server", default=DEFAULT_SERVER)
    p.add_argument(
        "--model", default="", metavar="NAME", help="this model's health (SERVING while a version is ready)"
    )
    p.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS", help="answer within (default: 3)")
    p.add_argument("--tls", action="store_true", help="TLS with the system roots (or --tls-ca-file)")
    p.add_argument("--tls-ca-file", metavar="PEM", help="CA certificate(s) to verify the server with")
    p.add_argument("--tls-cert-file", metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key-file", metavar="PEM", help="client private key (mutual TLS)")
    p.add_argument("--server-name", help="the name to expect in the server's certificate")
    p.set_defaults(run=_health)


def _health(args: argparse.Namespace) -> int:
    """One line naming the state, or why there is none; every failure is exit 1 (Docker reserves 2)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ortserve.client.channel import MAX_MESSAGE_BYTES, plan_channel

    subject = args.server + (f" model {args.model!r}" if args.model else "")
    try:
        if not args.timeout > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
        if (args.tls_cert_file is None) != (args.tls_key_file is None):
            raise ValueError("--tls-cert-file and --tls-key-file go together (mutual TLS)")
        plan = plan_channel(
            args.server,
            tls=args.tls,
            root_certificates=args.tls_ca_file,
            certificate_chain=args.tls_cert_file,
            private_key=args.tls_key_file,
            server_name=args.server_name,
            token=None,  # health is open to every caller (server/auth.py)
            metadata=(),
            retry=None,
            health_check=False,
            max_message_bytes=MAX_MESSAGE_BYTES,
            options=(),
        )
    except (ValueError, OSError) as exc:
        print(f"{subject}: not checked: {exc}", file=sys.stderr)
        return 1
    channel = plan.blocking()
    request = health_pb2.HealthCheckRequest(service=args.model)
    try:
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
    except grpc.RpcError as exc:
        print(f"{subject}: {_health_failure(exc, args.timeout)}", file=sys.stderr)
        return 1
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{subject}: {state}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _health_failure(exc: Any, timeout: float) -> str:
    import grpc

    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.NOT_FOUND:
        return "unknown service (NOT_FOUND): no model of that name is loaded there"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {timeout:g} s (DEADLINE_EXCEEDED)"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"unreachable (UNAVAILABLE: {details})"
    return f"{code.name}: {details}"
