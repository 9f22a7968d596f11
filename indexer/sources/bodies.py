"""HTTP response bodies read to a bound, for the registry and the Docker engine clients alike: a
server that sends more than the bound, or says it will, is refused before memory follows it."""

from __future__ import annotations


def decimal(text: str) -> int | None:
    """An HTTP number (`Content-Length`, `Retry-After`): ASCII digits only, at most 19 of them
    (beyond int64, and no body or wait is that large); else None. str.isdigit alone also takes
    `²`, which int() refuses, and int() refuses more than 4,300 digits."""
    return int(text) if 0 < len(text) <= 19 and text.isascii() and text.isdigit() else None


class BodyTooLarge(Exception):
    """The body is, or was announced as, at least `size` bytes, past the bound."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


_CHUNK = 65536


def read_capped(response, limit: int) -> bytes:
    """The whole body of `response` (http.client's or urllib3's), refused past `limit`; afterwards
    the response holds nothing unread. The bound is on the bytes held, after any content decoding."""
    length = decimal(response.headers.get("Content-Length", ""))
    if length is not None:
        if length > limit:
            raise BodyTooLarge(length)
        # Content-Length counts the encoded bytes: a gzip body of a megabyte can unpack to a
        # gigabyte, so only a body that is not decoded may be taken in one call.
        if response.headers.get("Content-Encoding", "identity").strip().lower() in ("", "identity"):
            # http.client reads exactly Content-Length bytes (and urllib3 fails a shorter body): one call will do
            return response.read()
    chunks, total = [], 0
    while True:
        # urllib3 returns at most `_CHUNK` decoded bytes a call, however much they unpack to
        chunk = response.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(total)
        chunks.append(chunk)
