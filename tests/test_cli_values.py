"""Option values a run cannot use are usage errors (exit 2, one line) before anything is read or
written: names outside Docker's grammar, versions past int64, deadlines past a day, token files
that are not files."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

SAMPLE = os.path.join(ROOT, "data", "samples", "oci-layout")


def imgdex(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "queries.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "naming, said",
    [
        (["--repository", "has space"], "Invalid value for --repository: 'has space' is not a repository name"),
        (["--repository", "a\nb"], "Invalid value for --repository: 'a\\nb' is not a repository name"),
        (["--repository", "a/../b"], "Invalid value for --repository: 'a/../b' is not a repository name"),
        (["--repository", "x" * 300], "Invalid value for --repository: '" + "x" * 120 + "...' is not a repository"),
        (["--repository", "UPPER/App"], "Invalid value for --repository: 'UPPER/App' is not a repository name"),
        (["--repository", "reg.example/app:1"], "Invalid value for --repository: 'reg.example/app:1' is not a"),
        (["--registry", "bad host", "--repository", "x"], "Invalid value for --registry: 'bad host' is not a registry"),
    ],
)
def test_a_name_outside_the_grammar_is_refused_before_anything_is_stored(tmp_path, naming, said):
    store = tmp_path / "store"
    result = imgdex("index", f"oci:{SAMPLE}", "--store", str(store), *naming)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"imgdex index: {said}"), line
    assert not store.exists()


@pytest.mark.parametrize("entry", ["bad host", "10.0.0.0/33", "reg.example/path", "::1", ""])
def test_an_insecure_registry_that_names_no_host_or_network_is_refused(tmp_path, entry):
    store = tmp_path / "store"
    result = imgdex("index", f"oci:{SAMPLE}", "--store", str(store), "--insecure-registry", entry)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("imgdex index: Invalid value for '--insecure-registry': "), line
    assert line.endswith("is neither HOST, HOST:PORT nor a CIDR network such as 10.0.0.0/8. See 'imgdex index --help'.")
    assert not store.exists()


@pytest.mark.parametrize("entry", ["reg.example", "reg.example:5000", "[::1]:5000", "10.0.0.0/8", "fd00::/8"])
def test_an_insecure_registry_host_or_network_is_taken(tmp_path, entry):
    result = imgdex("index", f"oci:{SAMPLE}", "--store", str(tmp_path / "store"), "-q", "--insecure-registry", entry)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "naming, stored",
    [
        (["--repository", "reg.example:5000/team/app"], "reg.example:5000,team/app"),
        (["--registry", "h:99", "--repository", "a/b-c"], "h:99,a/b-c"),
    ],
)
def test_names_within_the_grammar_are_taken(tmp_path, naming, stored):
    store = str(tmp_path / "store")
    result = imgdex("index", f"oci:{SAMPLE}", "--store", store, "-q", *naming)
    assert result.returncode == 0, result.stderr
    names = imgdex("sql", "SELECT DISTINCT registry, name FROM images", "--store", store, "--format", "csv")
    assert stored in names.stdout.splitlines()[1:]  # the images the layout does not name


@pytest.mark.parametrize("command", [["get", "x"], ["list"], ["sql", "SELECT 1"]])
def test_a_version_of_thousands_of_digits_is_one_line(tmp_path, command):
    result = imgdex(*command, "--store", str(tmp_path), "--as-of", "1" * 5000)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert "version '" + "1" * 120 + "...' is out of range" in line and len(line) < 400


@pytest.mark.parametrize(
    "command, quoted",
    [
        (["list", "--page-size"], "'--page-size': '"),
        (["get", "x", "--format"], "'--format': '"),
        (["serve", "--token-file"], "'--token-file': File '"),
    ],
)
def test_a_value_click_refuses_is_quoted_cut_on_one_short_line(tmp_path, command, quoted):
    result = imgdex(*command, "9" * 5000, "--store", str(tmp_path))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert quoted + "9" * 120 + "...' " in line and len(line) < 300, line
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("command", [["index", "docker://127.0.0.1:1/x"], ["sql", "SELECT 1"]])
@pytest.mark.parametrize(
    "value, reason", [("1e10", "1e+10 is more than 86400 seconds"), ("nan", "nan is not a number of seconds")]
)
def test_a_deadline_past_a_day_is_refused(tmp_path, command, value, reason):
    result = imgdex(*command, "--timeout", value, "--store", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"imgdex {command[0]}: Invalid value for '--timeout': {reason}. See 'imgdex {command[0]} --help'."
    ]
    assert not os.listdir(tmp_path)


def test_a_query_deadline_of_a_day_is_taken(samples_store):
    result = imgdex("sql", "SELECT 1 AS x", "--timeout", "86400", "--store", samples_store, "--format", "csv")
    assert result.returncode == 0 and result.stdout.split() == ["x", "1"], result.stderr


# Past 8796093022208 MiB the process's cap in bytes overflowed setrlimit (a traceback), and past
# 17592186044415 MiB DuckDB refused the setting, which was then reported as a fault of the store.
@pytest.mark.parametrize("value", [str((1 << 30) + 1), "8796093022208", "17592186044416", "9" * 30])
def test_a_memory_limit_past_a_pib_is_refused(samples_store, value):
    result = imgdex("sql", "SELECT 1", "--memory-limit", value, "--store", samples_store)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr.splitlines() == [
        f"imgdex sql: Invalid value for '--memory-limit': {value} is not in the range 16<=x<=1073741824. "
        "See 'imgdex sql --help'."
    ]


def test_a_memory_limit_of_a_pib_is_taken(samples_store):
    query = "SELECT current_setting('memory_limit') AS m"
    result = imgdex("sql", query, "--memory-limit", str(1 << 30), "--store", samples_store, "--format", "csv")
    assert (result.returncode, result.stdout) == (0, "m\n1.0 PiB\n"), result.stderr


@pytest.mark.parametrize("kind", ["device", "fifo", "too long"])
def test_a_token_file_must_be_a_short_regular_file(tmp_path, kind):
    path = str(tmp_path / "token")
    if kind == "device":
        path = "/dev/zero"  # read whole, it never ends
    elif kind == "fifo":
        os.mkfifo(path)  # no one writes it: open() would wait for ever
    else:
        with open(path, "wb") as f:
            f.write(b"t" * (1 << 20))
    result = imgdex("serve", "--store", str(tmp_path), "--token-file", path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    reason = {"device": "not a regular file (character device)", "fifo": "not a regular file (named pipe)"}
    assert line.startswith("imgdex serve: Invalid value for --token-file: " + path)
    assert reason.get(kind, "holds more than 65536 bytes") in line


@pytest.mark.parametrize("command", ["get", "base", "derived"])
@pytest.mark.parametrize("platform", ["linux/amd64\n", "linux", "linux/amd64/v8/x", "linux//v8", "a" * 100_000])
def test_a_platform_outside_os_arch_variant_is_one_short_usage_line(tmp_path, command, platform):
    result = imgdex(command, "x", "--platform", platform, "--store", str(tmp_path / "none"))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"imgdex {command}: Invalid value for '--platform': '"), line
    assert line.endswith(f"' is not OS/ARCH[/VARIANT]. See 'imgdex {command} --help'."), line
    assert len(line) < 300


@pytest.mark.parametrize(
    "spec, said",
    [
        ("oci:", "imgdex: oci: no layout directory given"),
        ("docker-archive:", "imgdex: docker-archive: no archive path given"),
        ("oci-archive:", "imgdex: oci-archive: no archive path given"),
        ("oci-archive::ref", "imgdex: oci-archive: no archive path given"),
        ("ycr-json:", "imgdex: ycr-json: no file given"),
        ("", "imgdex: '': an empty source name"),
        ("oci:{tmp}/nowhere:b:c", "imgdex: {tmp}/nowhere: no such file or directory"),
        ("oci:/etc/hostname", "imgdex: /etc/hostname: not a directory"),
    ],
)
def test_a_layout_that_is_not_there_says_why(tmp_path, spec, said):
    result = imgdex("index", spec.format(tmp=tmp_path), "--store", str(tmp_path / "store"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [said.format(tmp=tmp_path)]


@pytest.mark.parametrize(
    "command", [["index", SAMPLE], ["get", "x"], ["list"], ["sql", "SELECT 1"], ["history"], ["compact"], ["serve"]]
)
def test_an_empty_store_value_is_refused(tmp_path, command):
    """`index --store ""` wrote into the current folder while readers read the filesystem's root."""
    result = subprocess.run(
        [sys.executable, "-m", "queries.cli", *command, "--store", ""],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"imgdex {command[0]}: Invalid value for '--store': an empty value names no folder (`.` is this one). "
        f"See 'imgdex {command[0]} --help'."
    ]
    assert os.listdir(tmp_path) == []


