"""The store on Delta tables, end to end through the CLI: history and --as-of, compact, migrate from
the first layout, several index runs at once, and a run killed with SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from builders import Blobs, named, write_dir
from conftest import sample_sources

from indexer.store import paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def layout(root: str, images: dict[str, bytes]) -> str:
    """An OCI layout whose `org.opencontainers.image.ref.name` tags point at images built from the
    given layer bytes (one distinct image per distinct value)."""
    blobs = Blobs()
    top = [named(blobs.image(layers=(layer,)), ref) for ref, layer in images.items()]
    return write_dir(root, blobs.layout_files(top))


def as_json(result) -> dict | list:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def current(run_cli, store, *extra) -> dict:
    """id -> (name, tags) of every image, as `list` prints it."""
    doc = as_json(run_cli("list", "--store", store, "--page-size", "1000", "--format", "json", *extra))
    return {image["id"]: (image.get("name", ""), tuple(image.get("tags", []))) for image in doc.get("images", [])}


def test_history_and_as_of_answer_what_a_tag_pointed_at_then(run_cli, tmp_path):
    store = str(tmp_path / "store")
    first = layout(str(tmp_path / "one"), {"v1": b"old"})
    second = layout(str(tmp_path / "two"), {"v1": b"new"})
    args = ["--registry", "cr.example", "--repository", "team/app"]
    assert run_cli("index", "--store", store, *args, f"oci:{first}").exit_code == 0
    then = current(run_cli, store)
    time.sleep(0.05)
    middle = time.time()
    time.sleep(0.05)
    assert run_cli("index", "--store", store, *args, f"oci:{second}").exit_code == 0
    now = current(run_cli, store)
    assert [tags for _, tags in then.values()] == [("v1",)]
    # the tag moved to the new image; the old one stays, untagged
    assert sorted(tags for _, tags in now.values()) == [(), ("v1",)]
    moved_to = next(i for i, (_, tags) in now.items() if tags)
    assert moved_to not in then

    versions = as_json(run_cli("history", "--store", store, "--format", "json"))["versions"]
    images = [v for v in versions if v["table"] == "images" and v["operation"] == "append"]
    assert len(images) == 2 and images[0]["version"] > images[1]["version"]
    assert {v["run"] for v in versions if v["operation"] == "append"} == {images[0]["run"], images[1]["run"]}

    old_version = str(images[1]["version"])
    assert current(run_cli, store, "--as-of", old_version) == then
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle)) + f".{int(middle % 1 * 1e6):06d}Z"
    assert current(run_cli, store, "--as-of", stamp) == then
    got = as_json(run_cli("get", "cr.example/team/app:v1", "--store", store, "--as-of", old_version))
    assert got["id"] in then
    assert as_json(run_cli("get", "cr.example/team/app:v1", "--store", store))["id"] == moved_to
    counts = run_cli(
        "sql", "SELECT count(*) AS n FROM images", "--store", store, "--as-of", old_version, "--format", "json"
    )
    assert json.loads(counts.output) == {"n": 1}

    for text in ("last tuesday", "\u00b2", "\u0663"):  # superscript two, Arabic-Indic three
        bad = run_cli("list", "--store", store, "--as-of", text)
        assert bad.exit_code == 2 and "neither a version number nor an ISO 8601 time" in bad.output, text
    early = run_cli("list", "--store", store, "--as-of", "2001-01-01T00:00:00Z")
    assert early.exit_code == 1 and early.output.count("\n") == 1 and "Traceback" not in early.output


def test_as_of_each_time_history_shows_reads_the_store_as_it_was(run_cli, tmp_path):
    """The first run makes the tables one after another: at the time of the images table's
    creation the tags and runs tables did not exist yet, and `get --as-of` that time failed."""
    store = str(tmp_path / "store")
    assert run_cli("index", "--store", store, *sample_sources()).exit_code == 0
    versions = as_json(run_cli("history", "--store", store, "--format", "json"))["versions"]
    count = (
        "SELECT (SELECT count(*) FROM images) AS i, (SELECT count(*) FROM tags) AS t, (SELECT count(*) FROM runs) AS r"
    )
    for entry in versions:
        result = run_cli("sql", count, "--store", store, "--as-of", entry["time"], "--format", "json")
        assert result.exit_code == 0, (entry, result.output)
        if entry["operation"] != "append":
            assert json.loads(result.output) == {"i": 0, "t": 0, "r": 0}
            lookup = run_cli("get", "imgdex-test/app:1.0", "--store", store, "--as-of", entry["time"])
            assert lookup.exit_code == 1 and lookup.stderr == "imgdex: image imgdex-test/app:1.0 not found\n"
    early = run_cli("get", "imgdex-test/app:1.0", "--store", store, "--as-of", "2001-01-01T00:00:00Z")
    assert early.stderr == "imgdex: table images has no version committed at or before that time\n"


def test_a_recrawl_that_finds_nothing_new_writes_only_its_run_record(run_cli, tmp_path):
    store = str(tmp_path / "store")
    assert run_cli("index", "--store", store, *sample_sources()).exit_code == 0
    before = as_json(run_cli("history", "--store", store, "--format", "json"))["versions"]
    assert run_cli("index", "--store", store, *sample_sources()).exit_code == 0
    after = as_json(run_cli("history", "--store", store, "--format", "json"))["versions"]
    added = [v for v in after if v not in before]
    assert [(v["table"], v["operation"]) for v in added] == [("runs", "append")]


def test_compact_keeps_every_answer_and_leaves_one_file_per_table(run_cli, tmp_path):
    store = str(tmp_path / "store")
    for source in sample_sources():
        assert run_cli("index", "--store", store, source).exit_code == 0
    before = current(run_cli, store)
    documents = {i: as_json(run_cli("get", i, "--store", store)) for i in before}
    result = run_cli("compact", "--store", store, "--retention", "0", "--allow-short-retention")
    outcome = as_json(result)
    assert outcome["images"]["files_after"] == 1 and outcome["images"]["files_before"] == len(sample_sources())
    assert current(run_cli, store) == before
    assert {i: as_json(run_cli("get", i, "--store", store)) for i in before} == documents
    parquet = [n for n in os.listdir(os.path.join(store, "images")) if n.endswith(".parquet")]
    assert len(parquet) == 1  # vacuumed: nothing but the compacted file is left
    refused = run_cli("compact", "--store", store, "--retention", "10m")
    assert refused.exit_code == 2 and refused.output.count("\n") == 1
    assert "--retention: under 1:00:00 could delete files of a run that is still writing" in refused.output
    # Spelled as the other numbers are: float() also took `1_0`, blanks and other scripts' digits.
    for bad in ("inf", "nan", "1e300d", "10x", "", "1_0h", "\u0661h", " 1h", "1h ", "7 d"):
        result = run_cli("compact", "--store", store, "--retention", bad)
        assert result.exit_code == 2 and "is not a duration" in result.output, bad
    negative = run_cli("compact", "--store", store, "--retention", "-5d")
    assert negative.exit_code == 2 and negative.output.count("\n") == 1


@pytest.mark.parametrize(
    "line",
    [
        "5",
        "[1]",
        '{"add": 5}',
        '{"add": {}}',
        '{"add": {"path": 5}}',
        '{"add": {"path": "a", "stats": 5}}',
        '{"remove": {}}',
        '{"metaData": 5}',
        '{"metaData": {"configuration": "x"}}',
        '{"protocol": 5}',
        '{"commitInfo": 5}',
        '{"commitInfo": {"timestamp": "x"}}',
    ],
)
def test_a_commit_of_the_wrong_shape_is_refused_in_one_line(run_cli, tmp_path, line):
    store = str(tmp_path / "store")
    assert run_cli("index", "--store", store, sample_sources()[0]).exit_code == 0
    log = os.path.join(store, "tags", "_delta_log")
    commits = [n for n in os.listdir(log) if n.endswith(".json")]
    with open(os.path.join(log, f"{len(commits):020d}.json"), "w") as f:  # the next version
        f.write(line + "\n")
    for as_of in ((), ("--as-of", "2999-01-01T00:00:00Z"), ("--as-of", "1")):
        result = run_cli("sql", "SELECT 1", *as_of, "--store", store)
        assert result.exit_code == 1, as_of
        [message] = result.output.splitlines()
        assert message.startswith("imgdex: table tags: commit 0000") and "is not a Delta commit" in message, message


def test_history_limit_beyond_any_count_lists_every_version(run_cli, tmp_path):
    store = str(tmp_path / "store")
    assert run_cli("index", "--store", store, sample_sources()[0]).exit_code == 0
    every = as_json(run_cli("history", "--store", store, "--format", "json"))["versions"]
    for limit in (str(len(every)), str(2**64)):
        listed = as_json(run_cli("history", "--store", store, "--format", "json", "--limit", limit))["versions"]
        assert listed == every, limit
    newest = as_json(run_cli("history", "--store", store, "--format", "json", "--limit", "2"))["versions"]
    assert newest == every[:2]


def test_compact_takes_a_retention_that_reaches_back_before_year_one(run_cli, tmp_path):
    store = str(tmp_path / "store")
    assert run_cli("index", "--store", store, sample_sources()[0]).exit_code == 0
    before = current(run_cli, store)
    outcome = as_json(run_cli("compact", "--store", store, "--retention", "999999d"))
    assert outcome["images"]["files_after"] == 1
    assert current(run_cli, store) == before


OLD_STORE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "old-store")


def _old_store(store: str, form: str) -> None:
    """A store in the first layout (see tests/fixtures/README.md): its database and Parquet
    snapshot, or a bare copy of the snapshot's Parquet files."""
    import duckdb

    os.makedirs(store)
    if form == "bare":
        for table in paths.TABLES:
            shutil.copy(paths.table_file(OLD_STORE, table), store)
        return
    snapshot = os.path.join(store, paths.SNAPSHOTS, "1")
    os.makedirs(snapshot)
    with duckdb.connect(os.path.join(store, paths.DATABASE)) as con:
        for table in paths.TABLES:
            shutil.copy(paths.table_file(OLD_STORE, table), snapshot)
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM '{paths.table_file(OLD_STORE, table)}'")
    os.symlink(os.path.join(paths.SNAPSHOTS, "1"), os.path.join(store, paths.SNAPSHOT_LINK))


