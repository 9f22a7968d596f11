"""The Docker engine of another machine over ssh, reached as the docker CLI reaches `ssh://` hosts:
`ssh` runs `docker system dial-stdio` there, and the engine's API is spoken through that
process's standard input and output, one socket pair (and one ssh process) per connection.

ssh itself does the logging in, with the user's keys, agent and `~/.ssh/config`; nothing here
holds a secret. It runs without a terminal (`BatchMode`), so a password or passphrase prompt that
nobody would answer fails at once instead of holding the run.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..references import SSH_LOGIN

# ssh's own words on a failure end its standard error; a helper that prints without end keeps
# only this much of it.
_KEPT_WORDS = 4096
_SHOWN_WORDS = 300
# What goes on ssh's command line: the host after `--`, so no host is taken for an option, and
# the rest as plain words, since the remote command line is read by the remote user's shell.
_HOST = re.compile(r"[A-Za-z0-9_.:%-]+")
_SOCKET_PATH = re.compile(r"/[A-Za-z0-9_./@+-]*")

# Said without "//": a message's URLs lose what precedes an '@'.
SSH_FORM = "after ssh: comes [USER@]HOST[:PORT][/SOCKET]"


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str = ""
    port: int = 0
    socket_path: str = ""  # the engine's socket on that machine, when not its default


def parse_ssh(rest: str) -> SshTarget:
    """What follows `ssh://`; ValueError, with a short reason, for what the docker CLI refuses
    (a password) and for what would not reach ssh as plain words."""
    try:
        parts = urlsplit("//" + rest)
        port = parts.port
    except ValueError:
        raise ValueError(f"not an ssh address: {SSH_FORM}") from None
    if parts.password is not None:
        raise ValueError("an ssh:// address takes no password: ssh logs in with your keys or agent")
    host = parts.hostname or ""
    user = parts.username or ""
    path = parts.path if parts.path != "/" else ""
    if (
        parts.query
        or parts.fragment
        or not _HOST.fullmatch(host)
        or host.startswith("-")
        or (user and not SSH_LOGIN.fullmatch(user))
        or (path and not _SOCKET_PATH.fullmatch(path))
    ):
        raise ValueError(f"not an ssh address: {SSH_FORM}, of letters, digits and . _ -")
    return SshTarget(host=host, user=user, port=port or 0, socket_path=path)


def helper_command(target: SshTarget, connect_seconds: float) -> list[str]:
    """The ssh command line the docker CLI runs for `target`, in batch mode."""
    args = ["ssh", "-o", f"ConnectTimeout={max(1, round(connect_seconds))}", "-o", "BatchMode=yes", "-T"]
    if target.user:
        args += ["-l", target.user]
    if target.port:
        args += ["-p", str(target.port)]
    args += ["--", target.host, "docker"]
    if target.socket_path:
        args += ["--host", f"unix://{target.socket_path}"]
    return args + ["system", "dial-stdio"]


class DialHelper:
    """The ssh process behind one connection, with the tail of what it said on standard error."""

    def __init__(self, command: list[str]):
        ours, theirs = socket.socketpair()
        try:
            # A session of its own: no terminal to prompt on, and no signal of the terminal's.
            self._process = subprocess.Popen(
                command,
                stdin=theirs,
                stdout=theirs,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            ours.close()
            raise OSError(
                f"no {command[0]} program on PATH (ssh:// engines are reached through OpenSSH's client)"
            ) from None
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.socket = ours
        self._said = bytearray()
        self._reader = threading.Thread(target=self._keep_words, name="docker-daemon-ssh", daemon=True)
        self._reader.start()

    def _keep_words(self) -> None:
        stream = self._process.stderr
        while chunk := stream.read1(65536):
            self._said += chunk
            del self._said[:-_KEPT_WORDS]

    def failure(self, wait: float) -> str:
        """ssh's last line when it has ended in failure, waited for at most `wait` seconds; "" while
        it runs or when it ended well (the engine closed the connection)."""
        try:
            status = self._process.wait(max(wait, 0.0))
        except subprocess.TimeoutExpired:
            return ""
        if status == 0:
            return ""
        self._reader.join(max(wait, 0.1))
        lines = [line.strip() for line in bytes(self._said).decode("utf-8", "replace").splitlines()]
        last = next((line for line in reversed(lines) if line), "")
        last = "".join(ch if ch.isprintable() else " " for ch in last)[:_SHOWN_WORDS]
        if not last:
            return f"ssh ended with status {status}"
        return last if last.startswith("ssh:") else f"over ssh: {last}"

    def stop(self, grace: float = 0.2) -> str:
        """End the process once its socket is closed here; what `failure` says of how it ended.

        ssh ends by itself when its input ends, at once when it was failing anyway (http.client
        closes a connection as soon as an answer fails, before the words are asked for), so it is
        given `grace` before it is stopped; one stopped here has said nothing of its own."""
        self.socket.close()  # nothing once the connection has taken its descriptor over
        process = self._process
        words = self.failure(grace)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._reader.join(1.0)
        process.stderr.close()
        return words
