"""The `imgdex` command: the only module that wires indexing and queries together.

Each command opens the store, calls one library function and prints the result. Library
errors become one-line messages and exit codes here and nowhere else. Heavy modules (pyarrow,
the Docker SDK) are imported only by the commands that need them, so lookups start fast.
"""

from __future__ import annotations

import os
import signal


def _say_interrupted() -> None:
    """The words every command uses, written at once: from a signal handler too."""
    try:
        os.write(2, b"imgdex: interrupted\n")
    except OSError:
        pass


def _interrupted_early(_signum, _frame) -> None:
    # Nothing has been opened or written yet: leave at once.
    _say_interrupted()
    os._exit(130)


def _catch_early_interrupts():
    """Ctrl-C while the modules below load (~60 ms) or click reads the command line ended in a
    traceback, and often by SIGINT itself: until a command starts, it ends the process in one line."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None  # ignored (a background job of a script) or someone else's: left as it is
    try:
        return signal.signal(signal.SIGINT, _interrupted_early)
    except ValueError:  # not the main thread: imported, not run
        return None


_handler_before_import = _catch_early_interrupts()

import contextlib
import errno
import functools
import io
import json
import re
import sys

import click

from indexer.errors import ImgdexError, QueryError, printable
from indexer.identifiers import DEFAULT_PLATFORM, ID_RE
from indexer.store.paths import default_store
from queries.server.app import Integer, Seconds, store_path


INTERRUPTED = 130  # as a shell counts SIGINT, and as `sql` says for its query


def fail(message: str, code: int = 1):
    # Escaped here too, whatever raised it: a store path or an argument may hold a newline or a
    # terminal's escape sequence, and a message is one line.
    click.echo(f"imgdex: {printable(message)}", err=True)
    sys.exit(code)


class _OutputFailed(Exception):
    """Standard output cannot take what a command prints (a full disk, a gone terminal)."""


def echo(text: str, nl: bool = True) -> None:
    """click.echo to standard output; a failed write ends the command with one line (see main).
    A reader that has gone (`| head`) is left to click, which stops quietly."""
    _writing(click.echo, text, nl=nl)


def _put(text: str, flush: bool = False) -> None:
    """`text` to standard output as it is (click.echo would look for ANSI codes in every line)."""
    _writing(lambda: sys.stdout.write(text))
    if flush:
        _writing(lambda: sys.stdout.flush())


def _writing(write, *args, **kwargs) -> None:
    if sys.stdout is None:  # started with it closed (`>&-`): click would print nowhere and say nothing
        raise _OutputFailed("it is closed")
    try:
        write(*args, **kwargs)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _OutputFailed(exc.strerror or str(exc)) from None


def library_errors(command):
    """Turn library errors into `imgdex: message` and exit 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        # The command starts: from here Ctrl-C is a KeyboardInterrupt again, which it turns into
        # its one line once what it writes is safe.
        if signal.getsignal(signal.SIGINT) is _interrupted_early:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return command(*args, **kwargs)
        except ImgdexError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", INTERRUPTED)
        except Exception as exc:
            # DuckDB turns the SIGINT that arrives during a query into this (a RuntimeError, or its
            # InterruptException), not a KeyboardInterrupt.
            if str(exc) != "Query interrupted" and type(exc).__name__ != "InterruptException":
                raise
            fail("interrupted", INTERRUPTED)

    return wrapper


store_option = click.option(
    "--store",
    metavar="DIR",
    default=default_store,
    show_default="./data, or $IMGDEX_STORE",
    callback=lambda _ctx, param, value: store_path(param, value),
    help="Store directory.",
)


def _delta_store(_ctx, param, value: str) -> str:
    """A --store for the commands that hand it to delta-rs (index, history, compact, migrate), which
    cannot take every folder: refused here, before anything is written, rather than once per image
    of a run or as a traceback. get, list, sql and export read such a store without delta-rs."""
    from indexer.store.paths import delta_rs_refusal, local_folder

    value = store_path(param, value)
    folder = local_folder(value)
    reason = None if folder is None else delta_rs_refusal(folder)
    if reason is None:
        return value
    # The working directory's name counts too: then the value alone does not show what is wrong.
    shown = printable(value) if delta_rs_refusal(value) else f"{printable(value)} ({printable(folder)})"
    raise click.BadParameter(f"{shown}: its path holds {reason}", param=param)


delta_store_option = click.option(
    "--store",
    metavar="DIR",
    default=default_store,
    show_default="./data, or $IMGDEX_STORE",
    callback=_delta_store,
    help="Store directory.",
)


def _as_of(_ctx, param, value):
    """A version number of the images table, or a time (ISO 8601; UTC unless it says otherwise)."""
    if value is None:
        return None
    from datetime import datetime, timezone

    if value.isascii() and value.isdigit():  # str.isdigit also takes "²", which int() refuses
        # A version is an int64; int() of thousands of digits is refused by Python itself
        if len(value.lstrip("0")) > 19 or int(value) > 2**63 - 1:
            raise click.BadParameter(f"version {shown_value(value)} is out of range", param=param)
        return int(value)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise click.BadParameter(
            f"{shown_value(value)} is neither a version number nor an ISO 8601 time", param=param
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


as_of_option = click.option(
    "--as-of",
    metavar="VERSION|TIME",
    callback=_as_of,
    help="Read the store as it was: at a version of the images table (`imgdex history`), or at a time "
    "(2026-11-24T09:00:00Z; UTC unless it says otherwise).",
)


class _Usage(click.ClickException):
    """A usage error told in one line, as every other error, rather than click's usage block."""

    exit_code = 2

    def __init__(self, error: click.UsageError):
        super().__init__(_cut_values(error.format_message()))
        self.command_path = error.ctx.command_path if error.ctx is not None else "imgdex"

    def show(self, file=None) -> None:
        message = printable(self.message).rstrip(".")
        # click closes a did-you-mean hint with its own "?", bracketed when it offers several names:
        # the hint becomes the message's last sentence rather than gaining a "." after it.
        head, bracket, hint = message.rpartition(". (")
        if bracket and hint.startswith("Did you mean") and hint.endswith("?)"):
            message = f"{head}. {hint[:-1]}"
        if not message.endswith(("?", "!")):
            message += "."
        click.echo(f"{self.command_path}: {message} See '{self.command_path} --help'.", err=True)


# A value as click quotes it, repr() or between plain quotes, or a run of anything else but blanks,
# quotes and brackets (an out-of-range number, an extra argument).
_QUOTED_OR_WORD = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"()]+""", re.DOTALL)
# click lists extra arguments as they came, blanks and all, between brackets.
_EXTRA_ARGUMENTS = re.compile(r"(Got unexpected extra arguments? \()(.*)(\))", re.DOTALL)