@pytest.mark.parametrize("form", ["database", "bare"])
def test_migrate_converts_the_first_layout_in_place_with_the_same_answers(run_cli, tmp_path, form):
    store = str(tmp_path / "old")
    _old_store(store, form)
    before = current(run_cli, store)
    documents = {i: as_json(run_cli("get", i, "--store", store)) for i in before}
    runs_before = run_cli("sql", "SELECT run_id, images_indexed FROM runs", "--store", store, "--format", "json").output

    refused = run_cli("index", "--store", store, sample_sources()[0])
    assert refused.exit_code == 1 and "imgdex migrate" in refused.output and refused.output.count("\n") == 1
    history = run_cli("history", "--store", store)
    assert history.exit_code == 1 and "imgdex migrate" in history.output
    # Bare files are also what `export` writes: the advice says what migrating does to them.
    assert ("replacing the Parquet files" in history.output) == (form == "bare")
    assert ("has the layout of imgdex 0.1" in history.output) == (form == "database")

    result = run_cli("migrate", "--store", store)
    assert result.exit_code == 0, result.output
    assert f"{len(before)} images" in result.output
    assert sorted(os.listdir(store)) == ["images", "runs", "tags"]
    assert current(run_cli, store) == before
    assert {i: as_json(run_cli("get", i, "--store", store)) for i in before} == documents
    runs_after = run_cli("sql", "SELECT run_id, images_indexed FROM runs", "--store", store, "--format", "json").output
    assert runs_after == runs_before
    # and the store takes runs again
    assert run_cli("index", "--store", store, "--repository", "samples/app", *sample_sources()).exit_code == 0
    assert current(run_cli, store) == before
    again = run_cli("migrate", "--store", store)
    assert again.exit_code == 1 and "already" in again.output


