"""The s3:// store for any S3-compatible service (AWS S3, MinIO, Ceph, R2), through boto3.

Blobs live at `<prefix>/blobs/<sha256>`. An upload writes each chunk to a local spool file (which
validation reads) and hashes it; a model larger than one part (8 MiB) goes up as a multipart upload
to its final key, part by part as the bytes arrive, and is completed only once the size and sha256
match the declaration (aborted otherwise), so no key ever shows bytes other than its name's. A
smaller one is one PUT at commit. The committed spool becomes this replica's cached copy.

Reads go through the local BlobCache. Endpoint, region and credentials come the standard way
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE, roles), or from the settings
`s3_endpoint_url` and `s3_region`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ortserve.errors import FailedPrecondition, InvalidInput, ResourceExhausted, Unavailable, logged
from ortserve.store.cache import CACHE, BlobCache
from ortserve.store.digest import READ_BYTES, SHA256_RE, check_sha256
from ortserve.store.interface import STALE_TEMP_S, BlobInfo, Garbage, unreferenced
from ortserve.store.spool import FileUpload, create_held, remove_stale, stale_files, writing

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = structlog.get_logger(__name__)
PART_BYTES = 8 << 20
NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0


def s3_client(endpoint_url: str = "", region: str = "") -> S3Client:
    """A client configured the standard way; `endpoint_url` and `region` override it when set.

    With a custom endpoint (MinIO, Ceph, a local server), buckets are addressed by path.
    """
    custom = bool(endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": "standard", "max_attempts": 3},
        s3={"addressing_style": "path" if custom else "auto"},
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config)


def parse_url(url: str) -> tuple[str, str]:
    """Bucket and key prefix (no slashes at either end) of `s3://bucket/prefix`."""
    parts = urlsplit(url)
    prefix = parts.path.strip("/")
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise InvalidInput(f"store_url must look like s3://BUCKET/PREFIX, got {url!r}")
    if any(segment in ("", ".", "..") for segment in prefix.split("/")) and prefix:
        raise InvalidInput(f"store_url {url!r}: the prefix must not have empty, '.' or '..' segments")
    return parts.netloc, prefix


class S3Store:
    def __init__(
        self, client: S3Client, bucket: str, prefix: str, cache: BlobCache, *, part_bytes: int = PART_BYTES
    ):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.cache = cache
        self.part_bytes = part_bytes
        self._blob_prefix = f"{prefix}/blobs/" if prefix else "blobs/"

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def key_for(self, sha256: str) -> str:
        return self._blob_prefix + check_sha256(sha256)

    @contextlib.contextmanager
    def calling(self, step: str, *, missing: str = "") -> Iterator[None]:
        """Turn the client's errors during `step` into domain errors naming the store; the client's
        own text goes to the log under the message's correlation id."""
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "unknown"))
            if missing and code in NOT_FOUND:
                raise FailedPrecondition(missing) from None
            if code == "EntityTooLarge":
                message = f"the model store {self.location} refused the blob as too large while {step}"
                raise ResourceExhausted(logged(message, exc)) from exc
            message = f"the model store {self.location} failed while {step} (S3 error {code}); retry later"
            raise Unavailable(logged(message, exc, level="error", endpoint=self.endpoint)) from exc
        except BotoCoreError as exc:
            message = f"the model store {self.location} is unreachable while {step}; retry later"
            raise Unavailable(logged(message, exc, level="error", endpoint=self.endpoint)) from exc

    def check(self) -> None:
        """Fail at start, in one line naming the setting and the address, when the bucket cannot be used."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            reason = _reason(exc, self.bucket)
            message = f"store_url {self.location}: cannot use the model store at {self.endpoint} ({reason})"
            raise Unavailable(message) from None

    # -- writes ---------------------------------------------------------------------------------

    def open_upload(
        self, *, expected_size: int, expected_sha256: str, max_chunk_bytes: int | None = None
    ) -> S3Upload:
        key = self.key_for(expected_sha256.lower())
        spool = FileUpload(
            self.cache.temp_path("upload"),
            expected_size=expected_size,
            expected_sha256=expected_sha256,
            max_chunk_bytes=max_chunk_bytes,
            what=CACHE,
        )
        try:
            return S3Upload(self, spool, key)
        except BaseException:
            spool.abort()
            raise

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an unfinished multipart upload; a failure is logged (`collect_garbage` finds it later)."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            logged("an aborted multipart upload was left in the model store", exc, key=key)

    def delete(self, sha256: str) -> None:
        key = self.key_for(sha256)
        with self.calling(f"deleting blob sha256 {sha256}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)
        self.cache.discard(sha256)

    # -- reads ----------------------------------------------------------------------------------

    def contains(self, sha256: str) -> bool:
        key = self.key_for(sha256)
        try:
            with self.calling(f"looking up blob sha256 {sha256}", missing="absent"):
                self.client.head_object(Bucket=self.bucket, Key=key)
        except FailedPrecondition:
            return False
        return True

    def path_for(self, sha256: str) -> Path:
        return self.cache.path_for(sha256)

    def local_path(self, sha256: str) -> Path:
        """The cached copy when its digest matches; otherwise fetched from the store into the cache.
        Bytes from the store that do not hash to `sha256` are deleted and never served."""
        with self.cache.pinned(sha256):
            cached = self.cache.get(sha256)
            return cached if cached is not None else self._fetch(sha256)

    @contextlib.contextmanager
    def pinned(self, sha256: str) -> Iterator[Path]:
        """`local_path`, kept in the cache until the block ends."""
        with self.cache.pinned(sha256):
            yield self.local_path(sha256)

    def _fetch(self, sha256: str) -> Path:
        temp = self.cache.temp_path("fetch")
        started = time.monotonic()
        with writing("creating a fetch's temp file", temp, CACHE):
            held = create_held(temp)  # garbage collection leaves a fetch in flight alone
        try:
            size, actual = self._download(sha256, temp, held)
            if actual != sha256:
                raise FailedPrecondition(
                    f"blob sha256 {sha256} in the model store {self.location} hashes to {actual}: "
                    "it is corrupt and is not served"
                )
            path = self.cache.add(temp, sha256, size)
        finally:
            temp.unlink(missing_ok=True)
            os.close(held)
        log.info("blob_fetched", sha256=sha256, size_bytes=size, seconds=round(time.monotonic() - started, 3))
        return path

    def _download(self, sha256: str, temp: Path, fd: int) -> tuple[int, str]:
        """Stream the blob into `temp` (open as `fd`), hashing it on the way: its size and sha256."""
        digest = hashlib.sha256()
        size = 0
        missing = f"blob sha256 {sha256} is missing from the model store {self.location}"
        with (
            self.calling(f"fetching blob sha256 {sha256}", missing=missing),
            writing("fetching a blob", temp, CACHE),
        ):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key_for(sha256))["Body"]
            with open(fd, "wb", closefd=False) as file:
                for chunk in body.iter_chunks(READ_BYTES):
                    file.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        return size, digest.hexdigest()

    def blobs(self) -> list[BlobInfo]:
        found = []
        with self.calling("listing blobs"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._blob_prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    sha256 = item["Key"][len(self._blob_prefix) :]
                    if SHA256_RE.match(sha256):
                        found.append(BlobInfo(sha256, item["Size"], item["LastModified"].timestamp()))
        return found

    # -- garbage --------------------------------------------------------------------------------

    def collect_garbage(
        self,
        referenced: set[str],
        *,
        stale_temp_s: float = STALE_TEMP_S,
        blob_grace_s: float = 0.0,
        dry_run: bool = False,
    ) -> list[Garbage]:
        """Orphan blobs, multipart uploads started at least `stale_temp_s` ago and never finished,
        and this replica's spool and fetch files untouched for as long."""
        found: list[tuple[Garbage, Callable[[], bool]]] = [
            (
                Garbage(f"s3://{self.bucket}/{self.key_for(b.sha256)}", b.size_bytes),
                functools.partial(self._delete_if_untouched, b.sha256, blob_grace_s),
            )
            for b in unreferenced(self.blobs(), referenced, blob_grace_s)
        ]
        found.extend(self._stale_uploads(stale_temp_s))
        found.extend(
            (Garbage(str(path), size), functools.partial(remove_stale, path, stale_temp_s))
            for path, size in stale_files(self.cache.tmp, stale_temp_s)
        )
        if not dry_run:
            found = [(item, remove) for item, remove in found if remove()]
        return [item for item, _remove in found]

    def _delete_if_untouched(self, sha256: str, grace_s: float) -> bool:
        """Delete the blob unless it was written in the last `grace_s` seconds, as one stored again
        since it was listed is (its row may be on its way); whether it was deleted."""
        try:
            with self.calling(f"looking up blob sha256 {sha256}", missing="absent"):
                head = self.client.head_object(Bucket=self.bucket, Key=self.key_for(sha256))
        except FailedPrecondition:
            return False
        if time.time() - head["LastModified"].timestamp() < grace_s:
            return False
        self.delete(sha256)
        return True

    def _stale_uploads(self, older_than_s: float) -> list[tuple[Garbage, Callable[[], bool]]]:
        """Multipart uploads with no activity (start or part) for `older_than_s`: an upload in
        flight sends a part at least every 8 MiB, so it stays young."""
        now = time.time()
        found: list[tuple[Garbage, Callable[[], bool]]] = []
        with self.calling("listing unfinished uploads"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._blob_prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    key, upload_id = upload["Key"], upload["UploadId"]
                    parts = self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id).get(
                        "Parts", []
                    )
                    active = max(
                        [upload["Initiated"].timestamp(), *(p["LastModified"].timestamp() for p in parts)]
                    )
                    if now - active >= older_than_s:
                        item = Garbage(
                            f"s3://{self.bucket}/{key} (unfinished upload)", sum(p["Size"] for p in parts)
                        )
                        found.append((item, functools.partial(self._abort_now, key, upload_id)))
        return found

    def _abort_now(self, key: str, upload_id: str) -> bool:
        with self.calling("aborting an unfinished upload"):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        return True


