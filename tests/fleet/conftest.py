"""The S3-protocol server (moto) and its credentials, shared with the store tests."""

from tests.store.conftest import s3_env, s3_server

__all__ = ["s3_env", "s3_server"]