@pytest.mark.parametrize("moved", [("runs",), ("runs", "tags")])
def test_a_migration_stopped_between_its_renames_is_finished_by_the_next(run_cli, tmp_path, moved):
    """The tables move in one by one, images last. A migration stopped before images moved left
    the old store readable, but every later one failed on the tables already there, in a traceback."""
    done = str(tmp_path / "done")
    _old_store(done, "database")
    assert run_cli("migrate", "--store", done).exit_code == 0
    store = str(tmp_path / "old")
    _old_store(store, "database")
    before = current(run_cli, store)
    for table in moved:  # what the stopped migration had moved in
        shutil.copytree(os.path.join(done, table), os.path.join(store, table))
    assert current(run_cli, store) == before  # still the old store

    result = run_cli("migrate", "--store", store)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(store)) == ["images", "runs", "tags"]
    assert current(run_cli, store) == before


def test_a_migration_that_cannot_move_its_tables_in_is_one_line(run_cli, tmp_path):
    store = str(tmp_path / "old")
    _old_store(store, "database")
    with open(os.path.join(store, "tags"), "w") as f:  # not a table: left alone
        f.write("mine\n")
    result = run_cli("migrate", "--store", store)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("imgdex: cannot migrate ") and "tags" in result.output, result.output
    assert open(os.path.join(store, "tags")).read() == "mine\n"


