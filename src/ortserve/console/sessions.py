"""Browser sessions of the console: who signed in, and the checks that refuse cross-site posts.

A cookie (HttpOnly, SameSite=Strict) holds a random session id and nothing else. The server keeps,
for each id that signed in, the configured token it proved (name and scope; the secret is neither
kept nor ever sent back). Every form carries a CSRF token derived from the session id with a key
that never leaves the process; a post must carry it and, when the browser says where it comes from
(Origin, Sec-Fetch-Site), come from this origin.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ortserve.errors import PermissionDenied
from ortserve.server.auth import Token

COOKIE = "ortserve_console"
SESSION_TTL_S = 8 * 3600.0
MAX_SESSIONS = 1000
_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True, slots=True)
class SignedIn:
    token: Token
    expires: float


class Sessions:
    """Signed-in sessions by id, at most MAX_SESSIONS (the oldest sign-in goes first), each for
    SESSION_TTL_S. Only a valid token creates one, so strangers cannot fill the table."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._signed_in: OrderedDict[str, SignedIn] = OrderedDict()

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(32)

    @staticmethod
    def valid_id(text: str | None) -> bool:
        return text is not None and _ID.match(text) is not None

    def csrf(self, session_id: str) -> str:
        return hmac.new(self._key, session_id.encode(), hashlib.sha256).hexdigest()

    def sign_in(self, token: Token) -> str:
        """A fresh session id for `token` (never the id the browser had before: no fixation)."""
        session_id = self.new_id()
        self._signed_in[session_id] = SignedIn(token, self._clock() + SESSION_TTL_S)
        while len(self._signed_in) > MAX_SESSIONS:
            self._signed_in.popitem(last=False)
        return session_id

    def sign_out(self, session_id: str) -> None:
        self._signed_in.pop(session_id, None)

    def token(self, session_id: str) -> Token | None:
        found = self._signed_in.get(session_id)
        if found is None:
            return None
        if found.expires <= self._clock():
            del self._signed_in[session_id]
            return None
        return found.token

    def check_post(self, session_id: str, sent_csrf: str, headers: Mapping[str, str], origin: str) -> None:
        """Refuse a post that another site could have made: from a foreign origin, or without this
        session's CSRF token."""
        site = headers.get("Sec-Fetch-Site")
        if site is not None and site != "same-origin":
            raise PermissionDenied(f"cross-site request refused: Sec-Fetch-Site is {site!r}")
        sender = headers.get("Origin")
        if sender is not None and sender != origin:
            raise PermissionDenied(f"cross-site request refused: it comes from {sender!r}, not {origin!r}")
        if not hmac.compare_digest(sent_csrf.encode(), self.csrf(session_id).encode()):
            raise PermissionDenied(
                "cross-site request refused: the form's CSRF token is missing or stale; reload the page"
            )
