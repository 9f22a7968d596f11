"""HTTP responses for the registry and the Docker engine clients alike: bodies read to a bound (a
server that sends more than the bound, or says it will, is refused before memory follows it), and
interim answers read past as Go's client reads them."""

from __future__ import annotations

import http.client


def decimal(text: str) -> int | None:
    """An HTTP number (`Content-Length`, `Retry-After`): ASCII digits only, at most 19 of them
    (beyond int64, and no body or wait is that large); else None. str.isdigit alone also takes
    `²`, which int() refuses, and int() refuses more than 4,300 digits."""
    return int(text) if 0 < len(text) <= 19 and text.isascii() and text.isdigit() else None


# Interim answers taken before the real one, as Go's client takes them.
MAX_INTERIM = 5


class TooManyInterim(http.client.HTTPException):
    pass


class InterimSkipping(http.client.HTTPResponse):
    """A response that reads past interim 1xx answers (102, 103 Early Hints) to the real one, on the
    same connection: taken as the answer, one would leave the real one there for the next request
    to read. http.client skips only 100; Go skips any but 101, five at most. A 101, a switch of
    protocols no request asked for, ends the connection: what follows on it is not HTTP."""

    _interim = 0

    def _read_status(self):
        while True:
            version, status, reason = super()._read_status()
            if 100 <= status < 200 and status != 101:
                self._interim += 1
                if self._interim > MAX_INTERIM:
                    raise TooManyInterim(f"more than {MAX_INTERIM} interim (1xx) answers")
            if not 102 <= status < 200:  # http.client's begin() skips a 100's headers itself
                return version, status, reason
            http.client.parse_headers(self.fp)

    def _check_close(self) -> bool:
        return self.status == 101 or super()._check_close()


class BodyTooLarge(Exception):
    """The body is, or was announced as, at least `size` bytes, past the bound."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


_CHUNK = 65536


def _single_read_length(response) -> int | None:
    """The length one read may take whole, or None when the body must be read a chunk at a time.
    Content-Length bounds a read only when nothing else frames the body: with `Transfer-Encoding:
    chunked`, http.client ignores it and reads every chunk the server sends."""
    if getattr(response, "chunked", False) or response.headers.get("Transfer-Encoding"):
        return None
    # Content-Length counts the encoded bytes: a gzip body of a megabyte can unpack to a gigabyte
    if response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        return None
    return decimal(response.headers.get("Content-Length", ""))


def read_capped(response, limit: int) -> bytes:
    """The whole body of `response` (http.client's or urllib3's), refused past `limit`; afterwards
    the response holds nothing unread. The bound is on the bytes held, after any content decoding."""
    length = decimal(response.headers.get("Content-Length", ""))
    if length is not None and length > limit:
        raise BodyTooLarge(length)
    single = _single_read_length(response)
    if single is not None:
        # asked for the announced length, not for everything: http.client and urllib3 stop there,
        # and return what came when the connection closed before it
        body = response.read(single)
        if len(body) < single:
            raise http.client.IncompleteRead(body, single - len(body))
        return body
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


def read_prefix(response, limit: int) -> bytes:
    """At most the first `limit` bytes of the body, after any content decoding, for answers kept
    only to be quoted (errors, redirects). What is past them stays unread: the caller closes the
    response rather than hand its connection on."""
    chunks, total = [], 0
    while total < limit:
        chunk = response.read(min(_CHUNK, limit - total))
        if not chunk:
            break
        total += len(chunk)
        chunks.append(chunk)
    return b"".join(chunks)[:limit]
