"""The CLI through click's CliRunner: exact output, goldens, paging, errors."""

import csv
import json
import os
import sys

import click
import duckdb
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import ROOT, SAMPLES
from golden import assert_golden

COMMANDS = ["index", "get", "list", "sql"]


def test_every_command_has_help(run_cli):
    assert "Usage:" in run_cli("--help").stdout
    for command in COMMANDS:
        result = run_cli(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.stdout and "--store" in result.stdout


def _readme_commands() -> dict[str, dict[str, str | None]]:
    """The options of each command in the README's Commands block, with the metavar it shows, and
    its arguments, under their own names (`IMAGE`: None)."""
    import re

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = text.split("## Commands", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands: dict[str, dict[str, str | None]] = {}
    options: dict[str, str | None] = {}
    for line in block.splitlines():
        if line.startswith("imgdex --"):  # --version and --help, of every command
            continue
        head = re.match(r"imgdex (\w+)((?: [A-Z][^\s\[]*)*) ", line)
        if head:
            options = commands.setdefault(head.group(1), {})
            options.update(dict.fromkeys(head.group(2).split()))
        # a metavar may hold a bracketed part of its own: OS/ARCH[/VARIANT]
        pattern = r"(--[a-z][\w-]*(?:/--[\w-]+)?)(?: ((?![-\[])(?:[^\s\[\]]|\[[^\s\[\]]*\])+))?"
        for name, metavar in re.findall(pattern, line):
            options[name] = metavar or None
    return commands


def _help_metavar(option: click.Option) -> str | None:
    if option.is_flag:
        return None
    if option.metavar:
        return option.metavar
    if isinstance(option.type, click.Choice):
        return "|".join(option.type.choices)
    return option.type.name.upper()


def test_the_readme_names_every_option_and_argument_as_help_shows_it():
    from queries.cli import cli

    readme = _readme_commands()
    assert set(readme) == set(cli.commands)
    for name, command in cli.commands.items():
        shown = {}
        for param in command.params:
            if isinstance(param, click.Argument):
                shown[param.metavar or param.name.upper()] = None
            elif param.name != "help":
                long = [opt for opt in param.opts if opt.startswith("--")][0]
                shown["/".join([long, *param.secondary_opts])] = _help_metavar(param)
        assert set(readme[name]) == set(shown), name
        for option, metavar in readme[name].items():
            if metavar != "…":  # the README abbreviates a metavar said on another line
                assert metavar == shown[option], (name, option)


def test_help_describes_no_empty_range(run_cli):
    from queries.cli import cli

    for command in cli.commands:
        assert "None" not in run_cli(command, "--help").stdout, command


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0 and result.stdout.startswith("imgdex, version ")
    # The store layout that index, history and compact refuse is "the layout of imgdex 0.1": the
    # version that says so must not be 0.1 itself.
    version = result.stdout.split()[-1]
    assert not version.startswith("0.1"), version


def _list_all(run_cli, store, *extra):
    return json.loads(run_cli("list", "--store", store, "--page-size", "1000", *extra).stdout)["images"]


def test_list_golden(run_cli, samples_store):
    result = run_cli("list", "--store", samples_store)
    assert result.exit_code == 0
    assert_golden("list-samples.json", result.stdout)


def test_get_golden_for_every_sample_image(run_cli, samples_store):
    for image in _list_all(run_cli, samples_store):
        result = run_cli("get", image["id"], "--store", samples_store)
        assert result.exit_code == 0
        assert json.loads(result.stdout) == image
        assert_golden(f"get-{image['id']}.json", result.stdout)


def test_get_by_reference_tag_and_digest(run_cli, samples_store):
    images = _list_all(run_cli, samples_store)
    app = next(i for i in images if i.get("name") == "imgdex-test/app")
    by_ref = json.loads(run_cli("get", f"imgdex-test/app:{app['tags'][0]}", "--store", samples_store).stdout)
    assert by_ref == app
    digested = next(i for i in images if i.get("digest") and i.get("tags") and i.get("config"))
    result = run_cli("get", f"{digested['name']}@{digested['digest']}", "--store", samples_store)
    assert json.loads(result.stdout)["id"] == digested["id"]


def test_get_index_reference_picks_platform_child(run_cli, samples_store):
    images = _list_all(run_cli, samples_store)
    index = next((i for i in images if i.get("digest") and not i.get("config") and i.get("tags")), None)
    if index is None:
        pytest.fail("the samples must hold a multi-platform index")
    ref = f"{index['name']}:{index['tags'][0]}"
    amd = json.loads(run_cli("get", ref, "--store", samples_store).stdout)
    assert amd["id"] != index["id"] and "config" in amd
    arm = run_cli("get", ref, "--platform", "linux/arm64", "--store", samples_store)
    assert arm.exit_code == 0 and json.loads(arm.stdout)["id"] not in (amd["id"], index["id"])
    missing = run_cli("get", ref, "--platform", "linux/s390x", "--store", samples_store)
    assert missing.exit_code == 1 and "no manifest for platform linux/s390x" in missing.stderr
    assert json.loads(run_cli("get", index["id"], "--store", samples_store).stdout) == index


def test_get_by_docker_image_id_prefix(run_cli, samples_store):
    images = _list_all(run_cli, samples_store)
    counts = {}
    for image in images:
        if "config" in image:
            counts.setdefault(image["config"]["digest"], []).append(image)
    unique = next(d for d, found in counts.items() if len(found) == 1)
    result = run_cli("get", unique[7:19], "--store", samples_store)
    assert result.exit_code == 0 and json.loads(result.stdout) == counts[unique][0]
    shared = next(d for d, found in counts.items() if len(found) > 1)
    result = run_cli("get", shared[7:19], "--store", samples_store)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"imgdex: {shared[7:19]} is ambiguous: ")
    for candidate in counts[shared]:
        assert candidate["id"] in result.stderr


def test_an_ambiguous_prefix_names_ten_candidates_and_counts_the_rest(run_cli, tmp_path):
    """`base 0` on a store of 10,000 images printed one line of 69 KB: every candidate."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import corpus

    layout, store = str(tmp_path / "layout"), str(tmp_path / "store")
    corpus.write_oci_layout(layout, 400)
    assert run_cli("index", layout, "--store", store, "--quiet").exit_code == 0
    rows = run_cli(
        "sql",
        "SELECT count(*) AS n FROM images WHERE starts_with(config_digest, 'sha256:0')",
        "--store",
        store,
        "--format",
        "csv",
    )
    matching = int(rows.stdout.split()[1])
    assert matching > 11  # about a sixteenth of the images
    for command in ("get", "base"):
        result = run_cli(command, "0", "--store", store)
        assert result.exit_code == 1
        [line] = result.stderr.splitlines()
        assert line.startswith("imgdex: 0 is ambiguous: crp") and line.endswith(f", and {matching - 10:,} more")
        assert line.count("crp") == 10 and len(line) < 2000


def test_get_not_found_message(run_cli, samples_store):
    result = run_cli("get", "crp00000000000000000", "--store", samples_store)
    assert result.exit_code == 1
    assert result.stderr == "imgdex: image crp00000000000000000 not found\n"
    assert result.stdout == ""


def test_get_yaml_is_the_same_document(run_cli, samples_store):
    image = _list_all(run_cli, samples_store)[0]
    result = run_cli("get", image["id"], "--format", "yaml", "--store", samples_store)
    assert yaml.safe_load(result.stdout) == image


def test_get_ids_from_prints_one_document_per_line(run_cli, samples_store, tmp_path):
    images = _list_all(run_cli, samples_store)
    ids = [i["id"] for i in images]
    result = run_cli("get", "--ids-from", "-", "--store", samples_store, input="\n".join(ids + [""]))
    assert result.exit_code == 0
    assert [json.loads(line) for line in result.stdout.splitlines()] == images
    result = run_cli(
        "get", "--ids-from", "-", "--store", samples_store, input=f"{ids[0]}\ncrp00000000000000000\n{ids[1]}\n"
    )
    assert result.exit_code == 1
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [docs[0]["id"], docs[2]["id"]] == ids[:2]
    assert docs[1] == {"error": {"code": 5, "message": "image crp00000000000000000 not found"}}
    # stderr names the input and the line, as grep and jq do; stdout pairs with the input by place
    assert result.stderr.splitlines() == ["imgdex: <stdin>:2: image crp00000000000000000 not found"]


def test_get_ids_from_lines_end_at_newlines_only(run_cli, samples_store, tmp_path):
    # `paste ids out` pairs lines split at "\n": a lone "\r" inside a line must not start
    # another one, or every output line after it stands beside the wrong input.
    ids = [i["id"] for i in _list_all(run_cli, samples_store)]
    path = tmp_path / "ids.txt"
    path.write_bytes(f"{ids[0]}\r\n{ids[1]}\r{ids[2]}\n{ids[3]}\n".encode())
    result = run_cli("get", "--ids-from", path, "--store", samples_store)
    assert result.exit_code == 1
    out = result.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == 3
    assert json.loads(out[0])["id"] == ids[0]
    assert json.loads(out[1])["error"]["code"] == 3
    assert json.loads(out[2])["id"] == ids[3]


def test_get_ids_from_escapes_bytes_that_are_not_utf8_as_the_bytes(run_cli, samples_store, tmp_path):
    """They were read as U+FFFD, so the message named another line than the one given."""
    ids = [i["id"] for i in _list_all(run_cli, samples_store)]
    path = tmp_path / "ids.txt"
    path.write_bytes(b"ab\xff\xfecd\n" + ids[0].encode() + b"\n\xc3\xa9\tx\n")
    result = run_cli("get", "--ids-from", path, "--store", samples_store)
    assert result.exit_code == 1
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    wanted = "invalid image {}: not an image id, a reference or an image ID prefix"
    assert docs[0] == {"error": {"code": 3, "message": wanted.format("ab\\xff\\xfecd")}}
    assert docs[1]["id"] == ids[0]
    assert docs[2] == {"error": {"code": 3, "message": wanted.format("\u00e9\\tx")}}
    assert result.stderr.splitlines() == [
        f"imgdex: {path}:{number}: " + docs[number - 1]["error"]["message"] for number in (1, 3)
    ]


@pytest.mark.parametrize("query", ["", " ", "  ", "\u3000"])
def test_get_of_nothing_or_blanks_quotes_what_was_given(run_cli, samples_store, query):
    """A blank query was written as it stands, and vanished from its own message."""
    result = run_cli("get", query, "--store", samples_store)
    assert result.exit_code == 1
    assert result.stderr == f"imgdex: invalid image {query!r}: not an image id, a reference or an image ID prefix\n"


def test_get_ids_from_names_its_file_in_one_line_whatever_the_name(run_cli, samples_store, tmp_path):
    path = tmp_path / "ids\nfrom\x1b[31m.txt"
    path.write_bytes(b"\n\ncrp00000000000000000\n")
    result = run_cli("get", "--ids-from", path, "--store", samples_store)
    assert result.exit_code == 1
    shown = str(path).replace("\n", "\\n").replace("\x1b", "\\x1b")
    assert result.stderr.splitlines() == [f"imgdex: {shown}:3: image crp00000000000000000 not found"]


def test_get_ids_from_refuses_a_line_too_long_to_be_a_reference_and_goes_on(run_cli, samples_store, tmp_path):
    # A line is held whole before it is looked up: one without an end (a file of no newline)
    # would take all memory. Past 4,096 bytes it is skipped unread, and answered as an error.
    from queries.cli import MAX_QUERY_LINE

    ids = [i["id"] for i in _list_all(run_cli, samples_store)]
    path = tmp_path / "ids.txt"
    long_lines = [b"x" * (MAX_QUERY_LINE + 1), b"y" * (3 * 65536 + 7)]
    path.write_bytes(b"\n".join([ids[0].encode(), long_lines[0], ids[1].encode(), long_lines[1], ids[2].encode()]))
    result = run_cli("get", "--ids-from", path, "--store", samples_store)
    assert result.exit_code == 1
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [docs[0]["id"], docs[2]["id"], docs[4]["id"]] == ids[:3]
    too_long = {"error": {"code": 3, "message": f"line longer than {MAX_QUERY_LINE} bytes"}}
    assert docs[1] == docs[3] == too_long
    wanted = [f"imgdex: {path}:{n}: line longer than {MAX_QUERY_LINE} bytes" for n in (2, 4)]
    assert result.stderr.splitlines() == wanted
    path.write_bytes(ids[0].encode() + b" " * (MAX_QUERY_LINE - 20) + b"\n")  # at the bound: read
    assert json.loads(run_cli("get", "--ids-from", path, "--store", samples_store).stdout)["id"] == ids[0]


def test_get_needs_image_or_ids_from(run_cli, samples_store):
    assert run_cli("get", "--store", samples_store).exit_code == 2


@pytest.mark.parametrize(
    "args, said",
    [
        (["get"], "imgdex get: give either IMAGE or --ids-from. See 'imgdex get --help'."),
        (["list", "--bogus"], "imgdex list: No such option '--bogus'. See 'imgdex list --help'."),
        (["nosuch"], "imgdex: No such command 'nosuch'. See 'imgdex --help'."),
        (["index", "--jobs", "x", "data"], "imgdex index: Invalid value for '--jobs': 'x' is not a valid integer"),
    ],
)
def test_a_usage_error_is_one_line_that_names_the_command_and_the_reason(run_cli, args, said):
    result = run_cli(*args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(said)
    assert result.stderr.rstrip("\n").endswith("--help'.")


def test_a_usage_error_escapes_what_the_command_line_held(run_cli):
    result = run_cli("list", "--\x1b[31mred\nline")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "\x1b" not in result.stderr


def test_no_command_still_prints_the_help(run_cli):
    result = run_cli()
    assert result.exit_code == 2 and "Commands:" in result.output and "index" in result.output


def test_get_ids_from_does_not_take_another_format_it_would_ignore(run_cli, samples_store):
    result = run_cli("get", "--ids-from", "-", "--format", "yaml", "--store", samples_store, input="x\n")
    assert result.exit_code == 2 and "--format does not apply" in result.stderr and result.stdout == ""


def test_list_default_order_is_name_then_digest(run_cli, samples_store):
    images = _list_all(run_cli, samples_store)
    keys = [(i.get("name", ""), i.get("digest", "")) for i in images]
    assert keys == sorted(keys)


def test_list_pages_cover_everything_once_with_stable_tokens(run_cli, samples_store):
    everything = _list_all(run_cli, samples_store, "--order-by", "created_at desc, name")
    seen, token, tokens = [], "", []
    while True:
        args = ["list", "--store", samples_store, "--page-size", "3", "--order-by", "created_at desc, name"]
        if token:
            args += ["--page-token", token]
        page = json.loads(run_cli(*args).stdout)
        again = json.loads(run_cli(*args).stdout)
        assert page == again  # tokens are stable
        seen += page.get("images", [])
        token = page.get("nextPageToken", "")
        if not token:
            break
        tokens.append(token)
    assert seen == everything and len(tokens) == (len(everything) - 1) // 3


def test_list_rejects_foreign_or_broken_tokens(run_cli, samples_store):
    first = json.loads(run_cli("list", "--store", samples_store, "--page-size", "1").stdout)
    token = first["nextPageToken"]
    assert len(token) <= 100
    for other in (["--order-by", "digest"], ["--filter", 'name != "x"'], ["--registry-id", "samples"]):
        result = run_cli("list", "--store", samples_store, "--page-size", "1", *other, "--page-token", token)
        assert result.exit_code == 1 and result.stderr.startswith("imgdex: invalid page token"), other
    # The page size is not part of the query: a token goes on with any.
    assert run_cli("list", "--store", samples_store, "--page-size", "5", "--page-token", token).exit_code == 0
    for broken in ("!!!", token[:-3], token + "x", "x" * 101):
        result = run_cli("list", "--store", samples_store, "--page-token", broken)
        assert result.exit_code == 1 and result.stderr.startswith("imgdex: invalid page token"), broken
        assert len(result.stderr.splitlines()) == 1


def test_list_page_size_zero_is_the_default_and_1000_the_most(run_cli, samples_store):
    assert (
        run_cli("list", "--store", samples_store, "--page-size", "0").stdout
        == run_cli("list", "--store", samples_store).stdout
    )
    for size, message in (("1001", "page_size must be at most 1000"), ("-1", "page_size must be at least 0")):
        result = run_cli("list", "--store", samples_store, "--page-size", size)
        assert (result.exit_code, result.stderr) == (1, f"imgdex: {message}\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--page-token", "t" * 101], "invalid page token: page_token length must be at most 100"),
        (["--filter", 'name="' + "a" * 994 + '"'], "filter length must be at most 1000"),
        (["--filter", 'name="' + "a" * 257 + '"'], "is longer than 256 characters"),
        (["--filter", 'name="Not/Valid"'], "is not a repository name"),
        (["--filter", 'name NOT IN ("ok", "")'], "is not a repository name"),
        (["--order-by", "name" + " " * 97], "order_by length must be at most 100"),
        (["--registry-id", "r" * 51], "registry_id length must be at most 50"),
        (["--folder-id", "f" * 51], "folder_id length must be at most 50"),
        (["--repository-name", "Not/Valid"], "repository_name 'Not/Valid' does not match"),
    ],
)
def test_list_applies_the_api_rules(run_cli, samples_store, args, message):
    result = run_cli("list", "--store", samples_store, *args)
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgdex: ") and message in lines[0], lines


def test_list_order_by_created_at_desc(run_cli, samples_store):
    images = _list_all(run_cli, samples_store, "--order-by", "created_at desc")
    created = [i["createdAt"] for i in images if "createdAt" in i]
    from indexer.timestamps import epoch_nanos

    assert [epoch_nanos(c) for c in created] == sorted((epoch_nanos(c) for c in created), reverse=True)


@pytest.mark.parametrize(
    "expr, keep",
    [
        ('name="imgdex-test/app"', lambda n: n == "imgdex-test/app"),
        ("name!='imgdex-test/app'", lambda n: n != "imgdex-test/app"),
        ('name IN ("imgdex-test/app", "samples/app")', lambda n: n in ("imgdex-test/app", "samples/app")),
        ('name IN ("imgdex-test/app", "samples/app") AND name != "samples/app"', lambda n: n == "imgdex-test/app"),
        ('name NOT IN ("imgdex-test/app", "samples/app")', lambda n: n not in ("imgdex-test/app", "samples/app")),
        (
            "name not in ('samples/app') and name in ('samples/app', 'imgdex-test/app')",
            lambda n: n == "imgdex-test/app",
        ),
    ],
)
def test_list_filter(run_cli, samples_store, expr, keep):
    everything = _list_all(run_cli, samples_store)
    filtered = _list_all(run_cli, samples_store, "--filter", expr)
    assert filtered == [i for i in everything if keep(i.get("name", ""))]
    assert filtered


def test_list_filter_errors(run_cli, samples_store):
    for expr in ("name", "tag='x'", "name='a' OR name='b'", "name IN ()", "name='a' AND", "name NOT ('a')", 'name="A"'):
        result = run_cli("list", "--store", samples_store, "--filter", expr)
        assert result.exit_code == 1 and result.stderr.startswith("imgdex: invalid filter"), expr


def test_list_repository_name_and_registry_id(run_cli, samples_store):
    everything = _list_all(run_cli, samples_store)
    only = _list_all(run_cli, samples_store, "--repository-name", "samples/app")
    assert only == [i for i in everything if i.get("name") == "samples/app"] and only
    by_first_component = _list_all(run_cli, samples_store, "--registry-id", "samples")
    assert by_first_component == only
    # A '/' is never in a first component.
    assert run_cli("list", "--store", samples_store, "--registry-id", "samples/app").stdout == "{}\n"


def test_list_scope_precedence_as_the_api(run_cli, samples_store):
    everything = _list_all(run_cli, samples_store)
    only = [i for i in everything if i.get("name") == "samples/app"]
    # registry_id is ignored when repository_name is set ...
    assert _list_all(run_cli, samples_store, "--registry-id", "nosuch", "--repository-name", "samples/app") == only
    # ... and folder_id when either is set; the index records no folders, so alone it does not narrow.
    assert _list_all(run_cli, samples_store, "--registry-id", "samples", "--folder-id", "b1gnosuch") == only
    assert _list_all(run_cli, samples_store, "--folder-id", "b1gnosuch") == everything


def test_list_table_looks_like_yc(run_cli, samples_store):
    lines = run_cli("list", "--store", samples_store, "--format", "table").stdout.splitlines()
    assert [c.strip() for c in lines[1].strip("|").split("|")] == ["ID", "CREATED", "NAME", "TAGS", "COMPRESSED SIZE"]
    assert lines[0].startswith("+-") and lines[-1].startswith("+-")
    assert any(" KB " in line for line in lines)
    # Numbers are right-aligned, as yc aligns them; text is left-aligned.
    sizes = [line.strip("|").split("|")[4] for line in lines[3:-1]]
    assert len({len(cell.strip()) for cell in sizes}) > 1
    assert all(cell.endswith(" ") and not cell.endswith("  ") and cell.startswith(" ") for cell in sizes)
    ids = [line.strip("|").split("|")[0] for line in lines[3:-1]]
    assert all(cell.startswith(" crp") for cell in ids)


def test_format_table_aligns_the_numeric_columns_only():
    from queries.render import format_table

    table = format_table(["NAME", "SIZE"], [["a", "1.5 KB"], ["long name", "12 B"]], numeric=(1,))
    assert table.splitlines()[3:5] == ["| a         | 1.5 KB |", "| long name |   12 B |"]
    plain = format_table(["NAME", "SIZE"], [["a", "1.5 KB"], ["long name", "12 B"]])
    assert plain.splitlines()[4] == "| long name | 12 B   |"


def test_sql_formats(run_cli, samples_store):
    query = "SELECT name, count(*) AS n FROM images WHERE name <> '' GROUP BY name ORDER BY name"
    rows = [
        json.loads(line)
        for line in run_cli("sql", query, "--store", samples_store, "--format", "json").stdout.splitlines()
    ]
    assert rows and all(set(r) == {"name", "n"} for r in rows)
    csv_lines = run_cli("sql", query, "--store", samples_store, "--format", "csv").stdout.splitlines()
    assert csv_lines[0] == "name,n" and len(csv_lines) == len(rows) + 1
    table = run_cli("sql", query, "--store", samples_store).stdout
    assert [c.strip() for c in table.splitlines()[1].strip("|").split("|")] == ["name", "n"]
    bad = run_cli("sql", "SELECT nope FROM images", "--store", samples_store)
    assert bad.exit_code == 1 and bad.stderr.startswith("imgdex: ") and "Traceback" not in bad.output


def test_sql_repeated_names_keep_every_column(run_cli, samples_store):
    # A JSON object keeps one value of a key: the second `a` was dropped.
    query = "SELECT 1 AS a, 2 AS a, 3 AS A, 4 AS a_1"
    result = run_cli("sql", query, "--store", samples_store, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"a": 1, "a_1": 2, "A_2": 3, "a_1_1": 4}
    # The names DuckDB gives a table made of the query, and csv says the same ones.
    assert list(json.loads(result.stdout)) == duckdb.sql(f"SELECT * FROM ({query})").columns
    csv_lines = run_cli("sql", query, "--store", samples_store, "--format", "csv").stdout.splitlines()
    assert csv_lines == ["a,a_1,A_2,a_1_1", "1,2,3,4"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "A", "a_1", "A_1", "a_2", "a_1_1", "b", "é", "É"]), min_size=1, max_size=8))
def test_sql_unique_names_are_duckdbs(names):
    from queries.sqlshell import unique_names

    columns = ", ".join(f'{i} AS "{name}"' for i, name in enumerate(names))
    assert unique_names(names) == duckdb.sql(f"SELECT * FROM (SELECT {columns})").columns


def test_sql_json_lines_are_strict_json(run_cli, samples_store):
    # NaN and Infinity are no JSON: strict parsers (jq, JSON.parse) refuse the whole line.
    query = "SELECT 'nan'::DOUBLE AS n, 'inf'::DOUBLE AS i, -'inf'::DOUBLE AS m, [1.5, 'nan'::DOUBLE] AS l"
    result = run_cli("sql", query, "--store", samples_store, "--format", "json")
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    row = json.loads(result.stdout, parse_constant=refuse)
    assert row == {"n": "NaN", "i": "Infinity", "m": "-Infinity", "l": [1.5, "NaN"]}


def test_sql_csv_writes_single_values_as_duckdbs_csv_writer_does(run_cli, samples_store, tmp_path):
    # Booleans were Python's True and False, though nested ones were already JSON's true.
    query = "SELECT true AS t, false AS f, 'nan'::DOUBLE AS n, 'inf'::DOUBLE AS i, -'inf'::DOUBLE AS m, NULL AS z"
    result = run_cli("sql", query, "--store", samples_store, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == "t,f,n,i,m,z\ntrue,false,nan,inf,-inf,\n"
    duckdb.sql(f"COPY ({query}) TO '{tmp_path / 'copy.csv'}' (FORMAT csv)")
    assert result.stdout == (tmp_path / "copy.csv").read_text()


def _copied(query: str, path) -> str:
    """What DuckDB's own CSV writer writes for `query`, in UTC as a reader of the store shows times."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"COPY ({query}) TO '{path}' (FORMAT csv)")
    finally:
        con.close()
    return path.read_bytes().decode()  # line breaks as written: a quoted \r is part of the data


# FLOATs whose digits DuckDB does not pick as the shortest that read back: a power of two, halves
# between two shortest candidates, a multiple of a step whose shortest digits land on its edge.
_FLOAT_EDGES = [0.1, 2.0**-12, 1048576.25, 19781.0625, 50331648.0, 1e20, 3.4028234663852886e38, 1e-45, -0.0, 1.5]
_FLOAT_EDGES += [float("nan"), float("inf")]  # and their negatives: DuckDB writes a NaN's sign


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(width=32), min_size=1, max_size=20))
@example(_FLOAT_EDGES)
def test_sql_csv_writes_floats_as_duckdbs_csv_writer_does(run_cli, samples_store, tmp_path_factory, floats):
    # A FLOAT came out at a double's precision: 0.10000000149011612 where DuckDB writes 0.1.
    rows = ", ".join(f"({i}, '{value!r}'::DOUBLE::FLOAT)" for i, value in enumerate(floats))
    query = f"SELECT f, -f AS m, [f] AS l FROM (VALUES {rows}) AS v(i, f) ORDER BY i"
    result = run_cli("sql", query, "--store", samples_store, "--format", "csv")
    assert result.exit_code == 0, result.output
    expected = _copied(f"SELECT f, m FROM ({query})", tmp_path_factory.mktemp("copy") / "copy.csv")
    lines = result.stdout.splitlines()
    assert [",".join(next(csv.reader([line]))[:2]) for line in lines] == expected.splitlines()
    for line in lines[1:]:  # in a list, the same digits, in JSON
        single, _, listed = next(csv.reader([line]))
        assert listed == f"[{single}]" or single in ("nan", "-nan", "inf", "-inf")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.none(), st.binary(max_size=12)), min_size=1, max_size=12), st.text(max_size=6))