# What delta-rs cannot take in a store's path: each fails its every call ("illegal character
# sequence"), or is read as a folder separator or an escape, or cannot be handed to it at all.
DELTA_RS_REFUSES = {
    "a tab": ("t\tb", "a control character (\\t), which delta-rs cannot take"),
    "a newline": ("n\nb", "a control character (\\n), which delta-rs cannot take"),
    "DEL": ("d\x7fb", "a control character (\\x7f), which delta-rs cannot take"),
    "a backslash": ("b\\s", "a backslash, which delta-rs reads as a folder separator"),
    "an escape": ("p%20c", "%20, which delta-rs reads as an escape"),
    "not UTF-8": (os.fsdecode(b"u\xffv"), "bytes that are not UTF-8, which delta-rs cannot take"),
}
DELTA_RS_COMMANDS = [["index", SAMPLE], ["history"], ["compact"], ["migrate"]]


def _files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _refused(result, command: str, shown: str, reason: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"imgdex {command}: Invalid value for '--store': {shown}: its path holds {reason}. "
        f"See 'imgdex {command} --help'."
    ]


@pytest.mark.parametrize("command", DELTA_RS_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("name", DELTA_RS_REFUSES, ids=str)
def test_a_store_path_delta_rs_cannot_take_is_one_usage_line(tmp_path, samples_store, run_cli, command, name):
    """An index run said delta-rs's error once per image ("5 failed"), and migrate ended in a
    traceback: the commands that hand the store to delta-rs refuse it once, before anything is
    written, the store as it was."""
    from indexer.errors import printable

    folder, reason = DELTA_RS_REFUSES[name]
    store = tmp_path / folder
    shutil.copytree(samples_store, store)
    before = _files(store)
    _refused(run_cli(*command, "--store", store), command[0], printable(str(store)), reason)
    assert _files(store) == before


@pytest.mark.parametrize("command", DELTA_RS_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("kind", ["absent", "empty folder", "old layout"])
def test_every_kind_of_store_at_such_a_path_is_refused_before_anything_is_written(tmp_path, run_cli, command, kind):
    store = tmp_path / "m\tx"
    if kind == "empty folder":
        store.mkdir()
    elif kind == "old layout":
        shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "old-store"), store)
    before = _files(tmp_path)
    _refused(
        run_cli(*command, "--store", store),
        command[0],
        printable_path(store),
        "a control character (\\t), which delta-rs cannot take",
    )
    assert _files(tmp_path) == before and os.listdir(tmp_path) == (["m\tx"] if kind != "absent" else [])


