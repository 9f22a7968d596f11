"""One index run: read every source, merge the records, write them to the store."""

from __future__ import annotations

import dataclasses
import time
from hashlib import blake2b
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from .claims import ClaimLog
from .errors import ImgdexError, SourceError, StoreError, printable
from .model import ImageRecord, TagMoves, TagsRetired, merge_records, named, one_image, shown
from .references import redact_url_secrets
from .shard import CountedShard, Shard
from .sources import SourceOptions, parse_source
from .sources.parse import Context
from .store.hashset import HashSet

BATCH = 5000
# A batch is also written once its records hold this many bytes of manifests and configs: 5,000
# manifests may each carry a config of up to 8 MiB, read anew for every one of them.
BATCH_BYTES = 64 * 1024 * 1024
# About what each entry of a record's config lists (history, diff_ids, Env, Entrypoint, Cmd,
# Labels) holds as objects before its strings: a HistoryEntry, a label's pair, and its place. A
# config may list 20,000 `{}` history entries: 60 KB of text but ~2 MB of objects, so that a batch
# counted by its bytes alone would hold 1,100 such records, 2 GB.
_ENTRY_BYTES = 100
# Errors and notes kept for the summary and the runs row, of each kind; every one is still said as
# it happens and counted. A source of a million broken entries would otherwise keep them all.
MAX_MESSAGES = 1000
# Characters of one message; real ones take a line or two.
MAX_MESSAGE_CHARS = 2000


def shortened(message: str) -> str:
    """A message cut to MAX_MESSAGE_CHARS: what a source quotes (an engine's or a registry's error
    text, a name) is theirs to make any length, and 1,000 kept messages of 15 MB took gigabytes."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}… ({len(message) - MAX_MESSAGE_CHARS:,} more characters)"


class Kept:
    """The first MAX_MESSAGES messages of one kind, and how many were said."""

    def __init__(self) -> None:
        self.items: list = []
        self.count = 0

    def add(self, item) -> None:
        self.count += 1
        if len(self.items) < MAX_MESSAGES:
            self.items.append(item)

    def listed(self, messages: list[str], kind: str) -> list[str]:
        """`messages` (the kept ones, in the order to list them), then a line for those not kept."""
        rest = self.count - len(self.items)
        if not rest:
            return messages
        return [*messages, f"{rest} more {kind} not listed here"]


def image_key(image_id: str) -> int:
    """A 64-bit key of an image id that is the same in every process, as `hash()` of a str is not
    (about ten times its cost)."""
    return int.from_bytes(
        blake2b(image_id.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little", signed=True
    )


@dataclass
class RunSummary:
    indexed: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first MAX_MESSAGES, then a line for the rest
    notes: list[str] = field(default_factory=list)
    # The tags this run's records claimed, when `run_tasks` is asked to keep them (for
    # `index --jobs`, see workers.py and claims.py).
    claims: ClaimLog = field(default_factory=ClaimLog, repr=False)
    # `RunSettings.key` of each image the run wrote, so that an image met again (in another
    # source, past a batch, or by another worker of `index --jobs`) counts once in `indexed`.
    written: HashSet = field(default_factory=HashSet, repr=False)
    # Keys of the ids an import retired (the derived id of a manifest it gives its own id to): an
    # image this run wrote under such an id, then under the imported one, counts once.
    retired: set = field(default_factory=set, repr=False)

    def retired_written(self) -> int:
        return counted_twice(self.retired, self.written)

    @property
    def ok(self) -> bool:
        return self.failed == 0


def counted_twice(retired, written: HashSet) -> int:
    """How many `retired` keys were written too: images a run wrote under a derived id, then
    under the imported id that retired it."""
    return sum(1 for key in retired if key in written)


@dataclass(frozen=True)
class Task:
    """A source of the run, or one worker's slice of it (`index --jobs`)."""

    position: int  # the source's place among the run's sources
    spec: str
    shard: Shard | CountedShard | None = None


def _ignore(*_args) -> None:
    pass


@dataclass(frozen=True)
class RunSettings:
    """What applies to every source of a run; each source takes its own fields of `options` (see
    sources.SourceOptions)."""

    options: SourceOptions = field(default_factory=SourceOptions)
    registry: str = ""  # --registry
    repository: str = ""  # --repository
    verify: bool = False  # --verify
    # --shard K/N, which `index_sources` gives every source; a Task carries its own.
    shard: Shard | None = None
    # The 64-bit key by which `RunSummary.written` knows an image id. `hash()` is the cheapest, and
    # the same in every process that `index --jobs` forks; spawned workers take `image_key`.
    key: Callable[[str], int] = hash


