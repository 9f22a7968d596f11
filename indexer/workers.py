"""`index --jobs N` for archives and layouts: N processes that share nothing but the store.

Each worker runs `run.run_tasks` over its share of the local sources and commits its own batches
with its own writer (concurrent appends to the Delta tables are safe, and equal records merge the
same whatever the order); this process is worker 0. A layout, a folder or a containers-storage
store is read by every worker, each taking its slice of the units (`Shard.within` the run's
--shard); an archive file, which is read whole, goes to one worker, as does a skopeo dir: copy.
Sources that can be read once only (standard input, a pipe), or that are not files (engines,
registries, YCR JSON) stay here. Back come only counts, errors, notes and each worker's last claim
of every tag, and this process records the run's one `runs` row, so a run with workers looks like
any other run.

Within a run, the claim of a tag that one process reading the sources in turn would meet last
wins. Workers commit in any order, so when two images of the run claim one tag, this process
points the tag at the later claim in one more commit. Claims are ordered by the source's position,
the number of units its shard had been asked about (the same in every worker, see
`CountedShard`), and the record's number within the worker (the owner of a unit is alone in
yielding its records).

A message that does not depend on the slice (a broken index.json, a REF that names nothing) is
met by every worker reading the source; it counts once, as when one process reads it.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from . import claims
from .errors import ImgdexError, SourceError, StoreError
from .run import (
    Kept,
    RunObserver,
    RunSettings,
    RunSummary,
    Task,
    TaskObserver,
    counted_twice,
    image_key,
    now,
    record_run,
    run_tasks,
)
from .shard import CountedShard, Shard
from .sources import (
    ArchiveFolder,
    ContainersStorage,
    DetectedArchive,
    DockerArchive,
    OciArchive,
    OciLayout,
    SkopeoDir,
    SourceOptions,
    image_dir_kind,
    parse_source,
)
from .files import open_readable, walk
from .sources.containers_storage import IMAGES_JSON, images_folder
from .sources.tarball import MAGIC_BYTES, MAX_INDEX_BYTES, STDIN_NAMES, is_compressed
from .store import paths
from .store.hashset import HashSet

# Below this much work (in images, or their equivalent in compressed bytes) one process is
# chosen. A second one costs about 0.5 s of CPU (loading the store's libraries, reading the
# sources' indexes again, its own commits), which is wall time when no core is free; with a free
# core, 2,000 images in two halves save about 0.15 s of the 0.75 s one process takes.
MIN_WORK = 2000
# Decompressing this many bytes costs about as much as indexing one image.
BYTES_PER_IMAGE = 64 * 1024
# Workers report their image count in steps of this many, for the progress counter.
PROGRESS_STEP = 256
# Modules whose native threads make forking unsafe once loaded.
_THREADED = ("duckdb", "pyarrow", "deltalake")


def free_cpus(loadavg: str = "/proc/loadavg") -> int:
    """The CPUs this process may use, less those busy, at least one: a second worker only pays when
    a core is idle, and on a busy machine it costs more than it saves.

    Busy is the 1-minute load average (as `make -l` reads it), or the tasks runnable right now
    besides this one when fewer: the average trails by a minute, so after a burst that has ended
    (the previous run of a loop, a build step) it would hold a free core back for that long."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open(loadavg, "rb") as f:
            fields = f.read(128).split()
        busy = float(fields[0])
    except (OSError, ValueError, IndexError):
        return allowed
    try:
        busy = min(busy, int(fields[3].split(b"/")[0]) - 1)
    except (ValueError, IndexError):
        pass
    return max(1, min(allowed, allowed - int(busy + 0.5)))


@dataclass
class Plan:
    specs: list[str]
    shares: list[list[Task]]  # each worker's tasks, in source order; share 0 is this process's
    folders: set[int] = field(default_factory=set)  # positions of the folders among the sources


