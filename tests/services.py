"""A real Docker engine and a real registry, started privately for the tests and the benchmark.

Both run from a short folder under /tmp (dockerd's unix sockets must stay under ~100
characters), as tests/fixtures/make_fixtures.sh runs them: Debian's `dockerd` with the vfs
driver and no networking, and `docker-registry serve` on 127.0.0.1 from a config file.
Nothing outside that folder is touched, and teardown removes it.

When they cannot start, tests skip, unless the CI variable is set: then they fail, so CI
never passes by skipping the proof.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import pytest

DOCKERD = os.environ.get("DOCKERD", "dockerd")
REGISTRY_BIN = os.environ.get("REGISTRY_BIN", "docker-registry")
# The 20.10 client matches Debian's engine; a newer client also works.
DOCKER = os.environ.get("DOCKER") or ("/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker")
START_SECONDS = 60


class Unavailable(Exception):
    """A service could not be started here."""


def unavailable_or_fail(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"real services required in CI: {reason}")
    pytest.skip(reason)


def missing_tools(*tools: str) -> str:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return "missing tools: " + ", ".join(missing)
    if os.geteuid() != 0:
        return "the services (dockerd, docker-registry, sshd) are started as root"
    return ""


def _stop(process: subprocess.Popen | None, grace: float = 30.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _unmount_under(folder: str) -> None:
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
    except OSError:
        return
    for point in sorted((p for p in points if p.startswith(folder + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def free_port() -> int:
    with socket.socket() as sock:
        # The registry binds with SO_REUSEADDR; probe the same way.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Engine:
    """A private dockerd. `host` is its DOCKER_HOST URL."""

    folder: str
    process: subprocess.Popen | None = None
    log_path: str = ""
    env: dict = field(default_factory=dict)

    @property
    def socket_path(self) -> str:
        return os.path.join(self.folder, "docker.sock")

    @property
    def host(self) -> str:
        return "unix://" + self.socket_path

    def docker(self, *args: str, input: bytes | None = None, buildkit: bool = False, timeout: float = 300) -> str:
        """Run the docker client against this engine; its stdout, or AssertionError with its stderr."""
        env = dict(self.env)
        env["DOCKER_BUILDKIT"] = "1" if buildkit else "0"
        result = subprocess.run([DOCKER, *args], env=env, input=input, capture_output=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.decode(errors='replace')[-2000:]}")
        return result.stdout.decode()

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        children = _children(self.process.pid) if self.process is not None else []
        _stop(self.process)
        for pid in children:  # dockerd's own containerd outlives it briefly
            for _ in range(40):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.25)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        _unmount_under(self.folder)


def start_engine(folder: str) -> Engine:
    """Start dockerd with its state in `folder`; Unavailable when it does not come up."""
    reason = missing_tools(DOCKERD, DOCKER)
    if reason:
        raise Unavailable(reason)
    for sub in ("root", "exec", "cli", "tmp"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    engine = Engine(folder, log_path=os.path.join(folder, "dockerd.log"))
    engine.env = dict(
        os.environ,
        DOCKER_HOST=engine.host,
        DOCKER_CONFIG=os.path.join(folder, "cli"),  # keep client state out of ~/.docker
        TMPDIR=os.path.join(folder, "tmp"),
    )
    engine.env.pop("DOCKER_CONTEXT", None)
    with open(engine.log_path, "wb") as log:
        engine.process = subprocess.Popen(
            [
                DOCKERD,
                "--host",
                engine.host,
                "--data-root",
                os.path.join(folder, "root"),
                "--exec-root",
                os.path.join(folder, "exec"),
                "--pidfile",
                os.path.join(folder, "docker.pid"),
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=engine.env,
        )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if engine.process.poll() is not None:
            tail = engine.log_tail()
            engine.stop()
            raise Unavailable(f"dockerd exited during start-up: {tail.strip()[-500:]}")
        if os.path.exists(engine.socket_path):
            probe = subprocess.run(
                [DOCKER, "version", "-f", "{{.Server.Version}}"], env=engine.env, capture_output=True, timeout=30
            )
            if probe.returncode == 0:
                return engine
        time.sleep(0.3)
    tail = engine.log_tail()
    engine.stop()
    raise Unavailable(f"dockerd did not come up in {START_SECONDS} s: {tail.strip()[-500:]}")


def _serve(command: list[str], log_path: str, name: str, address: str, ready) -> subprocess.Popen:
    """`command` started with its output in `log_path`, once `ready()`; Unavailable, with the log's
    end, when it exits first or is not ready within START_SECONDS (then it is stopped)."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path, errors="replace") as f:
                raise Unavailable(f"{name} exited: {f.read()[-500:]}")
        if ready():
            return process
        time.sleep(0.1)
    _stop(process, grace=10)
    raise Unavailable(f"{name} did not come up on {address}")


