"""`index --jobs N` for archives, layouts and folders: N worker processes give the store, the
summary and the run record that one process gives, and a worker that dies fails the run cleanly.

Small fixtures are below the work a second process pays for, so most tests lower
`workers.MIN_WORK`. DuckDB is imported here first, so workers started in this process are fresh
interpreters (spawn); the tests that run the command as its own process cover fork.
"""

from __future__ import annotations

import array
import json
import os
import signal
import subprocess
import sys
import time

import duckdb  # noqa: F401  (see the module's docstring)
import pytest
from builders import Blobs, classic_save_files, named, write_dir, write_tar
from click.testing import CliRunner
from conftest import ROOT, store_views

from indexer import workers
import indexer.run as run_module
from indexer.run import RunObserver, RunSettings
from indexer.shard import CountedShard, Shard
from indexer.sources import SourceOptions

VOLATILE = {"indexed_at"}


@pytest.fixture
def small_runs_split(monkeypatch):
    monkeypatch.setattr(workers, "MIN_WORK", 0)


def cli(*args):
    from queries.cli import cli as command

    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


# The command as its own process (workers start by fork), with every run split however small.
HARNESS = (
    "import sys; import indexer.workers as w; w.MIN_WORK = 0; from queries.cli import cli; "
    "cli.main(args=sys.argv[1:], prog_name='imgdex')"
)


