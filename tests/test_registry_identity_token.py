"""Identity tokens (OAuth2 refresh tokens) against fake registries: where they come from, what is
sent where, and that they never reach a message or another host. The real registry and token
server, and skopeo speaking to the same server, are in test_registry.py."""

from __future__ import annotations

import base64
import json
import stat
import threading
import urllib.parse

import pytest

from builders import OCI_MANIFEST
from indexer.sources.registry_auth import Credentials, HostAuth, find_credentials
from registry_server import FakeRegistry, Reply
from test_registry_bad import crawl, image

JSON = {"Content-Type": "application/json"}
IDENTITY = "rt-S3cr3t-identity-0001"


@pytest.fixture
def elsewhere():
    server = FakeRegistry()
    yield server
    server.stop()


def _auth_file(tmp_path, host: str, entry: dict) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {host: entry}}))
    return str(path)


def _placeholder(user: str = "00000000-0000-0000-0000-000000000000") -> str:
    return base64.b64encode(f"{user}:".encode()).decode()


# ---------------------------------------------------------------- where they come from


def test_an_identitytoken_entry_is_read_beside_its_auth(tmp_path):
    path = _auth_file(tmp_path, "reg.example", {"auth": _placeholder(), "identitytoken": IDENTITY})
    found = find_credentials("reg.example", files=[path])
    assert (found.username, found.password, found.identity_token) == (
        "00000000-0000-0000-0000-000000000000",
        "",
        IDENTITY,
    )
    assert not found.basic  # no password: a Basic challenge is not answered with it
    assert IDENTITY not in repr(found)


def test_an_identitytoken_entry_needs_no_auth(tmp_path):
    path = _auth_file(tmp_path, "reg.example", {"identitytoken": IDENTITY})
    found = find_credentials("reg.example", files=[path])
    assert (found.username, found.password, found.identity_token) == ("", "", IDENTITY)


def test_a_password_beside_an_identity_token_still_answers_basic(tmp_path):
    auth = base64.b64encode(b"alice:pw").decode()
    found = find_credentials(
        "reg.example", files=[_auth_file(tmp_path, "reg.example", {"auth": auth, "identitytoken": "x"})]
    )
    assert found.basic and found.password == "pw" and found.identity_token == "x"


@pytest.mark.parametrize("secret, expected", [(IDENTITY, IDENTITY), ("", None)])
def test_a_helper_answering_token_gives_an_identity_token(tmp_path, monkeypatch, secret, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-imgdextest"
    helper.write_text(f"""#!/bin/sh\nread host\necho '{{"Username":"<token>","Secret":"{secret}"}}'\n""")
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credHelpers": {"reg.example": "imgdextest"}}))
    found = find_credentials("reg.example", files=[str(path)])
    if expected is None:
        assert found is None
    else:
        assert (found.username, found.password, found.identity_token) == ("", "", expected)
        assert found.origin == f"{path} (docker-credential-imgdextest)"


# ---------------------------------------------------------------- what is sent where


def _bearer_registry(fake: FakeRegistry, realm: str, repositories=("a/one", "b/two")) -> None:
    manifest, configs, _ = image()
    for name in repositories:
        fake.add_image(name, {"v1": manifest}, configs, OCI_MANIFEST)
    fake.catalog(list(repositories))
    challenge = f'Bearer realm="{realm}",service="reg"'
    refusal = Reply(
        401, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}', {**JSON, "WWW-Authenticate": challenge}
    )
    for path, route in list(fake.routes.items()):

        def guarded(method, headers, route=route):
            if not headers.get("Authorization", "").startswith("Bearer access-"):
                return refusal
            return route(method, headers) if callable(route) else route

        fake.routes[path] = guarded


def _forms(server: FakeRegistry, path: str = "/token") -> list[dict]:
    return [dict(urllib.parse.parse_qsl(body.decode())) for where, body in server.posted if where == path]


def test_the_token_is_asked_by_post_and_a_rotated_one_is_traded_next(fake, tmp_path):
    _bearer_registry(fake, f"http://{fake.host}/token")
    issued = iter(range(1, 100))

    def token(method, headers):
        number = next(issued)
        doc = {"access_token": f"access-{number}", "expires_in": 300, "refresh_token": f"rt-S3cr3t-{number + 1:04d}"}
        return Reply(200, json.dumps(doc).encode(), JSON)

    fake.routes["/token"] = token
    path = _auth_file(tmp_path, fake.host, {"auth": _placeholder(), "identitytoken": IDENTITY})

    records, errors, _ = crawl(f"docker://{fake.host}", jobs=1, auth_files=[path])

    assert not errors and sorted(r.name for r in records) == ["a/one", "b/two"]
    forms = _forms(fake)
    assert [form["scope"] for form in forms] == ["registry:catalog:*", "repository:a/one:pull", "repository:b/two:pull"]
    assert [form["refresh_token"] for form in forms] == [IDENTITY, "rt-S3cr3t-0002", "rt-S3cr3t-0003"]
    for form in forms:
        assert (form["grant_type"], form["client_id"], form["service"]) == ("refresh_token", "imgdex", "reg")
    assert not [path for method, path in fake.log if method == "GET" and path.startswith("/token")]