def plan(specs: list[str], *, jobs: int, settings: RunSettings | None = None) -> Plan | None:
    """How `jobs` workers share the sources, or None when one process is the better choice: fewer
    than two units of work among the local sources, or too little work to pay for a worker."""
    if jobs < 2:
        return None
    settings = settings or RunSettings()
    options, verify, shard = settings.options, settings.verify, settings.shard
    kinds: list[str] = []  # per source: split (every worker its slice), whole (one worker) or here
    weights: list[float] = []
    units = 0
    folders = set()
    for position, spec in enumerate(specs):
        kind, size, count = _estimate(spec, options, verify, jobs)
        if kind == "folder":
            kind = "split"
            folders.add(position)
        kinds.append(kind)
        weights.append(size)
        units += count
    local_work = sum(w for k, w in zip(kinds, weights) if k != "here")
    if units < 2 or local_work < MIN_WORK:
        return None
    workers = min(jobs, units)
    outer = shard or Shard.ALL
    shares: list[list[Task]] = [[] for _ in range(workers)]
    split = sum(w for k, w in zip(kinds, weights) if k == "split") / workers
    load = [split] * workers
    # Whole archives go, heaviest first, to the worker with the least work so far.
    owner: dict[int, int] = {}
    for position in sorted((p for p, k in enumerate(kinds) if k == "whole"), key=lambda p: (-weights[p], p)):
        worker = min(range(workers), key=lambda w: (load[w], w))
        owner[position] = worker
        load[worker] += weights[position]
    for position, (spec, kind) in enumerate(zip(specs, kinds)):
        if kind == "split":
            for worker in range(workers):
                shares[worker].append(Task(position, spec, CountedShard(outer.within(worker + 1, workers))))
        elif kind == "whole":
            shares[owner[position]].append(Task(position, spec, shard))
        else:
            shares[0].append(Task(position, spec, shard))
    return Plan(list(specs), shares, folders)


def _estimate(spec: str, options: SourceOptions, verify: bool, jobs: int) -> tuple[str, float, int]:
    """(split | folder | whole | here, work in images, units of work a worker can take) of one
    source; a folder is split too."""
    try:
        source = parse_source(spec, options)
    except ImgdexError:
        return "here", 0, 0  # reported in its turn, by this process
    enough = max(MIN_WORK, jobs)
    if isinstance(source, OciLayout):
        count = _layout_images(source.location, enough)
        return "split", count, count
    if isinstance(source, ArchiveFolder):
        size, count = _folder_work(source.location, verify, jobs)
        return "folder", size, count
    if isinstance(source, SkopeoDir):
        return "whole", 1, 1
    if isinstance(source, ContainersStorage):
        count = 0 if source.ref else _storage_images(source, enough)  # a REF names one image or a few
        return ("split", count, count) if count else ("here", 0, 0)
    if isinstance(source, (DockerArchive, OciArchive, DetectedArchive)) and source.location not in STDIN_NAMES:
        size = _file_work(source.location, verify)
        if size is not None:
            return "whole", size, 1
    return "here", 0, 0


def _open_regular(path: str):
    """The file for reading, or None when it is not a regular file (what a pipe holds can be read
    once only, by the source itself) or cannot be opened: the source then says why."""
    try:
        return open_readable(path)
    except (SourceError, OSError):
        return None


def _layout_images(path: str, enough: int) -> int:
    """About how many images a layout's index.json lists (its descriptors, counted unparsed), read
    no further than `enough` of them."""
    return _entries_of(os.path.join(path, "index.json"), b'"digest"', enough)


def _entries_of(path: str, key: bytes, enough: int) -> int:
    """How many times `key` occurs in the JSON file `path`, counted no further than `enough`."""
    f = _open_regular(path)
    if f is None:
        return 0
    count, tail = 0, b""
    with f:
        # No further than the source reads an index.json either.
        while count < enough and f.tell() < MAX_INDEX_BYTES and (chunk := f.read(1 << 20)):
            data = tail + chunk
            count += data.count(key)
            tail = data[-(len(key) - 1) :]  # a key cut in two is counted in the next chunk, never twice
    return count