def _cut_values(message: str) -> str:
    """`message` with each value in it cut as every other message cuts its own (`api_rules.cut`):
    click quotes an option's value whole, and one of thousands of characters made a line as long."""
    from queries.api_rules import cut

    def one(match: re.Match) -> str:
        text = match.group()
        if text[0] not in "'\"":
            return cut(text)
        inner = text[1:-1]
        if cut(inner) == inner:  # the value it quotes is no longer
            return text
        return _shown_repr(text) or text[0] + cut(inner) + text[0]

    extra = _EXTRA_ARGUMENTS.fullmatch(message)
    if extra is not None:
        return extra.group(1) + cut(extra.group(2)) + extra.group(3)
    return _QUOTED_OR_WORD.sub(one, message)


def _shown_repr(text: str) -> str | None:
    """The value that `text` is the repr() of, cut and quoted as `shown_value` does; None when
    `text` is no repr() (a name between plain quotes, which may hold anything)."""
    import ast
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an invalid escape is a SyntaxWarning, on stderr
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, str) or repr(value) != text:
        return None
    return shown_value(value)


# click >= 8.2 raises this for a group given no command, to print the help: that stays as it is.
_HELP_ERRORS = (click.exceptions.NoArgsIsHelpError,) if hasattr(click.exceptions, "NoArgsIsHelpError") else ()


@contextlib.contextmanager
def _one_line_usage():
    try:
        yield
    except click.UsageError as exc:
        if isinstance(exc, _HELP_ERRORS):
            raise
        raise _Usage(exc) from None


class _Commands(click.Group):
    """The command group; parsing a command line, or a command, may raise a usage error."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _one_line_usage():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx):
        with _one_line_usage():
            return super().invoke(ctx)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imgdex", prog_name="imgdex")
def cli():
    """Offline container-image metadata index with Yandex Cloud Container Registry lookups."""


class _Progress:
    """A progress bar over the sources, with the images read so far, on stderr when it is a terminal;
    and the run's errors and notes, the first `limit` of each kind as they happen, then how many
    more there were. A layout can list millions of broken descriptors: a million lines of them
    bury the first, and took longer to print than to find."""

    WIDTH = 30

    def __init__(self, total_sources: int, limit: int):
        self.enabled = sys.stderr.isatty()
        self.total = max(total_sources, 1)
        self.sources = 0
        self.images = 0
        self.limit = limit
        self.unprinted = {"errors": 0, "notes": 0}
        self.printed = {"errors": 0, "notes": 0}

    def _draw(self) -> None:
        filled = self.WIDTH * self.sources // self.total
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        click.echo(f"\r[{bar}] {self.sources}/{self.total} sources, {self.images} images", err=True, nl=False)

    def image(self, _record) -> None:
        self.images += 1
        if self.enabled and self.images % 50 == 1:
            self._draw()

    def source(self, _spec) -> None:
        self.sources += 1
        if self.enabled:
            self._draw()

    def error(self, text: str) -> None:
        self._say("errors", text)

    def note(self, text: str) -> None:
        self._say("notes", f"note: {text}")

    def _say(self, kind: str, text: str) -> None:
        if self.printed[kind] >= self.limit:
            self.unprinted[kind] += 1
            return
        self.printed[kind] += 1
        if self.enabled:
            click.echo("\r\033[K", err=True, nl=False)
        click.echo(f"imgdex: {text}", err=True)
        if self.enabled:
            self._draw()

    def done(self) -> None:
        if self.enabled:
            click.echo("\r\033[K", err=True, nl=False)
        rest = [f"{count} more {kind}" for kind, count in self.unprinted.items() if count]
        if rest:
            click.echo(
                f"imgdex: {' and '.join(rest)} not printed: a run prints its first {self.limit} errors and notes",
                err=True,
            )


_MAX_PASSWORD = 64 * 1024  # a password or token; standard input may be anything
_STDIN_PATHS = ("-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0")
_STDIN_TRANSPORTS = ("docker-archive:", "oci-archive:", "ycr-json:")


def _reads_stdin(source: str) -> bool:
    for transport in _STDIN_TRANSPORTS:
        if source.startswith(transport):
            source = source[len(transport) :].partition(":")[0]  # oci-archive:PATH:REF
            break
    return source in _STDIN_PATHS


# A day: no registry request needs longer, and a socket timeout far past it overflows time_t.
MAX_TIMEOUT = 86400.0


def _finite_seconds(_ctx, param, value: float) -> float:
    if value != value or value == float("inf"):
        raise click.BadParameter(f"{value} is not a number of seconds", param=param)
    if value > MAX_TIMEOUT:
        raise click.BadParameter(f"{value:g} is more than {MAX_TIMEOUT:g} seconds", param=param)
    return value


def _secret_from_stdin(flag: str, sources) -> str:
    """A password or token, the whole of standard input but for its line end."""
    for source in sources:
        if _reads_stdin(source):
            raise click.UsageError(f"{flag} and {source} cannot both read standard input")
    if sys.stdin is None:
        raise click.UsageError(f"{flag}: standard input is closed")
    secret = sys.stdin.read(_MAX_PASSWORD + 1)
    if len(secret) > _MAX_PASSWORD:
        raise click.UsageError(f"{flag} takes at most {_MAX_PASSWORD} characters")
    return secret.rstrip("\r\n")


def _insecure_registries(_ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    # An entry that matches no host would leave plain HTTP refused with no word of why, as a typo
    # in dockerd's insecure-registries would not: dockerd refuses to start.
    import ipaddress

    from indexer.references import is_valid_host

    for value in values:
        entry = value.strip()
        try:
            valid = ipaddress.ip_network(entry, strict=False) if "/" in entry else is_valid_host(entry)
        except ValueError:
            valid = False
        if not valid:
            raise click.BadParameter(
                f"{shown_value(value)} is neither HOST, HOST:PORT nor a CIDR network such as 10.0.0.0/8", param=param
            )
    return values


def _shard(_ctx, param, value):
    if value is None:
        return None
    from indexer.shard import Shard

    try:
        return Shard.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _split_repository(registry: str, repository: str) -> tuple[str, str]:
    """--registry and --repository as the run takes them (a host at the head of --repository is
    its registry); a usage error when either is outside Docker's grammar, since the images named by
    them would be stored under a name no reference could reach."""
    from indexer.references import (
        DOCKER_HUB,
        is_docker_hub,
        is_registry_host,
        is_valid_host,
        is_valid_name,
        parse_reference,
    )

    not_a_name = click.BadParameter(f"{shown_value(repository)} is not a repository name", param_hint="--repository")
    if repository and not registry:
        first, sep, _ = repository.partition("/")
        if sep and is_registry_host(first):
            try:
                ref = parse_reference(repository)
            except ImgdexError:
                raise not_a_name from None
            if ref.tag or ref.digest:
                raise not_a_name
            return ref.registry, ref.name
    if registry and not is_valid_host(registry):
        raise click.BadParameter(f"{shown_value(registry)} is not a registry host", param_hint="--registry")
    if is_docker_hub(registry):
        # as a reference to Docker Hub is: `docker.io/ubuntu` is docker.io/library/ubuntu
        registry = DOCKER_HUB
        if repository and "/" not in repository:
            repository = f"library/{repository}"
    if repository and not is_valid_name(registry, repository):
        raise not_a_name
    return registry, repository


def shown_value(value: str) -> str:
    """An option's value as an error quotes it: cut short, and on one line whatever it holds."""
    from queries.api_rules import shown  # imported on an error only: a command starts without it

    return shown(value)