@dataclass
class Registry:
    """A private docker-registry (distribution 2.8) on 127.0.0.1; `address` is HOST:PORT."""

    folder: str
    address: str = ""
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def stop(self) -> None:
        _stop(self.process, grace=10)


def start_registry(folder: str) -> Registry:
    import requests

    reason = missing_tools(REGISTRY_BIN)
    if reason:
        raise Unavailable(reason)
    os.makedirs(folder, exist_ok=True)
    registry = Registry(folder, address=f"127.0.0.1:{free_port()}")
    config = os.path.join(folder, "registry.yml")
    with open(config, "w") as f:
        f.write(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {folder}/data\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {registry.address}\n  secret: imgdex-tests-not-a-secret\n"
        )
    log_path = os.path.join(folder, "registry.log")
    session = requests.Session()
    session.trust_env = False  # loopback only, whatever proxy the environment names

    def ready() -> bool:
        try:
            return session.get(f"{registry.url}/v2/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    registry.process = _serve([REGISTRY_BIN, "serve", config], log_path, "docker-registry", registry.address, ready)
    return registry


SSHD = os.environ.get("SSHD", "/usr/sbin/sshd")


@dataclass
class Sshd:
    """A private OpenSSH server on 127.0.0.1 that lets root in with one key, its sessions' DOCKER_HOST
    set to a test engine; `bin` holds an `ssh` that runs the real client with this server's key and
    config (OpenSSH reads ~/.ssh of the passwd entry, not $HOME, so the tests cannot point it there)."""

    folder: str
    port: int = 0
    bin: str = ""
    process: subprocess.Popen | None = None

    def stop(self) -> None:
        _stop(self.process, grace=10)


def start_sshd(folder: str, docker_host: str) -> Sshd:
    reason = missing_tools("ssh", "ssh-keygen", SSHD)
    if reason:
        raise Unavailable(reason)
    os.makedirs(folder, exist_ok=True)
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation folder on Debian
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imgdex-test", "-f", os.path.join(folder, name)],
            check=True,
            capture_output=True,
        )
    shutil.copy(os.path.join(folder, "client_key.pub"), os.path.join(folder, "authorized_keys"))
    server = Sshd(folder, port=free_port(), bin=os.path.join(folder, "bin"))
    config = os.path.join(folder, "sshd_config")
    with open(config, "w") as f:
        f.write(
            f"Port {server.port}\nListenAddress 127.0.0.1\nHostKey {folder}/host_key\nPidFile {folder}/sshd.pid\n"
            f"AuthorizedKeysFile {folder}/authorized_keys\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAllowUsers root\n"
            f"SetEnv DOCKER_HOST={docker_host}\n"
        )
    with open(os.path.join(folder, "ssh_config"), "w") as f:
        f.write(
            f"Host *\n  IdentityFile {folder}/client_key\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        )
    os.makedirs(server.bin, exist_ok=True)
    wrapper = os.path.join(server.bin, "ssh")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {folder}/ssh_config "$@"\n')
    os.chmod(wrapper, 0o755)
    log_path = os.path.join(folder, "sshd.log")

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1) as probe:
                return probe.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    server.process = _serve([SSHD, "-D", "-e", "-f", config], log_path, "sshd", f"127.0.0.1:{server.port}", ready)
    return server


def short_folder(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def remove_folder(folder: str) -> None:
    _unmount_under(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def services_folder():
    folder = short_folder("imgdex-svc.")
    yield folder
    remove_folder(folder)


@pytest.fixture(scope="session")
def engine(services_folder):
    """A running private dockerd, stopped at the end of the session."""
    try:
        running = start_engine(os.path.join(services_folder, "engine"))
    except (Unavailable, OSError, subprocess.SubprocessError) as exc:
        unavailable_or_fail(f"cannot start dockerd: {exc}")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def registry(services_folder):
    """A running private docker-registry on 127.0.0.1, stopped at the end of the session."""
    try:
        running = start_registry(os.path.join(services_folder, "registry"))
    except (Unavailable, OSError, subprocess.SubprocessError) as exc:
        unavailable_or_fail(f"cannot start docker-registry: {exc}")
    yield running
    running.stop()
