"""registries.conf read as containers/image reads it: which files, in which order, what they say,
and a one-line error naming the file for anything it would refuse."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.errors import SourceError
from indexer.sources import registries_conf as rc
from indexer.sources import tomlfile
from indexer.sources.registries_conf import RegistryEntry, config_files, load, parse


def entries(text: str, drop_in: bool = False) -> list[RegistryEntry]:
    return parse(text.encode(), "/conf", drop_in=drop_in)


def refused(text: str, drop_in: bool = False) -> str:
    with pytest.raises(SourceError) as caught:
        entries(text, drop_in)
    assert caught.value.where == "/conf"
    return caught.value.reason


# ---------------------------------------------------------------- what one file says


def test_a_v2_file_gives_its_entries_with_the_prefix_defaulting_to_the_location():
    got = entries(
        '[[registry]]\nlocation = "a.example/"\ninsecure = true\n'
        '[[registry]]\nprefix = "b.example"\nlocation = "mirror.example:5000"\n'
        '[[registry]]\nprefix = "*.c.example"\nblocked = true\n'
    )
    assert got == [
        RegistryEntry("a.example", "a.example", insecure=True, origin="/conf"),
        RegistryEntry("b.example", "mirror.example:5000", origin="/conf"),
        RegistryEntry("*.c.example", "", blocked=True, origin="/conf"),
    ]


def test_a_v1_file_is_converted_as_containers_image_converts_it():
    got = entries(
        '[registries.search]\nregistries = ["docker.io"]\n[registries.insecure]\nregistries = ["a:5000"]\n'
        '[registries.block]\nregistries = ["a:5000", "b"]\n'
    )
    assert sorted(got, key=lambda e: e.prefix) == [
        RegistryEntry("a:5000", "a:5000", insecure=True, blocked=True, origin="/conf"),
        RegistryEntry("b", "b", blocked=True, origin="/conf"),
    ]


def test_what_a_crawl_does_not_use_is_read_past():
    text = (
        'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "enforcing"\n'
        '[aliases]\n"alpine" = "docker.io/library/alpine"\n'
        '[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\nlocation = "m.example"\n'
    )
    assert entries(text) == [RegistryEntry("a.example", "a.example", origin="/conf", mirrors=(rc.Mirror("m.example"),))]
    assert entries("") == [] and entries("# only a comment\n") == []


@pytest.mark.parametrize(
    "text, reason",
    [
        ("[[registry]\n", "not valid TOML: "),
        ('[[registry]]\nlocation = "https://a.example"\n', "registry entry 1: invalid location 'https://a.example'"),
        ("[[registry]]\ninsecure = true\n", "registry entry 1: both location and prefix are unset"),
        ('[[registry]]\nprefix = "a.example"\n', "registry entry 1: location is unset and prefix is not in the format"),
        ('[[registry]]\nprefix = "*.a.example/ns"\n', "registry entry 1: a wildcard prefix must be in the format"),
        ('[[registry]]\nlocation = "a"\ninsecure = "yes"\n', "registry entry 1: `insecure` is not true or false"),
        ("[[registry]]\nlocation = 5\n", "registry entry 1: `location` is not a string"),
        ('registry = "a"\n', "`registry` must be an array of tables"),
        ('[[registry]]\nlocation = "a"\n[[registry.mirror]]\ninsecure = true\n', "registry entry 1: a mirror's"),
        (
            '[[registry]]\nlocation = "a"\n[[registry]]\nprefix = "b"\nlocation = "a"\ninsecure = true\n',
            "registry 'a' is defined more than once with conflicting 'insecure' settings",
        ),
        (
            '[registries.block]\nregistries = ["a"]\n[[registry]]\nlocation = "b"\n',
            "mixing the version 1 ([registries]) and version 2 formats is not supported",
        ),
        ("[registries.block]\nregistries = [1]\n", "[registries.block] registries must be an array of strings"),
        (
            '[[registry]]\nlocation = "a"\n[[registry.mirror]]\nlocation = "m"\npull-from-mirror = "some"\n',
            "registry entry 1, a mirror: unsupported pull-from-mirror value 'some'",
        ),
        (
            '[[registry]]\nlocation = "a"\npull-from-mirror = "all"\n',
            "registry entry 1: pull-from-mirror is a mirror's",
        ),
        (
            '[[registry]]\nlocation = "a"\nmirror-by-digest-only = true\n'
            '[[registry.mirror]]\nlocation = "m"\npull-from-mirror = "all"\n',
            "registry entry 1: mirror-by-digest-only and a mirror's pull-from-mirror cannot both be set",
        ),
    ],
)
def test_what_containers_image_refuses_is_one_reason(text, reason):
    assert refused(text).startswith(reason)


@pytest.mark.parametrize("data", [b"a = " + b"[\n" * 100_000, b"a = " + b"{x=" * 1300])
def test_nesting_deeper_than_the_stack_is_one_reason_not_a_traceback(data):
    with pytest.raises(SourceError) as caught:
        parse(data, "/conf")
    assert caught.value.reason == "not valid TOML for registries.conf: arrays or tables nested too deeply"


def test_a_line_longer_than_any_registries_conf_needs_is_refused_unparsed():
    """tomllib's cost grows with the square of the parts of one dotted key: a 600 KB table header
    took two minutes. A key cannot span lines, so a bound on the line bounds it."""
    header = b"[" + b"a." * (tomlfile.MAX_LINE_BYTES // 2) + b"a]\n"
    with pytest.raises(SourceError) as caught:
        parse(b'[[registry]]\nlocation = "a"\n' + header, "/conf")
    limit = tomlfile.MAX_LINE_BYTES
    assert caught.value.reason == f"line 3 is longer than {limit} bytes, which no registries.conf needs"


def test_a_toml_error_quoting_a_long_key_is_cut():
    key = b"a." * 1000 + b"a"
    reason = refused((b"[" + key + b"]\n[" + key + b"]\n").decode())
    assert reason.startswith("not valid TOML: Cannot declare") and len(reason) <= len("not valid TOML: ") + 201


def test_a_drop_in_must_be_version_2_and_text():
    assert refused('[registries.block]\nregistries = ["a"]\n', drop_in=True).startswith("a drop-in must be")
    with pytest.raises(SourceError) as caught:
        parse(b"\xff\xfe", "/conf")
    assert caught.value.reason == "not UTF-8 text"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_any_bytes_give_entries_or_one_source_error(data):
    try:
        got = parse(data, "/conf")
    except SourceError as exc:
        assert exc.where == "/conf" and "\n" not in exc.reason
    else:
        assert all(isinstance(entry, RegistryEntry) and entry.prefix for entry in got)


_values = st.one_of(st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3))
_tables = st.dictionaries(
    st.sampled_from(["prefix", "location", "insecure", "blocked", "mirror", "mirror-by-digest-only"]), _values
)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return str(value)


@settings(max_examples=300, deadline=None)
@given(st.lists(_tables, max_size=4))
def test_any_registry_tables_give_entries_or_one_source_error(tables):
    text = "".join("[[registry]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in t.items()) for t in tables)
    try:
        got = entries(text)
    except SourceError as exc:
        assert "\n" not in exc.reason
    else:
        assert len(got) == len(tables)
        for entry in got:
            assert entry.prefix and not entry.prefix.startswith(("http://", "https://"))


# ---------------------------------------------------------------- which entry a name meets


@pytest.mark.parametrize(
    "name, found",
    [
        ("a.example", "a.example"),
        ("a.example/team/app", "a.example/team"),
        ("a.example/team", "a.example/team"),
        ("a.example/teams/app", "a.example"),  # a prefix ends at a / : or @
        ("a.example:5000/x", "a.example"),  # as containers/image matches it
        ("a.examples/x", None),
        ("x.b.example/app", "*.b.example"),
        ("b.example/app", None),  # the wildcard wants a subdomain
        ("c.example/x.b.example", None),  # the wildcard is for the host only
    ],
)
def test_the_longest_matching_prefix_wins(name, found):
    conf = rc.RegistriesConf(
        tuple(
            RegistryEntry(prefix, prefix if not prefix.startswith("*") else "")
            for prefix in ("a.example", "a.example/team", "*.b.example")
        )
    )
    entry = conf.find(name)
    assert (entry.prefix if entry else None) == found


# ---------------------------------------------------------------- which files, in which order


def test_the_files_are_those_containers_image_reads(tmp_path):
    home = tmp_path / "home"
    env = {"HOME": str(home)}
    user_dir = str(home / ".config/containers/registries.conf.d")
    assert config_files("", env) == (rc.SYSTEM_FILE, [rc.SYSTEM_DIR, user_dir], False)
    assert config_files("/x.conf", env) == ("/x.conf", [rc.SYSTEM_DIR, user_dir], True)
    assert config_files("", dict(env, CONTAINERS_REGISTRIES_CONF="/e.conf"))[0] == "/e.conf"
    assert config_files("", dict(env, REGISTRIES_CONFIG_PATH="/r.conf"))[0] == "/r.conf"
    assert config_files("/x.conf", dict(env, CONTAINERS_REGISTRIES_CONF="/e.conf"))[0] == "/x.conf"
    os.makedirs(home / ".config/containers")
    (home / ".config/containers/registries.conf").write_text("")
    # a user's own file: only the drop-ins beside it
    assert config_files("", env) == (str(home / ".config/containers/registries.conf"), [user_dir], True)


def test_drop_ins_replace_entries_of_their_prefix_in_name_order(tmp_path, monkeypatch):
    main = tmp_path / "registries.conf"
    main.write_text('[[registry]]\nlocation = "a"\ninsecure = true\n[[registry]]\nlocation = "b"\n')
    system_dir, user_dir = tmp_path / "system.d", tmp_path / "home/.config/containers/registries.conf.d"
    system_dir.mkdir()
    user_dir.mkdir(parents=True)
    (system_dir / "20-b.conf").write_text('[[registry]]\nlocation = "b"\nblocked = true\n')
    (system_dir / "10-a.conf").write_text('[[registry]]\nlocation = "a"\n')
    (system_dir / "30-ignored.toml").write_text("not read")
    (system_dir / "sub.conf").mkdir()
    (user_dir / "00-b.conf").write_text('[[registry]]\nlocation = "b"\ninsecure = true\n')
    monkeypatch.setattr(rc, "SYSTEM_DIR", str(system_dir))
    conf = load(str(main), {"HOME": str(tmp_path / "home")})
    assert conf.files == (
        str(main),
        str(system_dir / "10-a.conf"),
        str(system_dir / "20-b.conf"),
        str(user_dir / "00-b.conf"),
    )
    assert conf.find("a").insecure is False  # 10-a.conf replaced the main file's entry
    b = conf.find("b")
    assert (b.insecure, b.blocked, b.origin) == (True, False, str(user_dir / "00-b.conf"))


def test_the_first_entry_of_a_prefix_in_one_file_wins(tmp_path):
    main = tmp_path / "registries.conf"
    main.write_text('[[registry]]\nlocation = "a"\n[[registry]]\nprefix = "a"\nlocation = "c"\n')
    conf = load(str(main), {"HOME": str(tmp_path)})
    assert conf.find("a/x").location == "a"


@pytest.mark.parametrize("kind", ["missing", "fifo", "huge", "folder"])
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, kind):
    path = tmp_path / "registries.conf"
    if kind == "fifo":
        os.mkfifo(path)  # no one writes it: refused unopened, not waited on
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(rc.MAX_CONF_BYTES + 1)
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(SourceError) as caught:
        load(str(path), {"HOME": str(tmp_path)})
    assert caught.value.where == str(path) and "\n" not in caught.value.reason


def test_drop_ins_that_add_up_to_more_than_any_configuration_needs_are_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "system.d"
    folder.mkdir()
    entry = b'[[registry]]\nlocation = "a"\n'
    padding = b"# padding\n" * ((rc.MAX_CONF_BYTES - len(entry)) // 10)
    for number in range(rc.MAX_TOTAL_BYTES // rc.MAX_CONF_BYTES + 1):
        (folder / f"{number:02}.conf").write_bytes(entry + padding)
    monkeypatch.setattr(rc, "SYSTEM_FILE", str(tmp_path / "absent.conf"))
    monkeypatch.setattr(rc, "SYSTEM_DIR", str(folder))
    with pytest.raises(SourceError) as caught:
        load("", {"HOME": str(tmp_path)})
    last = rc.MAX_TOTAL_BYTES // rc.MAX_CONF_BYTES
    assert caught.value.where == str(folder / f"{last:02}.conf")
    assert caught.value.reason == f"the registries.conf files add up to over {rc.MAX_TOTAL_BYTES} bytes"


def test_a_missing_system_file_is_no_configuration(tmp_path, monkeypatch):
    monkeypatch.setattr(rc, "SYSTEM_FILE", str(tmp_path / "absent.conf"))
    monkeypatch.setattr(rc, "SYSTEM_DIR", str(tmp_path / "absent.d"))
    conf = load("", {"HOME": str(tmp_path)})
    assert conf.entries == () and conf.files == ()


# ---------------------------------------------------------------- where a name is served


@pytest.mark.parametrize(
    "prefix, location, name, served",
    [
        ("a.example", "b.example:5000", "a.example/team/app", "b.example:5000/team/app"),
        ("a.example", "proxy.example/cache", "a.example/team/app", "proxy.example/cache/team/app"),
        ("a.example/team", "proxy.example/t", "a.example/team/app", "proxy.example/t/app"),
        ("a.example/team/app", "b.example/other", "a.example/team/app", "b.example/other"),
        ("*.a.example", "", "x.a.example/app", "x.a.example/app"),
        ("*.a.example", "b.example", "x.a.example/app", "b.example/app"),
        ("a.example", "b.example", "a.example:5000/app", "b.example:5000/app"),  # containers/image's own quirk
    ],
)
def test_a_name_is_served_where_containers_image_rewrites_it(prefix, location, name, served):
    assert rc.rewritten(RegistryEntry(prefix, location), name) == served


def test_a_location_that_makes_no_valid_name_is_one_line(tmp_path):
    from indexer.sources import parse_source
    from indexer.sources.parse import Context
    from indexer.sources.registry_client import RegistryOptions

    conf = tmp_path / "registries.conf"
    conf.write_text('[[registry]]\nprefix = "a.example"\nlocation = "b.example/Upper"\n')
    source = parse_source("docker://a.example/app:v1", registry_options=RegistryOptions(registries_conf=str(conf)))
    with pytest.raises(SourceError) as caught:
        list(source.records(Context(source.kind, source.location)))
    assert str(caught.value).startswith(
        f"docker://a.example/app:v1: {conf} has a.example served as b.example/Upper, which makes 'b.example/Upper/app'"
    )


_parts = st.sampled_from(["a", "b", "a.b", "x", "example", "5000", "team"])
_names = st.builds(
    lambda host, port, path, end: host + port + path + end,
    st.lists(_parts, min_size=1, max_size=3).map(".".join),
    st.sampled_from(["", ":5000"]),
    st.lists(_parts, max_size=3).map(lambda parts: "".join("/" + part for part in parts)),
    st.sampled_from(["", ":v1", "@sha256:0"]),
)
_prefixes = st.one_of(_names, st.lists(_parts, min_size=1, max_size=3).map(lambda parts: "*." + ".".join(parts)))


@settings(max_examples=500, deadline=None)
@given(st.lists(_prefixes, max_size=8, unique=True), _names)
def test_the_found_entry_is_the_one_every_entry_tried_in_turn_finds(prefixes, name):
    conf = rc.RegistriesConf(tuple(RegistryEntry(p, "" if p.startswith("*") else p) for p in sorted(prefixes)))
    best, length = None, 0
    for entry in conf.entries:  # containers/image's FindRegistry, as written
        if rc.match_end(name, entry.prefix) != -1 and len(entry.prefix) > length:
            best, length = entry, len(entry.prefix)
    assert conf.find(name) == best


@pytest.mark.parametrize(
    "conf_text, sent",
    [
        ("", True),
        ('[[registry]]\nprefix = "a.example"\nlocation = "a.example"\ninsecure = true\n', True),
        ('[[registry]]\nprefix = "a.example"\nlocation = "b.example/ns"\n', False),
        ('[[registry]]\nlocation = "a.example"\n[[registry.mirror]]\nlocation = "m.example"\n', False),
    ],
)
def test_credentials_given_for_a_registry_go_to_no_other_host_that_serves_it(tmp_path, conf_text, sent):
    """As containers/image: --username is for the registry named; a host it is moved to or
    mirrored on has credentials of its own (from the auth files), or none."""
    from indexer.sources import parse_source
    from indexer.sources.parse import Context
    from indexer.sources.registry import Crawl
    from indexer.sources.registry_client import RegistryOptions

    conf_path = tmp_path / "registries.conf"
    conf_path.write_text(conf_text)
    options = RegistryOptions(username="u", password="p", auth_files=[], registries_conf=str(conf_path))
    source = parse_source("docker://a.example/app:v1", registry_options=options)
    conf = load(str(conf_path), {"HOME": str(tmp_path)})
    entry = conf.find("a.example/app")
    mirror = entry.pull_sources(digested=False)[0] if entry is not None and entry.mirrors else None
    crawl = Crawl(source, Context(source.kind, source.location), conf, mirror)
    assert (crawl.client.auth.credentials is not None) == sent
    if sent:
        assert crawl.served == "a.example"


def test_an_image_is_pulled_from_the_mirrors_its_reference_allows_then_the_registry():
    [entry] = entries(
        '[[registry]]\nprefix = "a.example"\nlocation = "b.example"\n'
        '[[registry.mirror]]\nlocation = "m1.example"\n'
        '[[registry.mirror]]\nlocation = "m2.example/ns"\ninsecure = true\npull-from-mirror = "digest-only"\n'
        '[[registry.mirror]]\nlocation = "m3.example"\npull-from-mirror = "tag-only"\n'
    )
    by_digest = [(e.location, e.insecure) for e in entry.pull_sources(digested=True)]
    by_tag = [(e.location, e.insecure) for e in entry.pull_sources(digested=False)]
    assert by_digest == [("m1.example", False), ("m2.example/ns", True), ("b.example", False)]
    assert by_tag == [("m1.example", False), ("m3.example", False), ("b.example", False)]
    assert rc.rewritten(entry.pull_sources(True)[1], "a.example/app") == "m2.example/ns/app"


def test_a_run_reads_registries_conf_once_for_all_its_registry_sources(tmp_path, monkeypatch):
    conf = tmp_path / "registries.conf"
    conf.write_text('[[registry]]\nlocation = "a.example"\nblocked = true\n')
    first = rc.load_once(str(conf))
    conf.write_text("not toml [")  # not read again by this process
    assert rc.load_once(str(conf)) is first and first.find("a.example/x").blocked
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))  # another environment reads anew
    with pytest.raises(SourceError):
        rc.load_once("")