@example([b"", b'\xaa\x00a,"b', b"#", b"\\'", b"a\r\nb", None], "")
def test_sql_csv_writes_blobs_and_text_as_duckdbs_csv_writer_does(
    run_cli, samples_store, tmp_path_factory, blobs, text
):
    # A BLOB was base64 where DuckDB writes \xAA; NULL and an empty text were both an empty field.
    literal = "'" + text.replace("'", "''") + "'" if "\x00" not in text else "NULL"
    rows = ", ".join(f"({i}, {'NULL' if b is None else f'from_hex({b.hex()!r})'})" for i, b in enumerate(blobs))
    query = f"SELECT b, {literal} AS t, b AS c FROM (VALUES {rows}) AS v(i, b) ORDER BY i"
    result = run_cli("sql", query, "--store", samples_store, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == _copied(query, tmp_path_factory.mktemp("copy") / "copy.csv")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _clock(micros: int) -> str:
    seconds, micros = divmod(micros, 1_000_000)
    return f"{seconds // 3600:02}:{seconds // 60 % 60:02}:{seconds % 60:02}.{micros:06}"


def _offset(seconds: int) -> str:
    sign, seconds = "+-"[seconds < 0], abs(seconds)
    return f"{sign}{seconds // 3600:02}:{seconds // 60 % 60:02}:{seconds % 60:02}"


def _decimal(digits: int, scale: int) -> str:
    whole, fraction = divmod(abs(digits), 10**scale)
    return "-" * (digits < 0) + str(whole) + (f".{fraction:0{scale}}" if scale else "")


_ENUM = "ENUM('a', 'b,c', 'q\"', '')"
# One SQL expression a column, over the range of its type: times past Python's year 9999 and
# before year 1 (BC), infinities, nanoseconds, months in an interval, TIME's 24:00:00, a TIMETZ's
# offset in seconds, a DECIMAL's scale, integers past 64 bits.
_TYPED = {
    "ns": st.integers(-(2**62), 2**62).map("make_timestamp_ns({})".format),
    "tz": st.one_of(
        st.integers(-(2**62), 2**62).map("timezone('UTC', make_timestamp({}))".format),
        st.sampled_from(["'infinity'::TIMESTAMPTZ", "'-infinity'::TIMESTAMPTZ"]),
    ),
    "ts": st.one_of(
        st.integers(-(2**62), 2**62).map("make_timestamp({})".format),
        st.sampled_from(["'infinity'::TIMESTAMP", "'-infinity'::TIMESTAMP"]),
    ),
    "ms": st.integers(-(2**52), 2**52).map("make_timestamp({}::BIGINT * 1000)::TIMESTAMP_MS".format),
    "d": st.one_of(
        st.integers(-(10**9), 10**9).map("DATE '1970-01-01' + {}".format),
        st.sampled_from(["'infinity'::DATE", "'-infinity'::DATE"]),
    ),
    "i": st.tuples(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6), st.integers(-(2**50), 2**50)).map(
        lambda t: "to_months({}) + to_days({}) + to_microseconds({})".format(*t)
    ),
    "t": st.integers(0, 86_400_000_000).map(lambda us: f"{_literal(_clock(us))}::TIME"),
    "ttz": st.tuples(st.integers(0, 86_399_999_999), st.integers(-57599, 57599)).map(
        lambda t: f"{_literal(_clock(t[0]) + _offset(t[1]))}::TIMETZ"
    ),
    "dec": st.tuples(st.integers(-(10**18) + 1, 10**18 - 1), st.integers(0, 18)).map(
        lambda t: f"{_literal(_decimal(*t))}::DECIMAL(18, {t[1]})"
    ),
    "u": st.uuids().map(lambda u: f"'{u}'::UUID"),
    "h": st.integers(-(2**127), 2**127 - 1).map("'{}'::HUGEINT".format),
    "uh": st.integers(0, 2**128 - 1).map("'{}'::UHUGEINT".format),
    "b": st.text("01", min_size=1, max_size=40).map("'{}'::BIT".format),
    "e": st.sampled_from(["a", "b,c", 'q"', ""]).map(lambda e: f"{_literal(e)}::{_ENUM}"),
}


