"""`imgdex serve`: the process around the gRPC and REST servers.

Only click and indexer.store.paths are imported at module level: `queries.cli` registers this
command, and `imgdex get` must not pay for grpc, protobuf or the SDK at start-up.
"""

from __future__ import annotations

import re
import sys
import time

import click

from indexer.errors import printable
from indexer.store.paths import default_store

SHUTDOWN_SECONDS = 5.0
DEFAULT_GRPC = "127.0.0.1:50051"
DEFAULT_HTTP = "127.0.0.1:8080"


def parse_address(text: str, what: str) -> tuple[str, int] | None:
    """`HOST:PORT` or `[IPV6]:PORT` -> (host, port); `off` -> None."""
    if text.strip().lower() == "off":
        return None
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "[" in host or "]" in host:  # a bracket left open or astray: no host is spelled so
        raise click.BadParameter(f"{text!r} is not HOST:PORT (or off)", param_hint=what)
    # isascii: str.isdigit also takes "²", which int() refuses (as it refuses 4,300 digits)
    if not sep or not host or not (port.isascii() and port.isdigit() and len(port) <= 5) or int(port) > 65535:
        raise click.BadParameter(f"{text!r} is not HOST:PORT (or off)", param_hint=what)
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address."""
    import ipaddress
    import socket

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


# Bytes a token file may hold: bearer tokens are at most a few KB (a JWT with its claims).
MAX_TOKEN_FILE = 64 << 10


def read_token(path: str) -> bytes:
    from indexer.errors import SourceError
    from indexer.files import open_readable

    try:
        # A regular file only: a device would never end, a FIFO would wait for a writer.
        with open_readable(path) as f:
            token = f.read(MAX_TOKEN_FILE + 1)
    except SourceError as exc:
        raise click.BadParameter(f"{printable(path)}: {exc.reason}", param_hint="--token-file") from None
    except OSError as exc:
        raise click.BadParameter(f"{printable(path)}: {exc.strerror or exc}", param_hint="--token-file") from None
    if len(token) > MAX_TOKEN_FILE:
        raise click.BadParameter(f"{printable(path)} holds more than {MAX_TOKEN_FILE} bytes", param_hint="--token-file")
    token = token.strip()
    if not token or len(token.split()) != 1:
        raise click.BadParameter(f"{printable(path)} must hold one non-empty token", param_hint="--token-file")
    # A bearer credential is visible ASCII (RFC 6750), and gRPC clients send no other metadata: a
    # token with any other byte (a UTF-8 letter, a BOM, a NUL) was taken, and then matched no
    # request, every call refused with nothing said why.
    if not all(0x21 <= byte <= 0x7E for byte in token):
        raise click.BadParameter(
            f"{printable(path)}: the token holds a byte that is not visible ASCII (0x21-0x7E), "
            "as a bearer token must be",
            param_hint="--token-file",
        )
    return token


class Service:
    """The snapshot source and the servers of one `imgdex serve`, startable in-process."""

    def __init__(
        self,
        store: str,
        grpc_address: tuple[str, int] | None,
        http_address: tuple[str, int] | None,
        token: bytes | None = None,
        workers: int = 8,
        poll: float = 0.5,
    ):
        from .api import Api
        from .snapshots import SnapshotSource

        self.store = store
        self.source = SnapshotSource(store, poll=poll)
        self.api = Api(self.source)
        self.grpc = None
        self.rest = None
        self.grpc_address = self.http_address = None
        try:
            if grpc_address is not None:
                from .grpc_api import GrpcServer

                host, port = grpc_address
                bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                self.grpc = GrpcServer(self.api, bind, workers, token)
                self.grpc_address = f"{bind.rpartition(':')[0]}:{self.grpc.port}"
            if http_address is not None:
                from .rest_api import RestServer

                host, port = http_address
                shown = f"[{host}]" if ":" in host else host
                try:
                    self.rest = RestServer(self.api, host, port, workers, token)
                except OSError as exc:  # as gRPC words it: which address, and why
                    raise OSError(f"cannot listen on {shown}:{port} for REST: {exc.strerror or exc}") from None
                self.http_address = f"{shown}:{self.rest.port}"
        except BaseException:
            self._close_unstarted()
            raise

    def _close_unstarted(self) -> None:
        if self.grpc is not None:
            self.grpc.stop(0)
        if self.rest is not None:
            self.rest.stop(0)

    def start(self) -> None:
        self.source.start()
        if self.grpc is not None:
            self.grpc.start()
        if self.rest is not None:
            self.rest.start()

    def stop(self, grace: float = SHUTDOWN_SECONDS - 0.5) -> None:
        """New requests are refused at once; running ones get `grace` seconds to finish."""
        deadline = time.monotonic() + grace
        done = self.grpc.stop(grace) if self.grpc is not None else None
        if self.rest is not None:
            self.rest.stop(max(0.0, deadline - time.monotonic()))
        if done is not None:
            done.wait(max(0.0, deadline - time.monotonic()))
        self.source.stop()

    def ready_line(self) -> str:
        snapshot = self.source.current
        held = f"{snapshot.images} images" if snapshot is not None else "no completed index run yet"
        grpc_part = self.grpc_address or "off"
        http_part = f"http://{self.http_address}" if self.http_address else "off"
        return f"imgdex: serving gRPC {grpc_part}, REST {http_part}, store {printable(self.store)} ({held})"


class _Spelled:
    """A number option whose text must match `spelling` before click converts it: click's INT and
    FLOAT are Python's int() and float(), which also take `1_0`, blanks around the number and other
    scripts' digits (`١`), as neither the API's own parser (Go's strconv) nor a shell user would."""

    spelling: re.Pattern
    refusal: str

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not self.spelling.fullmatch(value):
            self.fail(f"{value!r} {self.refusal}.", param, ctx)
        return super().convert(value, param, ctx)


class Integer(_Spelled, click.IntRange):
    """ASCII digits after an optional sign; bounded when given bounds."""

    name = "integer"
    spelling = re.compile(r"[+-]?[0-9]+")
    refusal = "is not a valid integer"

    def _describe_range(self) -> str:
        # click describes an unbounded range as `x<=None` in --help
        return "" if self.min is None and self.max is None else super()._describe_range()


class Seconds(_Spelled, click.FloatRange):
    """Decimal notation (`30`, `0.5`, `1e3`); `nan` and `inf` pass, for the option's callback to say
    why they are no number of seconds."""

    name = "seconds"
    spelling = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(?i:nan|inf|infinity)")
    refusal = "is not a number of seconds"


def store_path(param, value: str) -> str:
    """A --store value: an empty one named no folder, and was read as the filesystem's root by some
    commands and as the current folder by others. A `file://` URL becomes the folder it names, and
    so does `file:/PATH` (RFC 8089's form without a host), which delta-rs and DuckDB take as a URL:
    kept as a relative folder, `index` wrote into `./file:/PATH` and the readers read `/PATH`."""
    if value[:7].lower() == "file://" or (value[:5].lower() == "file:" and value[5:6] == "/"):
        value = _file_url_folder(param, value)
    if not value:
        raise click.BadParameter("an empty value names no folder (`.` is this one)", param=param)
    return value


def _file_url_folder(param, url: str) -> str:
    """The folder a `file://` URL names, its %XX escapes decoded. Taken as a folder here, once:
    delta-rs decoded the escapes and the readers did not, so `index` wrote to one folder and every
    other command looked in another."""
    from urllib.parse import unquote, urlsplit

    shown = printable(url)
    # Python's URL parsing drops these wherever they stand, as browsers do: the folder would be another.
    if any(c in url for c in "\t\r\n"):
        raise click.BadParameter(f"{shown}: a URL cannot hold a tab or a line break (%09, %0A, %0D)", param=param)
    parsed = urlsplit(url)
    if parsed.netloc not in ("", "localhost"):
        raise click.BadParameter(f"{shown} names a host: a file:// URL names a folder of this machine", param=param)
    if "?" in url or "#" in url:
        raise click.BadParameter(
            f"{shown}: a URL's `?` or `#` ends its path (a folder holding one is %3F or %23)", param=param
        )
    return unquote(parsed.path, errors="surrogateescape")


@click.command()
@click.option(
    "--store",
    metavar="DIR",
    default=default_store,
    show_default="./data, or $IMGDEX_STORE",
    callback=lambda _ctx, param, value: store_path(param, value),
    help="Store directory.",
)
@click.option(
    "--grpc",
    "grpc_text",
    default=DEFAULT_GRPC,
    show_default=True,
    metavar="HOST:PORT|off",
    help="gRPC address, or off.",
)
@click.option(
    "--http",
    "http_text",
    default=DEFAULT_HTTP,
    show_default=True,
    metavar="HOST:PORT|off",
    help="REST address, or off.",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False),
    metavar="FILE",
    help="Every request must carry `Authorization: Bearer <the token in FILE>`.",
)
@click.option("--insecure-no-auth", is_flag=True, help="Allow a non-loopback address without a token.")
@click.option(
    "--workers",
    type=Integer(1, 256),
    default=8,
    show_default=True,
    metavar="N",
    help="Requests answered at once, per protocol.",
)
def serve(store, grpc_text, http_text, token_file, insecure_no_auth, workers):
    """Serve the store over the Container Registry gRPC and REST read API.

    Answers ImageService Get and List, RepositoryService Get, GetByName and List, and
    RegistryService Get and List from the newest completed index run, and switches to the next
    one without a restart. Write methods answer UNIMPLEMENTED. Stops on SIGTERM or SIGINT (unless
    started with SIGINT ignored, as by nohup), letting running requests finish.
    """
    import os

    grpc_address = parse_address(grpc_text, "--grpc")
    http_address = parse_address(http_text, "--http")
    if grpc_address is None and http_address is None:
        raise click.UsageError("--grpc and --http are both off: nothing to serve")
    if token_file and insecure_no_auth:
        raise click.UsageError("--token-file and --insecure-no-auth contradict each other")
    token = read_token(token_file) if token_file else None
    exposed = [f"{h}:{p}" for h, p in filter(None, (grpc_address, http_address)) if not is_loopback(h)]
    if exposed and token is None and not insecure_no_auth:
        raise click.UsageError(
            f"{', '.join(exposed)} is not a loopback address: "
            "give --token-file FILE, or --insecure-no-auth to serve without auth"
        )
    if not os.path.isdir(store):
        from indexer.store.paths import no_store_message

        click.echo(f"imgdex: {no_store_message(store)}", err=True)
        sys.exit(1)
    # gRPC's own logging writes a line on stderr for what a client does (metadata over the limit,
    # one line per call) and beside each failure already said here in one line. GRPC_VERBOSITY
    # set by the user still applies.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        service = Service(store, grpc_address, http_address, token, workers)
    except ImportError as exc:
        click.echo(f"imgdex: serve needs the serve extra: pip install 'imgdex[serve]' ({exc})", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"imgdex: {exc}", err=True)
        sys.exit(1)
    import signal
    import socket

    from indexer.errors import RefusedStore

    # The kernel gives a signal sent to the process to any thread that does not block it, gRPC's
    # and REST's included, and Python runs the handler only when the main thread next runs: one
    # waiting on a lock for an hour did not, and SIGTERM went unheard for that hour. The signal's
    # number, written on the wakeup socket by whichever thread took it, wakes the main thread.
    wakeup, woken = socket.socketpair()
    for end in (wakeup, woken):
        end.setblocking(False)
    # Started with SIGINT ignored (nohup, `&` in a script), the server keeps ignoring it, as every
    # imgdex command does: the Ctrl-C meant for the shell in front must not stop it.
    stopping = {int(signal.SIGTERM)}
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        stopping.add(int(signal.SIGINT))
    previous_wakeup = signal.set_wakeup_fd(woken.fileno(), warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, _noted) for sig in stopping}
    try:
        try:
            service.start()
        except RefusedStore as exc:  # refused as by every other command
            click.echo(f"imgdex: {exc}", err=True)
            sys.exit(1)
        click.echo(service.ready_line(), err=True)
        while not stopping.intersection(_signals_received(wakeup)):
            pass
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_wakeup)
        wakeup.close()
        woken.close()
    click.echo("imgdex: stopped", err=True)


def _noted(signum, frame) -> None:
    """Python's C-level handler, which this installs, is what writes a signal on the wakeup socket:
    the main loop reads it there."""


def _signals_received(wakeup) -> bytes:
    """The numbers of the signals received since the last call, waiting for one if none was."""
    import select

    select.select([wakeup], [], [])
    try:
        return wakeup.recv(256)
    except BlockingIOError:
        return b""


if __name__ == "__main__":
    serve(prog_name="imgdex serve")