# Go's strconv.ParseBool, which skopeo's `--tls-verify=false` goes through.
_GO_BOOLS = {word: True for word in ("1", "t", "T", "TRUE", "true", "True")} | {
    word: False for word in ("0", "f", "F", "FALSE", "false", "False")
}


class _IndexCommand(click.Command):
    """`index`, which also takes skopeo's `--tls-verify=false` (Go's flags give a boolean its value
    after `=`): click's flag pair takes no value."""

    def parse_args(self, ctx, args):
        taken = []
        for position, arg in enumerate(args):
            if arg == "--":
                taken += args[position:]
                break
            name, equals, value = arg.partition("=")
            if name == "--tls-verify" and equals:
                if value not in _GO_BOOLS:
                    raise click.BadParameter(f"{value!r} is not a boolean", param_hint="'--tls-verify'")
                arg = "--tls-verify" if _GO_BOOLS[value] else "--no-tls-verify"
            taken.append(arg)
        return super().parse_args(ctx, taken)


@cli.command(cls=_IndexCommand)
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@delta_store_option
@click.option("--registry", default="", metavar="HOST", help="Registry host for images whose source carries no name.")
@click.option("--repository", default="", metavar="NAME", help="Repository for images whose source carries no name.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Do not print notes (skipped entries).")
@click.option(
    "--verify",
    is_flag=True,
    help="Also hash layer contents of archives and layouts against their digests (reads every layer).",
)
@click.option(
    "--docker-host",
    default="",
    metavar="URL",
    help="Docker engine for docker-daemon: sources. Default: $DOCKER_HOST, else the current docker context, "
    "else the local socket.",
)
@click.option("--all", "all_images", is_flag=True, help="docker-daemon: also index intermediate images.")
@click.option(
    "--repository-prefix", default="", metavar="PATH", help="docker://HOST: crawl only the repositories under PATH."
)
@click.option(
    "--username",
    default="",
    metavar="USER",
    help="Registry user for docker:// sources; the password comes from --password-stdin or $IMGDEX_PASSWORD.",
)
@click.option("--password-stdin", is_flag=True, help="Read the registry password from standard input.")
@click.option(
    "--registry-token-stdin",
    is_flag=True,
    help="Read a bearer token for the registry from standard input (or give it in $IMGDEX_REGISTRY_TOKEN), "
    "sent instead of one from its token server, as skopeo's --registry-token.",
)
@click.option(
    "--tls-verify/--no-tls-verify",
    default=True,
    show_default=True,
    help="Verify registry TLS certificates (skopeo's --tls-verify=false is taken too).",
)
@click.option(
    "--ca-cert",
    default=None,
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="CA bundle for registry TLS.",
)
@click.option(
    "--cert-dir",
    default=None,
    metavar="DIR",
    type=click.Path(exists=True, file_okay=False),
    help="Registry TLS files (*.crt CAs, a *.cert/*.key client pair) for every docker:// host, read instead "
    "of /etc/docker/certs.d/HOST and /etc/containers/certs.d/HOST, as skopeo's --cert-dir.",
)
@click.option(
    "--authfile",
    default=None,
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="Registry credentials (a docker config.json or containers auth.json) read instead of the default "
    "files, as skopeo's --authfile.",
)
@click.option(
    "--registries-conf",
    default=None,
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="The registries.conf that says which registries are blocked, insecure or served by another host, "
    "read instead of the default ones, as skopeo's --registries-conf.",
)
@click.option(
    "--insecure-registry",
    "insecure_registries",
    multiple=True,
    metavar="HOST",
    callback=_insecure_registries,
    help="Allow plain HTTP and skip TLS verification for HOST[:PORT] or a CIDR network (repeatable). "
    "Loopback may always use plain HTTP.",
)
@click.option(
    "--jobs",
    type=Integer(1, 256),
    default=None,
    metavar="N",
    help="Processes for archives, layouts and folders of them (default: the CPUs this process may use less "
    "the busy ones, by the 1-minute load average or the tasks runnable now when fewer, at least 1; a run with "
    "little work stays in one), and requests at once to a registry (default 8).",
)
@click.option(
    "--shard",
    default=None,
    metavar="K/N",
    callback=_shard,
    help="Index only the K-th of N deterministic slices of the sources (by repository for registries and "
    "engines, by image for archives and layouts), so N workers index them together into one store.",
)
@click.option(
    "--timeout",
    type=Seconds(0, min_open=True),
    default=30,
    show_default=True,
    metavar="SECONDS",
    callback=_finite_seconds,
    help="Deadline for each registry request, whole response included (at most a day).",
)
@click.option(
    "--no-creds",
    is_flag=True,
    help="Crawl registries anonymously: no auth file, helper, $IMGDEX_PASSWORD or $IMGDEX_REGISTRY_TOKEN is read "
    "(as skopeo's --no-creds).",
)
@click.option(
    "--retry-times",
    type=Integer(0, 100),
    default=3,
    show_default=True,
    metavar="N",
    help="Times a registry request that got no answer, a 429 or a 5xx is tried again, with backoff "
    "(as skopeo's --retry-times).",
)
@library_errors
def index(
    sources,
    store,
    registry,
    repository,
    as_json,
    quiet,
    verify,
    docker_host,
    all_images,
    repository_prefix,
    username,
    password_stdin,
    registry_token_stdin,
    tls_verify,
    ca_cert,
    cert_dir,
    authfile,
    registries_conf,
    insecure_registries,
    jobs,
    shard,
    timeout,
    no_creds,
    retry_times,
):
    """Index every image found in each SOURCE.

    SOURCE is docker-archive:PATH[:@N|:NAME[:TAG]] (one image of the archive, as skopeo takes it),
    oci-archive:PATH[:REF], oci:DIR[:REF], dir:DIR (a skopeo copy), docker-daemon:[REF]
    (a running Docker engine: every image, or the one named by reference or ID),
    containers-storage:[[DRIVER@]ROOT]REF (podman's and buildah's local store, read from its files:
    every image, or the one named; the store storage.conf names by default),
    docker://HOST[/REPO[:TAG|@DIGEST]] (a registry: every repository, every tag of one, or one
    image), ycr-json:PATH (Image.Get / Image.List JSON of Yandex Cloud; names go under
    cr.yandex unless --registry), or a bare path (a layout directory, a dir: copy, a
    containers-storage graph root, a folder of
    archives, layouts and copies, every one below it indexed, or a tar that is uncompressed, gzip,
    zstd, xz or bzip2; - is standard input).
    """
    import os
    import time

    from indexer import workers
    from indexer.errors import StoreError
    from indexer.store.paths import enclosing_store, local_folder

    folder = local_folder(store)
    outer = None if folder is None else enclosing_store(folder)
    if outer is not None:
        raise click.BadParameter(
            f"{printable(store)} lies inside the store {printable(outer)}, whose folders are its own (compact"
            " deletes the files its tables do not list): give a store outside it",
            param_hint="'--store'",
        )
    from indexer.run import MAX_MESSAGES, Kept, RunObserver, RunSettings, RunSummary, index_sources
    from indexer.sources import SourceOptions

    password = None
    token = ""
    crawls_registries = any(source.startswith("docker://") for source in sources)
    if no_creds and (username or password_stdin or registry_token_stdin or authfile):
        given = next(
            flag
            for flag, value in (
                ("--username", username),
                ("--password-stdin", password_stdin),
                ("--registry-token-stdin", registry_token_stdin),
                ("--authfile", authfile),
            )
            if value
        )
        raise click.UsageError(f"--no-creds and {given} cannot both be given")
    if password_stdin and registry_token_stdin:
        raise click.UsageError("--password-stdin and --registry-token-stdin cannot both read standard input")
    # The password and token are for registries only: an exported IMGDEX_PASSWORD must not get in
    # the way of indexing archives (nor of an anonymous crawl).
    if crawls_registries and not no_creds:
        if password_stdin:
            password = _secret_from_stdin("--password-stdin", sources)
        elif os.environ.get("IMGDEX_PASSWORD") is not None:
            password = os.environ["IMGDEX_PASSWORD"]
        if password is not None and not username:
            raise click.UsageError("a registry password needs --username")
        if registry_token_stdin:
            token = _secret_from_stdin("--registry-token-stdin", sources)
        else:
            token = os.environ.get("IMGDEX_REGISTRY_TOKEN", "")
        if registry_token_stdin and not token:
            raise click.UsageError("--registry-token-stdin: standard input held no token")
    elif password_stdin or registry_token_stdin:
        flag = "--password-stdin" if password_stdin else "--registry-token-stdin"
        raise click.UsageError(f"{flag} is for docker:// sources, and none is given")
    registry, repository = _split_repository(registry, repository)
    progress = _Progress(len(sources), MAX_MESSAGES)
    registry_options = None
    if crawls_registries:
        from indexer.sources.registry_client import RegistryOptions  # imports urllib3

        registry_options = RegistryOptions(
            repository_prefix=repository_prefix,
            username=username,
            password=password,
            tls_verify=tls_verify,
            ca_cert=ca_cert or "",
            cert_dir=cert_dir or "",
            auth_files=[] if no_creds else [authfile] if authfile else None,
            registries_conf=registries_conf or "",
            registry_token=token,
            insecure_registries=tuple(insecure_registries),
            jobs=jobs or 8,
            timeout=timeout,
            retries=retry_times,
        )
    options = SourceOptions(docker_host=docker_host, all_images=all_images, registry=registry_options)
    settings = RunSettings(options=options, registry=registry, repository=repository, verify=verify, shard=shard)
    said = Kept()  # the errors said, for a summary the failed store took with it

    def said_error(text: str) -> None:
        said.add(text)
        progress.error(text)

    observer = RunObserver(
        on_error=said_error,
        on_note=(lambda text: None) if quiet else progress.note,
        on_image=progress.image,
        on_source=progress.source,
    )
    started = time.monotonic()
    # Planned, and workers started, before the store's libraries are loaded (see workers.py).
    local_jobs = jobs or workers.free_cpus()
    work = workers.plan(list(sources), jobs=local_jobs, settings=settings)
    try:
        if work is not None:
            summary = workers.index_parallel(work, store, settings=settings, observer=observer)
        else:
            from indexer.store.delta_writer import DeltaWriter

            with DeltaWriter(store) as writer:
                summary = index_sources(sources, writer, settings=settings, observer=observer)
    except StoreError as exc:
        progress.done()
        if as_json:
            # A script parsing stdout gets the summary all the same. When the store failed before
            # the run had one (it would not open; with --jobs, anything but the runs row: a worker
            # says what it wrote only once done), one process has landed nothing, and with workers
            # what landed is unknown: null.
            summary = getattr(exc, "summary", None) or RunSummary(
                indexed=0 if work is None else None,
                failed=said.count,
                seconds=time.monotonic() - started,
                errors=said.listed(said.items, "errors"),
            )
            echo(json.dumps({**_summary_document(summary), "store_error": printable(str(exc))}))
        raise
    progress.done()
    if as_json:
        echo(json.dumps(_summary_document(summary)))
    else:
        echo(f"indexed {summary.indexed} images, {summary.failed} failed, in {summary.seconds:.2f} s")
    if not summary.ok:
        sys.exit(1)


