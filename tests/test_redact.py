"""Credentials in a source name never reach a message or the store."""

from indexer.references import redact_url_secrets

DIGEST = "sha256:" + "ab" * 32


def test_userinfo_is_hidden():
    assert redact_url_secrets("docker://alice:S3cr3t@host/app:1") == "docker://***@host/app:1"


def test_password_with_slash_or_at_is_hidden_whole():
    assert "p/ss" not in redact_url_secrets("docker://alice:p/ss@host/app")
    out = redact_url_secrets(f"docker://alice:p@ss@host/app@{DIGEST}")
    assert out == f"docker://***@host/app@{DIGEST}"


def test_references_with_digests_are_left_alone():
    for text in (
        f"docker://ubuntu@{DIGEST}",
        f"docker://host:5000/team/app@{DIGEST}",
        "docker://host/app",
        "x.tar",
        "-",
    ):
        assert redact_url_secrets(text) == text


def test_query_values_that_may_be_credentials_are_hidden():
    """A token server, a Link header or a redirect may put a credential in a query; the message
    still shows where the request went and its paging."""
    cases = {
        "the token server http://h:5/token?access_token=S3cr3t answered 400": (
            "the token server http://h:5/token?access_token=*** answered 400"
        ),
        "loops back to http://h/v2/a/tags/list?n=1&last=v1&access_token=S3cr3t after 2 pages": (
            "loops back to http://h/v2/a/tags/list?n=1&last=v1&access_token=*** after 2 pages"
        ),
        "redirect to 'ftp://u:p@ex.invalid/x?X-Amz-Signature=S3cr3t&X-Amz-Credential=S3cr3t'": (
            "redirect to 'ftp://***@ex.invalid/x?X-Amz-Signature=***&X-Amz-Credential=***'"
        ),
        "points to another host (http://h/v2/_catalog?token=S3cr3t)": (
            "points to another host (http://h/v2/_catalog?token=***)"
        ),
        "http://h/token?service=reg&scope=repository:a/b:pull&account=bob": (
            "http://h/token?service=reg&scope=repository:a/b:pull&account=bob"
        ),
        "https://blob.example/x?sig=S3cr3t;se=2030#frag": "https://blob.example/x?sig=***;se=***#frag",
        "a redirect to 'ftp://h/x?sig=S3cr3t': not http(s)": "a redirect to 'ftp://h/x?sig=***': not http(s)",
    }
    for text, expected in cases.items():
        assert redact_url_secrets(text) == expected
        assert "S3cr3t" not in redact_url_secrets(text)


def test_an_at_sign_in_a_socket_path_is_no_userinfo():
    assert redact_url_secrets("engine at unix:///tmp/a:b@c.sock stopped") == "engine at unix:///tmp/a:b@c.sock stopped"
    assert redact_url_secrets("npipe:////./pipe/x@y") == "npipe:////./pipe/x@y"
    assert redact_url_secrets("tcp://a:pw@127.0.0.1:1/") == "tcp://***@127.0.0.1:1/"


def test_a_query_in_a_registry_source_is_refused_without_its_value(run_cli, tmp_path):
    """The source name is shown masked; the reason used to quote the reference whole, value and all."""
    store = tmp_path / "store"
    result = run_cli("index", "docker://127.0.0.1:9/app1?token=S3cr3t", "--store", store)
    assert result.exit_code == 1
    assert "S3cr3t" not in result.output
    assert result.stderr.strip().splitlines() == [
        "imgdex: docker://127.0.0.1:9/app1?token=***: a registry source takes no query (`?...`): "
        "a reference ends at its tag or digest"
    ]
    assert not store.exists() or "S3cr3t" not in run_cli("sql", "SELECT * FROM runs", "--store", store).output


def test_a_url_whose_scheme_a_message_left_out_is_hidden_too():
    # skopeo's names split at the first ':', so `docker-archive:http://u:p@h/x.tar` names the path
    # `http` and the reference `//u:p@h/x.tar`, which the reason quoted without its scheme.
    assert redact_url_secrets("http: invalid reference '//alice:S3cr3t@h/x.tar'") == (
        "http: invalid reference '//***@h/x.tar'"
    )
    assert redact_url_secrets("//alice:S3cr3t@h/x (//bob:pw@h/y)") == "//***@h/x (//***@h/y)"
    for text in ("/tmp//x@y.tar", "a //b c", "unix:///tmp/a@b.sock", f"'//h/app@{DIGEST}'"):
        assert redact_url_secrets(text) == text


def test_a_password_in_a_path_read_as_a_reference_reaches_no_message(run_cli, tmp_path):
    store = tmp_path / "store"
    for source in ("docker-archive:http://alice:S3cr3t@h/x.tar", "ycr-json://alice:S3cr3t@h/x.json"):
        result = run_cli("index", source, "--store", store, "--json")
        assert result.exit_code == 1 and result.stderr.startswith("imgdex: ")
        assert "S3cr3t" not in result.output
    assert not store.exists() or "S3cr3t" not in run_cli("sql", "SELECT * FROM runs", "--store", store).output
