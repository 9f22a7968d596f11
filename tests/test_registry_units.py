"""The registry source's small parts: names, challenges, credential files, Retry-After."""

import base64
import json
import os
import stat

import pytest

from indexer.errors import SourceError
from indexer.sources.registry import Target, parse_target, under_prefix
from indexer.errors import AuthError
from indexer.sources.registry_auth import find_credentials, parse_challenges, parse_token_response
from indexer.sources.registry_client import _retry_after


@pytest.mark.parametrize(
    "text, target",
    [
        ("127.0.0.1:5000", Target("127.0.0.1:5000", "127.0.0.1:5000")),
        ("registry.example.com", Target("registry.example.com", "registry.example.com")),
        ("myregistry:5000/", Target("myregistry:5000", "myregistry:5000")),
        ("localhost:5000/team/app", Target("localhost:5000", "localhost:5000", "team/app")),
        ("cr.yandex/crp1/app:v1", Target("cr.yandex", "cr.yandex", "crp1/app", "v1")),
        ("reg.example/a/b@sha256:" + "a" * 64, Target("reg.example", "reg.example", "a/b", "", "sha256:" + "a" * 64)),
        ("ubuntu:22", Target("docker.io", "registry-1.docker.io", "library/ubuntu", "22")),
        ("docker.io", Target("docker.io", "registry-1.docker.io")),
    ],
)
def test_parse_target(text, target):
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["", "Reg.example/UPPER/case", "host:5000/a:b:c"])
def test_parse_target_rejects(text):
    with pytest.raises(SourceError):
        parse_target(text)


def test_under_prefix_is_by_path_component():
    assert under_prefix("team/app", "team") and under_prefix("team", "team") and under_prefix("team/app", "team/")
    assert not under_prefix("teams/app", "team") and under_prefix("x", "")


def test_parse_challenges():
    [bearer] = parse_challenges(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push",error="insufficient_scope"'
    )
    assert bearer.scheme == "bearer" and bearer.realm == "https://auth.example/token"
    assert bearer.params["scope"] == "repository:a/b:pull,push" and bearer.params["error"] == "insufficient_scope"
    basic, other = parse_challenges('Basic realm="a \\"quoted\\" realm", Bearer realm="https://t/x"')
    assert basic.scheme == "basic" and basic.params["realm"] == 'a "quoted" realm' and other.realm == "https://t/x"
    assert parse_challenges("") == []


def test_token_response():
    assert parse_token_response(b'{"token": "t", "expires_in": 300}', "r") == ("t", 300.0)
    assert parse_token_response(b'{"access_token": "a"}', "r") == ("a", 60.0)
    with pytest.raises(AuthError):
        parse_token_response(b"{}", "r")


def write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return str(path)


def auth(user, password):
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_docker_config_auths(tmp_path):
    path = write(
        tmp_path / "config.json",
        {
            "auths": {
                "https://reg.example:5000/v1/": {"auth": auth("u", "p:with:colons")},
                "reg.example:5000/team": {"auth": auth("team", "t")},
                "https://index.docker.io/v1/": {"auth": auth("hub", "h")},
                "other.example": {"username": "plain", "password": "pw"},
            }
        },
    )
    found = find_credentials("reg.example:5000", "", [path])
    assert (found.username, found.password) == ("u", "p:with:colons")
    assert find_credentials("reg.example:5000", "team/app", [path]).username == "team"  # the most specific key
    assert find_credentials("docker.io", "library/redis", [path]).username == "hub"
    assert find_credentials("other.example", "", [path]).password == "pw"
    assert find_credentials("nowhere.example", "", [path]) is None
    assert "p:with" not in repr(found)


def test_first_file_with_an_entry_wins_and_missing_files_are_skipped(tmp_path):
    first = write(tmp_path / "auth.json", {"auths": {"reg.example": {"auth": auth("podman", "x")}}})
    second = write(tmp_path / "config.json", {"auths": {"reg.example": {"auth": auth("docker", "y")}}})
    assert find_credentials("reg.example", "", [str(tmp_path / "missing.json"), first, second]).username == "podman"


def test_bad_auth_value_is_an_error(tmp_path):
    path = write(tmp_path / "config.json", {"auths": {"reg.example": {"auth": base64.b64encode(b"no-colon").decode()}}})
    with pytest.raises(AuthError, match="base64 of user:password"):
        find_credentials("reg.example", "", [path])


def test_credential_helper(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-imgdextest"
    helper.write_text(
        "#!/bin/sh\nread host\n"
        'if [ "$host" = "helped.example" ]; then '
        'echo \'{"ServerURL":"helped.example","Username":"hu","Secret":"hs"}\'; '
        'else echo "credentials not found in native keychain"; exit 1; fi\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = write(
        tmp_path / "config.json",
        {"credHelpers": {"helped.example": "imgdextest"}, "credsStore": "imgdextest", "auths": {}},
    )
    found = find_credentials("helped.example", "", [path])
    assert (found.username, found.password) == ("hu", "hs")
    assert find_credentials("unknown.example", "", [path]) is None


def test_retry_after_forms():
    assert _retry_after({"Retry-After": "3"}) == 3.0
    assert _retry_after({}) is None
    assert _retry_after({"Retry-After": "soon"}) is None
    assert 0 <= _retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) < 1


@pytest.mark.parametrize("key", ["index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/", "docker.io"])
def test_every_docker_hub_alias_is_a_key_for_docker_hub(tmp_path, key):
    path = write(tmp_path / "config.json", {"auths": {key: {"auth": auth("hub", "h")}}})
    assert find_credentials("docker.io", "library/redis", [path]).username == "hub"


@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_a_docker_hub_alias_is_docker_hub(host):
    assert parse_target(host) == Target("docker.io", "registry-1.docker.io")
    assert parse_target(f"{host}/team/app") == Target("docker.io", "registry-1.docker.io", "team/app")