def _summary_document(summary) -> dict:
    """`index --json`'s summary; the runs table's `images_indexed`, `images_failed` and `errors`."""
    return {
        "indexed": summary.indexed,
        "failed": summary.failed,
        "seconds": round(summary.seconds, 3),
        "errors": summary.errors,
    }


def _platform(_ctx, param, value: str) -> str:
    # A usage error, as every other value the command line cannot give: found only once the
    # command ran, it was exit 1, as an image not found is.
    from queries import lookup

    try:
        lookup.parse_platform(value)
    except ImgdexError:
        raise click.BadParameter(f"{shown_value(value)} is not OS/ARCH[/VARIANT]", param=param) from None
    return value


def platform_option(help_text: str):
    return click.option(
        "--platform",
        default=DEFAULT_PLATFORM,
        show_default=True,
        metavar="OS/ARCH[/VARIANT]",
        callback=_platform,
        help=help_text,
    )


def _echo_document(doc: dict, fmt: str, table=None) -> None:
    """One response as JSON (the default), YAML or, where the command has one, a table."""
    from queries import render

    if fmt == "table":
        echo(table(doc))
    elif fmt == "yaml":
        echo(render.to_yaml(doc), nl=False)
    else:
        echo(render.to_json(doc))


_QUERIES_NAME = "imgdex.queries_name"


