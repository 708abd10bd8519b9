"""File-like views of stored objects, for readers that want a file: a GET body that resumes
where its connection broke, a seekable view made of ranged GETs (what the Parquet reader needs),
and a plain view of an HTTP body that stays open until it is closed itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import IO, TYPE_CHECKING, Any

from minio.error import S3Error

from .outage import CONNECTION_ERRORS, UNAVAILABLE, Backoff, StorageError, describe_failure, is_transient

if TYPE_CHECKING:
    from .storage import ObjectStore, S3Uri

log = logging.getLogger(__name__)
#: Reads smaller than this are served from one cached block of that size (a Parquet footer, page
#: headers); larger ones are fetched exactly.
RANGE_BLOCK = 4 * 1024 * 1024


class ResumableBody(io.RawIOBase):
    """The body of a GET that survives its connection: a read that fails because the connection
    broke (MinIO restarted, a reset, a timeout) asks again from the byte it reached, with
    ``If-Match`` on the ETag the body started with, under the store's retry policy."""

    def __init__(self, store: ObjectStore, uri: S3Uri, response: Any, offset: int = 0, end: int | None = None) -> None:
        super().__init__()
        self._store = store
        self._uri = uri
        self._response = response
        self._etag = str(response.headers.get("ETag") or "")
        self._offset = offset
        self._end = end
        self._position = offset
        self.resumed = 0

    @property
    def delivered(self) -> int:
        """Bytes of the object this body has handed to its reader (what a shard's read costs)."""
        return self._position - self._offset

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._end is not None:
            view = view[: max(0, self._end - self._position)]
        if not len(view):
            return 0
        backoff: Backoff | None = None
        while True:
            try:
                data = self._response.read(len(view))
                break
            except CONNECTION_ERRORS as err:
                backoff = backoff or Backoff(self._store.retry, self._store.endpoint, "read", self._uri)
                self._reopen(err, backoff)
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def _reopen(self, err: BaseException, backoff: Backoff) -> None:
        self._release()
        log.warning("storage read broke off; resuming", extra={
            "uri": str(self._uri), "at_byte": self._position, "error": describe_failure(err)})
        headers: dict[str, str | list[str] | tuple[str]] | None = {"If-Match": self._etag} if self._etag else None
        while True:
            backoff.wait(err)
            try:
                length = 0 if self._end is None else self._end - self._position
                self._response = self._store.client.get_object(self._uri.bucket, self._uri.key,
                                                               offset=self._position, length=length,
                                                               request_headers=headers)
                self.resumed += 1
                return
            except S3Error as failed:
                if failed.code == "PreconditionFailed":
                    raise StorageError(f"cannot read {self._uri}: the object was replaced while it was being read "
                                       "(its ETag changed); run again to read the new one") from failed
                if not is_transient(failed):
                    raise self._store._fail(failed, self._uri, "read") from failed
                err = failed
            except UNAVAILABLE as failed:
                if not is_transient(failed):
                    raise
                err = failed

    def _release(self) -> None:
        with contextlib.suppress(Exception):  # a broken connection may fail to close; it is dropped either way
            self._response.close()
            self._response.release_conn()

    def close(self) -> None:
        if not self.closed:
            self._release()
        super().close()


def open_range(store: ObjectStore, uri: S3Uri, offset: int = 0, end: int | None = None,
               etag: str = "") -> ResumableBody:
    """Bytes ``[offset, end)`` of an object (to its end when ``end`` is None) as a resumable body.

    ``etag`` (when given) must still be the object's: a reader that enters a text file at a byte
    offset learnt from an earlier read would otherwise splice that read's offsets onto a replaced
    object and parse garbage without noticing. A read from the first byte without ``etag`` is the
    same request as :meth:`~.storage.ObjectStore.open` makes.
    """
    if offset < 0 or (end is not None and end <= offset):
        raise ValueError(f"cannot read bytes [{offset}, {end}) of {uri}: the range is empty or negative")
    length = 0 if end is None else end - offset
    headers: dict[str, str | list[str] | tuple[str]] | None = {"If-Match": etag} if etag else None

    def get() -> Any:
        return store.client.get_object(uri.bucket, uri.key, offset=offset, length=length, request_headers=headers)

    try:
        response = store.call("read", uri, get)
    except S3Error as err:
        if err.code == "PreconditionFailed":
            raise StorageError(f"cannot read {uri}: the object was replaced after it was listed (its ETag changed); "
                               "run again to read the new one") from err
        raise store._fail(err, uri, "read") from err
    return ResumableBody(store, uri, response, offset, end)


class RangedObject(io.RawIOBase):
    """A read-only, seekable view of one object made of ranged GETs, for the Parquet reader.

    Small reads are served from a 4 MiB block cache (the footer, page headers); large reads (column
    chunks) are fetched exactly, so memory stays at one block plus what pyarrow asks for at once.
    """

    def __init__(self, store: ObjectStore, uri: S3Uri, size: int) -> None:
        super().__init__()
        self._store = store
        self._uri = uri
        self._size = size
        self._pos = 0
        self._block_start = 0
        self._block = b""
        #: Bytes fetched from the store so far (footer and block-cache reads included).
        self.fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _get(self, offset: int, length: int) -> bytes:
        data = self._store.read_range(self._uri, offset, length)
        self.fetched += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        end = self._pos + want
        if not (self._block_start <= self._pos and end <= self._block_start + len(self._block)):
            if want >= RANGE_BLOCK:
                data = self._get(self._pos, want)
                view[: len(data)] = data
                self._pos += len(data)
                return len(data)
            self._block_start = self._pos
            self._block = self._get(self._pos, min(RANGE_BLOCK, self._size - self._pos))
        start = self._pos - self._block_start
        chunk = self._block[start : start + want]
        view[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


class ResponseStream(io.RawIOBase):
    """A raw reader over an HTTP response body. urllib3 reports a response as closed as soon as its
    body is consumed, which a buffered reader that has read ahead would pass on to pyarrow; this view
    stays open until it is closed itself."""

    def __init__(self, response: IO[bytes]) -> None:
        super().__init__()
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._response.read(len(view))
        view[: len(data)] = data
        return len(data)
