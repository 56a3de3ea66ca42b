"""Session options from a version's settings and the server's defaults."""

from __future__ import annotations

import pytest

from ortserve.records import SessionSettings
from ortserve.runtime import session as session_module
from ortserve.runtime.session import SessionDefaults, session_options


@pytest.mark.parametrize(
    ("cores", "concurrent", "threads"),
    [(16, 1, 15), (16, 2, 7), (16, 4, 3), (2, 1, 1), (2, 2, 1), (1, 1, 1)],
)
def test_auto_intra_op_threads_leave_one_core_to_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, cores: int, concurrent: int, threads: int
) -> None:
    monkeypatch.setattr(session_module.os, "cpu_count", lambda: cores)
    options = session_options(SessionSettings(), SessionDefaults(), concurrent)
    assert options.intra_op_num_threads == threads


def test_explicit_threads_win_over_the_server_default_and_auto() -> None:
    assert (
        session_options(
            SessionSettings(intra_op_num_threads=3), SessionDefaults(intra_op_threads=5)
        ).intra_op_num_threads
        == 3
    )
    assert session_options(SessionSettings(), SessionDefaults(intra_op_threads=5)).intra_op_num_threads == 5
    options = session_options(
        SessionSettings(execution_mode="parallel", inter_op_num_threads=2), SessionDefaults()
    )
    assert options.inter_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
