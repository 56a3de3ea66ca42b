"""Test-only crash points: `ORTSERVE_TEST_FAULT=<point>` makes the process SIGKILL itself at `<point>`.

tests/faults uses them to `kill -9` a server at an exact step and check what a restart finds. The
variable is read here and nowhere else; unset (always, outside those tests) nothing is installed
and `crash_point` compares two strings. Points:

- `load:<model>:<version>`: a load of that version, its session created, before its warm-up.
- `commit:<action>:<model>:<version>`: a registry write audited as `<action>` (register, promote,
  alias.set, retire, ...), every statement run, just before its COMMIT.
- `committed:<action>:<model>:<version>`: the same write just after its COMMIT, before this server
  applied it.
"""

from __future__ import annotations

import os
import signal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ortserve.registry.orm import AuditEvent

VARIABLE = "ORTSERVE_TEST_FAULT"
POINT = os.environ.get(VARIABLE, "")
_AUDITED = "ortserve_test_fault_audited"


def crash_point(point: str) -> None:
    """Die at once, as `kill -9` would (no cleanup, no flush), when the armed point is `point`."""
    if point == POINT:
        os.kill(os.getpid(), signal.SIGKILL)


def install() -> None:
    """Arm the registry-write points when ORTSERVE_TEST_FAULT names one; otherwise do nothing."""
    if POINT.startswith(("commit:", "committed:")):
        sa.event.listen(Session, "after_flush", _note_audits)
        sa.event.listen(Session, "before_commit", lambda session: _at(session, "commit"))
        sa.event.listen(Session, "after_commit", lambda session: _at(session, "committed"))


def _note_audits(session: Session, _context: object) -> None:
    """Remember the flushed audit rows (the session holds them only weakly)."""
    noted = session.info.setdefault(_AUDITED, [])
    noted.extend(_describe(row) for row in session.new if isinstance(row, AuditEvent))


def _at(session: Session, when: str) -> None:
    pending = [_describe(row) for row in session.new if isinstance(row, AuditEvent)]
    for audited in (*session.info.get(_AUDITED, ()), *pending):
        crash_point(f"{when}:{audited}")
    if when == "committed":
        session.info.pop(_AUDITED, None)


def _describe(row: AuditEvent) -> str:
    return f"{row.action}:{row.model}:{row.version}"
