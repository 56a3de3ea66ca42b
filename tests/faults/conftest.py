"""The in-process server of the integration tests, for the fault tests that look inside it."""

from tests.integration.conftest import running

__all__ = ["running"]
