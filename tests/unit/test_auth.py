"""The scope table and token parsing: pure functions of the method name and the configured entries."""

from __future__ import annotations

import hashlib

import pytest

from ortserve.cli import main
from ortserve.errors import InvalidInput, Unauthenticated
from ortserve.server.auth import Scope, TokenAuth, parse_tokens, required_scope, token_line


def test_a_method_nobody_listed_needs_admin() -> None:
    assert required_scope("/ortserve.api.v1.RegistryService/SomethingNew") is Scope.ADMIN
    assert required_scope("/inference.GRPCInferenceService/CudaSharedMemoryRegister") is Scope.ADMIN
    assert required_scope("/ortserve.api.v1.RegistryService/SetShadow") is Scope.ADMIN
    assert required_scope("/ortserve.api.v1.InferenceService/Predict") is Scope.INFER
    assert required_scope("/grpc.health.v1.Health/Check") is Scope.OPEN
    assert required_scope("/grpc.health.v1.Health/List") is Scope.INFER
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert required_scope(reflection) is Scope.INFER
    assert required_scope(reflection, reflection_public=True) is Scope.OPEN


def test_hashed_entries_keep_their_name_and_plain_ones_are_numbered() -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    tokens = parse_tokens([f"ci-deploy:sha256:{digest}", "plain"], Scope.ADMIN)
    assert [(t.name, t.scope, t.digest) for t in tokens] == [
        ("ci-deploy", Scope.ADMIN, bytes.fromhex(digest)),
        ("admin-2", Scope.ADMIN, hashlib.sha256(b"plain").digest()),
    ]
    assert token_line("ci-deploy", "s3cret") == f"ci-deploy:sha256:{digest}"


def test_malformed_entries_and_repeated_names_are_refused() -> None:
    with pytest.raises(InvalidInput, match=r"^infer token 1 looks hashed but is not NAME:sha256:"):
        parse_tokens(["reader:sha256:abc"], Scope.INFER)
    digest = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(InvalidInput, match=r"^token names must be unique; repeated: ops$"):
        TokenAuth([f"ops:sha256:{digest}"], [f"ops:sha256:{digest}"])
    with pytest.raises(InvalidInput, match=r"^token name 'a b' must be"):
        token_line("a b", "x")


def test_token_hash_reads_the_secret_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["token", "hash", "ci"]) == 0
    assert capsys.readouterr().out.strip() == f"ci:sha256:{hashlib.sha256(b's3cret').hexdigest()}"


def test_a_blank_secret_is_refused_at_start_and_never_authenticates() -> None:
    # A bearer header cannot carry an empty or space-padded secret, so such an entry could only ever
    # be matched by the console's sign-in form, left empty: refuse it when the server starts.
    with pytest.raises(InvalidInput, match=r"^admin token 2 is empty or has leading or trailing spaces"):
        parse_tokens(["good", ""], Scope.ADMIN)
    with pytest.raises(InvalidInput, match=r"^infer token 1 is empty or has leading or trailing spaces"):
        parse_tokens([" padded "], Scope.INFER)
    empty_digest = hashlib.sha256(b"").hexdigest()  # a hashed entry of the empty secret
    auth = TokenAuth([], [f"ops:sha256:{empty_digest}"])
    with pytest.raises(Unauthenticated, match=r"^the bearer token is empty$"):
        auth.authenticate(b"")