def _storage_images(source: ContainersStorage, enough: int) -> int:
    """About how many images a containers-storage store and its additional stores hold (their
    images.json entries, counted unparsed), counted no further than `enough`."""
    count = 0
    for root in (source.location, *source.extra):
        try:
            folder = images_folder(root, source.driver)
        except SourceError:
            continue
        count += _entries_of(os.path.join(folder, IMAGES_JSON), b'"id"', enough - count)
    return count


def _file_work(path: str, verify: bool) -> float | None:
    """The work of an archive file, None when it is not a regular file."""
    f = _open_regular(path)
    if f is None:
        return None
    with f:
        size = os.fstat(f.fileno()).st_size
        if verify:
            return 1 + size / BYTES_PER_IMAGE
        magic = f.read(MAGIC_BYTES)
    return 1 + size / BYTES_PER_IMAGE if is_compressed(magic) else 1


def _folder_work(root: str, verify: bool, jobs: int) -> tuple[float, int]:
    """(work, entries) of a folder of archives and layouts, walked as the folder source walks it,
    no further than it takes to know that it is enough work for `jobs` workers."""
    size, count = 0.0, 0
    for folder, dirs, files in walk(root):
        descend = []
        for name in dirs:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            kind = image_dir_kind(path)
            if kind is not None:
                size += _layout_images(path, max(MIN_WORK, jobs)) if kind == "oci" else 1
                count += 1
            else:
                descend.append(name)
        dirs[:] = descend
        for name in files:
            work = _file_work(os.path.join(folder, name), verify)
            if work is not None:
                size += work
                count += 1
        if size >= MIN_WORK and count >= jobs:
            break
    return size, count


# ---------------------------------------------------------------- the run


def index_parallel(
    work: Plan,
    store: str,
    *,
    settings: RunSettings | None = None,
    observer: RunObserver | None = None,
) -> RunSummary:
    """Run `work` with one worker process per share after the first, which runs here; then settle
    the tags the shares both claimed and record the run.

    Workers are forked when this process has not loaded the store's libraries yet (the imgdex
    command), else started as new interpreters, which import the caller's main module as
    multiprocessing does: a program calling this then needs the `if __name__ == "__main__"` guard."""
    import multiprocessing

    settings = settings or RunSettings()
    observer = observer or RunObserver()
    started = time.monotonic()
    started_at = now()
    run_id = uuid.uuid4().hex
    # Workers read only archives and layouts, which take no source options: the options (a registry
    # password among them) stay in this process. Each task carries its shard.
    method = _start_method()
    key = hash if method == "fork" else image_key
    settings = dataclasses.replace(settings, key=key)
    shared = RunSettings(registry=settings.registry, repository=settings.repository, verify=settings.verify, key=key)
    merged = _Merge(work, observer)
    # Whichever process makes the store's folder, this one removes it if the run lands nothing.
    root = paths.local_folder(store)
    made_folder = paths.outermost_missing(root) if root is not None else None
    context = multiprocessing.get_context(method)
    children: list[_Child] = []
    writer = None
    try:
        for worker in range(1, len(work.shares)):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_work,
                args=(sender, os.getpid(), store, run_id, work.shares[worker], shared),
                name=f"imgdex-worker-{worker + 1}",
                daemon=True,
            )
            # Born with Ctrl-C blocked, so that it never stops a worker half started (a traceback):
            # the worker ignores it, and this process stops the workers when it is interrupted.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                process.start()
            except OSError as exc:  # out of processes or memory
                reason = exc.strerror or str(exc)
                raise ImgdexError(f"cannot start worker {worker + 1} of {len(work.shares)}: {reason}") from None
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            sender.close()
            children.append(_Child(worker, process, receiver))
        from .store.delta_writer import DeltaWriter

        # The workers' commits carry the run's id too: one run in `history`.
        writer = DeltaWriter(store, run_id, made_folder)
        with writer:
            try:
                own = run_tasks(
                    work.shares[0],
                    writer,
                    settings=settings,
                    observer=TaskObserver(
                        on_error=lambda message, where: merged.message(0, "error", message, where, children),
                        on_note=lambda message, where: merged.message(0, "note", message, where, children),
                        on_image=lambda record: merged.own_image(record, children),
                        on_source=lambda spec: merged.own_source(spec),
                    ),
                    keep_claims=True,
                )
                merged.finished(0, own.written.values(), own.claims.sealed(), own.retired)
                merged.wait(children)
            except (StoreError, KeyboardInterrupt):
                # Every process of the run holds the store while it runs, so none that failed could
                # remove the tables the run made and landed nothing in: this one does, once the
                # workers are gone.
                _stop(children)
                with contextlib.suppress(StoreError):
                    writer.leave_nothing()
                raise
            for task in merged.empty_folders():
                # A folder whose slices found nothing: as one reader, it is an error when no entry
                # is an archive, which no slice alone can tell. Read again whole; notes were said.
                again = run_tasks(
                    [Task(task.position, task.spec, settings.shard)],
                    writer,
                    settings=settings,
                    observer=TaskObserver(
                        on_error=lambda message, where: merged.message(0, "error", message, where, ()),
                    ),
                )
                merged.indexed += merged.written.add_new(again.written.values())
            summary = merged.summary()
            if not writer.pristine:
                _settle(writer, merged.contested())
            summary.seconds = time.monotonic() - started
            record_run(writer, work.specs, summary, started_at, sharded=settings.shard is not None)
        return summary
    except BaseException:
        if writer is None and children:
            # Stopped (Ctrl-C, a worker that could not start) before this process opened the
            # store: a worker may have made its tables, which the run then leaves behind empty.
            _stop(children)
            _leave_nothing(store, run_id, made_folder)
        raise
    finally:
        _stop(children)


