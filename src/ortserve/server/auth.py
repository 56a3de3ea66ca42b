"""Bearer tokens with two scopes: `infer` (predict and read) and `admin` (everything)."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from ortserve.errors import PermissionDenied, Unauthenticated
from ortserve.server.rpc import Context

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ADMIN_METHODS = frozenset(
    {
        "/ortserve.api.v1.RegistryService/RegisterModel",
        "/ortserve.api.v1.RegistryService/LoadModelVersion",
        "/ortserve.api.v1.RegistryService/UnloadModelVersion",
        "/ortserve.api.v1.RegistryService/SetAlias",
        "/ortserve.api.v1.RegistryService/DeleteAlias",
        "/ortserve.api.v1.RegistryService/SetTrafficPolicy",
        "/ortserve.api.v1.RegistryService/Rollback",
        "/ortserve.api.v1.RegistryService/RetireModelVersion",
        "/ortserve.api.v1.RegistryService/UpdateModelConfig",
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        "/inference.GRPCInferenceService/RepositoryModelUnload",
    }
)


class TokenAuth:
    """Checks `authorization: Bearer <token>` metadata; admin tokens also hold the infer scope."""

    def __init__(self, infer_tokens: Sequence[str], admin_tokens: Sequence[str]) -> None:
        self._infer = [t.encode() for t in infer_tokens]
        self._admin = [t.encode() for t in admin_tokens]

    def check(self, method: str, context: Context) -> None:
        if method.startswith(EXEMPT_PREFIXES):
            return
        token = _bearer(context)
        if token is None:
            raise Unauthenticated(f"{method} needs an 'authorization: Bearer <token>' header")
        if _matches(token, self._admin):
            return
        if not _matches(token, self._infer):
            raise Unauthenticated("the bearer token is not valid")
        if method in ADMIN_METHODS:
            raise PermissionDenied(
                f"{method} needs a token with the admin scope; this token has the infer scope"
            )


def _bearer(context: Context) -> bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip().encode()
    return None


def _matches(token: bytes, known: list[bytes]) -> bool:
    found = False
    for candidate in known:  # compare with every token so timing does not reveal which matched
        found |= hmac.compare_digest(token, candidate)
    return found