def test_a_refusal_that_echoes_the_refresh_token_is_shown_without_it(fake, tmp_path):
    _bearer_registry(fake, f"http://{fake.host}/token", repositories=("a/one",))

    def refuse(method, headers):
        form = dict(urllib.parse.parse_qsl(fake.posted[-1][1].decode()))
        doc = {"error": "invalid_grant", "error_description": f"refresh token {form['refresh_token']} expired"}
        return Reply(400, json.dumps(doc).encode(), JSON)

    fake.routes["/token"] = refuse
    path = _auth_file(tmp_path, fake.host, {"identitytoken": IDENTITY})

    records, errors, _ = crawl(f"docker://{fake.host}/a/one", auth_files=[path])

    assert not records and len(errors) == 1, errors
    assert f"refused the identity token of {path} ({fake.host}) (invalid_grant: refresh token *** expired)" in errors[0]
    assert IDENTITY not in errors[0] and "S3cr3t" not in errors[0]


def test_the_token_form_is_never_sent_to_a_host_the_realm_redirects_to(fake, elsewhere, tmp_path):
    _bearer_registry(fake, f"http://{fake.host}/token", repositories=("a/one",))
    fake.routes["/token"] = Reply(307, b"", {"Location": f"http://{elsewhere.host}/token"})
    elsewhere.routes["/token"] = Reply(200, b'{"access_token": "access-1"}', JSON)
    path = _auth_file(tmp_path, fake.host, {"identitytoken": IDENTITY})

    records, errors, _ = crawl(f"docker://{fake.host}/a/one", auth_files=[path])

    assert not records and len(errors) == 1, errors
    assert f"refusing to send the request's form to {elsewhere.host}, where it was redirected" in errors[0]
    assert not elsewhere.posted and not elsewhere.log
    assert IDENTITY not in errors[0]


def test_a_see_other_answer_to_the_token_form_is_followed_by_a_get_without_it(fake, tmp_path):
    _bearer_registry(fake, f"http://{fake.host}/token", repositories=("a/one",))
    fake.routes["/token"] = Reply(303, b"", {"Location": "/issued"})
    fake.routes["/issued"] = Reply(200, b'{"access_token": "access-1", "expires_in": 300}', JSON)
    path = _auth_file(tmp_path, fake.host, {"identitytoken": IDENTITY})

    records, errors, _ = crawl(f"docker://{fake.host}/a/one", auth_files=[path])

    assert not errors and [r.name for r in records] == ["a/one"]
    assert [where for where, _ in fake.posted] == ["/token"]
    assert ("GET", "/issued") in fake.log


# ---------------------------------------------------------------- parallel requests and rotation


def test_a_refusal_waits_for_the_trade_under_way_and_takes_its_new_token():
    auth = HostAuth("reg", Credentials("", "", "cfg", IDENTITY))
    first = auth.begin_trade()
    second = auth.begin_trade()  # both sent the same token; the server rotated it on the first
    answered = threading.Timer(0.2, auth.end_trade, (first, "rt-new"))
    answered.start()
    auth.end_trade(second)  # refused: the first request's answer is still on its way
    assert auth.refused_for_good(second, timeout=10) is False  # so it is tried again with the new one
    assert auth.refresh_token == "rt-new"
    assert {"rt-new", IDENTITY} <= set(auth.secrets())
    answered.join()


def test_a_refusal_with_no_trade_under_way_is_final():
    auth = HostAuth("reg", Credentials("", "", "cfg", IDENTITY))
    used = auth.begin_trade()
    auth.end_trade(used)
    assert auth.refused_for_good(used, timeout=10) is True
    assert auth.basic_header() == {}  # and no empty Basic password goes to the registry


def test_the_refresh_tokens_kept_as_secrets_stay_few_however_often_they_rotate():
    auth = HostAuth("reg", Credentials("", "", "cfg", IDENTITY))
    for number in range(1, 10_001):
        used = auth.begin_trade()
        auth.end_trade(used, f"rt-{number}")
    secrets = auth.secrets()
    assert auth.refresh_token == "rt-10000" and {IDENTITY, "rt-10000", "rt-9999"} <= set(secrets)
    assert len(secrets) <= 20