@dataclass(frozen=True)
class RunObserver:
    """What a run tells as it goes: each error and note (already counted in the summary), each
    image read (None for one a worker of `index --jobs` read), each source finished."""

    on_error: Callable[[str], None] = _ignore
    on_note: Callable[[str], None] = _ignore
    on_image: Callable[[ImageRecord | None], None] = _ignore
    on_source: Callable[[str], None] = _ignore


@dataclass(frozen=True)
class TaskObserver:
    """A RunObserver for `run_tasks`, whose errors and notes also get where they arose: (the task's
    position, units its shard had been asked about), the same in every worker of `index --jobs`
    for a message that does not depend on the slice."""

    on_error: Callable[[str, tuple[int, int]], None] = _ignore
    on_note: Callable[[str, tuple[int, int]], None] = _ignore
    on_image: Callable[[ImageRecord], None] = _ignore
    on_source: Callable[[str], None] = _ignore


def index_sources(
    specs: Iterable[str],
    writer,
    *,
    settings: RunSettings | None = None,
    observer: RunObserver | None = None,
) -> RunSummary:
    """Index every source into `writer` (a DeltaWriter) and record the run; failures are counted,
    never raised. A store that fails ends the run with a StoreError whose `summary` is the run's
    so far."""
    settings = settings or RunSettings()
    observer = observer or RunObserver()
    started_at = now()
    spec_list = list(specs)
    try:
        summary = run_tasks(
            [Task(position, spec, settings.shard) for position, spec in enumerate(spec_list)],
            writer,
            settings=settings,
            observer=TaskObserver(
                on_error=lambda message, _where: observer.on_error(message),
                on_note=lambda message, _where: observer.on_note(message),
                on_image=observer.on_image,
                on_source=observer.on_source,
            ),
        )
    except StoreError as exc:
        exc.summary = exc.tasks_summary  # its tasks are the whole run
        raise
    record_run(writer, spec_list, summary, started_at, sharded=settings.shard is not None)
    return summary


