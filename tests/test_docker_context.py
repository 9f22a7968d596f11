"""Which engine `docker-daemon:` reads when DOCKER_HOST is unset: the docker CLI's current context,
read from the files the CLI writes (the live test has the CLI write them; here they are written
as it writes them, with the damage a hostile or broken config may hold)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from fake_engine import FakeEngine, classic_image
from indexer.errors import SourceError
from indexer.sources import daemon
from indexer.sources.docker_context import current_context
from queries.cli import cli


def _context(config: str, name: str, host: str, *, tls: bool = False, skip_verify: bool = False) -> str:
    key = hashlib.sha256(name.encode()).hexdigest()
    meta = os.path.join(config, "contexts", "meta", key)
    os.makedirs(meta)
    endpoint = {"Host": host, "SkipTLSVerify": skip_verify}
    with open(os.path.join(meta, "meta.json"), "w") as f:
        json.dump({"Name": name, "Metadata": {}, "Endpoints": {"docker": endpoint}}, f)
    folder = os.path.join(config, "contexts", "tls", key, "docker")
    if tls:
        os.makedirs(folder)
        for pem in ("ca.pem", "cert.pem", "key.pem"):
            open(os.path.join(folder, pem), "w").close()
    return folder


def _use(config: str, name: str) -> None:
    with open(os.path.join(config, "config.json"), "w") as f:
        json.dump({"auths": {}, "currentContext": name}, f)


def _env(config: str, **extra: str) -> dict[str, str]:
    return {"DOCKER_CONFIG": config, "HOME": "/nonexistent", **extra}


def test_the_default_context_is_docker_host_or_the_socket(tmp_path):
    config = str(tmp_path)
    assert current_context(_env(config)) is None  # no config.json
    _use(config, "default")
    assert current_context(_env(config)) is None
    _context(config, "desktop", "unix:///home/u/.docker/desktop/docker.sock")
    _use(config, "desktop")
    assert current_context(_env(config, DOCKER_HOST="tcp://h:2375")) is None  # DOCKER_HOST wins, as in the CLI
    assert current_context(_env(config, DOCKER_CONTEXT="default")) is None


def test_the_current_context_gives_its_engine_and_tls_files(tmp_path):
    config = str(tmp_path)
    _context(config, "desktop", "unix:///home/u/.docker/desktop/docker.sock")
    folder = _context(config, "remote", "tcp://build:2376", tls=True)
    _context(config, "lax", "tcp://lax:2376", tls=True, skip_verify=True)
    _use(config, "desktop")
    found = current_context(_env(config))
    assert (found.name, found.host, found.environ) == ("desktop", "unix:///home/u/.docker/desktop/docker.sock", {})
    remote = current_context(_env(config, DOCKER_CONTEXT="remote"))  # DOCKER_CONTEXT over config.json
    assert remote.host == "tcp://build:2376"
    assert remote.environ == {"DOCKER_CERT_PATH": folder, "DOCKER_TLS_VERIFY": "1"}
    lax = current_context(_env(config, DOCKER_CONTEXT="lax"))
    assert "DOCKER_TLS_VERIFY" not in lax.environ and lax.environ["DOCKER_CERT_PATH"].endswith("docker")
    # SkipTLSVerify without files of its own is TLS without verification too, as in the CLI.
    _context(config, "bare", "tcp://bare:2376", skip_verify=True)
    bare = current_context(_env(config, DOCKER_CONTEXT="bare"))
    assert list(bare.environ) == ["DOCKER_CERT_PATH"]
    assert daemon.tls_from_env(bare.environ) == daemon.TlsSettings(verify=False)
    assert current_context(_env(config, DOCKER_CONTEXT="desktop")).environ == {}  # no TLS at all


def test_the_cli_reads_the_engine_of_the_current_context(tmp_path, monkeypatch):
    config = str(tmp_path / "config")
    folder = _context(config, "remote", "tcp://build.example:2376", tls=True)
    _use(config, "remote")
    for key in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", config)
    fake = FakeEngine()
    fake.add(classic_image("app", tags=["t/app:1"]))
    asked = []

    def connect(address, environ=None):
        asked.append((address, environ))
        return fake

    monkeypatch.setattr(daemon, "connect_engine", connect)
    result = CliRunner().invoke(cli, ["index", "docker-daemon:", "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert asked == [("tcp://build.example:2376", {"DOCKER_CERT_PATH": folder, "DOCKER_TLS_VERIFY": "1"})]
    # --docker-host and DOCKER_HOST still come first, with the environment's TLS settings.
    other = str(tmp_path / "s")
    CliRunner().invoke(cli, ["index", "docker-daemon:", "--docker-host", "unix:///x.sock", "--store", other])
    monkeypatch.setenv("DOCKER_HOST", "unix:///y.sock")
    CliRunner().invoke(cli, ["index", "docker-daemon:", "--store", other])
    assert asked[1:] == [("unix:///x.sock", None), ("unix:///y.sock", None)]


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("missing", "docker context 'remote' (named by the currentContext of config.json) does not exist"),
        ("no host", "docker context 'remote' names no engine (Endpoints.docker.Host)"),
        ("not json", "not JSON"),
        ("fifo", "not a regular file (named pipe)"),
        ("huge", "meta.json is over the 1048576-byte limit"),
        ("config fifo", "not a regular file (named pipe)"),
    ],
)
def test_a_context_that_cannot_be_read_is_one_line(tmp_path, monkeypatch, damage, reason):
    config = str(tmp_path / "config")
    os.makedirs(config)
    _use(config, "remote")
    meta = os.path.join(config, "contexts", "meta", hashlib.sha256(b"remote").hexdigest(), "meta.json")
    if damage != "missing":
        _context(config, "remote", "tcp://build:2376")
        if damage == "no host":
            with open(meta, "w") as f:
                json.dump({"Endpoints": {"docker": {"Host": 5}}}, f)
        elif damage == "not json":
            with open(meta, "w") as f:
                f.write("{")
        elif damage == "fifo":
            os.remove(meta)
            os.mkfifo(meta)  # opened, it would wait for a writer for ever
        elif damage == "huge":
            with open(meta, "w") as f:
                f.truncate(2 << 20)
        else:
            os.remove(os.path.join(config, "config.json"))
            os.mkfifo(os.path.join(config, "config.json"))
    with pytest.raises(SourceError) as raised:
        current_context(_env(config))
    assert reason in str(raised.value) and "\n" not in str(raised.value)
    # Through the CLI: one line, exit 1, no traceback.
    for key in ("DOCKER_HOST", "DOCKER_CONTEXT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", config)
    result = CliRunner().invoke(cli, ["index", "docker-daemon:", "--store", str(tmp_path / "store")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [line for line in result.stderr.splitlines() if reason in line]


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@given(config_doc=_JSONISH, meta_doc=_JSONISH)
def test_any_config_and_meta_give_an_engine_none_or_one_error(tmp_path_factory, config_doc, meta_doc):
    config = str(tmp_path_factory.mktemp("config"))
    with open(os.path.join(config, "config.json"), "w") as f:
        json.dump(config_doc, f)
    name = config_doc.get("currentContext") if isinstance(config_doc, dict) else None
    if isinstance(name, str) and name:
        meta = os.path.join(config, "contexts", "meta", hashlib.sha256(name.encode()).hexdigest())
        os.makedirs(meta)
        with open(os.path.join(meta, "meta.json"), "w") as f:
            json.dump(meta_doc, f)
    try:
        found = current_context(_env(config))
    except SourceError as exc:
        assert "\n" not in str(exc)
        return
    assert found is None or (isinstance(found.host, str) and found.host)
