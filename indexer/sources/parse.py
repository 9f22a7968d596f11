"""The one parser of manifests, indexes and configs that every source hands raw bytes to.

A source supplies a `BlobStore` (raw blobs by digest) and the top-level descriptors with their
names; `walk` verifies every manifest and config against its descriptor and yields records.
The classic docker save, which has no manifest, goes through `record_from_config`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from .. import timestamps
from ..errors import SourceError
from ..model import (
    EXACT_MANIFEST,
    KIND_ARTIFACT,
    KIND_ATTESTATION,
    KIND_IMAGE,
    KIND_INDEX,
    Blob,
    HistoryEntry,
    ImageConfig,
    ImageRecord,
    Platform,
)
from ..references import DIGEST_ALGORITHMS, Reference, image_id, is_valid_digest, is_valid_name, is_valid_tag
from ..shard import Shard
from . import configbounds
from . import mediatypes as mt
from . import typed
from .jsonshape import object_at, string_at
from .jsonstream import LongInteger, dumped, encoding_problem, loads

# Manifests, indexes and configs above this size are refused unread: memory stays bounded.
MAX_JSON_BYTES = 8 * 1024 * 1024
# What parsing one document at once may take, as `parsed_size` bounds it: 8 MiB of `0,` is four
# million values, ~250 MB of objects.
MAX_PARSED_BYTES = 64 * 1024 * 1024
# About what a JSON value costs once parsed: a small int, an empty list or a short string takes 28
# to 56 bytes, and its place in a list or dict 8 to 16 more.
_BYTES_PER_VALUE = 64
# Indexes nested deeper than this are refused (real images nest one or two levels).
MAX_INDEX_DEPTH = 16
# Manifests one top-level descriptor may lead to, each counted every time an index reaches it:
# within the depth limit, indexes that list each other many times would otherwise be walked
# exponentially often (10 children, 15 levels: 10**15 walks of a 25 KB layout). Real indexes list
# a few dozen platforms and attestations.
MAX_WALKED = 50_000
# All the top-level descriptors of one source together: MAX_WALKED_IN_ALL, and this many more for
# each of them. Without it, N descriptors naming one large index under N repository names cost N
# times the index: 5,000 names on an index of 20,000 listings, a 4 MB layout, took about 1 s each.
MAX_WALKED_IN_ALL = 1_000_000
WALKS_PER_DESCRIPTOR = 64
# A manifest or index read costs one walk more for each this many of its bytes.
_BYTES_PER_WALK = 4096
# The bytes of the indexes one source keeps, so that descriptors listing one again cost no read.
_KEPT_BYTES = 64 * 1024 * 1024
# Sizes are int64 in the store, the OCI descriptor and the Container Registry API alike.
INT64_MAX = 2**63 - 1


class BlobStore(Protocol):
    """Raw blobs of one source, by digest."""

    def read_blob(self, digest: str, limit: int) -> bytes:
        """The blob's bytes; SourceError when it is missing or larger than `limit`."""

    def blob_size(self, digest: str) -> int | None:
        """The stored size, or None when the blob is absent. Must not read the blob."""

    # Stores that hold layer bytes also offer `blob_digest(digest) -> "algorithm:hex" | None`, by
    # the algorithm `digest` names, for --verify.


@dataclass
class Context:
    source_kind: str
    source_path: str
    registry: str = ""  # for images whose source carries no name
    repository: str = ""
    note: Callable[[str], None] = field(default=lambda message: None)
    verify: bool = False  # also hash layer contents against their digests (--verify)
    shard: Shard | None = None  # --shard K/N: the slice of each source this run takes; None takes all
    # Layers shared by many images come back as equal descriptors: each shape is validated once a run.
    descriptors: dict = field(default_factory=dict, repr=False)


# A \uD800-\uDFFF escape, or a UTF-8 encoded surrogate (json.loads decodes bytes with surrogatepass).
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def parsed_size(data: bytes) -> int:
    """A bound, counted without parsing, on the memory `data` takes once parsed, beyond its strings:
    every value but the first follows a comma or a colon."""
    return (data.count(b",") + data.count(b":") + 1) * _BYTES_PER_VALUE