def run_tasks(
    tasks: Iterable[Task],
    writer,
    *,
    settings: RunSettings | None = None,
    observer: TaskObserver | None = None,
    keep_claims: bool = False,
) -> RunSummary:
    """Index each task's source, or its slice of it (`settings.shard` is not read: each task
    carries its own), into `writer`, recording no run."""
    settings = settings or RunSettings()
    observer = observer or TaskObserver()
    started = time.monotonic()
    summary = RunSummary()
    pending: dict[str, ImageRecord] = {}
    claims: dict[tuple[str, str, str], str] = {}  # (registry, name, tag) -> the pending id that claimed it last
    task = Task(0, "")
    records_seen = 0
    errors, notes = Kept(), Kept()
    pending_bytes = 0
    key_of = settings.key
    # Tag moves and retirements (a registry re-crawl finds them repository by repository) wait for
    # the next batch and settle in one commit before its images, the order in which they used to
    # commit one by one: a commit each cost a log replay and a listing of every file.
    moves: dict[str, list[tuple[str, str, str]]] = {}
    retired: list[tuple[str, str, str]] = []
    settling: set[tuple[str, str, str]] = set()
    imports = ImportsSeen()

    def where() -> tuple[int, int]:
        return task.position, task.shard.asked if isinstance(task.shard, CountedShard) else 0

    # A message said again word for word (one broken manifest under three tags, a layout listing
    # one broken descriptor a million times) is one failure: counted and said once, as an image
    # reached again is written once. Kept as 64-bit hashes.
    said = HashSet()
    repeats = 0

    def new(message: str) -> bool:
        nonlocal repeats
        if said.add_new((image_key(message),)):
            return True
        repeats += 1
        return False

    # Every message leaves through these two, so URL credentials are redacted once for the
    # terminal, the summary and the runs table alike, whatever source produced them.
    def fail(message: str) -> None:
        message = shortened(printable(redact_url_secrets(message)))
        if new(message):
            errors.add(message)
            observer.on_error(message, where())

    def note(message: str) -> None:
        message = shortened(printable(redact_url_secrets(message)))
        if new(message):
            notes.add(message)
            observer.on_note(message, where())

    def pass_notes() -> None:
        for message in writer.take_notes():
            note(message)

    def store(records: list[ImageRecord]) -> int:
        """Write a batch; a record the store refuses is isolated by halving, so the rest lands. Says
        how many of its images this run had not written before: a batch may hold again an image that
        an earlier one wrote (the same image in two sources, or reached again past a batch)."""
        try:
            stored, retired = writer.write(records, now())
        except StoreError:
            raise  # the store itself cannot be written: no batch would land
        except Exception as exc:
            if len(records) == 1:
                fail(_unstorable(records[0], exc))
                return 0
            middle = len(records) // 2
            return store(records[:middle]) + store(records[middle:])
        finally:
            pass_notes()
        # Outside the try: what fails once the batch is in must not be taken for a record the store
        # refused, and the batch written again by halves.
        # Under the ids they were stored by: an import and a manifest source of one image, read in
        # one run, are one image under the imported id.
        new = summary.written.add_new([key_of(image_id) for image_id in stored])
        gone = {key_of(image_id) for image_id in retired} - summary.retired
        summary.retired |= gone
        return new - counted_twice(gone, summary.written)

    def settle() -> None:
        if settling:
            writer.settle_tags(dict(moves), list(retired))
            moves.clear()
            retired.clear()
            settling.clear()

    def wait_to_settle(keys: list[tuple[str, str, str]]) -> None:
        # A tag already waiting settles first, so that the later change of it wins, as in order.
        if len(settling) >= BATCH or not settling.isdisjoint(keys):
            settle()
        settling.update(keys)

    def flush() -> None:
        nonlocal pending_bytes
        settle()
        if pending:
            summary.indexed += store(list(pending.values()))
            pending.clear()
            claims.clear()
        pending_bytes = 0

    def finish() -> RunSummary:
        pass_notes()  # of the tags settled after the last batch
        if repeats:
            note(f"{repeats} more messages repeated one said before word for word (not said again)")
        summary.failed = errors.count
        summary.errors = errors.listed(errors.items, "errors")
        summary.notes = notes.listed(notes.items, "notes")
        summary.seconds = time.monotonic() - started
        return summary

    try:
        for task in tasks:
            spec = task.spec
            try:
                source = parse_source(spec, settings.options)
                if source.reads_index:
                    source.bind_store(writer)
                ctx = Context(
                    source_kind=source.kind,
                    source_path=source.location,
                    registry=settings.registry,
                    repository=settings.repository,
                    note=note,
                    verify=settings.verify,
                    shard=task.shard,
                )
                if settings.verify and not source.reads_layers:
                    note(f"{spec}: --verify does not apply: layer contents are not read from this source")
                for item in source.records(ctx):
                    if isinstance(item, SourceError):
                        fail(str(item))
                        continue
                    if isinstance(item, TagMoves):
                        wait_to_settle([(item.registry, name, tag) for name, tag, _ in item.claims])
                        moves.setdefault(item.registry, []).extend(item.claims)
                        if keep_claims:
                            records_seen += 1
                            order = (*where(), records_seen)
                            for name, tag, digest in item.claims:
                                summary.claims.add(item.registry, name, tag, order, "", digest)
                        continue
                    if isinstance(item, TagsRetired):
                        keys = [(item.registry, item.name, tag) for tag in item.tags]
                        wait_to_settle(keys)
                        retired.extend(keys)
                        continue
                    if item.id_origin == "imported" and (clash := imports.clash(item)):
                        fail(f"{source.location}: {clash}")
                        continue
                    known = pending.get(item.id)
                    if known is not None and not one_image(named(known), named(item)):
                        fail(_unstorable(item, ValueError(f"its id is already that of {shown(named(known))}")))
                        continue
                    merged = item if known is None else merge_records(known, item)
                    pending[item.id] = merged
                    if keep_claims and item.tags:
                        records_seen += 1
                        order = (*where(), records_seen)
                        for tag in item.tags:
                            summary.claims.add(item.registry, item.name, tag, order, item.id, item.digest)
                    for tag in item.tags:
                        # A tag names one manifest per repository: the later claim wins.
                        key = (item.registry, item.name, tag)
                        holder = claims.get(key)
                        if holder is not None and holder != item.id:
                            loser = pending[holder]
                            pending[holder] = dataclasses.replace(loser, tags=tuple(t for t in loser.tags if t != tag))
                        claims[key] = item.id
                    observer.on_image(item)
                    # An image met again holds what the merge keeps, not twice its bytes: counted
                    # twice, one image named by thousands of entries flushed a batch every few.
                    pending_bytes += _held(merged) - (_held(known) if known is not None else 0)
                    if len(pending) >= BATCH or pending_bytes >= BATCH_BYTES:
                        flush()
            except SourceError as exc:
                fail(str(exc))
            except StoreError:
                raise  # from a batch flushed mid-source: the next source's batches would fail alike
            except ImgdexError as exc:
                fail(f"{spec}: {exc}")
            observer.on_source(spec)
        flush()
    except StoreError as exc:
        # What landed before the store failed is still the caller's to report. A batch halved
        # around a bad record may have landed its first half before the store failed: `written`
        # knows those images, `indexed` has yet to add them.
        summary.indexed = len(summary.written) - summary.retired_written()
        exc.tasks_summary = finish()
        raise
    return finish()