def _leave_nothing(store: str, run_id: str, made_folder: str | None) -> None:
    """Remove the tables and folders run `run_id` made and landed nothing in, as its first
    process does when it fails holding the store (`DeltaWriter.leave_nothing`)."""
    from .store.delta_writer import DeltaWriter

    with contextlib.suppress(ImgdexError, OSError), DeltaWriter(store, run_id, made_folder) as writer:
        writer.leave_nothing()


def _start_method() -> str:
    """fork when it is safe, else spawn. fork starts a worker in milliseconds with this process's
    modules loaded, but a process must not fork once DuckDB, pyarrow or deltalake run native
    threads: the imgdex command forks before it loads them; a program that already has (a test,
    a caller of the library) gets fresh interpreters, about 0.1 s slower to start."""
    if any(name in sys.modules for name in _THREADED) or threading.active_count() > 1:
        return "spawn"
    try:
        if len(os.listdir("/proc/self/task")) > 1:
            return "spawn"
    except OSError:
        pass
    return "fork"


@dataclass
class _Child:
    worker: int
    process: object  # multiprocessing.Process
    conn: object  # the receiving end of its pipe
    done: bool = False


def _work(conn, parent: int, store: str, run_id: str, tasks: list[Task], settings: RunSettings) -> None:
    """A worker process: index `tasks` with a writer of its own; report through `conn`."""
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    images = 0
    reported = 0

    def on_image(_record) -> None:
        nonlocal images, reported
        images += 1
        if images - reported >= PROGRESS_STEP:
            conn.send(("images", images - reported))
            reported = images

    def on_source(_spec) -> None:
        nonlocal reported
        conn.send(("source", task_positions.pop(0), images - reported))
        reported = images

    task_positions = [task.position for task in tasks]
    try:
        from .store.delta_writer import DeltaWriter

        with DeltaWriter(store, run_id) as writer:
            summary = run_tasks(
                tasks,
                writer,
                settings=settings,
                observer=TaskObserver(
                    on_error=lambda message, where: conn.send(("error", message, where)),
                    on_note=lambda message, where: conn.send(("note", message, where)),
                    on_image=on_image,
                    on_source=on_source,
                ),
                keep_claims=True,
            )
        written = array.array("q", summary.written.values()).tobytes()
        conn.send(("done", written, summary.claims.sealed(), array.array("q", summary.retired).tobytes()))
    except StoreError as exc:
        conn.send(("store", str(exc)))
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(1)  # the parent is gone: nobody would record the run