def test_the_migration_summary_names_the_store_escaped(run_cli, tmp_path):
    """A bidirectional control in the name reordered the line; NEL (U+0085) ends one for some readers."""
    store = str(tmp_path / "old\u202estore\x85x")
    _old_store(store, "bare")
    result = run_cli("migrate", "--store", store)
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith(f"migrated {tmp_path}/old\\u202estore\\x85x: "), line


def test_an_export_is_read_and_named_as_plain_parquet(run_cli, tmp_path, samples_store):
    export = str(tmp_path / "export")
    assert run_cli("export", export, "--store", samples_store).exit_code == 0
    assert current(run_cli, export) == current(run_cli, samples_store)
    for args in (["history"], ["compact"], ["index", sample_sources()[0]]):
        refused = run_cli(*args, "--store", export)
        assert refused.exit_code == 1 and refused.output.count("\n") == 1, (args, refused.output)
        assert "holds plain Parquet files (an `imgdex export`" in refused.output, refused.output
    assert sorted(os.listdir(export)) == ["images.parquet", "runs.parquet", "tags.parquet"]


def test_migrate_refuses_a_folder_that_holds_no_store(run_cli, tmp_path):
    result = run_cli("migrate", "--store", str(tmp_path))
    assert result.exit_code == 1 and "no store to migrate" in result.output


def _index_process(store: str, *sources: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "queries.cli", "index", "--store", store, *sources],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _tag_layouts(tmp_path) -> list[str]:
    """Four layouts that share images and move the same tags between them."""
    specs = [
        {"a": b"1", "b": b"2", "shared": b"s"},
        {"a": b"3", "c": b"4", "shared": b"s"},
        {"b": b"1", "c": b"5", "d": b"6"},
        {"a": b"1", "d": b"7", "shared": b"s2"},
    ]
    return [f"oci:{layout(str(tmp_path / f'l{n}'), spec)}" for n, spec in enumerate(specs)]


def test_four_index_runs_at_once_all_land(run_cli, tmp_path):
    """Overlapping images and tag moves, four processes at once: every image lands, every run is
    recorded, and each tag points at an image that one of the runs gave it (which one depends on the
    order of commits, as with runs one after another)."""
    sources = _tag_layouts(tmp_path)
    store = str(tmp_path / "store")
    procs = [_index_process(store, "--repository", "team/app", source) for source in sources]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    together = current(run_cli, store)

    sequential = str(tmp_path / "sequential")
    for source in sources:
        assert run_cli("index", "--store", sequential, "--repository", "team/app", source).exit_code == 0
    one_by_one = current(run_cli, sequential)
    assert set(together) == set(one_by_one)
    tags = [tag for _, held in together.values() for tag in held]
    assert sorted(tags) == sorted(set(tags)) == ["a", "b", "c", "d", "shared"]
    runs = json.loads(run_cli("sql", "SELECT count(*) AS n FROM runs", "--store", store, "--format", "json").output)
    assert runs == {"n": 4}


