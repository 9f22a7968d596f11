import base64
import hashlib

import pytest
from hypothesis import given, strategies as st

from indexer.errors import ReferenceError_
from indexer.references import (
    DIGEST_ALGORITHMS,
    ID_RE,
    Reference,
    blob_id,
    image_id,
    is_bare_tag,
    is_docker_hub,
    is_registry_host,
    is_valid_digest,
    is_valid_host,
    is_valid_name,
    is_valid_repository,
    is_valid_tag,
    parse_reference,
    redact_url_secrets,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cr.yandex/crp123/app:1", Reference("cr.yandex", "crp123/app", "1")),
        ("127.0.0.1:5000/team/app/web:v1", Reference("127.0.0.1:5000", "team/app/web", "v1")),
        ("ubuntu:22.04", Reference("docker.io", "library/ubuntu", "22.04")),
        ("ubuntu", Reference("docker.io", "library/ubuntu")),
        ("index.docker.io/library/alpine", Reference("docker.io", "library/alpine")),
        ("docker.io/alpine:3", Reference("docker.io", "library/alpine", "3")),
        ("team/app", Reference("docker.io", "team/app")),
        ("localhost/app:x", Reference("localhost", "app", "x")),
        ("localhost:5000/app@sha256:" + "a" * 64, Reference("localhost:5000", "app", "", "sha256:" + "a" * 64)),
        ("Host/app", Reference("Host", "app")),
    ],
)
def test_parse_reference_normalises_like_docker(text, expected):
    assert parse_reference(text) == expected


@pytest.mark.parametrize("text", ["", "app/UPPER", "app:", "app@sha256:zz", "a//b", ":tag", "app:-bad"])
def test_parse_reference_rejects_invalid(text):
    with pytest.raises(ReferenceError_):
        parse_reference(text)


@given(st.text(max_size=80))
def test_parse_reference_never_raises_anything_else(text):
    try:
        ref = parse_reference(text)
    except ReferenceError_:
        return
    assert ref.name and ref.registry


def test_image_id_formula():
    key = "sha256:" + "b" * 64
    raw = hashlib.sha256(f"cr.yandex/crp123/app@{key}".encode()).digest()
    expected = "crp" + base64.b32hexencode(raw).decode().lower().rstrip("=")[:17]
    got = image_id("cr.yandex", "crp123/app", key)
    assert got == expected
    assert len(got) == 20 and set(got[3:]) <= set("0123456789abcdefghijklmnopqrstuv")
    assert image_id("cr.yandex", "crp123/other", key) != got


def test_blob_id_uses_digest_alone():
    digest = "sha256:" + "c" * 64
    raw = hashlib.sha256(digest.encode()).digest()
    assert blob_id(digest) == "crp" + base64.b32hexencode(raw).decode().lower()[:17]


@pytest.mark.parametrize(
    "text, bare",
    [("v1", True), ("1.0", True), ("latest", True), ("team/app:v1", False), ("app:1", False), ("a@sha256:x", False)],
)
def test_is_bare_tag(text, bare):
    assert is_bare_tag(text) is bare


@given(st.text(max_size=200))
def test_short_hash_equals_the_rfc4648_base32hex_definition(text):
    from indexer.identifiers import _short_hash

    reference = base64.b32hexencode(hashlib.sha256(text.encode()).digest()).decode().lower().rstrip("=")[:17]
    assert _short_hash(text) == reference


@pytest.mark.parametrize(
    "text",
    [
        "reg.example/app:v1\n",
        "reg.example/app:тег",
        "reg.example/app:" + "a" * 129,
        "reg.example/App:1",
        "reg.example/team/../app:1",
        "reg.example/app\n",
        "reg.example/app@sha256:" + "a" * 64 + "\n",
        "reg.example\n/app",
        "reg.example/" + "a" * 244,
        "a" * 246,
        "ａpp",
        "app:v١",
        "app@",  # docker's grammar has no empty digest; it was read as `app`
        "reg.example/app:1@",
    ],
)
def test_parse_reference_rejects_what_docker_rejects(text):
    with pytest.raises(ReferenceError_):
        parse_reference(text)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("reg_example:5000/app", "invalid registry host"),
        ("reg_example:5000/App", "invalid registry host"),
        ("reg.example/App", "invalid repository name"),
        ("reg.example/" + "a" * 244, "invalid repository name"),
        ("app..x", "invalid repository name"),
        ("library/app..x", "invalid repository name"),
    ],
)
def test_parse_reference_says_which_part_is_wrong(text, reason):
    # Asked twice: the second answer comes from the names already matched.
    for _ in range(2):
        with pytest.raises(ReferenceError_, match=reason):
            parse_reference(text)


def test_name_length_counts_the_normalised_name():
    assert parse_reference("reg.example/" + "a" * 243).name == "a" * 243  # 255 with the host
    assert parse_reference("a" * 237).name == "library/" + "a" * 237  # docker.io/library/... is 255
    with pytest.raises(ReferenceError_):
        parse_reference("a" * 238)


