"""`ssh://` engine addresses: what reaches ssh's command line, and the connection through a stand-in
`ssh` that bridges to a stub engine (the real ssh, sshd and docker CLI are in test_daemon_live.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from indexer.errors import EngineUnavailable
from indexer.sources.daemon import EngineApiClient, endpoint_of
from indexer.sources.ssh_dial import SshTarget, helper_command, parse_ssh
from test_daemon_hostile import _Answers, _answers

# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "rest, target",
    [
        ("build-host", SshTarget("build-host")),
        ("me@build-host", SshTarget("build-host", user="me")),
        ("me@10.0.0.7:2222", SshTarget("10.0.0.7", user="me", port=2222)),
        (
            "me@[::1]:22/run/user/1000/docker.sock",
            SshTarget("::1", user="me", port=22, socket_path="/run/user/1000/docker.sock"),
        ),
        ("build-host/", SshTarget("build-host")),
    ],
)
def test_an_ssh_address_is_read_as_the_docker_cli_reads_it(rest, target):
    assert parse_ssh(rest) == target
    assert endpoint_of("ssh://" + rest).ssh == target


@pytest.mark.parametrize(
    "rest, reason",
    [
        ("me:s3cret@build-host", "an ssh:// address takes no password: ssh logs in with your keys or agent"),
        ("-oProxyCommand=touch%20x", "not an ssh address"),  # a host ssh would take for an option
        ("me;id@build-host", "not an ssh address"),
        ("build-host/run/docker.sock;reboot", "not an ssh address"),  # the remote shell reads the path
        ("build-host/run/$(id).sock", "not an ssh address"),
        ("build-host?x=1", "not an ssh address"),
        ("build-host:99999", "not an ssh address"),
        ("", "not an ssh address"),
    ],
)
def test_what_ssh_would_not_take_as_plain_words_is_refused(rest, reason):
    with pytest.raises(ValueError) as caught:
        parse_ssh(rest)
    assert str(caught.value).startswith(reason)
    assert "s3cret" not in str(caught.value)


def test_the_command_is_the_docker_cli_s_in_batch_mode():
    target = SshTarget("build-host", user="me", port=2222, socket_path="/run/docker.sock")
    assert helper_command(target, 10.0) == [
        *("ssh", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "-T", "-l", "me", "-p", "2222", "--"),
        *("build-host", "docker", "--host", "unix:///run/docker.sock", "system", "dial-stdio"),
    ]
    assert helper_command(SshTarget("h"), 0.2) == [
        *("ssh", "-o", "ConnectTimeout=1", "-o", "BatchMode=yes", "-T", "--", "h", "docker", "system", "dial-stdio")
    ]


_PLAIN_WORD = re.compile(r"[A-Za-z0-9_.:%/@+=-]+")


@given(st.text(max_size=60))
def test_any_address_reaches_ssh_as_plain_words_or_not_at_all(rest):
    try:
        target = parse_ssh(rest)
    except ValueError:
        return
    command = helper_command(target, 10.0)
    after = command[command.index("--") + 1 :]
    assert not after[0].startswith("-")  # the host
    assert all(_PLAIN_WORD.fullmatch(word) for word in command), command


# ---------------------------------------------------------------- through a stand-in ssh

# Bridges its standard input and output to the stub engine's socket, as `docker system dial-stdio`
# does on the far machine, after writing down how it was called.
_BRIDGE = """\
import json, os, socket, sys, threading
with open(os.environ["SSH_CALLS"], "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
engine = socket.socket(socket.AF_UNIX)
engine.connect(os.environ["SSH_ENGINE"])
def up():
    while data := os.read(0, 65536):
        engine.sendall(data)
    engine.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := engine.recv(65536):
    os.write(1, data)
"""


def _stand_in(tmp_path, monkeypatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    ssh = bin_dir / "ssh"
    ssh.write_text(script)
    ssh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _helpers_left(tmp_path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", str(tmp_path / "bin" / "ssh")], capture_output=True, text=True)
    return found.stdout.split()


def test_the_engine_api_is_spoken_through_ssh_one_process_per_connection(tmp_path, monkeypatch):
    bridge = tmp_path / "bridge.py"
    bridge.write_text(_BRIDGE)
    _stand_in(tmp_path, monkeypatch, f'#!/bin/sh\nexec {sys.executable} {bridge} "$@"\n')
    monkeypatch.setenv("SSH_CALLS", str(tmp_path / "calls"))
    with _Answers(_answers()) as engine:
        monkeypatch.setenv("SSH_ENGINE", engine.address.removeprefix("unix://"))
        client = EngineApiClient("ssh://me@build-host:2222")
        assert client.api_version == "1.49"
        listed = client.list_images()
        assert len(listed) == 2
        for image in listed:
            assert client.inspect_image(image["Id"])["Id"] == image["Id"]
        client.close()
    calls = [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]
    assert calls and all(call == calls[0] for call in calls)
    assert calls[0] == helper_command(SshTarget("build-host", user="me", port=2222), 10.0)[1:]
    time.sleep(0.2)
    assert not _helpers_left(tmp_path)


@pytest.mark.parametrize(
    "script, words",
    [
        # ssh's own refusal, as it prints it, exit 255
        (
            "echo 'ssh: connect to host build-host port 22: Connection refused' >&2; exit 255",
            "ssh: connect to host build-host port 22: Connection refused",
        ),
        # the far side's docker, through ssh: its last line, marked as coming over ssh
        (
            "echo 'Warning: Permanently added build-host' >&2; echo 'docker: command not found' >&2; exit 127",
            "over ssh: docker: command not found",
        ),
        # a flood of words: the last line, cut to one short line
        ("{ yes noise | head -c 200000; echo; } >&2; printf 'x%.0s' $(seq 500) >&2; exit 1", "over ssh: " + "x" * 290),
        # nothing said at all
        ("exit 3", "ssh ended with status 3"),
    ],
)
def test_an_ssh_that_fails_is_one_line_in_its_own_words(tmp_path, monkeypatch, script, words):
    _stand_in(tmp_path, monkeypatch, f"#!/bin/sh\n{script}\n")
    with pytest.raises(EngineUnavailable) as caught:
        EngineApiClient("ssh://me@build-host")
    message = str(caught.value)
    assert message.startswith(f"cannot reach the Docker engine at ssh://me@build-host: {words}")
    assert len(message.splitlines()) == 1 and len(message) < 400
    assert not _helpers_left(tmp_path)


def test_an_ssh_that_never_answers_is_stopped_at_the_deadline(tmp_path, monkeypatch):
    _stand_in(tmp_path, monkeypatch, "#!/bin/sh\nexec sleep 60\n")
    started = time.monotonic()
    with pytest.raises(EngineUnavailable) as caught:
        EngineApiClient("ssh://build-host", connect_timeout=1.0)
    assert time.monotonic() - started < 10
    assert str(caught.value) == "cannot reach the Docker engine at ssh://build-host: no answer in 1 s"
    time.sleep(0.2)
    assert not _helpers_left(tmp_path)


def test_without_an_ssh_program_the_address_is_one_line_saying_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without ssh in it
    with pytest.raises(EngineUnavailable) as caught:
        EngineApiClient("ssh://build-host")
    assert str(caught.value) == (
        "cannot reach the Docker engine at ssh://build-host: no ssh program on PATH "
        "(ssh:// engines are reached through OpenSSH's client)"
    )