def printable_path(path) -> str:
    from indexer.errors import printable

    return printable(str(path))


def test_a_working_directory_delta_rs_cannot_take_is_named_with_the_store(tmp_path, run_cli, monkeypatch):
    """A relative store lies below the working directory, whose name delta-rs is handed too."""
    here = tmp_path / "w\tx"
    here.mkdir()
    monkeypatch.chdir(here)
    _refused(
        run_cli("index", SAMPLE, "--store", "data"),
        "index",
        f"data ({printable_path(here / 'data')})",
        "a control character (\\t), which delta-rs cannot take",
    )
    assert os.listdir(here) == []


def test_migrate_of_an_old_store_at_such_a_path_is_one_line_in_a_process(tmp_path):
    store = tmp_path / "m\tx"
    shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "old-store"), store)
    result = imgdex("migrate", "--store", str(store))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"imgdex migrate: Invalid value for '--store': {printable_path(store)}: its path holds a control "
        "character (\\t), which delta-rs cannot take. See 'imgdex migrate --help'."
    ]
    assert sorted(os.listdir(store)) == ["images.parquet", "runs.parquet", "tags.parquet"]


@pytest.mark.parametrize("command", [["list"], ["sql", "SELECT count(*) FROM images"], ["export", "{tmp}/out"]])
def test_readers_still_read_a_store_at_such_a_path(tmp_path, samples_store, run_cli, command):
    """get, list, sql and export read the tables without delta-rs: a store moved to such a path
    stays readable."""
    store = tmp_path / "t\tb"
    shutil.copytree(samples_store, store)
    result = run_cli(*[part.format(tmp=tmp_path) for part in command], "--store", store)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("scheme", ["file://", "file:", "FILE:"])