@pytest.mark.parametrize(
    "tag, valid",
    [
        ("v1", True),
        ("_x", True),
        ("1.0-rc_2", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("v1\n", False),
        ("тег", False),
        ("-x", False),
        (".x", False),
        ("", False),
        ("a:b", False),
        ("a/b", False),
        (None, False),
        (1, False),
    ],
)
def test_is_valid_tag(tag, valid):
    assert is_valid_tag(tag) is valid


@pytest.mark.parametrize(
    "path, valid",
    [
        ("library/ubuntu", True),
        ("crp1/team/app", True),
        ("a__b", True),
        ("a--b", True),
        ("a.b_c", True),
        ("a" * 255, True),
        ("a" * 256, False),
        ("App", False),
        ("team/../app", False),
        ("a//b", False),
        ("a___b", False),
        ("app\n", False),
        ("/app", False),
        ("app/", False),
        ("тест", False),
        ("", False),
        (None, False),
    ],
)
def test_is_valid_repository(path, valid):
    assert is_valid_repository(path) is valid


@pytest.mark.parametrize(
    "host, valid",
    [
        ("reg.example", True),
        ("127.0.0.1:5000", True),
        ("localhost", True),
        ("[::1]:5000", True),
        ("Reg-1.Example", True),
        ("reg.example\n", False),
        ("-bad.example", False),
        ("host:port", False),
        ("hést", False),
        ("", False),
        (None, False),
    ],
)
def test_is_valid_host(host, valid):
    assert is_valid_host(host) is valid


@pytest.mark.parametrize(
    "digest, valid",
    [
        ("sha256:" + "a" * 64, True),
        ("sha512:" + "0" * 128, True),
        ("sha384:" + "f" * 96, True),
        ("sha256:abc", False),
        ("sha256:" + "a" * 64 + "\n", False),
        ("sha256:" + "a" * 300, False),
        ("sha256:" + "a" * 63, False),
        ("sha256:" + "A" * 64, False),
        ("sha512:" + "0" * 64, False),
        ("sha256:" + "g" * 64, False),
        ("blake3:" + "A" * 64, True),  # an algorithm of its own: the grammar alone
        ("sha256+b64u:" + "a" * 43, True),
        ("sha256" + "a" * 64, False),
        (None, False),
    ],
)
def test_is_valid_digest(digest, valid):
    assert is_valid_digest(digest) is valid


def test_is_valid_name_counts_the_host():
    assert is_valid_name("", "a" * 254) and not is_valid_name("", "a" * 255)
    assert is_valid_name("reg.example", "team/app") and not is_valid_name("bad host", "app")
    assert not is_valid_name("reg.example", "App")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("docker://alice:s3cret@reg.example/app", "docker://***@reg.example/app"),
        ("docker://alice@reg.example", "docker://***@reg.example"),
        ("https://u:p@ss:w0rd@host:5000/v2/ and http://x:y@z/", "https://***@host:5000/v2/ and http://***@z/"),
        ("docker://reg.example/app@sha256:" + "a" * 64, "docker://reg.example/app@sha256:" + "a" * 64),
        ("reg.example/app:v1 (no URL)", "reg.example/app:v1 (no URL)"),
        ("proxy https://a:b@c failed: https://d:e@f", "proxy https://***@c failed: https://***@f"),
        # What is meant for a digest, or an '@' with no host after it, ends no userinfo: the source
        # was shown as `docker://***@sha256:abc`, naming neither host nor repository.
        ("docker://reg.example/app@sha256:abc: invalid", "docker://reg.example/app@sha256:abc: invalid"),
        ("docker://reg.example/app@: invalid", "docker://reg.example/app@: invalid"),
        ("docker://a:b@reg.example/app@sha256:abc", "docker://***@reg.example/app@sha256:abc"),
        # an ssh login name is no secret and tells one engine from another; a password is hidden
        ("ssh://me@build-host: over ssh: denied", "ssh://me@build-host: over ssh: denied"),
        ("ssh://me:s3cret@build-host", "ssh://***@build-host"),
        ("ssh://me@s3cret@build-host", "ssh://***@build-host"),
        ("docker://me@reg.example/app", "docker://***@reg.example/app"),
    ],
)
def test_redact_url_secrets(text, expected):
    assert redact_url_secrets(text) == expected


@pytest.mark.parametrize(
    "component, host",
    [
        ("reg.example", True),
        ("myregistry:5000", True),
        ("localhost", True),
        ("Team", True),
        ("team", False),
        ("library", False),
        ("crp1", False),
    ],
)
def test_is_registry_host(component, host):
    assert is_registry_host(component) is host
    # parse_reference splits a name by the same rule
    assert (parse_reference(f"{component}/app").name == "app") is host


@pytest.mark.parametrize(
    "host, hub",
    [("docker.io", True), ("index.docker.io", True), ("registry-1.docker.io", True), ("cr.yandex", False)],
)
def test_is_docker_hub(host, hub):
    assert is_docker_hub(host) is hub
    assert (parse_reference(f"{host}/team/app").registry == "docker.io") is hub


def test_ids_have_the_id_shape():
    assert ID_RE.fullmatch(image_id("cr.yandex", "crp123/app", "sha256:" + "a" * 64))
    assert ID_RE.fullmatch(blob_id("sha256:" + "b" * 64))
    for text in ("crp" + "0" * 16, "crp" + "0" * 18, "crp" + "w" * 17, "crp" + "A" * 17, "crp" + "0" * 17 + "\n"):
        assert not ID_RE.fullmatch(text)


def test_digest_algorithms_are_the_ones_hashlib_checks():
    for algorithm in DIGEST_ALGORITHMS:
        assert is_valid_digest(f"{algorithm}:{hashlib.new(algorithm, b'').hexdigest()}")
