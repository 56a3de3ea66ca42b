"""Model bytes: content-addressed blob stores behind one interface (file://, s3://) and the local
blob cache of a remote store. registry/ keeps the records; store/ keeps the bytes."""

from ortserve.store.digest import check_sha256, hash_file
from ortserve.store.factory import open_store, store_url
from ortserve.store.interface import STALE_TEMP_S, BlobInfo, BlobStore, BlobUpload, Garbage

__all__ = [
    "STALE_TEMP_S",
    "BlobInfo",
    "BlobStore",
    "BlobUpload",
    "Garbage",
    "check_sha256",
    "hash_file",
    "open_store",
    "store_url",
]