def test_an_index_run_killed_at_any_moment_leaves_a_readable_store(run_cli, tmp_path):
    sources = _tag_layouts(tmp_path)
    store = str(tmp_path / "store")
    assert run_cli("index", "--store", store, "--repository", "team/app", sources[0]).exit_code == 0
    baseline = current(run_cli, store)
    for delay in (0.05, 0.2, 0.4, 0.8, 1.2):
        proc = _index_process(store, "--repository", "team/app", *sources[1:])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        state = current(run_cli, store)
        assert set(baseline) <= set(state)
        tags = [tag for _, held in state.values() for tag in held]
        assert len(tags) == len(set(tags))  # a tag names one image, whatever was cut short
    assert run_cli("index", "--store", store, "--repository", "team/app", *sources[1:]).exit_code == 0
    reference = str(tmp_path / "reference")
    for source in sources:
        assert run_cli("index", "--store", reference, "--repository", "team/app", source).exit_code == 0
    assert set(current(run_cli, store)) == set(current(run_cli, reference))


@pytest.mark.parametrize("command", ["history", "compact"])
def test_maintenance_commands_on_a_missing_store_say_so(run_cli, tmp_path, command):
    result = run_cli(command, "--store", str(tmp_path / "nothing"))
    assert result.exit_code == 1 and "no image store" in result.output


def test_a_store_of_a_newer_schema_version_is_refused_in_one_line(run_cli, tmp_path):
    from deltalake import DeltaTable

    from indexer.store import deltalog

    store = str(tmp_path / "store")
    assert run_cli("index", "--store", store, sample_sources()[0]).exit_code == 0
    version = json.loads(
        run_cli("sql", "SELECT count(*) AS n FROM images", "--store", store, "--format", "json").output
    )
    assert version["n"] > 0
    table = DeltaTable(os.path.join(store, "images"))
    assert table.metadata().configuration[deltalog.SCHEMA_VERSION_PROPERTY] == str(deltalog.SCHEMA_VERSION)
    table.alter.set_table_properties(
        {deltalog.SCHEMA_VERSION_PROPERTY: str(deltalog.SCHEMA_VERSION + 1)}, raise_if_not_exists=False
    )
    for args in (("list",), ("sql", "SELECT 1"), ("index", sample_sources()[0]), ("history",)):
        result = run_cli(*args, "--store", store)
        assert result.exit_code == 1, args
        [line] = result.output.splitlines()
        assert "written by a newer imgdex" in line and "Traceback" not in result.output, args


def test_get_by_id_reads_the_files_that_may_hold_it_and_falls_back_to_references(run_cli, tmp_path):
    """Each data file's id range is in the Delta log; a get by id opens only the files whose range
    holds it. A query shaped like an id that names a repository still finds its image."""
    from queries import engine

    store = str(tmp_path / "store")
    assert run_cli("index", "--store", store, "--repository", "samples/app", *sample_sources()).exit_code == 0
    lookalike = "crp0123456789abcdefg"
    source = layout(str(tmp_path / "lookalike"), {"latest": b"x"})
    assert run_cli("index", "--store", store, "--repository", lookalike, f"oci:{source}").exit_code == 0
    ids = sorted(current(run_cli, store))
    whole = engine.connect(store, tables=("images",))
    narrowed = engine.connect(store, tables=("images",), key=ids[0])
    assert narrowed._files and len(narrowed._files) < len(whole._files)
    for image_id in ids:
        got = as_json(run_cli("get", image_id, "--store", store))
        assert got["id"] == image_id
    by_name = as_json(run_cli("get", lookalike, "--store", store))
    assert by_name["name"] == lookalike