def load_json(data: bytes, where: str, what: str) -> object:
    try:
        # UTF-8 alone, as Go reads JSON: json.loads(bytes) would take a byte order mark, UTF-16 and
        # UTF-32 too. The same decode json.loads does, so no more work.
        doc = loads(data.decode("utf-8", "surrogatepass"))
    except RecursionError:
        raise SourceError(where, f"{what} is not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        reason = encoding_problem(data) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise SourceError(where, f"{what} is not valid JSON ({reason})") from None
    if (b"\\u" in data or b"\xed" in data) and _MAYBE_SURROGATE.search(data):
        try:
            dumped(doc).encode("utf-8")
        except UnicodeEncodeError:
            raise SourceError(where, f"{what} is not valid JSON (a string holds a lone UTF-16 surrogate)") from None
    return doc


def check_values(data: bytes, where: str, what: str) -> None:
    """Refuse a manifest, index or config of more values than `configbounds` allows, before it is
    parsed: 8 MiB of `{}` layers would take ~300 MB as objects."""
    if configbounds.too_many_values(data):
        raise SourceError(where, f"{what} holds too many values for its {len(data)} bytes")


def load_object(data: bytes, where: str, what: str) -> dict:
    doc = load_json(data, where, what)
    if not isinstance(doc, dict):
        raise SourceError(where, f"{what} is not a JSON object")
    return doc


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify(data: bytes, digest: str, size: int | None, where: str, what: str) -> None:
    algorithm, _, _ = digest.partition(":")
    if algorithm not in DIGEST_ALGORITHMS:
        raise SourceError(where, f"{what} uses unsupported digest algorithm {algorithm!r}")
    actual = f"{algorithm}:{getattr(hashlib, algorithm)(data).hexdigest()}"
    if actual != digest:
        raise SourceError(where, f"{what} digest mismatch: descriptor says {digest}, bytes hash to {actual}")
    if size is not None and size != len(data):
        raise SourceError(where, f"{what} size mismatch: descriptor says {size}, blob has {len(data)} bytes")


def valid_size(value: object) -> bool:
    """A byte size as the store keeps it: an int (not a bool, not a float) from 0 to 2**63-1."""
    return type(value) is int and 0 <= value <= INT64_MAX


def size_problem(value: object) -> str:
    if type(value) in (int, LongInteger):
        return f"{value} is out of range (0 to 2**63-1)"
    return f"{value!r} is not an integer"


def check_sizes(layers: Iterable[Blob], config: Blob | None, where: str, label: str = "") -> None:
    """Every size fits the store's int64 columns, and so does their sum (the compressedSize)."""
    prefix = f"{label}: " if label else ""
    if config is not None and not valid_size(config.size):
        raise SourceError(where, f"{prefix}config size {size_problem(config.size)}")
    total = 0
    for position, layer in enumerate(layers):
        size = layer.size
        if type(size) is not int or not 0 <= size <= INT64_MAX:
            raise SourceError(where, f"{prefix}layer {position} ({layer.digest}) size {size_problem(size)}")
        total += size
    if total > INT64_MAX:
        raise SourceError(where, f"{prefix}the layer sizes add up to {total}, more than 2**63-1")


def parse_descriptor(raw: object, where: str, what: str, known_shapes: dict | None = None) -> Blob:
    """A validated descriptor. `known_shapes` (a run's `Context.descriptors`) remembers the plain
    ones already validated, so that a layer shared by many images is checked once."""
    key = None
    if type(raw) is dict and len(raw) == 3:
        candidate = (raw.get("mediaType"), raw.get("digest"), raw.get("size"))
        if type(candidate[0]) is str and type(candidate[1]) is str and valid_size(candidate[2]):
            key = candidate
            known = known_shapes.get(key) if known_shapes is not None else None
            if known is not None:
                return known
    if not isinstance(raw, dict):
        raise SourceError(where, f"{what} is not a descriptor object")
    digest = raw.get("digest")
    size = raw.get("size")
    media_type = raw.get("mediaType", "")
    urls = raw.get("urls")
    urls = [] if urls is None else urls  # as Go reads null; "" or 0 is no list
    if not is_valid_digest(digest):
        raise SourceError(where, f"{what} has an invalid digest {digest!r}")
    if not valid_size(size):
        raise SourceError(where, f"{what} has an invalid size: {size_problem(size)}")
    if not isinstance(media_type, str):
        raise SourceError(where, f"{what} has an invalid mediaType")
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise SourceError(where, f"{what} has invalid urls")
    blob = Blob(digest=digest, size=size, media_type=media_type, urls=tuple(urls))
    if (
        key is not None
        and not urls
        and known_shapes is not None
        and len(known_shapes) < 100_000
        and len(media_type) <= mt.MAX_LENGTH
    ):
        known_shapes[key] = blob
    return blob


def _strings(value: object) -> tuple[str, ...]:
    if type(value) is list:
        return tuple(v for v in value if type(v) is str)
    return ()


def _diff_ids(value: object) -> tuple[str, ...]:
    # Position is a layer's identity: dropping an entry that is not a string would make the next
    # layers someone else's (a chain equal to another image's). Unknown, as an empty list is.
    strings = _strings(value)
    return strings if type(value) is list and len(strings) == len(value) else ()


def _history(raw: object) -> tuple[HistoryEntry, ...]:
    if type(raw) is not list:
        return ()
    # Kept as written: history is for analysts, and normalising it would cost more than the rest
    # of the config. Inlined: this loop runs for every layer of every image.
    out = []
    for entry in raw:
        if type(entry) is dict:
            created = entry.get("created")
            created_by = entry.get("created_by")
            comment = entry.get("comment")
            out.append(
                HistoryEntry(
                    created if type(created) is str else "",
                    created_by if type(created_by) is str else "",
                    comment if type(comment) is str else "",
                    entry.get("empty_layer") is True,
                )
            )
    return tuple(out)


def parse_config(data: bytes, where: str) -> ImageConfig:
    config = typed.decode_config(data)
    return config if config is not None else parse_config_exact(data, where)


def parse_config_exact(data: bytes, where: str) -> ImageConfig:
    """The config by json.loads, for what the typed decoder leaves (and for its error messages)."""
    check_values(data, where, "config")
    doc = load_object(data, where, "config")
    inner = object_at(doc, "config")
    created = string_at(doc, "created")
    labels = _bounded(object_at(inner, "Labels"), where, "Labels")
    env = _bounded(inner.get("Env"), where, "Env")
    entrypoint = _bounded(inner.get("Entrypoint"), where, "Entrypoint")
    cmd = _bounded(inner.get("Cmd"), where, "Cmd")
    diff_ids = _bounded(object_at(doc, "rootfs").get("diff_ids"), where, "rootfs.diff_ids")
    history = _bounded(doc.get("history"), where, "history")
    return ImageConfig(
        created=timestamps.normalise(created) if created else None,
        os=string_at(doc, "os"),
        architecture=string_at(doc, "architecture"),
        variant=string_at(doc, "variant"),
        labels=tuple(sorted((k, v) for k, v in labels.items() if type(v) is str)),
        env=_strings(env),
        entrypoint=_strings(entrypoint),
        cmd=_strings(cmd),
        diff_ids=_diff_ids(diff_ids),
        history=_history(history),
    )


def _bounded(entries: object, where: str, what: str) -> object:
    """`entries`, unless it is a list or object of more than `configbounds.MAX_ENTRIES`. Counted as
    written, entries of the wrong type too: they were parsed all the same."""
    if type(entries) in (list, dict) and len(entries) > configbounds.MAX_ENTRIES:
        reason = f"{what} has {len(entries)} entries, more than the {configbounds.MAX_ENTRIES} a config may list"
        raise SourceError(where, f"config {reason}")
    return entries


def verify_layers(store, layers: Iterable[Blob], ctx: Context, where: str, label: str) -> None:
    """--verify: hash each layer's stored bytes; a mismatch fails the image."""
    hasher = getattr(store, "blob_digest", None)
    if hasher is None:
        return  # engines and registries hold no layer bytes here; the run notes that once
    for layer in layers:
        algorithm = layer.digest.partition(":")[0]
        if algorithm not in DIGEST_ALGORITHMS:
            ctx.note(f"{where}: {label}: layer {layer.digest} not verified (no {algorithm} hash here)")
            continue
        actual = hasher(layer.digest)
        if actual is None:
            raise SourceError(where, f"{label}: layer {layer.digest} is missing")
        if actual != layer.digest:
            raise SourceError(where, f"{label}: layer {layer.digest} content hashes to {actual}")


def parse_platform(raw: object) -> Platform | None:
    if not isinstance(raw, dict):
        return None

    def text(key: str) -> str:
        value = raw.get(key)
        return value if isinstance(value, str) else ""

    return Platform(os=text("os"), architecture=text("architecture"), variant=text("variant"))


def group_names(names: Iterable[Reference], ctx: Context, where: str = "") -> list[tuple[str, str, tuple[str, ...]]]:
    """(registry, name, sorted tags) per repository; one unnamed group when there are no names.

    Names reach here parsed by `parse_reference`; a name or tag that is still outside Docker's
    grammar (a Reference built by hand) is dropped with a note, so it is never stored.
    """
    groups: dict[tuple[str, str], set[str]] = {}
    for ref in names:
        if ref.name and not is_valid_name(ref.registry, ref.name):
            ctx.note(f"{where or ctx.source_path}: ignoring name {str(ref)!r}: not a valid repository name")
            continue
        tags = groups.setdefault((ref.registry, ref.name), set())
        if ref.tag:
            if is_valid_tag(ref.tag):
                tags.add(ref.tag)
            else:
                repository = f"{ref.registry}/{ref.name}"
                ctx.note(f"{where or ctx.source_path}: ignoring tag {ref.tag!r} of {repository}: not a valid tag")
    if not groups:
        return [(ctx.registry, ctx.repository, ())]
    return [(registry, name, tuple(sorted(tags))) for (registry, name), tags in sorted(groups.items())]


def _config_fields(config: ImageConfig | None) -> dict:
    if config is None:
        return {"created": None}
    return dict(
        created=config.created,
        labels=config.labels,
        env=config.env,
        entrypoint=config.entrypoint,
        cmd=config.cmd,
        history=config.history,
        diff_ids=config.diff_ids,
    )


_NO_CONFIG = ImageConfig()


def layers_compressed(layers: Sequence[Blob]) -> bool:
    """Whether the layer sizes are those of compressed blobs. An image of no layers has none: read
    as compressed, an engine's or a `docker save`'s image of none said what those never are."""
    return bool(layers) and not any(layer.media_type in mt.UNCOMPRESSED_LAYERS for layer in layers)


def platform_of(config: ImageConfig) -> Platform | None:
    if config.os or config.architecture:
        return Platform(config.os, config.architecture, config.variant)
    return None


def new_record(
    ctx: Context,
    registry: str,
    name: str,
    *,
    digest: str,
    config_blob: Blob | None,
    layers: tuple[Blob, ...],
    config: ImageConfig | None = None,
    where: str = "",
    **fields,
) -> ImageRecord:
    """A record with what every source derives alike: the id (keyed by the manifest digest, else the
    config digest), whether layer sizes are compressed, the source, and the analyst fields of `config`.
    `fields` gives the rest and overrides what `config` would give. SourceError (naming `where`)
    when a size does not fit the store."""
    check_sizes(layers, config_blob, where or ctx.source_path)
    key = digest or (config_blob.digest if config_blob is not None else "")
    return ImageRecord(
        id=image_id(registry, name, key),
        registry=registry,
        name=name,
        digest=digest,
        config=config_blob,
        layers=layers,
        layers_compressed=layers_compressed(layers),
        source_kind=ctx.source_kind,
        source_path=ctx.source_path,
        **{**_config_fields(config), **fields},
    )


def kind_confusion(declared: str, doc: dict) -> str:
    """Why a document listed as an image manifest or an index is not one ('' when it may be): its
    own mediaType names another kind, or it holds what only the other kind holds. As containerd
    refuses it: otherwise one digest reads as an image where it is listed so and as an index where
    it is listed so. A Docker type where the OCI type of the same kind was listed, or the reverse,
    is read alike by both (containerd takes it too)."""
    if declared in mt.MANIFESTS:
        same, other_keys = mt.MANIFESTS, ("manifests",)
    elif declared in mt.INDEXES:
        same, other_keys = mt.INDEXES, ("config", "layers")
    else:
        return ""
    own = doc.get("mediaType")
    if type(own) is str and own and own not in same:
        shown = own if len(own) <= mt.MAX_LENGTH else own[: mt.MAX_LENGTH] + "..."
        return f"but its own mediaType is {shown!r}"
    for key in other_keys:
        # null is what Go writes for an empty list: no more than an absent key.
        if doc.get(key) is not None:
            return f"but holds {key!r}, as {'an index' if key == 'manifests' else 'an image manifest'} does"
    return ""


def _detect_media_type(declared: str, doc: dict) -> str:
    own = doc.get("mediaType")
    if isinstance(own, str) and own:
        return own
    if declared:
        return declared
    if doc.get("schemaVersion") == 1:
        return mt.DOCKER_SCHEMA1
    if "manifests" in doc:
        return mt.OCI_INDEX
    if "config" in doc or "layers" in doc:
        return mt.OCI_MANIFEST
    return ""


class Walks:
    """What the walks of one source's top-level descriptors share: which indexes had their children
    walked, under which names and how near the top, and the walks spent against the allowance.

    An index's children yield the same records whoever lists it under the same names (they carry
    the names' repositories, the index as parent, and what the index itself says of them), so
    they are walked once; the index's own record, with its tags, is yielded every time."""

    __slots__ = ("expanded", "spent", "allowance", "indexes", "kept")

    def __init__(self) -> None:
        self.expanded: dict[tuple, int] = {}
        self.spent = 0
        self.allowance = MAX_WALKED_IN_ALL
        # Indexes read, verified and found well formed, by (digest, media type, size) as listed:
        # listed again alike, one is neither read nor hashed again. Up to _KEPT_BYTES of them.
        self.indexes: dict[tuple, tuple[bytes, str]] = {}
        self.kept = 0

    def keep(self, key: tuple, data: bytes, media_type: str) -> None:
        if key not in self.indexes and self.kept + len(data) <= _KEPT_BYTES:
            self.indexes[key] = (data, media_type)
            self.kept += len(data)


class _Top:
    """The walk of one top-level descriptor: its digest, its count, whether its bound was said."""

    __slots__ = ("digest", "count", "said", "walks")

    def __init__(self, digest: str, walks: Walks):
        self.digest, self.count, self.said, self.walks = digest, 0, False, walks

    def over(self, cost: int = 0) -> bool:
        """Whether the next walk below it (and `cost` more) would pass a bound."""
        return self.count >= MAX_WALKED or self.walks.spent + cost >= self.walks.allowance

    def step(self) -> None:
        self.count += 1
        self.walks.spent += 1

    def refusal(self, where: str, skipped: str = "what {} lists") -> list[SourceError]:
        """The bound's error the first time; nothing after, as the indexes still under way stop."""
        if self.said:
            return []
        self.said = True
        if self.count >= MAX_WALKED:
            reason = f"index {self.digest} leads to more than {MAX_WALKED} manifests, counting repeats"
        else:
            reason = (
                f"{skipped.format(self.digest)} is skipped: this source's descriptors lead to more than "
                f"{self.walks.allowance} manifests in all, counting repeats ({MAX_WALKED_IN_ALL} and "
                f"{WALKS_PER_DESCRIPTOR} for each descriptor, every {_BYTES_PER_WALK} bytes read counted as one)"
            )
        return [SourceError(where, reason)]


def walk(
    store: BlobStore,
    descriptor: Blob,
    names: list[Reference],
    ctx: Context,
    where: str,
    *,
    parent: str = "",
    platform: Platform | None = None,
    annotations: dict | None = None,
    depth: int = 0,
    walked: _Top | None = None,
    walks: Walks | None = None,
) -> Iterator[ImageRecord | SourceError]:
    """Yield the records of one descriptor (and of its children, for an index). A top-level call
    passes the `walks` its source shares (a new one when none); `walked` is for the calls below.

    A top-level descriptor of less than _BYTES_PER_WALK is always walked itself, so the plain
    images of a source land whatever its indexes cost; a larger one, and what any lists, while the
    bounds hold. Each record carries its manifest's bytes: those count whether read or kept."""
    if walked is None:
        walks = walks if walks is not None else Walks()
        walks.allowance += WALKS_PER_DESCRIPTOR
        walked = _Top(descriptor.digest, walks)
        cost = descriptor.size // _BYTES_PER_WALK if descriptor.size <= MAX_JSON_BYTES else 0  # else refused unread
        if cost and walked.over(cost):
            yield from walked.refusal(where, "{}")
            return
    elif walked.over():
        yield from walked.refusal(where)
        return
    walked.step()
    if depth > MAX_INDEX_DEPTH:
        yield SourceError(where, f"manifest {descriptor.digest} is nested more than {MAX_INDEX_DEPTH} indexes deep")
        return
    if descriptor.media_type in mt.SCHEMA1:
        yield SourceError(
            where,
            f"manifest {descriptor.digest} is a schema1 manifest ({descriptor.media_type}), which is not supported",
        )
        return
    if descriptor.media_type and descriptor.media_type not in mt.INDEXES and descriptor.media_type not in mt.MANIFESTS:
        ctx.note(f"{where}: skipped {descriptor.digest}: unknown media type {descriptor.media_type}")
        return
    try:
        kept = walked.walks.indexes.get((descriptor.digest, descriptor.media_type, descriptor.size))
        if kept is not None:
            data, media_type = kept
            walked.walks.spent += len(data) // _BYTES_PER_WALK
            yield from _walk_index(
                store, descriptor, data, None, media_type, names, ctx, where, parent, platform, depth, walked
            )
            return
        data = store.read_blob(descriptor.digest, MAX_JSON_BYTES)
        walked.walks.spent += len(data) // _BYTES_PER_WALK
        verify(data, descriptor.digest, descriptor.size, where, f"manifest {descriptor.digest}")
        check_values(data, where, f"manifest {descriptor.digest}")
        decoded = typed.decode_manifest(data, descriptor.media_type, ctx.descriptors)
        if decoded is not None:
            media_type, config_blob, layers, artifact_type = decoded
            yield from _image_records(
                store,
                descriptor,
                data,
                media_type,
                config_blob,
                layers,
                artifact_type,
                names,
                ctx,
                where,
                parent,
                platform,
                annotations or {},
                walked,
            )
            return
        doc = load_object(data, where, f"manifest {descriptor.digest}")
        media_type = _detect_media_type(descriptor.media_type, doc)
        if media_type in mt.SCHEMA1:
            raise SourceError(where, f"manifest {descriptor.digest} is a schema1 manifest, which is not supported")
        confusion = kind_confusion(descriptor.media_type, doc)
        if confusion:
            raise SourceError(where, f"manifest {descriptor.digest} is listed as {descriptor.media_type} {confusion}")
        if media_type in mt.INDEXES:
            yield from _walk_index(
                store, descriptor, data, doc, media_type, names, ctx, where, parent, platform, depth, walked
            )
            return
        if media_type not in mt.MANIFESTS:
            ctx.note(f"{where}: skipped {descriptor.digest}: unknown media type {media_type or '(none)'}")
            return
        yield from _manifest_records(
            store, descriptor, data, doc, media_type, names, ctx, where, parent, platform, annotations or {}, walked
        )
    except SourceError as exc:
        yield exc


def _index_children(descriptor: Blob, doc: dict, where: str) -> list:
    children = doc.get("manifests")
    if children is None:
        return []
    if not isinstance(children, list):
        raise SourceError(where, f"index {descriptor.digest}: manifests is not a list")
    return children


def _walk_index(store, descriptor, data, doc, media_type, names, ctx, where, parent, platform, depth, walked):
    """An index's record, then its children's. `doc` is None for an index kept from an earlier
    walk of this source: parsed again only if its children are walked again."""
    shared = walked.walks
    if doc is not None:
        children = _index_children(descriptor, doc, where)
        shared.keep((descriptor.digest, descriptor.media_type, descriptor.size), data, media_type)
    groups = group_names(names, ctx, where)
    for registry, name, tags in groups:
        yield new_record(
            ctx,
            registry,
            name,
            where=where,
            digest=descriptor.digest,
            config_blob=None,
            layers=(),
            media_type=media_type,
            kind=KIND_INDEX,
            tags=tags,
            platform=platform,
            parent_digest=parent,
            exactness=EXACT_MANIFEST,
            manifest_raw=data,
        )
    untagged = [Reference(registry, name) for registry, name, _ in groups]
    # Met again nearer the top, the depth limit cuts fewer of its descendants: walked again.
    key = (descriptor.digest, tuple(untagged))
    if shared.expanded.get(key, MAX_INDEX_DEPTH + 1) <= depth:
        return
    parse_cost = len(data) // _BYTES_PER_WALK if doc is None else 0  # a kept index, parsed again too
    if walked.over(parse_cost):
        yield from walked.refusal(where)
        return
    shared.expanded[key] = depth
    shared.spent += parse_cost
    if doc is None:
        children = _index_children(descriptor, load_object(data, where, f"manifest {descriptor.digest}"), where)
    # A child listed again exactly alike yields the same records: counted as walked, not read again.
    listed: set[tuple] = set()
    for position, raw_child in enumerate(children):
        child = parse_descriptor(raw_child, where, f"index {descriptor.digest} manifests[{position}]", ctx.descriptors)
        child_annotations = raw_child.get("annotations") if isinstance(raw_child.get("annotations"), dict) else {}
        alike = (child, repr(raw_child.get("platform")), repr(child_annotations))
        if alike in listed:
            if walked.over():
                yield from walked.refusal(where)
                return
            walked.step()
            continue
        listed.add(alike)
        if child.media_type in (mt.INDEXES | mt.MANIFESTS) and store.blob_size(child.digest) is None:
            # Layouts exported for one platform (ctr export, docker save --platform) omit the others.
            ctx.note(f"{where}: child {child.digest} of index {descriptor.digest} is not in the source; skipped")
            continue
        yield from walk(
            store,
            child,
            untagged,
            ctx,
            where,
            parent=descriptor.digest,
            platform=parse_platform(raw_child.get("platform")),
            annotations=child_annotations,
            depth=depth + 1,
            walked=walked,
        )


def _manifest_records(
    store, descriptor, data, doc, media_type, names, ctx, where, parent, platform, annotations, walked
):
    label = f"manifest {descriptor.digest}"
    config_blob = parse_descriptor(doc.get("config"), where, f"{label} config", ctx.descriptors)
    raw_layers = doc.get("layers")
    if raw_layers is None:
        raw_layers = []
    if not isinstance(raw_layers, list):
        raise SourceError(where, f"{label}: layers is not a list")
    layers = tuple(
        parse_descriptor(layer, where, f"{label} layers[{i}]", ctx.descriptors) for i, layer in enumerate(raw_layers)
    )
    yield from _image_records(
        store,
        descriptor,
        data,
        media_type,
        config_blob,
        layers,
        doc.get("artifactType"),
        names,
        ctx,
        where,
        parent,
        platform,
        annotations,
        walked,
    )


def _image_records(
    store,
    descriptor,
    data,
    media_type,
    config_blob,
    layers,
    artifact_type,
    names,
    ctx,
    where,
    parent,
    platform,
    annotations,
    walked,
):
    """The records of an image manifest whose descriptors are parsed and validated, by either path."""
    label = f"manifest {descriptor.digest}"
    check_sizes(layers, config_blob, where, label)
    for layer in layers:
        if layer.urls:
            continue
        stored = store.blob_size(layer.digest)
        if stored is None:
            raise SourceError(where, f"{label}: layer {layer.digest} is missing")
        if stored != layer.size:
            raise SourceError(where, f"{label}: layer {layer.digest} is {stored} bytes, descriptor says {layer.size}")
    if ctx.verify:
        verify_layers(store, [layer for layer in layers if not layer.urls], ctx, where, label)

    config = None
    is_image_config = config_blob.media_type in mt.IMAGE_CONFIGS
    # An artifact's config is read and verified as an image's is: its digest and size are reported,
    # and an absent blob would leave them unchecked.
    # Its bytes count as a manifest's do: each record stores them, so many small manifests naming
    # one large config would otherwise turn a few MB of input into as many GB of store.
    cost = config_blob.size // _BYTES_PER_WALK if config_blob.size <= MAX_JSON_BYTES else 0  # else refused unread
    if cost and walked.walks.spent + cost >= walked.walks.allowance:
        yield from walked.refusal(where, f"config {config_blob.digest} of manifest {descriptor.digest}")
        return
    walked.walks.spent += cost
    config_raw = store.read_blob(config_blob.digest, MAX_JSON_BYTES)
    verify(config_raw, config_blob.digest, config_blob.size, where, f"{label} config")
    if is_image_config:
        config = parse_config(config_raw, f"{where} (config {config_blob.digest})")

    if annotations.get(mt.REFERENCE_TYPE) == mt.ATTESTATION:
        kind = KIND_ATTESTATION
    elif not is_image_config or (isinstance(artifact_type, str) and artifact_type):
        kind = KIND_ARTIFACT
    else:
        kind = KIND_IMAGE
    if platform is None and config is not None:
        platform = platform_of(config)

    # As new_record builds it (sizes were checked above), once per repository.
    config = config if config is not None else _NO_CONFIG
    compressed = layers_compressed(layers)
    for registry, name, tags in group_names(names, ctx, where):
        yield ImageRecord(
            id=image_id(registry, name, descriptor.digest),
            registry=registry,
            name=name,
            digest=descriptor.digest,
            media_type=media_type,
            kind=kind,
            config=config_blob,
            layers=layers,
            layers_compressed=compressed,
            tags=tags,
            created=config.created,
            platform=platform,
            parent_digest=parent,
            source_kind=ctx.source_kind,
            source_path=ctx.source_path,
            exactness=EXACT_MANIFEST,
            labels=config.labels,
            env=config.env,
            entrypoint=config.entrypoint,
            cmd=config.cmd,
            history=config.history,
            diff_ids=config.diff_ids,
            manifest_raw=data,
            config_raw=config_raw,
        )


def record_from_config(
    config_raw: bytes,
    config_digest: str,
    layer_sizes: list[int],
    names: list[Reference],
    ctx: Context,
    where: str,
    exactness: int,
    foreign: dict[str, Blob] | None = None,
    config: ImageConfig | None = None,
) -> list[ImageRecord]:
    """Records of an image known only by its config (classic docker save, an engine).

    The layers are the config's diff_ids with the stored (uncompressed) sizes; `foreign` maps
    a diff_id to the descriptor of a foreign layer that was not stored; `config` is the parsed
    `config_raw`, when the caller has it.
    """
    if config is None:
        config = parse_config(config_raw, where)
    if len(config.diff_ids) != len(layer_sizes):
        raise SourceError(
            where, f"config lists {len(config.diff_ids)} diff_ids but the image has {len(layer_sizes)} layers"
        )
    for position, size in enumerate(layer_sizes):
        if not valid_size(size):
            raise SourceError(where, f"layer {position} size {size_problem(size)}")
    for position, diff_id in enumerate(config.diff_ids):
        # Here the diff_ids are the layers' digests, as the response reports them, and what blob
        # ids and lineage are made from: each must be a digest, as a manifest's layers must be.
        if not is_valid_digest(diff_id):
            raise SourceError(where, f"config's rootfs.diff_ids[{position}] has an invalid digest {diff_id!r}")
    foreign = foreign or {}
    layers = tuple(
        foreign.get(diff_id) or Blob(digest=diff_id, size=size, media_type=mt.DOCKER_LAYER_TAR)
        for diff_id, size in zip(config.diff_ids, layer_sizes)
    )
    config_blob = Blob(digest=config_digest, size=len(config_raw), media_type=mt.DOCKER_CONFIG)
    check_sizes(layers, config_blob, where)
    return [
        new_record(
            ctx,
            registry,
            name,
            where=where,
            digest="",
            config_blob=config_blob,
            layers=layers,
            config=config,
            media_type="",
            kind=KIND_IMAGE,
            tags=tags,
            platform=platform_of(config),
            parent_digest="",
            exactness=exactness,
            config_raw=config_raw,
        )
        for registry, name, tags in group_names(names, ctx, where)
    ]