class S3Upload:
    """A blob on its way to an S3Store: spooled locally, streamed as parts when larger than one part."""

    def __init__(self, store: S3Store, spool: FileUpload, key: str) -> None:
        self._store = store
        self._spool = spool
        self._key = key
        self._buffer = bytearray()
        self._parts: list[CompletedPartTypeDef] = []
        self._upload_id = ""
        if spool.expected_size > store.part_bytes:
            with store.calling("starting an upload"):
                created = store.client.create_multipart_upload(Bucket=store.bucket, Key=key)
            self._upload_id = created["UploadId"]

    @property
    def path(self) -> Path:
        return self._spool.path

    @property
    def size(self) -> int:
        return self._spool.size

    @property
    def sha256(self) -> str:
        return self._spool.sha256

    @property
    def multipart(self) -> bool:
        return bool(self._upload_id)

    def write(self, chunk: bytes) -> None:
        self._spool.write(chunk)
        self._buffer += chunk
        while self._upload_id and len(self._buffer) >= self._store.part_bytes:
            self._send_part(self._store.part_bytes)

    def _send_part(self, size: int) -> None:
        number = len(self._parts) + 1
        body = bytes(self._buffer[:size])
        with self._store.calling(f"uploading part {number}"):
            sent = self._store.client.upload_part(
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            )
        del self._buffer[:size]
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def seal(self) -> None:
        self._spool.seal()

    def commit(self) -> None:
        """Verify size and sha256, then make the blob visible at its key and keep the spool as the
        cached copy; on any error the caller aborts."""
        self._spool.verify()
        self._spool.seal()
        store = self._store
        if self._upload_id:
            if self._buffer or not self._parts:
                self._send_part(len(self._buffer))
            with store.calling("completing the upload"):
                store.client.complete_multipart_upload(
                    Bucket=store.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
            self._upload_id = ""
        else:
            with store.calling("storing the model"):
                store.client.put_object(Bucket=store.bucket, Key=self._key, Body=bytes(self._buffer))
        self._buffer.clear()
        store.cache.add(self._spool.path, self.sha256, self.size)
        self._spool.closed = True

    def release(self) -> None:
        self._spool.release()

    def abort(self) -> None:
        """Drop the spool at once; an unfinished multipart upload is aborted in the background (this
        may run on the event loop, and the store may be the thing that is down)."""
        self._spool.abort()
        self._buffer.clear()
        upload_id, self._upload_id = self._upload_id, ""
        if upload_id:
            threading.Thread(
                target=self._store.abort_multipart, args=(self._key, upload_id), name="s3-abort", daemon=True
            ).start()


def _reason(exc: BaseException, bucket: str) -> str:
    """Why the bucket cannot be used, in words an operator can act on."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "unknown"))
        if code in ("404", "NoSuchBucket"):
            return f"bucket {bucket!r} does not exist"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"access denied ({code}): check the credentials and the bucket's policy"
        return f"S3 error {code}"
    if isinstance(exc, NoCredentialsError):
        return (
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or use a role"
        )
    return "cannot connect" if "Connect" in type(exc).__name__ else type(exc).__name__