def test_get_by_id_reads_only_the_files_with_rows_of_it_and_answers_as_the_whole_store(run_cli, tmp_path):
    """Runs appended since compaction span many ids each, so id ranges keep all their files; a get
    by id narrows to the files that hold a row of the id, and answers as a reader of every file."""
    import duckdb

    from indexer.store import deltalog
    from queries import engine, lookup

    store = str(tmp_path / "store")
    assert run_cli("index", "--store", store, "--repository", "samples/app", *sample_sources()).exit_code == 0
    assert run_cli("compact", "--store", store).exit_code == 0
    # Later runs: images whose ids fall among the samples', and a tag moved off a sample image (a
    # tags-only row for it in a later file).
    for name, tags in (("samples/app", {"v1": b"moved"}), ("aaa/first", {"v1": b"a", "v2": b"b"})):
        source = layout(str(tmp_path / name.replace("/", "-")), tags)
        assert run_cli("index", "--store", store, "--repository", name, f"oci:{source}").exit_code == 0

    images = deltalog.read_store(store, tables=("images",))["images"]
    listed = ", ".join("'" + f + "'" for f in images.files)
    rows = duckdb.sql(f"SELECT id, filename FROM read_parquet([{listed}], filename = true)").fetchall()
    holding: dict[str, set[str]] = {}
    for image_id, filename in rows:
        holding.setdefault(image_id, set()).add(filename)
    whole = engine.connect(store, tables=("images",))
    narrowed_somewhere = False
    for image_id in [*sorted(holding), "crp" + "0" * 17]:
        narrowed = engine.connect(store, tables=("images",), key=image_id)
        assert lookup.by_id(narrowed, image_id) == lookup.by_id(whole, image_id), image_id
        ranged = images.for_key(image_id).files
        if len(ranged) > 1:
            assert set(narrowed._files) == holding.get(image_id, set()), image_id
            narrowed_somewhere |= len(narrowed._files) < len(ranged)
    assert narrowed_somewhere and any(len(files) > 1 for files in holding.values())


def test_history_numbers_each_commit_by_its_own_version_when_a_commit_lands_while_it_reads(
    run_cli, tmp_path, monkeypatch
):
    """delta-rs's history() lists the newest commits when asked and numbers them from the version
    the table was loaded at: a commit landing in between took the place of the one listed, and a
    user reading the list would ask --as-of a version holding another run's rows."""
    from indexer.store.delta import DeltaStore

    store = str(tmp_path / "store")
    args = ["--registry", "cr.example", "--repository", "team/app"]
    for n in range(2):
        assert (
            run_cli(
                "index", "--store", store, *args, f"oci:{layout(str(tmp_path / f'l{n}'), {'v1': b'%d' % n})}"
            ).exit_code
            == 0
        )
    real = DeltaStore._delta
    landed: list[bool] = []

    def late(n: int) -> str:
        return layout(str(tmp_path / f"late{n}"), {"v1": b"late %d" % n})

    def load_then_a_commit_lands(self, table):
        dt = real(self, table)
        if table == "images" and len(landed) < 3:  # after each load of the table that history makes
            landed.append(True)
            # Another process's run: a separate store object, as another process has its own.
            done = subprocess.run(
                [sys.executable, "-m", "queries.cli", "index", "--store", store, *args, f"oci:{late(len(landed))}"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
        return dt

    monkeypatch.setattr(DeltaStore, "_delta", load_then_a_commit_lands)
    versions = as_json(run_cli("history", "--store", store, "--format", "json"))["versions"]
    assert landed
    listed = [v for v in versions if v["table"] == "images"]
    log = os.path.join(store, "images", "_delta_log")
    for entry in listed:
        with open(os.path.join(log, f"{entry['version']:020d}.json")) as f:
            info = next(json.loads(line)["commitInfo"] for line in f if '"commitInfo"' in line)
        assert entry["run"] == info.get("imgdex.runId"), entry
    assert [v["version"] for v in listed] == sorted({v["version"] for v in listed}, reverse=True)