# A value of each of `_TYPED`'s kinds that Python would print otherwise than DuckDB.
_TYPED_EXAMPLE = {
    "ns": "TIMESTAMP_NS '2026-11-29 11:42:44.000339065'",
    "tz": "TIMESTAMPTZ '2026-11-29 11:42:44.000339+00'",
    "ts": "'-infinity'::TIMESTAMP",
    "ms": "TIMESTAMP_MS '12345-01-01 00:00:00.5'",
    "d": "DATE '0044-03-15 (BC)'",
    "i": "INTERVAL 1 DAY",
    "t": "TIME '24:00:00'",
    "ttz": "TIMETZ '01:02:03.5+05:30'",
    "dec": "1.50::DECIMAL(5, 2)",
    "u": "'12345678-1234-5678-1234-567812345678'::UUID",
    "h": "170141183460469231731687303715884105727::HUGEINT",
    "uh": "340282366920938463463374607431768211455::UHUGEINT",
    "b": "'0101'::BIT",
    "e": f"'b,c'::{_ENUM}",
}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.fixed_dictionaries(_TYPED), min_size=1, max_size=4))
@example([_TYPED_EXAMPLE])
def test_sql_writes_typed_values_as_duckdbs_csv_writer_does(run_cli, samples_store, tmp_path_factory, rows):
    # Python's values: TIMESTAMPTZ ended +00:00 (DuckDB: +00), an INTERVAL read `1 day, 0:00:00` and
    # lost its months, a TIMESTAMP_NS its nanoseconds, an infinite DATE read 9999-12-31, a DECIMAL
    # lost its spelling (0E-10 for 0.0000000000).
    names = list(_TYPED)
    values = ", ".join("(" + ", ".join(row[name] for name in names) + ")" for row in rows)
    flat = f"SELECT {', '.join(names)} FROM (VALUES {values}) AS v({', '.join(names)})"
    result = run_cli("sql", flat, "--store", samples_store, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == _copied(flat, tmp_path_factory.mktemp("copy") / "copy.csv")
    fields = list(csv.reader(result.stdout.splitlines()[1:]))

    # json says the same text, every digit kept, and so do the values nested in a struct, in both.
    nested = f"SELECT *, {{{', '.join(f'{name!r}: {name}' for name in names)}}} AS s FROM ({flat})"
    lines = run_cli("sql", nested, "--store", samples_store, "--format", "json").stdout.splitlines()
    nested_csv = list(
        csv.reader(run_cli("sql", nested, "--store", samples_store, "--format", "csv").stdout.splitlines()[1:])
    )
    assert len(lines) == len(fields) == len(nested_csv)
    for line, texts, written in zip(lines, fields, nested_csv):
        row = json.loads(line)
        nested_row = row.pop("s")
        assert [str(value) for value in row.values()] == texts
        assert nested_row == row and written[:-1] == texts
        assert written[-1] == json.dumps(nested_row, ensure_ascii=False)


def test_sql_csv_on_a_terminal_escapes_the_names_as_the_values(samples_store):
    from queries import engine, sqlshell

    query = """SELECT 1 AS "a\x1b[31mb", chr(27) AS "c\nd", 2 AS "e\u202ef" """
    for terminal, expected in [
        (True, "a\\x1b[31mb,c\\nd,e\\u202ef\n1,\\x1b,2\n"),
        (False, 'a\x1b[31mb,"c\nd",e\u202ef\n1,\x1b,2\n'),  # to a file or a pipe, the data as it is
    ]:
        out: list[str] = []
        reader = engine.connect(samples_store)
        try:
            sqlshell.write(reader, query, "csv", out.append, terminal=terminal)
        finally:
            reader.close()
        assert "".join(out) == expected


def test_sql_table_shows_values_as_csv_writes_them(run_cli, samples_store):
    # The table showed Python's True, the repr of a dict ({'a': 1}) and base64 of a BLOB.
    query = (
        "SELECT true AS t, [1, 2] AS l, {'a': 1, 'b': [false]} AS s, MAP {'k': 'ü'} AS m,"
        " '\\xAA!'::BLOB AS b, 0.1::FLOAT AS f, NULL AS n, '' AS e"
    )
    table = run_cli("sql", query, "--store", samples_store)
    assert table.exit_code == 0, table.output
    cells = [c.strip() for c in table.stdout.splitlines()[3].strip("|").split("|")]
    assert cells == ["true", "[1, 2]", '{"a": 1, "b": [false]}', '{"k": "ü"}', "\\xAA!", "0.1", "NULL", ""]
    row = next(csv.reader([run_cli("sql", query, "--store", samples_store, "--format", "csv").stdout.splitlines()[1]]))
    assert [cell if cell != "NULL" else "" for cell in cells] == row


def test_sql_csv_writes_nested_values_as_utf8_json(run_cli, samples_store):
    # Nested text was written ASCII-escaped (\u00e9), unlike the same text at the top level.
    query = "SELECT ['é', 'ü'] AS l, {'k': 'ß', 'b': true, 'n': 'nan'::DOUBLE} AS s, [true, false]::BOOLEAN[2] AS a"
    result = run_cli("sql", query, "--store", samples_store, "--format", "csv")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header == "l,s,a"
    assert next(csv.reader([row])) == ['["é", "ü"]', '{"k": "ß", "b": true, "n": "NaN"}', "[true, false]"]


def test_sql_text_that_is_not_utf8_is_one_line(run_cli, samples_store):
    # Python keeps an argument's bytes that are not UTF-8 as lone surrogates (os.fsdecode),
    # which DuckDB cannot take.
    result = run_cli("sql", "SELECT '\udcff'", "--store", samples_store)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["imgdex: the query is not UTF-8 text"]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT INTERVAL 100000000 YEARS AS i",
        "SELECT to_days(2000000000) AS i",
        "CALL query('SELECT to_days(2000000000) AS i, 0.1::FLOAT AS f')",
    ],
)
def test_sql_values_python_cannot_hold_are_duckdbs_text(run_cli, samples_store, tmp_path, query):
    # They failed as `a value of the result cannot be read`: Python's timedelta holds less.
    result = run_cli("sql", query, "--store", samples_store, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == _copied(query.replace("CALL ", "FROM "), tmp_path / "copy.csv")


def test_sql_writes_an_executed_or_pivoted_querys_values_as_duckdb_does(run_cli, samples_store, tmp_path):
    # Neither an EXECUTE nor a PIVOT without an IN list can be spliced into a query, so their rows were
    # read as they are, and printed as Python's values (10:00:00+00:00, 0.10000000149011612).
    names = list(_TYPED)
    flat = "SELECT " + ", ".join(f"{_TYPED_EXAMPLE[name]} AS {name}" for name in names) + ", 0.1::FLOAT AS f"
    pivot = f"PIVOT (SELECT 'k' AS k, * FROM ({flat})) ON k USING " + ", ".join(
        f"first({name}) AS {name}" for name in [*names, "f"]
    )
    for query, copied in [(f"PREPARE p AS {flat}; EXECUTE p", flat), (pivot, pivot)]:
        result = run_cli("sql", query, "--store", samples_store, "--format", "csv")
        assert result.exit_code == 0, result.output
        expected = _copied(copied, tmp_path / "copy.csv")
        assert result.stdout == expected and "+00:00" not in expected
        texts = next(csv.reader(result.stdout.splitlines()[1:]))
        row = json.loads(run_cli("sql", query, "--store", samples_store, "--format", "json").stdout)
        assert [str(value) for value in row.values()] == texts
    # A failure when its rows are read, and a prepared query that returns none.
    failed = run_cli("sql", "PREPARE p AS SELECT $1::INT AS x; EXECUTE p('y')", "--store", samples_store)
    assert failed.exit_code == 1 and failed.stderr.splitlines() == [
        "imgdex: Conversion Error: Could not convert string 'y' to INT32"
    ]
    empty = run_cli("sql", "PREPARE p AS SELECT 0.1::FLOAT AS f WHERE false; EXECUTE p", "--store", samples_store)
    assert empty.exit_code == 0 and empty.stdout.splitlines()[1].strip("| ") == "f"


def test_sql_layers_view(run_cli, samples_store):
    out = run_cli("sql", "SELECT count(*) AS n FROM image_layers", "--store", samples_store, "--format", "json").stdout
    total = run_cli(
        "sql", "SELECT sum(len(layers)) AS n FROM images", "--store", samples_store, "--format", "json"
    ).stdout
    assert json.loads(out)["n"] == json.loads(total)["n"] > 0


def test_index_json_summary_and_exit_code(run_cli, tmp_path):
    from conftest import sample_sources

    result = run_cli("index", *sample_sources(), "--store", tmp_path / "s", "--json", "--quiet")
    summary = json.loads(result.stdout)
    assert result.exit_code == 0 and summary["failed"] == 0 and summary["indexed"] > 0
    result = run_cli("index", tmp_path / "missing.tar", "--store", tmp_path / "s", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["failed"] == 1
    assert f"imgdex: {tmp_path / 'missing.tar'}: no such file or directory" in result.stderr


def test_missing_store_is_a_clear_error(run_cli, tmp_path):
    result = run_cli("get", "x", "--store", tmp_path / "nothing")
    assert result.exit_code == 1 and "no image store at" in result.stderr


def test_a_message_naming_a_path_with_control_characters_stays_one_line(run_cli, tmp_path):
    result = run_cli("list", "--store", f"{tmp_path}/new\nline\x1b[2J")
    assert result.exit_code == 1
    assert result.stderr == (
        f"imgdex: no image store at {tmp_path}/new\\nline\\x1b[2J"
        " (run `imgdex index` first, or set --store / IMGDEX_STORE)\n"
    )


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    from queries.cli import _Progress

    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    progress = _Progress(2, 10)
    progress.image(None)
    progress.source("a")
    progress.done()
    drawn = capsys.readouterr().err
    assert "[###############---------------] 1/2 sources, 1 images" in drawn
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    quiet = _Progress(2, 10)
    quiet.image(None)
    quiet.source("a")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "repository, split",
    [
        ("reg.example/team/app", ("reg.example", "team/app")),
        ("localhost:5000/app", ("localhost:5000", "app")),
        ("team/app", ("", "team/app")),
        ("app", ("", "app")),
    ],
)
def test_repository_with_a_host_sets_the_registry(repository, split):
    from queries.cli import _split_repository

    assert _split_repository("", repository) == split
    if ":" in repository:  # under another host, a path with a port in it: no name has that shape
        with pytest.raises(click.BadParameter, match="is not a repository name"):
            _split_repository("given.example", repository)
    else:
        assert _split_repository("given.example", repository) == ("given.example", repository)


@pytest.mark.parametrize(
    "registry, repository, split",
    [
        ("docker.io", "ubuntu", ("docker.io", "library/ubuntu")),
        ("index.docker.io", "ubuntu", ("docker.io", "library/ubuntu")),
        ("registry-1.docker.io", "team/app", ("docker.io", "team/app")),
        ("docker.io", "", ("docker.io", "")),
        ("", "docker.io/ubuntu", ("docker.io", "library/ubuntu")),
    ],
)
def test_docker_hub_names_are_normalised_as_references_are(registry, repository, split):
    """`--registry docker.io --repository ubuntu` stored `docker.io/ubuntu`, which no reference
    reaches: `docker.io/ubuntu:v1` and `ubuntu:v1` both mean docker.io/library/ubuntu."""
    from queries.cli import _split_repository

    assert _split_repository(registry, repository) == split


def test_an_image_stored_under_docker_hub_is_found_by_each_spelling(run_cli, tmp_path):
    layout = os.path.join(SAMPLES, "oci-layout")
    store = str(tmp_path / "store")
    done = run_cli(
        "index", f"oci:{layout}:v1", "--registry", "index.docker.io", "--repository", "ubuntu", "--store", store
    )
    assert done.exit_code == 0, done.output
    found = {
        run_cli("get", ref, "--store", store).stdout
        for ref in ("docker.io/library/ubuntu:v1", "docker.io/ubuntu:v1", "ubuntu:v1")
    }
    assert len(found) == 1 and json.loads(found.pop())["name"] == "library/ubuntu"


@pytest.mark.parametrize(
    "args, hint",
    [
        (["get", "x", "--stroe", "d"], "No such option '--stroe'. Did you mean '--store'?"),
        (["index", "--jbos", "2"], "No such option '--jbos'. Did you mean one of: '--jobs', '--json'?"),
        (["gett"], "No such command 'gett'. Did you mean 'get'?"),
    ],
)
def test_a_did_you_mean_hint_ends_its_sentence_once(run_cli, args, hint):
    result = run_cli(*args)
    assert result.exit_code == 2
    message = result.stderr.rstrip("\n")
    assert hint + " See '" in message
    assert not any(marks in message for marks in ("?.", "?)", ".."))


@pytest.mark.parametrize(
    "args, said",
    [
        (["list", "--page-size", "9" * 5000], "'--page-size': '" + "9" * 120 + "...' is not a valid integer."),
        (["list", "--page-size=" + "9" * 5000], "'--page-size': '" + "9" * 120 + "...' is not a valid integer."),
        (["list", "--format", "x" * 5000], "'--format': '" + "x" * 120 + "...' is not one of 'json', 'table', 'yaml'."),
        (["list", "--format", "x" * 120], "'--format': '" + "x" * 120 + "' is not one of 'json', 'table', 'yaml'."),
        (["list", "--format", "it's\n" + "y" * 5000], "'--format': \"it's\\n" + "y" * 115 + '..." is not one of'),
        (["index", "--jobs", "7" * 5000, "x"], "'--jobs': '" + "7" * 120 + "...' is not a valid integer."),
        (["history", "--limit", "-" + "9" * 4000], "'--limit': -" + "9" * 119 + "... is not in the range x>=1."),
        (["index", "--ca-cert", "/" + "c" * 5000, "x"], "'--ca-cert': File '/" + "c" * 119 + "...' does not exist."),
        (["list", "--" + "o" * 5000], "No such option '--" + "o" * 118 + "...'."),
        (["list", "extra " * 1000], "Got unexpected extra argument (" + ("extra " * 20)[:120] + "...)."),
        (["compact", "--retention", "r" * 5000], "'--retention': '" + "r" * 120 + "...' is not a duration such as"),
    ],
)
def test_a_usage_error_cuts_a_long_value_as_every_message_does(run_cli, args, said):
    """click quoted a value whole: `list --page-size` of 5,000 digits printed a line of 5,099 characters."""
    result = run_cli(*args)
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert said in line, line
    assert line.startswith(f"imgdex {args[0]}: ") and line.endswith(f"See 'imgdex {args[0]} --help'.")
    assert len(line) < 300
