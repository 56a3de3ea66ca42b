"""Keyset pagination of list_models: opaque page tokens that carry the last name of a page."""

from __future__ import annotations

import base64
import binascii

from ortserve.errors import InvalidInput

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_TOKEN_PREFIX = "after:"


def page_size_of(page_size: int) -> int:
    if page_size < 0:
        raise InvalidInput(f"page_size must be >= 0, got {page_size}")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(after: str) -> str:
    return base64.urlsafe_b64encode((_TOKEN_PREFIX + after).encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_TOKEN_PREFIX):
        raise InvalidInput(f"page_token {token!r} is not a token returned by list_models")
    return text.removeprefix(_TOKEN_PREFIX)
