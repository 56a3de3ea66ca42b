"""Pure helpers of the registry: model names and page tokens."""

from __future__ import annotations

import pytest

from ortserve.errors import InvalidInput
from ortserve.registry.paging import decode_token, encode_token, page_size_of
from ortserve.registry.service import check_name


@pytest.mark.parametrize("name", ["a", "0", "resnet-50", "bert.base_v2", "a" * 128])
def test_good_names(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize("name", ["", "A", "_a", "a" * 129, "a/b", "a\nb", "a:b", "ünï"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidInput, match="is not valid: use 1 to 128 characters"):
        check_name(name)


@pytest.mark.parametrize("after", ["", "a", "model.v2", "z" * 128])
def test_tokens_round_trip(after: str) -> None:
    assert decode_token(encode_token(after)) == after


@pytest.mark.parametrize("token", ["x", "!!!", "YWJj", "=" * 8])
def test_foreign_tokens_are_rejected(token: str) -> None:
    with pytest.raises(InvalidInput, match="is not a token returned by list_models"):
        decode_token(token)


def test_page_sizes() -> None:
    assert page_size_of(0) == 100
    assert page_size_of(7) == 7
    assert page_size_of(5000) == 1000
    with pytest.raises(InvalidInput, match="page_size must be >= 0, got -3"):
        page_size_of(-3)
