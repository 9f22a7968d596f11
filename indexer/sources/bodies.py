"""HTTP response bodies read to a bound, for the registry and the Docker engine clients alike: a
server that sends more than the bound, or says it will, is refused before memory follows it."""

from __future__ import annotations


class BodyTooLarge(Exception):
    """The body is, or was announced as, at least `size` bytes, past the bound."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


def read_capped(response, limit: int) -> bytes:
    """The whole body of `response` (http.client's or urllib3's), refused past `limit`; afterwards
    the response holds nothing unread."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit():
        if int(length) > limit:
            raise BodyTooLarge(int(length))
        # http.client reads exactly Content-Length bytes (and urllib3 fails a shorter body): one call will do
        return response.read()
    chunks, total = [], 0
    while True:
        chunk = response.read(65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(total)
        chunks.append(chunk)
