"""Credentials in a source name never reach a message or the store."""

from indexer.references import redact_userinfo

DIGEST = "sha256:" + "ab" * 32


def test_userinfo_is_hidden():
    assert redact_userinfo("docker://alice:S3cr3t@host/app:1") == "docker://***@host/app:1"


def test_password_with_slash_or_at_is_hidden_whole():
    assert "p/ss" not in redact_userinfo("docker://alice:p/ss@host/app")
    out = redact_userinfo(f"docker://alice:p@ss@host/app@{DIGEST}")
    assert out == f"docker://***@host/app@{DIGEST}"


def test_references_with_digests_are_left_alone():
    for text in (
        f"docker://ubuntu@{DIGEST}",
        f"docker://host:5000/team/app@{DIGEST}",
        "docker://host/app",
        "x.tar",
        "-",
    ):
        assert redact_userinfo(text) == text