class _QueriesFile(click.File):
    """click.File for reading a regular file or a pipe, as the index sources read theirs; `-` is
    standard input."""

    def convert(self, value, param, ctx):
        if ctx is not None and isinstance(value, (str, os.PathLike)):
            # what errors name the input by, as `grep` and `jq` do: the path as given
            ctx.meta[_QUERIES_NAME] = "<stdin>" if os.fspath(value) == "-" else click.format_filename(value)
        if not isinstance(value, (str, os.PathLike)) or os.fspath(value) == "-":
            if sys.stdin is None and isinstance(value, (str, os.PathLike)):
                self.fail("'-': standard input is closed", param, ctx)
            return super().convert(value, param, ctx)
        from indexer.errors import SourceError
        from indexer.files import open_readable

        try:
            # A device would never end; a FIFO that no one writes reads as empty.
            stream = open_readable(os.fspath(value), pipes=True)
        except SourceError as exc:
            self.fail(f"'{click.format_filename(value)}': {exc.reason}", param, ctx)
        except OSError as exc:
            self.fail(f"'{click.format_filename(value)}': {exc.strerror or exc}", param, ctx)
        if ctx is not None:
            ctx.call_on_close(stream.close)
        return stream


@cli.command()
@click.argument("image", required=False)
@store_option
@click.option("--format", "fmt", type=click.Choice(["json", "yaml"]), default="json", show_default=True)
@platform_option("Child of a multi-platform index to return.")
@click.option(
    "--ids-from",
    # Bytes: a text stream would also end a line at a lone "\r" (universal newlines), and the
    # output would no longer pair with the input line by line.
    type=_QueriesFile("rb"),
    metavar="FILE|-",
    help="Look up every line of FILE; print one line per line read (see above).",
)
@as_of_option
@library_errors
def get(image, store, fmt, platform, ids_from, as_of):
    """Print the Image.Get response for IMAGE: an id, a reference [HOST/]NAME[:TAG|@DIGEST], or an image ID prefix.

    With --ids-from, every input line gives exactly one output line, in order, so the outputs
    can be pasted beside the inputs: the image as compact JSON; for an image that is not found
    or a line that is not a valid query, a compact error object in the google.rpc.Status form,
    {"error":{"code":5,"message":"image X not found"}} (code 5 NOT_FOUND, 3 INVALID_ARGUMENT
    for a malformed or ambiguous query); and an empty line for an empty line. Each error is also
    reported on stderr, and the exit code is 1 when there was any.
    """
    from queries import engine, lookup, render

    if (image is None) == (ids_from is None):
        raise click.UsageError("give either IMAGE or --ids-from")
    if ids_from is not None and fmt != "json":
        raise click.UsageError("--ids-from prints one JSON line per input line; --format does not apply")
    if ids_from is None and ID_RE.fullmatch(image):
        # Most gets name an id: look in the files that may hold it first, the whole store only if
        # it is not there (a reference can look like an id).
        row = lookup.by_id(engine.connect(store, tables=("images",), as_of=as_of, key=image), image)
        if row is not None:
            _echo_document(render.to_response(row), fmt)
            return
    con = engine.connect(store, tables=("images", "tags"), as_of=as_of)
    if ids_from is not None:
        _get_batch(con, ids_from, platform)
        return
    doc = render.to_response(lookup.resolve(con, image, platform))
    _echo_document(doc, fmt)


def _get_batch(con, stream, platform):
    from indexer.errors import NotFound
    from queries import lookup, render

    name = click.get_current_context().meta.get(_QUERIES_NAME, "<stdin>")
    failed = 0
    lines: list[str] = []
    answers = lookup.batch(con, _query_lines(stream, name), platform)
    # one answer per input line, in order: the count is the line's number
    for number, (_query, row) in enumerate(_flushing_first(answers, lines), 1):
        if row is None:
            lines.append("\n")
        elif isinstance(row, ImgdexError):
            failed += 1
            code = 5 if isinstance(row, NotFound) else 3
            lines.append(render.to_json_line({"error": {"code": code, "message": str(row)}}) + "\n")
            # stdout first, so that the two streams interleave as the lines were read
            _put("".join(lines), flush=True)
            lines.clear()
            click.echo(f"imgdex: {printable(f'{name}:{number}: {row}')}", err=True)
        else:
            lines.append(render.to_json_line(render.to_response(row)) + "\n")
        if len(lines) >= 4096:
            _put("".join(lines))
            lines.clear()
    _put("".join(lines), flush=True)
    if failed:
        sys.exit(1)


# Bytes of one --ids-from line: the longest reference (host, name, tag and digest) is under 1,000.
MAX_QUERY_LINE = 4096
# Bytes of one line skipped before the input is given up: a stream without newlines (standard
# input from /dev/zero, a binary file) would otherwise be read for ever. No total is bounded: a
# stream of lines, however long, is answered line by line in bounded memory, as a filter should.
MAX_SKIPPED_LINE = 16 << 20


def _flushing_first(answers, lines: list[str]):
    """`answers`; when they fail (the input cannot be read further), the answers already made
    are printed before the error is."""
    try:
        yield from answers
    except ImgdexError:
        _put("".join(lines), flush=True)
        lines.clear()
        raise


