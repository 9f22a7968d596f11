import base64
import hashlib

import pytest
from hypothesis import given, strategies as st

from indexer.errors import ReferenceError_
from indexer.references import Reference, blob_id, image_id, is_bare_tag, parse_reference


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


@pytest.mark.parametrize("text, bare", [("v1", True), ("1.0", True), ("latest", True), ("team/app:v1", False), ("app:1", False), ("a@sha256:x", False)])
def test_is_bare_tag(text, bare):
    assert is_bare_tag(text) is bare


@given(st.text(max_size=200))
def test_short_hash_equals_the_rfc4648_base32hex_definition(text):
    from indexer.references import _short_hash

    reference = base64.b32hexencode(hashlib.sha256(text.encode()).digest()).decode().lower().rstrip("=")[:17]
    assert _short_hash(text) == reference
