"""`ortserve models` rollout commands: promote, rollback, traffic, shadow, alias, retire, audit, watch.

Each talks to a running server through RegistryService; every change is one registry transaction
with an audit record, and every replica converges on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ortserve.client import VersionInfo


def add_rollout_commands(msub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    def command(name: str, help_text: str, run: Callable[[argparse.Namespace, Any], str | None]) -> Any:
        parser = msub.add_parser(name, help=help_text)
        common(parser)
        parser.set_defaults(run=lambda args: _run(args, run))
        return parser

    p = command("promote", "point an alias (default production) at a version", _promote)
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--alias", default="production")
    p = command("rollback", "point an alias back at its previous version", _rollback)
    p.add_argument("name")
    p.add_argument("--alias", default="production")
    _add_traffic(msub, common)
    _add_shadow(msub, common)
    _add_alias(msub, common)
    p = command("retire", "retire a version no alias or policy uses", _retire)
    p.add_argument("name")
    p.add_argument("version", type=int)
    p = command("audit", "registry changes, most recent first", _audit)
    p.add_argument("name", nargs="?", default="")
    p.add_argument("--limit", type=int, default=50)
    p = command("watch", "stream registry and load events (Ctrl-C to stop)", _watch)
    p.add_argument("names", nargs="*")


def _add_traffic(msub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = msub.add_parser("traffic", help="weighted traffic over versions or aliases")
    tsub = p.add_subparsers(required=True, metavar="ACTION")
    s = tsub.add_parser("set", help="e.g. `traffic set fraud 3=90 4=10 --sticky`")
    s.add_argument("name")
    s.add_argument("weights", nargs="+", metavar="TARGET=WEIGHT")
    s.add_argument("--sticky", action="store_true", help="keep each routing key on its version")
    common(s)
    s.set_defaults(run=lambda args: _run(args, _traffic_set))
    c = tsub.add_parser("clear", help="remove the weighted split")
    c.add_argument("name")
    common(c)
    c.set_defaults(run=lambda args: _run(args, _traffic_clear))


def _add_shadow(msub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = msub.add_parser("shadow", help="copy a share of requests to a version and compare")
    ssub = p.add_subparsers(required=True, metavar="ACTION")
    s = ssub.add_parser("set", help="e.g. `shadow set fraud 4 --share 0.1`")
    s.add_argument("name")
    s.add_argument("target", help="version number or alias")
    s.add_argument("--share", type=float, required=True)
    common(s)
    s.set_defaults(run=lambda args: _run(args, _shadow_set))
    c = ssub.add_parser("clear", help="stop shadowing")
    c.add_argument("name")
    common(c)
    c.set_defaults(run=lambda args: _run(args, _shadow_clear))


def _add_alias(msub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = msub.add_parser("alias", help="named pointers to versions")
    asub = p.add_subparsers(required=True, metavar="ACTION")
    s = asub.add_parser("set", help="e.g. `alias set fraud canary 4`")
    s.add_argument("name")
    s.add_argument("alias")
    s.add_argument("version", type=int)
    common(s)
    s.set_defaults(run=lambda args: _run(args, _alias_set))
    d = asub.add_parser("delete")
    d.add_argument("name")
    d.add_argument("alias")
    common(d)
    d.set_defaults(run=lambda args: _run(args, _alias_delete))


def _run(args: argparse.Namespace, action: Callable[[argparse.Namespace, Any], str | None]) -> int:
    from ortserve.client import Client

    with Client(args.server, token=args.token) as client:
        text = action(args, client)
    if text is not None:
        print(text)
    return 0


def _out(args: argparse.Namespace, value: Any, text: str) -> str:
    return json.dumps(asdict(value), indent=2, default=str) if args.json else text


def _promote(args: argparse.Namespace, client: Any) -> str:
    # Looked up first: an unknown version fails before anything changes, and a promote that
    # succeeds is never reported as a failure of the lookup after it.
    warning = ungated_warning(client.get_version(args.name, args.version))
    alias = client.set_alias(args.name, args.alias, args.version)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return _out(
        args,
        alias,
        f"{args.name}: {alias.name} -> version {alias.version} {_was(alias.previous_version)}",
    )


def _was(previous: int) -> str:
    """The version an alias pointed to before; 0 on the wire means it is new."""
    return f"(was {previous})" if previous else "(new alias)"


def ungated_warning(version: VersionInfo) -> str:
    """What to say when a derived version (a VersionInfo) passed no gate; "" otherwise."""
    from ortserve.cli.tables import report_text
    from ortserve.toolkit.recipes import describe

    if version.derived_from is None or (version.report is not None and version.report.gate is not None):
        return ""
    how = describe(version.recipe) if version.recipe is not None else "recipe unknown"
    report = report_text(version.report) if version.report is not None else "none"
    return (
        f"{version.model} version {version.version} was derived ({how}) from version "
        f"{version.derived_from} without a gate; its report: {report}"
    )


def _rollback(args: argparse.Namespace, client: Any) -> str:
    alias = client.rollback(args.name, alias=args.alias)
    return _out(args, alias, f"{args.name}: {alias.name} rolled back to version {alias.version}")


def _traffic_set(args: argparse.Namespace, client: Any) -> str:
    from ortserve.scheduler.routing import parse_weights

    weights = {entry.target: entry.weight for entry in parse_weights(args.weights)}
    policy = client.set_traffic(args.name, weights, sticky=args.sticky)
    return _out(args, policy, f"{args.name}: traffic {_weights(policy)}")


def _traffic_clear(args: argparse.Namespace, client: Any) -> str:
    policy = client.set_traffic(args.name, {})
    return _out(args, policy, f"{args.name}: weighted traffic removed")


def _shadow_set(args: argparse.Namespace, client: Any) -> str:
    policy = client.set_shadow(args.name, args.target, args.share)
    return _out(
        args, policy, f"{args.name}: shadow {policy.shadow_target} gets {policy.shadow_share:g} of requests"
    )


def _shadow_clear(args: argparse.Namespace, client: Any) -> str:
    policy = client.set_shadow(args.name, "", 0.0)
    return _out(args, policy, f"{args.name}: shadow removed")


def _alias_set(args: argparse.Namespace, client: Any) -> str:
    alias = client.set_alias(args.name, args.alias, args.version)
    return _out(args, alias, f"{args.name}: {alias.name} -> version {alias.version}")


def _alias_delete(args: argparse.Namespace, client: Any) -> str:
    client.delete_alias(args.name, args.alias)
    return f"{args.name}: alias {args.alias} deleted"


def _retire(args: argparse.Namespace, client: Any) -> str:
    version = client.retire(args.name, args.version)
    return f"{args.name}: version {version.version} retired"


def _audit(args: argparse.Namespace, client: Any) -> None:
    from ortserve.cli import tables as cli_tables

    entries = client.audit(args.name, limit=args.limit)
    if args.json:
        cli_tables.print_json([cli_tables.audit_json(e) for e in entries])
    else:
        cli_tables.emit([cli_tables.audit_table(entries)])


def _watch(args: argparse.Namespace, client: Any) -> None:
    try:
        for event in client.watch(args.names):
            if args.json:
                print(json.dumps(asdict(event)), flush=True)
            else:
                state = f" {event.state}" if event.state else ""
                where = f"{event.model} v{event.version}{state}"
                print(f"r{event.revision} {event.kind:<10} {where} {event.detail}", flush=True)
    except KeyboardInterrupt:
        pass


def _weights(policy: Any) -> str:
    sticky = " (sticky)" if policy.sticky else ""
    return " ".join(f"{t}={w}" for t, w in policy.weights.items()) + sticky