def _query_lines(stream, name: str):
    """The lines of `stream` as text; a line longer than MAX_QUERY_LINE is skipped in bounded
    reads and given as its error, so that no line holds more memory than that. A line longer
    than MAX_SKIPPED_LINE is given as an error that ends the input. A read that fails (an I/O
    error, a /proc file that refuses reads) is one error, `NAME: reason`, that ends the command."""

    def read(size: int) -> bytes:
        try:
            return stream.readline(size)
        except OSError as exc:
            raise QueryError(printable(f"{name}: {exc.strerror or exc}")) from None

    while line := read(MAX_QUERY_LINE + 1):
        if len(line) > MAX_QUERY_LINE and not line.endswith(b"\n"):
            skipped = len(line)
            while (rest := read(1 << 16)) and not rest.endswith(b"\n"):
                skipped += len(rest)
                if skipped > MAX_SKIPPED_LINE:
                    yield QueryError(f"line longer than {MAX_SKIPPED_LINE} bytes: the rest of the input is not read")
                    return
            yield QueryError(f"line longer than {MAX_QUERY_LINE} bytes")
            continue
        yield line.decode("utf-8", errors="surrogateescape").strip()


@cli.command(name="list")
@store_option
@click.option(
    "--registry-id",
    default="",
    metavar="ID",
    help="Registry id (first name component) or registry host. Ignored with --repository-name.",
)
@click.option("--repository-name", default="", metavar="NAME", help="Only this repository's images.")
@click.option(
    "--folder-id",
    default="",
    metavar="ID",
    help="Accepted as the API accepts it; the index records no folders, so it does not narrow the list.",
)
@click.option(
    "--filter",
    "filter_",
    default="",
    metavar="EXPR",
    help='name="..", name!="..", name IN ("..", ..), name NOT IN ("..", ..), joined by AND.',
)
@click.option(
    "--order-by",
    default="",
    metavar="FIELDS",
    help="name, digest, created_at, last_modified; each with an optional desc. Default: name, digest.",
)
@click.option(
    "--page-size",
    type=Integer(),
    default=100,
    show_default=True,
    metavar="N",
    help="At most 1000; 0 means the default.",
)
@click.option("--page-token", default="", metavar="T", help="The nextPageToken of the page before.")
@click.option("--format", "fmt", type=click.Choice(["json", "table", "yaml"]), default="json", show_default=True)
@as_of_option
@library_errors
def list_(store, registry_id, repository_name, folder_id, filter_, order_by, page_size, page_token, fmt, as_of):
    """Print the Image.List response, with the API's own request rules."""
    from queries import engine, listing

    query = listing.Query(
        registry_id=registry_id,
        repository_name=repository_name,
        filter=filter_,
        order_by=order_by,
        page_size=page_size,
        page_token=page_token,
        folder_id=folder_id,
    )
    con = engine.connect(store, tables=("images",), as_of=as_of)
    _echo_document(listing.list_images(con, query), fmt, _images_table)


def _images_table(result: dict) -> str:
    from queries import render

    table = render.images_table(result.get("images", []))
    token = result.get("nextPageToken")
    return f"{table}\nnext page token: {token}" if token else table


# 1 PiB, in MiB: more than any machine holds, so no bound is lost, and far below where the
# process's limit in bytes outgrows setrlimit's C long or DuckDB's own limit (16 EiB) refuses it.
MAX_MEMORY_LIMIT = 1 << 30


@cli.command()
@click.argument("query")
@store_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@as_of_option
@click.option(
    "--timeout",
    metavar="SECONDS",
    type=Seconds(min=0, min_open=True),
    default=300,
    show_default=True,
    callback=_finite_seconds,
    help="Stop the query after this long (at most a day).",
)
@click.option(
    "--memory-limit",
    metavar="MIB",
    type=Integer(min=16, max=MAX_MEMORY_LIMIT),
    default=1024,
    show_default=True,
    help="Memory the query may use, in MiB (at most a PiB); a query that needs more fails (nothing spills to disk).",
)
@library_errors
def sql(query, store, fmt, as_of, timeout, memory_limit):
    """Run read-only SQL over the store's tables (images, tags, runs) and views (image_layers,
    image_bases, and images_versions, tags_versions, runs_versions: every row version).

    Rows are printed as they come; a table shows at most 10,000 of them. Ctrl-C stops the query."""
    from queries import sqlshell

    sqlshell.return_freed_memory()
    from queries import engine

    terminal = fmt == "csv" and sys.stdout is not None and sys.stdout.isatty()
    with sqlshell.Guard(timeout) as guard:
        try:
            guard.reader = con = engine.connect(store, as_of=as_of, memory_limit=f"{memory_limit}MiB")
            with sqlshell.memory_cap(memory_limit * 1024 * 1024 + sqlshell.HEADROOM):
                # Raw: click.echo would drop what looks like an ANSI code from the data when piped.
                sqlshell.write(con, query, fmt, _put, note=_note, before=guard.check, terminal=terminal)
        except MemoryError:  # the rows in Python; DuckDB's own share fails as its Out of Memory Error
            stopped = QueryError(f"Out of Memory Error: the result does not fit in --memory-limit {memory_limit} MiB")
        except engine.Interrupted as exc:
            stopped = guard.stopped(exc)
        except sqlshell.Stopped as exc:
            stopped = exc
        else:
            return
    fail(str(stopped), stopped.code if isinstance(stopped, sqlshell.Stopped) else 1)


lineage_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "table", "yaml"]),
    default="json",
    show_default=True,
)
lineage_platform_option = platform_option(
    "The child that answers when IMAGE is a multi-platform index (an index has no layers)."
)


def _note(text: str) -> None:
    click.echo(f"imgdex: note: {text}", err=True)


def _lineage(answer, image, store, platform, everything, fmt, table, as_of=None):
    from queries import engine, lookup

    con = engine.connect(store, tables=("images", "tags"), as_of=as_of)
    row = lookup.resolve(con, image, platform)
    _echo_document(answer(con, row[0], platform, everything=everything, note=_note), fmt, table)