def cli_process(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HARNESS, *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def contents(store: str) -> tuple[list, list]:
    """Every current image row (without the time it was written) and every tag, sorted."""
    con = store_views(store)
    columns = [r[0] for r in con.execute("DESCRIBE images").fetchall() if r[0] not in VOLATILE]
    images = con.execute(f"SELECT {', '.join(columns)} FROM images ORDER BY id").fetchall()
    tags = con.execute("SELECT registry, name, tag, image_id FROM tags ORDER BY ALL").fetchall()
    return images, tags


def runs(store: str) -> list[tuple]:
    con = store_views(store)
    return con.execute("SELECT sources, images_indexed, images_failed, errors FROM runs").fetchall()


def index_both(tmp_path, *args) -> tuple[dict, dict, str, str]:
    """(--jobs 1 summary, --jobs 2 summary, store 1, store 2), each run into a new store."""
    out = []
    for jobs in (1, 2):
        store = str(tmp_path / f"store{jobs}")
        result = cli("index", *args, "--store", store, "--jobs", jobs, "--json")
        out.append((json.loads(result.stdout), store, result))
    (one, store1, r1), (two, store2, r2) = out
    assert r1.exit_code == r2.exit_code
    return one, two, store1, store2


def owner(key: str, workers_count: int = 2) -> int:
    """The worker (1-based) whose slice holds a folder entry or a layout descriptor key."""
    return next(k for k in range(1, workers_count + 1) if Shard.ALL.within(k, workers_count).owns(key))


def names_on(count_by_worker: dict[int, int], pattern: str) -> list[str]:
    """File names from `pattern` (with {i}), in path order, on the given workers, as many as asked."""
    wanted = dict(count_by_worker)
    names = []
    i = 0
    while any(wanted.values()):
        name = pattern.format(i=i)
        worker = owner(name)
        if wanted.get(worker):
            wanted[worker] -= 1
            names.append(name)
        i += 1
    return sorted(names)


def classic(path: str, tag: str | None, salt: str) -> str:
    tags = [tag] if tag else None
    return write_tar(path, classic_save_files([{"tags": tags, "layers": [b"base", salt.encode()]}]))


def oci_archive(path: str, ref: str, salt: str) -> str:
    blobs = Blobs()
    top = [named(blobs.image(layers=(b"base", salt.encode())), ref)]
    return write_tar(path, blobs.layout_files(top))


def mixed_folder(root, shared: bool = False) -> str:
    """Archives of both kinds and a layout, on both workers, some claiming the same tags; with
    `shared`, some archives also hold the same images."""
    os.makedirs(root)
    for n, name in enumerate(names_on({1: 4, 2: 4}, "c{i:03d}.tar")):
        classic(os.path.join(root, name), f"team/classic:v{n % 3}", f"classic-{n % 5 if shared else n}")
    for n, name in enumerate(names_on({1: 3, 2: 3}, "o{i:03d}.tar")):
        oci_archive(os.path.join(root, name), f"cr.example/team/oci:v{n % 2}", f"oci-{n % 4 if shared else n}")
    blobs = Blobs()
    top = [named(blobs.image(layers=(b"base", f"l{i}".encode())), f"cr.example/team/layout:t{i % 3}") for i in range(6)]
    write_dir(os.path.join(root, "z-layout"), blobs.layout_files(top))
    return str(root)


# ---------------------------------------------------------------- the slices


def test_the_slices_of_a_shard_are_disjoint_and_make_it_up():
    keys = [f"key-{i}" for i in range(3000)]
    for outer in (Shard.ALL, Shard(1, 2), Shard(3, 3), Shard(2, 5)):
        for count in (1, 2, 3, 4):
            owners = [[k for k in range(1, count + 1) if outer.within(k, count).owns(key)] for key in keys]
            assert all(len(o) == (1 if outer.owns(key) else 0) for o, key in zip(owners, keys))
            if count > 1:  # each slice takes its part
                taken = [o[0] for o in owners if o]
                assert set(taken) == set(range(1, count + 1))
    assert Shard.ALL.within(2, 4) == Shard(2, 4)


def test_a_counted_shard_counts_every_unit_it_is_asked_about():
    shard = CountedShard(Shard(1, 2))
    answers = [shard.owns(f"k{i}") for i in range(10)]
    assert shard.asked == 10 and answers == [Shard(1, 2).owns(f"k{i}") for i in range(10)]


def test_small_runs_and_single_archives_stay_in_one_process(tmp_path):
    folder = tmp_path / "few"
    os.makedirs(folder)
    for i in range(3):
        classic(str(folder / f"a{i}.tar"), f"app:v{i}", f"s{i}")
    assert workers.plan([str(folder)], jobs=2) is None  # far below MIN_WORK
    assert workers.plan([str(folder)], jobs=1) is None
    assert workers.plan([str(folder / "a0.tar")], jobs=4) is None  # one unit, however big


def test_enough_work_is_shared(tmp_path):
    """A layout listing more images than MIN_WORK, or two compressed archives as costly, go to
    workers (the plan reads only index.json, and the archives' first bytes)."""
    layout = tmp_path / "layout"
    os.makedirs(layout)
    entry = '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%064x","size":1}'
    manifests = ",".join(entry % i for i in range(workers.MIN_WORK))
    (layout / "index.json").write_text('{"schemaVersion":2,"manifests":[%s]}' % manifests)
    work = workers.plan([str(layout)], jobs=3)
    slices = [[task.shard.shard for task in share] for share in work.shares]
    assert slices == [[Shard(1, 3)], [Shard(2, 3)], [Shard(3, 3)]]
    assert workers.plan([f"oci:{layout}"], jobs=3) is not None
    small = tmp_path / "small"
    os.makedirs(small)
    (small / "index.json").write_text('{"schemaVersion":2,"manifests":[%s]}' % ",".join(entry % i for i in range(9)))
    assert workers.plan([str(small)], jobs=2) is None
    gz = []
    for name in ("a.tar.gz", "b.tar.gz", "c.tar.gz"):
        gz.append(str(tmp_path / name))
        with open(gz[-1], "wb") as f:
            f.write(b"\x1f\x8b")
            f.truncate(workers.BYTES_PER_IMAGE * workers.MIN_WORK // 2)  # sparse: no disk space taken
    work = workers.plan(gz, jobs=2)
    assert sorted(len(share) for share in work.shares) == [1, 2]  # the heaviest first, to the least loaded
    assert workers.plan(gz[:1], jobs=2) is None  # one archive is one unit, however big


def test_the_plan_keeps_what_can_be_read_once_and_what_is_not_a_file_here(tmp_path, small_runs_split):
    folder = mixed_folder(tmp_path / "folder")
    archive = classic(str(tmp_path / "one.tar"), "app:1", "x")
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    specs = [folder, "-", "docker-archive:-", fifo, "docker://127.0.0.1:1/app", "ycr-json:x.json", archive]
    work = workers.plan(specs, jobs=2, settings=RunSettings(options=SourceOptions()))
    assert len(work.shares) == 2
    here = [t.spec for t in work.shares[0] if not isinstance(t.shard, CountedShard)]
    there = [t.spec for t in work.shares[1] if not isinstance(t.shard, CountedShard)]
    assert sorted(here + there) == sorted(specs[1:])
    assert set(specs[1:6]) <= set(here)  # read once, or not files: never in a worker
    assert [t.spec for share in work.shares for t in share if isinstance(t.shard, CountedShard)] == [folder, folder]
    assert work.folders == {0}


def test_a_user_shard_is_split_again_not_replaced(tmp_path, small_runs_split):
    folder = mixed_folder(tmp_path / "folder")
    work = workers.plan([folder], jobs=2, settings=RunSettings(shard=Shard(2, 3)))
    assert [task.shard.shard for share in work.shares for task in share] == [Shard(2, 6), Shard(5, 6)]


# ---------------------------------------------------------------- the same run


def test_a_folder_of_archives_gives_the_store_and_summary_of_one_process(tmp_path, small_runs_split):
    assert workers._start_method() == "spawn"  # this process has loaded DuckDB
    folder = mixed_folder(tmp_path / "folder")
    one, two, store1, store2 = index_both(tmp_path, folder)
    assert one == {**two, "seconds": one["seconds"]}
    assert one["failed"] == 0 and one["indexed"] == 20
    assert contents(store1) == contents(store2)
    images, tags = contents(store2)
    assert len(images) == 20 and len(tags) == 8  # 3 + 2 tags taken from 9 earlier claims, and the layout's 3
    [(sources, indexed, failed, errors)] = runs(store2)
    assert (sources, indexed, failed, errors) == ([folder], 20, 0, [])


def test_an_image_in_archives_of_two_workers_is_one_image(tmp_path, small_runs_split):
    """The same image in several archives: one row with the tags of all, as with one process. Its
    source is one of the archives that hold it; which one depends on the order the workers commit
    in, as it depends on batches in one process (an unchanged image keeps the source it was first
    written from)."""
    folder = mixed_folder(tmp_path / "folder", shared=True)
    one, two, store1, store2 = index_both(tmp_path, folder)
    (images1, tags1), (images2, tags2) = contents(store1), contents(store2)
    assert tags1 == tags2 and len(images1) == len(images2) == 15
    # an image two workers both wrote counts once, as in one process
    assert one["indexed"] == two["indexed"] == 15
    con = store_views(store1)
    columns = [r[0] for r in con.execute("DESCRIBE images").fetchall() if r[0] not in VOLATILE]
    where = columns.index("source_path")
    for one, two in zip(images1, images2):
        assert one[:where] + one[where + 1 :] == two[:where] + two[where + 1 :]
        if one[where] != two[where]:  # both archives hold that image
            assert os.path.basename(one[where])[0] == os.path.basename(two[where])[0]


def test_an_oci_layout_gives_the_store_of_one_process(tmp_path, small_runs_split):
    """Descriptors on both workers, an index and its child listed on their own (one worker must
    walk both), and one tag given to two manifests: the later descriptor's wins."""
    blobs = Blobs()
    children = [blobs.image(arch=arch, layers=(b"base", arch.encode())) for arch in ("amd64", "arm64")]
    top = [named(blobs.index(children), "cr.example/team/multi:1"), named(children[1], "cr.example/team/multi:arm")]
    for i in range(30):
        top.append(named(blobs.image(layers=(b"base", f"i{i}".encode())), f"cr.example/team/app:t{i}"))
    keys = [d["digest"] for d in top]
    first = next(i for i in range(2, 32) if owner(keys[i]) == 1)
    later = next(i for i in range(first + 1, 32) if owner(keys[i]) == 2)
    top[first] = named(top[first], "cr.example/team/app:latest")
    top[later] = named(top[later], "cr.example/team/app:latest")
    layout = write_dir(str(tmp_path / "layout"), blobs.layout_files(top))
    one, two, store1, store2 = index_both(tmp_path, f"oci:{layout}")
    assert one == {**two, "seconds": one["seconds"]}
    assert contents(store1) == contents(store2)
    con = store_views(store2)
    holders = con.execute("SELECT image_id FROM tags WHERE tag = 'latest'").fetchall()
    expected = con.execute("SELECT id FROM images WHERE digest = ?", [keys[later]]).fetchall()
    assert holders == expected


@pytest.mark.parametrize("kind", ["classic", "oci"])
@pytest.mark.parametrize("later_on", [1, 2])
def test_a_tag_two_archives_claim_goes_to_the_later_one_as_in_one_process(tmp_path, small_runs_split, kind, later_on):
    """Two archives of one folder, on different workers, both tagged app:latest: the later one in
    path order holds it, whichever worker commits last. Classic saves have no manifest digest."""
    folder = tmp_path / "folder"
    os.makedirs(folder)
    earlier_on = 3 - later_on
    early = next(n for n in names_on({earlier_on: 3}, "a{i:02d}.tar"))
    late = next(n for n in names_on({later_on: 20}, "b{i:02d}.tar"))
    assert early < late and owner(early) != owner(late)
    for name, salt in ((early, "early"), (late, "late")):
        if kind == "classic":
            classic(str(folder / name), "cr.example/team/app:latest", salt)
        else:
            oci_archive(str(folder / name), "cr.example/team/app:latest", salt)
    # a third image keeps another tag, untouched
    classic(str(folder / "c.tar"), "cr.example/team/app:other", "other")
    one, two, store1, store2 = index_both(tmp_path, str(folder))
    assert one["indexed"] == two["indexed"] == 3
    assert contents(store1) == contents(store2)
    con = store_views(store2)
    [(holder, source)] = con.execute(
        "SELECT t.image_id, i.source_path FROM tags t JOIN images i ON i.id = t.image_id WHERE t.tag = 'latest'"
    ).fetchall()
    assert source.endswith(late)
    assert con.execute("SELECT count(*) FROM images WHERE list_contains(tags, 'latest')").fetchall() == [(1,)]


def test_bad_files_in_workers_are_reported_and_counted_and_the_rest_lands(tmp_path, small_runs_split):
    folder = tmp_path / "folder"
    os.makedirs(folder)
    for n, name in enumerate(names_on({1: 3, 2: 3}, "good{i:02d}.tar")):
        classic(str(folder / name), f"app:v{n}", f"good-{n}")
    bad = names_on({1: 2, 2: 2}, "bad{i:02d}.tar")
    (folder / bad[0]).write_bytes(b"\x1f\x8b" + b"not really gzip")
    (folder / bad[1]).write_bytes(write_tar_bytes({"manifest.json": b"[{"}))
    (folder / bad[2]).write_bytes(write_tar_bytes({"index.json": b'{"manifests": 7}'}))
    (folder / bad[3]).write_bytes(write_tar_bytes({"manifest.json": b'[{"Config": "missing.json"}]'}))
    (folder / "notes.txt").write_text("not an archive")
    results = {}
    for jobs in (1, 2):
        store = str(tmp_path / f"store{jobs}")
        result = cli("index", str(folder), "--store", store, "--jobs", jobs, "--json")
        results[jobs] = (result, json.loads(result.stdout), store)
    (r1, one, store1), (r2, two, store2) = results[1], results[2]
    assert r1.exit_code == r2.exit_code == 1
    assert (two["indexed"], two["failed"]) == (one["indexed"], one["failed"]) == (6, 4)
    assert two["errors"] == one["errors"]  # in the order of the sources, as one process meets them
    assert sorted(r2.stderr.splitlines()) == sorted(r1.stderr.splitlines())
    assert sum(line.startswith("imgdex: note: ") for line in r2.stderr.splitlines()) == 1
    for name in bad:
        assert sum(name in line for line in r2.stderr.splitlines()) == 1
    assert contents(store1) == contents(store2)
    assert runs(store2) == [([str(folder)], 6, 4, one["errors"])]


def write_tar_bytes(files: dict[str, bytes]) -> bytes:
    from builders import tar_bytes

    return tar_bytes(files)


def test_a_message_every_slice_meets_is_said_once(tmp_path, small_runs_split):
    blobs = Blobs()
    top = [named(blobs.image(layers=(b"base", f"i{i}".encode())), f"cr.example/team/app:t{i}") for i in range(8)]
    layout = write_dir(str(tmp_path / "layout"), blobs.layout_files(top))
    one, two, _, _ = index_both(tmp_path, f"oci:{layout}:no-such-ref", f"oci:{layout}")
    assert one["failed"] == two["failed"] == 1
    assert two["errors"] == one["errors"] and "no image named 'no-such-ref'" in two["errors"][0]


def test_a_folder_holding_no_archive_is_an_error_as_in_one_process(tmp_path, small_runs_split):
    folder = tmp_path / "junk"
    os.makedirs(folder)
    for i in range(6):
        (folder / f"file{i}.txt").write_text("nothing")
    one, two, _, _ = index_both(tmp_path, str(folder))
    assert one["failed"] == two["failed"] == 1
    assert two["errors"] == one["errors"] and "holds no image archives" in two["errors"][0]


def test_jobs_within_a_user_shard_index_that_shard(tmp_path, small_runs_split):
    folder = mixed_folder(tmp_path / "folder")
    _, _, store1, store2 = index_both(tmp_path, folder, "--shard", "1/2")
    assert contents(store1) == contents(store2)
    assert 0 < len(contents(store2)[0]) < len(contents(cli_store(tmp_path, folder))[0])


def cli_store(tmp_path, *sources) -> str:
    store = str(tmp_path / "whole")
    assert cli("index", *sources, "--store", store, "--jobs", 1).exit_code == 0
    return store


def test_one_run_in_history_and_one_runs_row(tmp_path, small_runs_split):
    folder = mixed_folder(tmp_path / "folder")
    store = str(tmp_path / "store")
    assert cli("index", folder, "--store", store, "--jobs", 2).exit_code == 0
    versions = json.loads(cli("history", "--store", store, "--format", "json").stdout)["versions"]
    appends = [v for v in versions if v["operation"] == "append"]
    assert len([v for v in appends if v["table"] == "images"]) >= 2  # both workers committed
    assert len({v["run"] for v in appends}) == 1
    assert len(runs(store)) == 1


# ---------------------------------------------------------------- its own process: fork


def test_the_command_forks_workers_and_gives_the_store_of_one_process(tmp_path):
    folder = mixed_folder(tmp_path / "folder")
    stores = []
    for jobs in (1, 2):
        stores.append(str(tmp_path / f"store{jobs}"))
        proc = cli_process("index", folder, "--store", stores[-1], "--jobs", jobs)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.startswith("indexed ") and err == ""
    assert contents(stores[0]) == contents(stores[1])


def test_a_worker_that_exits_before_it_is_done_is_one_failure(tmp_path):
    """However a worker ends without its report (a crash, out of memory): one error line, counted."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=os._exit, args=(3,))
    process.start()
    sender.close()
    work = workers.Plan(["x"], [[], []])
    said = []
    merged = workers._Merge(work, RunObserver(on_error=said.append, on_note=said.append))
    merged.wait([workers._Child(1, process, receiver)])
    assert said == ["worker 2 of 2 exited with code 3 before it finished; what it had not written is missing"]
    assert merged.summary().failed == 1


def _done_then_linger(conn) -> None:
    conn.send(("done", array.array("q", range(7)).tobytes(), [], b""))
    time.sleep(60)  # a slow exit: its interpreter's teardown, say


def test_a_worker_that_said_it_is_done_is_not_waited_for_to_exit():
    """Its commits are in once it says so: the run is recorded while it exits, then it is reaped."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_done_then_linger, args=(sender,), daemon=True)
    process.start()
    sender.close()
    child = workers._Child(1, process, receiver)
    try:
        merged = workers._Merge(workers.Plan(["x"], [[], []]), RunObserver())
        started = time.monotonic()
        merged.wait([child])
        assert time.monotonic() - started < 30
        assert child.done and process.is_alive()
        assert merged.summary().indexed == 7 and merged.summary().failed == 0
    finally:
        process.kill()
        process.join()


def test_the_merged_run_keeps_the_first_messages_and_counts_them_all(monkeypatch):
    monkeypatch.setattr(run_module, "MAX_MESSAGES", 2)
    work = workers.Plan(["x"], [[], []])
    said = []
    merged = workers._Merge(work, RunObserver(on_error=said.append, on_note=said.append))
    for worker in (0, 1):  # a message every slice meets is said once
        merged.message(worker, "error", "x: broken index.json", (0, 0), ())
    for n in range(1, 5):
        merged.message(1, "error", f"x: entry {n} is broken", (0, n), ())
    merged.message(0, "note", "x: a note", (0, 0), ())
    summary = merged.summary()
    assert len(said) == 6 and summary.failed == 5
    assert summary.errors == [
        "x: broken index.json",
        "x: entry 1 is broken",
        "3 more errors not listed here",
    ]
    assert summary.notes == ["x: a note"]


def test_an_image_one_worker_wrote_under_an_id_another_s_import_retired_counts_once():
    """Worker 1 wrote a layout's image under its derived id; this process's import then stored it
    under the imported id, retiring the derived one. Both ids are written keys: one image."""
    merged = workers._Merge(workers.Plan(["x", "y"], [[], []]), RunObserver())
    derived, imported, other = 11, 22, 33
    merged.finished(1, array.array("q", [derived, other]), [], array.array("q", []))
    merged.finished(0, array.array("q", [imported]), [], {derived, 44})  # 44: retired, never written here
    assert merged.summary().indexed == 2


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def first_child(proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = children_of(proc.pid)
        if kids:
            return kids[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.002)
    raise AssertionError("no worker started")


def wait_until_begun(pid: int) -> None:
    """Until the worker runs its own code: it ignores Ctrl-C from then on."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            ignored = next(line for line in f if line.startswith("SigIgn:")).split()[1]
        if int(ignored, 16) & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.002)
    raise AssertionError("the worker did not begin")


def test_a_worker_killed_mid_run_fails_the_run_in_one_line(tmp_path):
    folder = mixed_folder(tmp_path / "folder")
    store = str(tmp_path / "store")
    proc = cli_process("index", folder, "--store", store, "--jobs", 2)
    worker = first_child(proc)
    wait_until_begun(worker)  # (a spawned one has exec'd by then)
    with open(f"/proc/{worker}/cmdline", "rb") as f:
        assert b"spawn_main" not in f.read()  # forked: the command had loaded none of the store's libraries
    os.kill(worker, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = err.splitlines()
    assert lines == [
        "imgdex: worker 2 of 2 was killed by SIGKILL before it finished; what it had not written is missing"
    ]
    assert "Traceback" not in err and ", 1 failed," in out
    [(_, indexed, failed, errors)] = runs(store)
    assert failed == 1 and errors == [lines[0].removeprefix("imgdex: ")]
    assert indexed > 0  # this process's share landed


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True  # dead, waiting for its parent to reap it
        except OSError:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("to", ["command", "group"])
def test_an_interrupted_run_stops_its_workers(tmp_path, to):
    """Ctrl-C on a terminal reaches every process of the group; `kill -INT` only the command,
    which then stops the workers itself. Either way: no traceback, no worker left."""
    folder = mixed_folder(tmp_path / "folder")
    proc = cli_process("index", folder, "--store", str(tmp_path / "store"), "--jobs", 2, start_new_session=True)
    worker = first_child(proc)
    if to == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.splitlines() == ["imgdex: interrupted"], err
    assert gone(worker)


def test_workers_die_with_the_command(tmp_path):
    """A command killed outright takes its workers along: none goes on alone (this one is stopped,
    so it could not finish by itself)."""
    folder = mixed_folder(tmp_path / "folder")
    proc = cli_process("index", folder, "--store", str(tmp_path / "store"), "--jobs", 2)
    worker = first_child(proc)
    wait_until_begun(worker)  # it has also asked to die with its parent
    os.kill(worker, signal.SIGSTOP)
    proc.kill()
    proc.wait(timeout=60)
    try:
        assert gone(worker)
    finally:
        if not gone(worker, 0):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        ("0.20 0.50 0.70 1/300 99\n", 4),
        ("1.60 1.00 1.00 3/300 99\n", 2),
        ("9.00 9 9 9/300 9\n", 1),
        ("junk", 4),
        # the load of a burst that has ended: only this process runs now
        ("2.70 1.50 0.60 1/300 99\n", 4),
        ("2.70 1.50 0.60 2/300 99\n", 3),
        # many runnable now, but the minute was quiet: the average decides
        ("0.40 0.20 0.10 7/300 99\n", 4),
        ("3.10 2 2\n", 1),
    ],
)
def test_the_default_jobs_are_the_cpus_left_free(tmp_path, monkeypatch, load, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    path = tmp_path / "loadavg"
    path.write_text(load)
    assert workers.free_cpus(str(path)) == expected
    assert workers.free_cpus(str(tmp_path / "missing")) == 4


def test_contested_tags_go_to_the_later_claim_by_source_then_unit_then_record():
    from indexer.claims import ClaimLog, contested

    first, second = ClaimLog(), ClaimLog()
    r = "cr.example"
    # "a": claimed in a later source by worker 1, though worker 0 met its claim later in its slice
    first.add(r, "app", "a", (0, 9, 50), "id-early", "sha256:1")
    second.add(r, "app", "a", (1, 0, 1), "id-late", "sha256:2")
    # "b": one source; the later unit wins; worker 0's earlier claim of "b" is not its last
    first.add(r, "app", "b", (0, 1, 1), "id-x", "sha256:x")
    first.add(r, "app", "b", (0, 2, 2), "id-y", "sha256:y")
    second.add(r, "app", "b", (0, 3, 3), "id-z", "sha256:z")
    # "c": both workers point it at the same image: nothing to settle
    first.add(r, "app", "c", (0, 1, 1), "id-same", "sha256:s")
    second.add(r, "app", "c", (0, 5, 1), "id-same", "sha256:s")
    # "d": a registry's tag moves (no id) to two manifests: told apart by digest
    first.add(r, "svc", "d", (2, 0, 1), "", "sha256:m1")
    second.add(r, "svc", "d", (2, 0, 2), "", "sha256:m2")
    # "e": two images within worker 0 only, which its own writer settled as it went
    first.add(r, "app", "e", (0, 1, 1), "id-1", "sha256:e1")
    first.add(r, "app", "e", (0, 2, 2), "id-2", "sha256:e2")
    # "f": worker 0 moved it on to the image worker 1 also gives it; only each one's last claim counts
    first.add(r, "app", "f", (0, 1, 1), "id-old", "sha256:f0")
    first.add(r, "app", "f", (0, 2, 2), "id-new", "sha256:f1")
    second.add(r, "app", "f", (0, 4, 1), "id-new", "sha256:f1")
    for n in range(70_000):  # past one sealed batch
        second.add(r, "bulk", f"t{n}", (3, n, n), f"id-{n}", "sha256:b")
    assert len(second) == 70_005
    winners = contested({0: first.sealed(), 1: second.sealed()})
    assert winners == [
        (r, "app", "a", "id-late", "sha256:2"),
        (r, "app", "b", "id-z", "sha256:z"),
        (r, "svc", "d", "", "sha256:m2"),
    ]
    assert contested({0: first.sealed()}) == []


def test_claims_of_no_shared_tag_settle_nothing_without_duckdb(monkeypatch):
    import sys

    from indexer.claims import ClaimLog, contested

    first, second = ClaimLog(), ClaimLog()
    for n in range(200):
        first.add("cr.example", "app", f"a{n}", (0, n, n), f"id-a{n}", "sha256:a")
        second.add("cr.example", "app", f"b{n}", (0, n, n), f"id-b{n}", "sha256:b")
    monkeypatch.setitem(sys.modules, "duckdb", None)  # importing it now fails
    assert contested({0: first.sealed(), 1: second.sealed()}) == []
    # One tag in both: the query decides, as for any number of claims.
    second.add("cr.example", "app", "a7", (0, 500, 500), "id-late", "sha256:l")
    monkeypatch.delitem(sys.modules, "duckdb")
    assert contested({0: first.sealed(), 1: second.sealed()}) == [("cr.example", "app", "a7", "id-late", "sha256:l")]