class ImportsSeen:
    """The registry documents a run imports, each one's word on an image: two that disagree about
    one id, or give one manifest two ids, would merge into a resource neither describes. Kept as
    64-bit hashes (~50 bytes an image), since an export may list a million images."""

    def __init__(self) -> None:
        self.ids, self.contents, self.manifests = HashSet(), HashSet(), HashSet()

    def clash(self, record: ImageRecord) -> str:
        """Why `record` cannot join the run's earlier imports, or "" (it is new, or listed again alike)."""
        image = hash(record.id)
        # Where it was read is not part of what the document says
        content = hash(dataclasses.replace(record, source_kind="", source_path=""))
        if image in self.ids:
            if content in self.contents:
                return ""
            return f"image {record.id} is in an earlier source of this run with different contents; the first is kept"
        manifest = hash((record.registry, record.name, record.digest)) if record.digest else None
        if manifest is not None and manifest in self.manifests:
            return (
                f"image {record.id} is {shown(named(record))}, which an earlier image of this run has under "
                "another id; the first is kept"
            )
        self.ids.update((image,))
        self.contents.update((content,))
        if manifest is not None:
            self.manifests.update((manifest,))
        return ""


def record_run(writer, specs: list[str], summary: RunSummary, started_at: datetime, *, sharded: bool = False) -> None:
    """The run's one `runs` row, with its totals and every error. A StoreError out of it carries
    `summary`, which the row would have held."""
    try:
        if summary.indexed == 0 and not sharded and writer.leave_nothing():
            # Nothing landed in a store that did not exist: no run record creates it for nothing,
            # and the tables made for batches whose every record was refused go too. A worker of
            # `--shard K/N` records itself all the same: its slice may be empty while the others
            # have yet to create the store, and the store then says that all N ran.
            return
        writer.record_run(
            {
                "started_at": started_at,
                "finished_at": now(),
                # A source argument may hold bytes that are not UTF-8 (os.fsdecode's surrogates).
                "sources": [printable(redact_url_secrets(spec)) for spec in specs],
                "images_indexed": summary.indexed,
                "images_failed": summary.failed,
                "errors": summary.errors,
            }
        )
    except StoreError as exc:
        exc.summary = summary  # the run is done and its images landed; only its record is missing
        raise


def now() -> datetime:
    # store.writer.now_utc, without importing pyarrow and DuckDB: `index --jobs` starts its
    # workers before anything loads them.
    return datetime.now(timezone.utc)


def _held(record: ImageRecord) -> int:
    """About what a pending record holds. The text of a real config is longer than its entries
    cost as objects, so its bytes stand for both; a config of many tiny entries is charged by them."""
    text = len(record.manifest_raw or b"") + len(record.config_raw or b"")
    entries = (
        len(record.history)
        + len(record.diff_ids)
        + len(record.env)
        + len(record.entrypoint)
        + len(record.cmd)
        + len(record.labels)
    )
    return max(text, entries * _ENTRY_BYTES)


def _unstorable(record: ImageRecord, exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    name = f"{record.registry}/{record.name}" if record.name else "(unnamed)"
    key = record.digest or (record.config.digest if record.config is not None else "")
    return f"{record.source_path}: image {record.id} ({name}{'@' + key if key else ''}) cannot be stored: {reason}"