@cli.command()
@click.argument("image")
@store_option
@lineage_format_option
@lineage_platform_option
@click.option("--all", "everything", is_flag=True, help="Also the bases of the nearest base, down to the first layer.")
@as_of_option
@library_errors
def base(image, store, fmt, platform, everything, as_of):
    """Print the nearest base image of IMAGE (anything `get` accepts): the indexed images whose layers
    are exactly IMAGE's first layers, the most layers first, by the OCI ChainIDs of their diff_ids.

    JSON: {"bases": [{"id", "name", "digest", "tags", "sharedLayers", "totalLayers"}, ...]}, with
    every resource that shares the nearest base's layers, exact records first; {} when there is none.
    A base declared by the org.opencontainers.image.base.name/.digest annotations or labels is
    reported as "declaredBase", with its "agreement":

    \b
      AGREES       it is the nearest base, or shares the nearest base's layers
      ANCESTOR     it is a base further down than the nearest base
      DIFFERS      it is indexed, and is not a base of IMAGE
      NOT_INDEXED  nothing indexed matches it, so it is not checked
      NOT_CHECKED  IMAGE's own lineage is unknown, so it is not checked
    """
    from queries import lineage

    _lineage(lineage.bases, image, store, platform, everything, fmt, lineage.bases_table, as_of)


@cli.command()
@click.argument("image")
@store_option
@lineage_format_option
@lineage_platform_option
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Every descendant, not only the images built directly on IMAGE.",
)
@as_of_option
@library_errors
def derived(image, store, fmt, platform, everything, as_of):
    """Print the images whose nearest base is IMAGE (anything `get` accepts).

    JSON: {"images": [{"id", "name", "digest", "tags", "sharedLayers"}, ...]}; {} when there is none.
    With --all, every descendant, nearest first.
    """
    from queries import lineage

    _lineage(lineage.derived, image, store, platform, everything, fmt, lineage.derived_table, as_of)