def _die_with(parent: int) -> None:
    """Have the kernel kill this worker when the process that started it dies (killed, say), so that
    no worker goes on without anyone to record the run. Linux only; elsewhere a worker notices when
    it next reports (a broken pipe)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before that took effect
        os._exit(1)


@dataclass
class _Merge:
    """What the workers say, as one run says it: each message once, the totals, the claims."""

    work: Plan
    observer: RunObserver
    indexed: int = 0
    written: HashSet = field(default_factory=HashSet)  # image_key of each image a worker wrote
    retired: set = field(default_factory=set)  # image_key of each id an import retired (RunSummary.retired)
    errors: Kept = field(default_factory=Kept)  # (where, message)
    notes: Kept = field(default_factory=Kept)  # (where, message)
    claims: dict = field(default_factory=dict)  # worker -> its claims, sealed (claims.ClaimLog)
    store_error: str = ""
    # hash((worker, kind, where, message)) -> times that worker said it; hashes, as a source of
    # many broken entries may say a great many messages
    _heard: dict = field(default_factory=dict)
    _said: dict = field(default_factory=dict)  # hash((kind, where, message)) -> times said
    _unfinished: dict = field(default_factory=dict)  # position -> workers still reading that source
    _found: dict = field(default_factory=dict)  # position -> images and errors its slices found
    _own_images: int = 0
    _own_tasks: int = 0  # this process's tasks finished

    def __post_init__(self) -> None:
        for share in self.work.shares:
            for task in share:
                self._unfinished[task.position] = self._unfinished.get(task.position, 0) + 1

    def message(self, worker: int, kind: str, message: str, where: tuple, children) -> None:
        where = tuple(where)
        key = hash((kind, where, message))
        by_worker = hash((worker, kind, where, message))
        heard = self._heard[by_worker] = self._heard.get(by_worker, 0) + 1
        if heard > self._said.get(key, 0):  # not yet said as often by another worker
            self._said[key] = heard
            if kind == "error":
                self._error(where, message)
                self._found[where[0]] = self._found.get(where[0], 0) + 1
            else:
                self.notes.add((where, message))
                self.observer.on_note(message)
        if worker == 0:
            self.poll(children)

    def own_image(self, record, children) -> None:
        self._own_images += 1
        self.observer.on_image(record)
        if self._own_images % 64 == 0:
            self.poll(children)

    def own_source(self, _spec: str) -> None:
        self._source_done(self.work.shares[0][self._own_tasks].position, self._own_images)
        self._own_tasks += 1
        self._own_images = 0

    def _source_done(self, position: int, images: int) -> None:
        self._found[position] = self._found.get(position, 0) + images
        self._unfinished[position] -= 1
        if self._unfinished[position] == 0:
            del self._unfinished[position]
            self.observer.on_source(self.work.specs[position])

    def finished(self, worker: int, written, claims: list, retired=()) -> None:
        """A worker's end: `written` holds the keys of the images it wrote (`RunSummary.written`);
        one that another worker wrote too counts once, as does one written under an id that an
        import of any worker retired, and then under the imported id."""
        self.indexed += self.written.add_new(written)
        self.retired.update(retired)
        self.claims[worker] = claims

    # ---- the workers' pipes

    def _receive(self, child: _Child) -> bool:
        """Handle what `child` has sent; False once its pipe is closed."""
        try:
            while child.conn.poll():
                self._handle(child, child.conn.recv())
        except (EOFError, OSError):
            return False
        return True

    def _handle(self, child: _Child, item: tuple) -> None:
        kind = item[0]
        if kind in ("error", "note"):
            self.message(child.worker, kind, item[1], item[2], ())
        elif kind == "images":
            for _ in range(item[1]):
                self.observer.on_image(None)
        elif kind == "source":
            for _ in range(item[2]):
                self.observer.on_image(None)
            self._source_done(item[1], item[2])
        elif kind == "done":
            child.done = True
            self.finished(child.worker, array.array("q", item[1]), item[2], array.array("q", item[3]))
        elif kind == "store":
            self.store_error = self.store_error or item[1]

    def poll(self, children) -> None:
        """Print what the workers said meanwhile, without waiting (this process has its own share)."""
        for child in children:
            if not child.done:
                self._receive(child)

    def wait(self, children: list[_Child]) -> None:
        """Until every worker has finished: one that stopped before it said it was done (killed,
        out of memory) is one failure of the run; a store that cannot be written ends the run."""
        from multiprocessing.connection import wait

        running = [child for child in children if not child.done]
        while running:
            ready = set(wait([c.conn for c in running] + [c.process.sentinel for c in running]))
            for child in list(running):
                if child.conn not in ready and child.process.sentinel not in ready:
                    continue
                open_ = self._receive(child)
                if child.done:
                    # Its last word: its commits are in, and what is left of it is its exit,
                    # which `_stop` reaps once the run is recorded.
                    running.remove(child)
                elif child.process.sentinel in ready or not open_:
                    child.process.join()
                    self._receive(child)
                    running.remove(child)
                    if not child.done and not self.store_error:
                        self._died(child, len(self.work.shares))
            if self.store_error:
                break
        if self.store_error:
            raise StoreError(self.store_error)

    def _died(self, child: _Child, workers: int) -> None:
        code = child.process.exitcode
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        message = f"worker {child.worker + 1} of {workers} {how} before it finished; what it had not written is missing"
        self._error((len(self.work.specs), 0), message)

    def _error(self, where: tuple, message: str) -> None:
        self.errors.add((where, message))
        self.observer.on_error(message)

    # ---- the outcome

    def empty_folders(self) -> list[Task]:
        """The folders every slice of which was read and found neither an image nor an error."""
        return [
            task
            for task in self.work.shares[0]
            if task.position in self.work.folders
            and task.position not in self._unfinished
            and not self._found.get(task.position)
        ]

    def summary(self) -> RunSummary:
        # Sorted by where they arose, so the runs row lists them in the order of the sources.
        errors = [message for _, message in sorted(self.errors.items, key=lambda e: e[0])]
        notes = [message for _, message in sorted(self.notes.items, key=lambda n: n[0])]
        return RunSummary(
            indexed=self.indexed - counted_twice(self.retired, self.written),
            failed=self.errors.count,
            errors=self.errors.listed(errors, "errors"),
            notes=self.notes.listed(notes, "notes"),
        )

    def contested(self) -> list[tuple[str, str, str, str, str]]:
        """(registry, name, tag, image id, digest) of the later claim of each tag that two images
        of the run claimed."""
        return claims.contested(self.claims)


def _settle(writer, winners: list[tuple[str, str, str, str, str]]) -> None:
    """Point each tag at its winner: by manifest where there is one, as a tag move does (the image
    may have taken an imported id), else by id (a classic docker save has no manifest)."""
    by_digest: dict[str, list] = {}
    by_id = []
    for registry, name, tag, image_id, digest in winners:
        if digest:
            by_digest.setdefault(registry, []).append((name, tag, digest))
        else:
            by_id.append((registry, name, tag, image_id))
    for registry, moves in by_digest.items():
        writer.claim_tags(registry, moves)
    writer.claim_tags_by_id(by_id)


def _stop(children: list[_Child]) -> None:
    """Stop workers still running (this process was interrupted or failed), and reap them all: one
    that said it was done is only exiting."""
    for child in children:
        if not child.done and child.process.is_alive():
            child.process.terminate()
    for child in children:
        child.process.join(5)
        if child.process.is_alive():
            child.process.kill()
            child.process.join()
        child.conn.close()
