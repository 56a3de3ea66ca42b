"""Bearer tokens and an allowlist per scope: deny by default.

Two scopes: `infer` may call exactly the methods in `INFER_METHODS` (predict and read); `admin` may
call everything. Health is open to all; reflection is open only when configured so, else it needs
the infer scope. A method nobody listed, including one added to a proto later, needs admin.

Tokens are configured as plain secrets or as `NAME:sha256:HEX` (the hex sha256 of the secret, so the
configuration holds no secret); either way only digests are kept. The matching token's name is the
caller's identity: the audit log records it as the actor.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from ortserve.errors import InvalidInput, PermissionDenied, Unauthenticated
from ortserve.server.rpc import Context


class Scope(StrEnum):
    OPEN = "open"
    INFER = "infer"
    ADMIN = "admin"


_OURS = "/ortserve.api.v1."
_OIP = "/inference.GRPCInferenceService/"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."

# What the infer scope may call. Everything else (writes, loads, the audit log, and any method not
# named here) needs admin.
INFER_METHODS = frozenset(
    {
        f"{_OURS}InferenceService/Predict",
        f"{_OURS}InferenceService/PredictStream",
        f"{_OURS}InferenceService/GetModelSignature",
        f"{_OURS}RegistryService/GetModel",
        f"{_OURS}RegistryService/ListModels",
        f"{_OURS}RegistryService/ListModelVersions",
        f"{_OURS}RegistryService/GetModelVersion",
        f"{_OURS}RegistryService/WatchModels",
        f"{_OIP}ServerLive",
        f"{_OIP}ServerReady",
        f"{_OIP}ModelReady",
        f"{_OIP}ServerMetadata",
        f"{_OIP}ModelMetadata",
        f"{_OIP}ModelInfer",
        f"{_OIP}ModelStreamInfer",
        f"{_OIP}ModelConfig",
        f"{_OIP}ModelStatistics",
        f"{_OIP}RepositoryIndex",
        f"{_OIP}SystemSharedMemoryRegister",
        f"{_OIP}SystemSharedMemoryStatus",
        f"{_OIP}SystemSharedMemoryUnregister",
    }
)

_HASHED = re.compile(r"^(?P<name>[A-Za-z0-9_.@-]{1,64}):sha256:(?P<hex>[0-9a-fA-F]{64})$")

# The name of the token that authenticated the current RPC ("" without authentication); set by the
# interceptor in the RPC's own task, read by servicers for the audit log.
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("ortserve_caller", default="")


def required_scope(method: str, *, reflection_public: bool = False) -> Scope:
    """The scope `method` needs: the one place authorization is decided."""
    if method.startswith(HEALTH_PREFIX):  # probes; List names every model, so it needs infer
        return Scope.INFER if method == f"{HEALTH_PREFIX}List" else Scope.OPEN
    if method.startswith(REFLECTION_PREFIX):
        return Scope.OPEN if reflection_public else Scope.INFER
    return Scope.INFER if method in INFER_METHODS else Scope.ADMIN


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    scope: Scope
    digest: bytes


def parse_tokens(entries: Sequence[str], scope: Scope) -> list[Token]:
    """`NAME:sha256:HEX` entries keep their name; a plain secret is named `<scope>-<n>`."""
    tokens = []
    for index, entry in enumerate(entries, 1):
        hashed = _HASHED.match(entry)
        if hashed:
            tokens.append(Token(hashed["name"], scope, bytes.fromhex(hashed["hex"])))
        elif ":sha256:" in entry:
            raise InvalidInput(
                f"{scope.value} token {index} looks hashed but is not NAME:sha256:<64 hex digits>"
            )
        elif not entry or entry != entry.strip():
            # A bearer header cannot carry it: only the console's empty sign-in form would match.
            raise InvalidInput(f"{scope.value} token {index} is empty or has leading or trailing spaces")
        else:
            tokens.append(Token(f"{scope.value}-{index}", scope, _digest(entry.encode())))
    return tokens


def token_line(name: str, secret: str) -> str:
    """The configuration entry for `secret`: what `ortserve token hash` prints."""
    if not _HASHED.match(f"{name}:sha256:{'0' * 64}"):
        raise InvalidInput(f"token name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . @ -")
    return f"{name}:sha256:{_digest(secret.encode()).hex()}"


class TokenAuth:
    """Checks `authorization: Bearer <token>` metadata against the allowlist of each scope."""

    def __init__(
        self, infer_tokens: Sequence[str], admin_tokens: Sequence[str], *, reflection_public: bool = False
    ) -> None:
        self._tokens = parse_tokens(infer_tokens, Scope.INFER) + parse_tokens(admin_tokens, Scope.ADMIN)
        names = [t.name for t in self._tokens]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise InvalidInput(f"token names must be unique; repeated: {', '.join(duplicated)}")
        self._reflection_public = reflection_public

    def check(self, method: str, context: Context) -> None:
        """Raise unless the caller may call `method`; remember the caller's name for this RPC."""
        needed = required_scope(method, reflection_public=self._reflection_public)
        if needed is Scope.OPEN:
            return
        secret = _bearer(context)
        if secret is None:
            raise Unauthenticated(f"{method} needs an 'authorization: Bearer <token>' header")
        CALLER.set(self.authorize(method, self.authenticate(secret)).name)

    def authenticate(self, secret: bytes) -> Token:
        """The configured token whose secret is `secret` (the console signs in with it)."""
        if not secret:  # as over gRPC, where a header without a secret is no bearer token
            raise Unauthenticated("the bearer token is empty")
        token = self._find(_digest(secret))
        if token is None:
            raise Unauthenticated("the bearer token is not valid")
        return token

    def authorize(self, method: str, token: Token) -> Token:
        """Raise unless `token` may call `method` (the console checks each page and action so)."""
        needed = required_scope(method, reflection_public=self._reflection_public)
        if needed is Scope.ADMIN and token.scope is not Scope.ADMIN:
            raise PermissionDenied(
                f"{method} needs a token with the admin scope; token {token.name!r} has the infer scope"
            )
        return token

    def _find(self, digest: bytes) -> Token | None:
        found = None
        for token in self._tokens:  # compare with every token so timing does not reveal which matched
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def _bearer(context: Context) -> bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode()
    return None