@cli.command()
@delta_store_option
@click.option("--limit", type=Integer(min=1), default=None, metavar="N", help="Only the newest N versions.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@library_errors
def history(store, limit, fmt):
    """List the store's versions, newest first: one line per commit of a table (a run commits its
    images, then its tags, then its runs row). `--as-of` takes a VERSION of the images table, or a time."""
    from indexer.store.delta import DeltaStore
    from indexer.store.paths import gone_is_no_store, require_table_store

    require_table_store(store)
    with gone_is_no_store(store), DeltaStore(store) as tables:
        entries = tables.history(limit=limit)
    rows = [
        {
            "time": entry.time.isoformat().replace("+00:00", "Z"),
            "table": entry.table,
            "version": entry.version,
            "operation": entry.operation,
            "run": entry.run_id or "",
            "rows": entry.rows,
            "tombstones": entry.tombstones,
        }
        for entry in entries
    ]
    if fmt == "json":
        echo(json.dumps({"versions": rows}, indent=2))
        return
    from queries.render import format_table

    columns = ["time", "table", "version", "operation", "run", "rows", "tombstones"]
    cells = [["" if r[c] is None else str(r[c]) for c in columns] for r in rows]
    echo(format_table([c.upper() for c in columns], cells))


_DURATION = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(e[+-]?[0-9]+)?[smhd]?|[+-]?(nan|inf|infinity)[smhd]?")


def _duration(_ctx, param, value: str):
    from datetime import timedelta

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.lower()
    # Spelled as --timeout's seconds are (no `1_0`, blanks or `١`, which float() takes), then a unit.
    if not _DURATION.fullmatch(text):
        raise click.BadParameter(f"{value!r} is not a duration such as 7d, 12h, 30m or 0", param=param)
    try:
        if text and text[-1] in units:
            return timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return timedelta(seconds=float(text))
    except (ValueError, OverflowError):  # nan, inf, more days than a timedelta holds
        raise click.BadParameter(f"{value!r} is not a duration such as 7d, 12h, 30m or 0", param=param) from None


@cli.command()
@delta_store_option
@click.option(
    "--retention",
    default="7d",
    show_default=True,
    metavar="DURATION",
    callback=_duration,
    help="Keep files that left the table this recently, for readers and --as-of (7d, 12h, 90m).",
)
@click.option(
    "--allow-short-retention",
    is_flag=True,
    help="Accept a retention under one hour: a run or reader older than it may lose files.",
)
@click.option("--no-vacuum", is_flag=True, help="Rewrite the tables, but delete no file.")
@library_errors
def compact(store, retention, allow_short_retention, no_vacuum):
    """Rewrite each table to one current row per key, sorted by key, then delete files that left the
    tables longer ago than --retention. Safe while index runs and readers work on the store."""
    from datetime import timedelta

    from indexer.store.delta import MIN_RETENTION, DeltaStore
    from indexer.store.paths import gone_is_no_store, require_table_store

    # The command line is what to change: usage errors, before the store is opened
    if retention < timedelta(0):
        raise click.BadParameter("cannot be negative", param_hint="--retention")
    if retention < MIN_RETENTION and not allow_short_retention:
        raise click.BadParameter(
            f"under {MIN_RETENTION} could delete files of a run that is still writing "
            "(--allow-short-retention accepts that)",
            param_hint="--retention",
        )
    require_table_store(store)
    with gone_is_no_store(store), DeltaStore(store) as tables:
        outcome = tables.compact(retention=retention, vacuum=not no_vacuum, allow_short_retention=allow_short_retention)
        notes = tables.take_notes()
    for text in notes:
        _note(text)
    echo(json.dumps(outcome, indent=2, default=str))


@cli.command()
@click.argument("directory", type=click.Path())
@store_option
@as_of_option
@library_errors
def export(directory, store, as_of):
    """Write the current rows of images, tags and runs to DIRECTORY/TABLE.parquet: plain Parquet files
    that any engine reads (Spark with no extra jars included), and that `--store DIRECTORY` reads too.
    DIRECTORY lies outside the store, whose folders are its own: compact deletes the files there that
    its tables do not list."""
    from queries.export import check_outside_store, export_from_store

    if not directory:
        raise click.BadParameter("an empty value names no folder (`.` is this one)", param_hint="'DIRECTORY'")
    if os.path.lexists(directory) and not os.path.isdir(directory):
        # click's Path refuses a regular file only; a device or a FIFO is no folder either
        raise click.BadParameter(f"{shown_value(directory)} exists and is not a directory", param_hint="'DIRECTORY'")
    try:
        check_outside_store(directory, store)
    except QueryError as exc:
        raise click.BadParameter(str(exc), param_hint="'DIRECTORY'") from None
    counts = export_from_store(store, directory, as_of=as_of)
    echo(", ".join(f"{counts[table]} {table}" for table in counts) + f" written to {printable(directory)}")


@cli.command()
@delta_store_option
@library_errors
def migrate(store):
    """Convert a store of the old layout (imgdex.duckdb and Parquet snapshots) to Delta tables, in place."""
    from indexer.store.migrate import migrate as convert

    counts = convert(store)
    echo(
        f"migrated {printable(store)}: {counts.get('images', 0)} images, {counts.get('tags', 0)} tags, "
        f"{counts.get('runs', 0)} runs"
    )


def _add_serve() -> None:
    from queries.server.app import serve  # imports only click and indexer.store.paths

    cli.add_command(serve)


_add_serve()


# Commands whose work is closed when they return: files written and committed, workers joined,
# DuckDB only read in memory. They leave without the interpreter's teardown, which frees every
# object and unloads pyarrow, deltalake and DuckDB one by one: 30-50 ms, a sixth of a run that
# indexes one archive, and a moment in which Ctrl-C ended a finished compaction by SIGINT.
_LEAVE_AT_ONCE = ("index", "get", "compact")


if _handler_before_import is not None:  # imported by other code, which keeps its own handler
    signal.signal(signal.SIGINT, _handler_before_import)


def main():
    _catch_early_interrupts()
    code, output_ok = 0, True
    command = _command()
    if command == "index":
        _without_numpy()
    _utf8_stdout()
    _whole_writes_stdout()
    if sys.stdout is None:  # started with it closed (`>&-`)
        sys.stdout = _ClosedOutput()
    try:
        cli(prog_name="imgdex")
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:  # past the command's own handling, before its exit
        code = INTERRUPTED
        _say_interrupted()
    except _OutputFailed as exc:
        code, output_ok = 1, False
        _say_output_failed(str(exc))
    except OSError as exc:
        if not _written_by_click(exc):
            raise
        code, output_ok = 1, False
        _say_output_failed(exc.strerror or str(exc))
    done = False

    def interrupted_late(_signum, _frame) -> None:
        # The command is over: Ctrl-C now would only cut its exit short, in a traceback, or by
        # SIGINT after the teardown (~50 ms with the store's libraries loaded), saying nothing.
        if not done:
            _say_interrupted()
        os._exit(code if done else INTERRUPTED)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored, nor someone else's
        signal.signal(signal.SIGINT, interrupted_late)
    if output_ok:
        try:
            if sys.stdout is not None:
                sys.stdout.flush()  # echo flushes; this is for any other write
        except OSError as exc:
            code, output_ok = code or 1, False
            if exc.errno != errno.EPIPE:  # a reader that has gone is not told about
                _say_output_failed(exc.strerror or str(exc))
    if sys.stderr is not None:
        with contextlib.suppress(OSError):
            sys.stderr.flush()
    done = True
    # Output that could not be written stays buffered, and the interpreter would try it again
    # at exit with a traceback of its own: so that run leaves at once too. So does an interrupted
    # one: a KeyboardInterrupt raised while a library ran Python code through the C API (DuckDB,
    # delta-rs) leaves a flag behind that makes the interpreter end by SIGINT after its teardown,
    # whatever we exit with, and a caller would see either at random.
    if not output_ok or command in _LEAVE_AT_ONCE or code == INTERRUPTED:
        os._exit(code)
    sys.exit(code)


_UNUSED_BY_INDEX = ("numpy", "pandas")


def _without_numpy() -> None:
    """Where pandas is installed (an analyst's machine, the test extra), pyarrow imports NumPy on
    import, and its list conversions then ask pandas about every list, importing it too: 0.2 s of a
    one-archive run here, a fifth of it. The index path converts nothing to or from either, so an
    index process that has loaded neither, nor pyarrow, runs as an install without them does: their
    imports fail as a missing module's would. (None in sys.modules is not enough: pyarrow's own
    import of pandas then returns None rather than raising.)"""
    if not any(name in sys.modules for name in (*_UNUSED_BY_INDEX, "pyarrow")):
        sys.meta_path.insert(0, _Absent())


class _Absent:
    """A finder that fails the imports of NumPy and pandas, as where they are not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _UNUSED_BY_INDEX:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def _utf8_stdout() -> None:
    """Print UTF-8 whatever the locale says: JSON is UTF-8 (RFC 8259), and under a C, ASCII or
    Latin-1 locale a name or URL outside it ended the command in a UnicodeEncodeError."""
    stream = sys.stdout
    if stream is None or not hasattr(stream, "reconfigure"):
        return
    if (stream.encoding or "").lower().replace("-", "").replace("_", "") not in ("utf8", "utf8sig"):
        with contextlib.suppress(OSError, ValueError):
            stream.reconfigure(encoding="utf-8")


def _whole_writes_stdout() -> None:
    """Under PYTHONUNBUFFERED=1 (or `python -u`), as container images often set it, standard output
    writes straight to its file descriptor, and the text layer drops whatever part of a write the
    kernel did not take: a pipe whose reader leaves mid-write (`| head -1`) took the first 64 KiB of
    a long list, and the command exited 0 as if all of it had been printed. Each write is then
    finished here, so the rest meets the closed pipe as a buffered stream's does."""
    stream = sys.stdout
    if not isinstance(stream, io.TextIOWrapper) or not isinstance(stream.buffer, io.FileIO):
        return
    sys.stdout = io.TextIOWrapper(
        _WholeWrites(stream.buffer.fileno()),
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=stream.line_buffering,
        write_through=True,
    )


class _WholeWrites(io.RawIOBase):
    """A file descriptor whose writes return only once all of the data is written, or raise."""

    def __init__(self, fd: int):
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            view = view[os.write(self._fd, view) :]
        return total


class _ClosedOutput(io.TextIOBase):
    """Standard output when the process started without one. click writes nowhere and says
    nothing when it finds none (`--help`, `--version` exited 0 having printed nothing); this
    fails the first write, as `echo` does."""

    encoding, errors = "utf-8", "strict"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:  # click probes a stream with empty writes
            raise _OutputFailed("it is closed")
        return 0


def _written_by_click(exc: OSError) -> bool:
    """Whether `exc` rose from click's own output (`--help`, `--version`), which click writes
    without going through `echo` here: a write that failed, as a full disk, not a bug."""
    echo_code = click.utils.echo.__code__
    frame = exc.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code is echo_code:
            return True
        frame = frame.tb_next
    return False


def _say_output_failed(reason: str) -> None:
    click.echo(f"imgdex: cannot write to standard output: {reason}", err=True)


def _exit_code(value) -> int:
    if value is None or isinstance(value, int):
        return value or 0
    click.echo(value, err=True)  # as Python says sys.exit("text")
    return 1


def _command() -> str:
    """The command named on the command line: the first argument that is not an option."""
    return next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")


if __name__ == "__main__":
    main()
