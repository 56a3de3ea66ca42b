"""At start, a registry database that cannot be used fails in one line naming the setting."""

from __future__ import annotations

import socket

import pytest

from ortserve.errors import InvalidInput, Unavailable
from ortserve.registry.db import open_registry


def test_an_unreachable_database_is_one_line_with_the_address_and_no_password() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable) as info:
        open_registry(f"postgresql+psycopg://ops:s3cret@127.0.0.1:{port}/registry")
    message = str(info.value)
    assert message.startswith(f"db postgresql+psycopg://ops:***@127.0.0.1:{port}/registry: cannot open")
    assert "s3cret" not in message and "\n" not in message


def test_a_url_sqlalchemy_cannot_use_is_invalid() -> None:
    with pytest.raises(InvalidInput, match=r"^db is not a usable SQLAlchemy URL: "):
        open_registry("nosuchdialect://x")