def test_a_file_url_names_the_folder_its_escapes_decode_to_for_every_command(tmp_path, run_cli, monkeypatch, scheme):
    """index wrote `file://…/x%20y` into `x y` (delta-rs decodes the escape) while every other
    command looked for `x%20y` and found no store; and `file:/…/x` (no host) into `./file:/…/x`
    while the readers read `/…/x`."""
    monkeypatch.chdir(tmp_path)
    url = f"{scheme}{tmp_path}/x%20y"
    assert run_cli("index", SAMPLE, "--store", url, "-q").exit_code == 0
    assert os.path.isdir(tmp_path / "x y" / "images" / "_delta_log")
    assert run_cli("sql", "SELECT count(*) AS n FROM images", "--store", url, "--format", "csv").stdout == "n\n5\n"
    for command in (["list"], ["history"], ["compact"], ["export", str(tmp_path / "out")]):
        result = run_cli(*command, "--store", url)
        assert result.exit_code == 0, (command, result.output)
    assert sorted(os.listdir(tmp_path)) == ["out", "x y"]


@pytest.mark.parametrize(
    "tail, reason",
    [
        # Python's URL parsing drops a tab: the run wrote into `xy`
        ("x\ty", "a URL cannot hold a tab or a line break (%09, %0A, %0D)"),
        ("x#y", "a URL's `?` or `#` ends its path (a folder holding one is %3F or %23)"),
        ("x?y", "a URL's `?` or `#` ends its path (a folder holding one is %3F or %23)"),
    ],
)
@pytest.mark.parametrize("command", [["index", SAMPLE], ["list"]], ids=lambda c: c[0])
def test_a_file_url_whose_folder_url_parsing_would_change_is_refused(tmp_path, run_cli, command, tail, reason):
    url = f"file://{tmp_path}/{tail}"
    result = run_cli(*command, "--store", url)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"imgdex {command[0]}: Invalid value for '--store': {printable_path(url)}: {reason}. "
        f"See 'imgdex {command[0]} --help'."
    ]
    assert os.listdir(tmp_path) == []


def test_a_file_url_escaping_what_delta_rs_cannot_take_is_refused_as_the_folder_it_names(tmp_path, run_cli):
    result = run_cli("index", SAMPLE, "--store", f"file://{tmp_path}/x%09y")
    _refused(
        result, "index", printable_path(tmp_path / "x\ty"), "a control character (\\t), which delta-rs cannot take"
    )
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", [["get", "x"], ["list"], ["sql", "SELECT 1"]])
def test_a_version_just_past_int64_is_out_of_range(tmp_path, run_cli, command):
    result = run_cli(*command, "--store", tmp_path, "--as-of", "9223372036854775808")
    assert result.exit_code == 2
    assert "version '9223372036854775808' is out of range" in result.stderr
    kept = run_cli(*command, "--store", tmp_path, "--as-of", "9223372036854775807")
    assert kept.exit_code == 1 and "out of range" not in kept.stderr  # taken: there is no store here


INTEGER_OPTIONS = [
    ["list", "--page-size"],
    ["index", SAMPLE, "--jobs"],
    ["sql", "SELECT 1", "--memory-limit"],
    ["history", "--limit"],
    ["serve", "--workers"],
]


@pytest.mark.parametrize("value", ["1_0", " 2", "2 ", "\u0661", "1e3", "0x10", "--3"])
@pytest.mark.parametrize("option", INTEGER_OPTIONS, ids=lambda o: o[-1])
def test_integer_options_take_ascii_digits_only(tmp_path, run_cli, option, value):
    """int() takes `1_0`, blanks and other scripts' digits; the API's own parser (Go's
    strconv.ParseInt) refuses them, and so does every integer option."""
    result = run_cli(*option, value, "--store", tmp_path / "s")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0].endswith(f"{value!r} is not a valid integer. See 'imgdex {option[0]} --help'.")
    assert not (tmp_path / "s").exists()


def test_a_signed_integer_is_taken_as_strconv_takes_it(samples_store, run_cli):
    signed, plain = (run_cli("list", "--page-size", n, "--store", samples_store) for n in ("+3", "3"))
    assert signed.exit_code == plain.exit_code == 0 and signed.stdout == plain.stdout


@pytest.mark.parametrize("value", ["1_0", " 2", "\u0661", "0x10", "1e"])
def test_seconds_are_decimal_numbers_only(tmp_path, run_cli, value):
    result = run_cli("sql", "SELECT 1", "--timeout", value, "--store", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"imgdex sql: Invalid value for '--timeout': {value!r} is not a number of seconds. See 'imgdex sql --help'."
    ]
