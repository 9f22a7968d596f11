"""TCP connections that keep one deadline from the name lookup to the connected socket.

socket.create_connection waits out the resolver's own timeouts (5 s a try, for each attempt and
name server, whatever the caller's timeout) and then gives each address the whole timeout again.
Engines and registries both dial through here, so a silent name server costs what a silent host
costs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable


class ResolverTimeout(TimeoutError):
    """The name server gave no answer before the deadline."""


def resolve(host: str, port: int, deadline: float, family: int = socket.AF_UNSPEC) -> list:
    """getaddrinfo's stream addresses for (host, port), or ResolverTimeout once `deadline` passes."""
    try:  # an address literal needs no name server, nor a thread to wait on one
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        pass
    answer: list = []

    def lookup() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
        except Exception as exc:  # noqa: BLE001 - raised again on the caller's thread
            answer.append(exc)

    # getaddrinfo takes no timeout: a lookup that does not return is left behind in its thread,
    # which ends when the resolver's own timeouts run out.
    thread = threading.Thread(target=lookup, name=f"resolve {host[:64]}", daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0))
    if not answer:
        raise ResolverTimeout("timed out")
    if isinstance(answer[0], Exception):
        raise answer[0]
    return answer[0]


def connect_tcp(
    host: str,
    port: int,
    deadline: float,
    family: int = socket.AF_UNSPEC,
    options: Iterable[tuple[int, int, int]] = (),
) -> socket.socket:
    """A connection to the first of the host's addresses that takes one, all by `deadline`.
    The socket's timeout is left at what remained of the deadline when it connected."""
    failure: OSError = OSError(f"{host} has no address")
    for af, kind, proto, _, address in resolve(host, port, deadline, family):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock = socket.socket(af, kind, proto)
        try:
            for option in options:
                sock.setsockopt(*option)
            sock.settimeout(left)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            failure = exc
        except BaseException:
            sock.close()
            raise
    raise failure
