"""`ycr-json:PATH`: Image resources that Yandex Cloud Container Registry itself produced.

Accepts an `Image.List` response (`{"images": [...], "nextPageToken": ...}`), one `Image.Get`
response, a JSON array of either, JSON lines, and the snake_case output of
`yc container image list --format json`. `PATH` may be `-` for standard input.

The records keep YCR's real ids (image and blob ids), the push time as `createdAt` and YCR's
own compressed size, so that the stored resource renders as the imported document. Names are
`REGISTRY_ID/REPO` under the registry host `cr.yandex` unless `--registry` says otherwise.

The input is read in pieces, never whole: JSON lines one line at a time, a single document one
array element (or one image of an `images` list) at a time, so memory follows the largest image
rather than the file. A regular file is read twice, a check of the whole text before any image is
handed out (so a malformed file lands nothing, as when it was parsed at once); standard input and
pipes are read once, and images before a fault in them may land.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from dataclasses import dataclass
from itertools import chain
from typing import BinaryIO, Iterable, Iterator

from .. import timestamps
from ..errors import ImgdexError, SourceError
from ..files import open_readable
from ..identifiers import NO_BLOB_ID
from ..model import IMPORTED, KIND_IMAGE, KIND_INDEX, Blob, ImageRecord
from ..references import ID_RE, is_valid_digest, is_valid_tag, parse_reference
from ..store.hashset import HashSet
from .configbounds import MAX_ENTRIES, too_many_values
from .jsonstream import MAX_PARSED_VALUES, JsonText, LongInteger, refuse_constant
from .parse import INT64_MAX, Context, check_sizes

DEFAULT_REGISTRY = "cr.yandex"
# What one export may hold, so that an endless stream stops. An image with ten layers is about
# 2 KB of JSON (more pretty-printed, as `yc` writes it): a registry of 1M images exports to 2-3 GB.
# Memory does not grow with it (the input is streamed); only the time to reach the limit does.
MAX_EXPORT_BYTES = 4 << 30
# One JSON line, one element of a top-level array, or the members of an object other than its
# `images` list: one image (a few KB) or one `Image.List` page (at most 1000 images, the API's
# page size, a few MB). Parsing one takes a few times its size in memory.
MAX_VALUE_BYTES = 16 << 20
_PIECE = 1 << 20
_BLANK = b" \t\r\n"  # JSON's whitespace
_IMAGE_FIELDS = {"id", "name", "digest", "compressedSize", "config", "layers", "tags", "createdAt"}
_BLOB_FIELDS = {"id", "digest", "size", "urls"}
_SNAKE = {"compressed_size": "compressedSize", "created_at": "createdAt", "next_page_token": "nextPageToken"}


def _camel(doc: dict) -> dict:
    return {_SNAKE.get(key, key): value for key, value in doc.items()}


class _Repeated(dict):
    """An object that names a member twice, which proto3 JSON refuses (`json_format.Parse`: "duplicate
    key"); `json` keeps the last silently. Marked rather than refused while parsing, so that it
    fails its image, not the file."""

    key = ""


def _pairs(pairs: list[tuple[str, object]]) -> dict:
    doc = dict(pairs)
    if len(doc) < len(pairs):
        doc = _Repeated(doc)
        seen = set()
        doc.key = next(key for key, _ in pairs if key in seen or seen.add(key))
    return doc


_JSON = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=refuse_constant)


def _repeats(raw: dict, where: str, what: str) -> None:
    if type(raw) is _Repeated:
        raise SourceError(where, f"{what} has the field {raw.key!r} twice")
    # proto3 JSON takes a field by either of its names, but only once (`json_format.Parse`: "should not
    # have multiple fields"); read as one, the last would win silently.
    if _SNAKE.keys().isdisjoint(raw):  # camelCase only, as nearly every document is
        return
    twice = next((_SNAKE[key] for key in raw if key in _SNAKE and _SNAKE[key] in raw), None)
    if twice is not None:
        raise SourceError(where, f"{what} has the field {twice!r} twice")


def _present(doc: dict) -> dict:
    # proto3 JSON reads `null` as the field's default, as if it were absent (`json_format.Parse`
    # takes `"layers": null` as no layers, `"size": null` as 0)
    return {key: value for key, value in doc.items() if value is not None}


_DECIMAL = re.compile(r"-?[0-9]+", re.ASCII)
# A google.protobuf.Timestamp as proto3 JSON writes it: RFC 3339 with `T` and `Z` in upper case
# and no leap second, which json_format.Parse refuses (the image configs' `timestamps` takes them).
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})", re.ASCII
)


def _int64(value: object, where: str, what: str) -> int:
    """proto3 JSON writes int64 as a string of ASCII digits; older tools and yc write a number.
    A float (1e30, 12.0) is refused: the size it stands for is not known exactly."""
    if type(value) is int:
        number = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(value):
        digits = value.lstrip("0") or "0"
        if len(digits) > len(str(INT64_MAX)):  # nor int() of thousands of digits, nor a message that long
            raise SourceError(where, f"{what} is out of range ({len(digits)} digits; 0 to 2**63-1)")
        number = int(digits)
    elif type(value) is LongInteger:
        raise SourceError(where, f"{what} is out of range ({value.digits} digits; 0 to 2**63-1)")
    else:
        raise SourceError(where, f"{what} is not an integer ({value!r})")
    if number < 0 or number > INT64_MAX:
        raise SourceError(where, f"{what} is out of range ({number}; 0 to 2**63-1)")
    return number


def _blob(raw: object, where: str, what: str, notes: list[str]) -> Blob:
    if not isinstance(raw, dict):
        raise SourceError(where, f"{what} is not an object")
    _repeats(raw, where, what)
    unknown = sorted(set(raw) - _BLOB_FIELDS)
    if unknown:
        notes.append(f"{where}: {what} has fields that are not part of Blob and are not kept: {', '.join(unknown)}")
    raw = _present(raw)
    digest = raw.get("digest", "")
    if not isinstance(digest, str) or (digest and not is_valid_digest(digest)):
        raise SourceError(where, f"{what} has an invalid digest {digest!r}")
    blob_id = raw.get("id", "")
    if not isinstance(blob_id, str) or NO_BLOB_ID in blob_id:
        raise SourceError(where, f"{what} has an invalid id")
    urls = raw.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise SourceError(where, f"{what} has invalid urls")
    size = _int64(raw.get("size", 0), where, f"{what} size")
    return Blob(digest=digest, size=size, media_type="", urls=tuple(urls), id=blob_id or NO_BLOB_ID)


def image_record(raw: object, registry: str, ctx: Context, where: str, notes: list[str]) -> ImageRecord:
    """One Image message (camelCase or snake_case JSON) -> an imported record."""
    if not isinstance(raw, dict):
        raise SourceError(where, "an image is not a JSON object")
    _repeats(raw, where, "the image")
    doc = _camel(raw)
    unknown = sorted(set(doc) - _IMAGE_FIELDS)
    if unknown:
        notes.append(f"{where}: fields that are not part of Image are not kept: {', '.join(unknown)}")
    doc = _present(doc)
    image_id = doc.get("id")
    if not isinstance(image_id, str) or not image_id:
        raise SourceError(where, "the image has no id")
    if not ID_RE.fullmatch(image_id):
        notes.append(
            f"{where}: id {image_id!r} is not shaped like a Container Registry id; "
            "`imgdex get` finds it by reference only"
        )
    name = doc.get("name", "")
    if not isinstance(name, str) or not name:
        raise SourceError(where, f"image {image_id} has no name")
    try:
        ref = parse_reference(f"{registry}/{name}")
    except ImgdexError as exc:
        raise SourceError(where, f"image {image_id}: {exc}") from None
    if ref.tag or ref.digest:  # a reference, not a name: stored, it would be answered without them
        raise SourceError(where, f"image {image_id}: invalid repository name {name!r}")
    if ref.name != name:  # Docker Hub's `library/`: stored so, it would be answered other than imported
        raise SourceError(
            where,
            f"image {image_id}: name {name!r} would be stored as {ref.name!r} under {registry}; use another --registry",
        )
    digest = doc.get("digest", "")
    if not isinstance(digest, str) or (digest and not is_valid_digest(digest)):
        raise SourceError(where, f"image {image_id} has an invalid digest {digest!r}")
    config = _blob(doc["config"], where, "config", notes) if doc.get("config") is not None else None
    raw_layers = doc.get("layers", [])
    if not isinstance(raw_layers, list):
        raise SourceError(where, f"image {image_id}: layers is not a list")
    raw_tags = doc.get("tags", [])
    # A tag outside Docker's grammar is dropped with a note, as from every source; one that is no
    # string at all is a document proto3 JSON refuses (`json_format.Parse`), as urls of that kind are.
    if not isinstance(raw_tags, list) or not all(isinstance(tag, str) for tag in raw_tags):
        raise SourceError(where, f"image {image_id}: tags is not a list of strings")
    # Refused before any Blob is built: each costs ~200 bytes however short its text, and the
    # store holds and renders them all for `get` and `list`.
    for what, entries in (("layers", raw_layers), ("tags", raw_tags)):
        if len(entries) > MAX_ENTRIES:
            raise SourceError(
                where, f"image {image_id}: {len(entries):,} {what}, more than the {MAX_ENTRIES:,} an image may list"
            )
    layers = tuple(_blob(layer, where, f"layers[{i}]", notes) for i, layer in enumerate(raw_layers))
    check_sizes(layers, config, where, f"image {image_id}")
    tags: dict[str, int] = {}  # tag -> times listed
    for tag in raw_tags:
        if not is_valid_tag(tag):
            notes.append(f"{where}: image {image_id}: ignoring tag {tag!r}: not a valid tag")
        else:
            tags[tag] = tags.get(tag, 0) + 1
    for tag, times in tags.items():
        if times > 1:  # a repository holds a tag once: the image is answered with it once
            notes.append(f"{where}: image {image_id}: tag {tag!r} is listed {times} times; kept once")
    created_text = doc.get("createdAt")
    created = None
    if created_text is not None:
        if isinstance(created_text, str) and _TIMESTAMP.fullmatch(created_text):
            created = timestamps.normalise(created_text)
        if created is None:
            raise SourceError(where, f"image {image_id}: createdAt {created_text!r} is not a proto3 JSON timestamp")
    declared = _int64(doc["compressedSize"], where, "compressedSize") if "compressedSize" in doc else 0
    return ImageRecord(
        id=image_id,
        registry=ref.registry,
        name=ref.name,
        digest=digest,
        media_type="",
        # YCR lists a multi-platform index as an image without config and layers
        kind=KIND_IMAGE if (config is not None or layers) else KIND_INDEX,
        config=config,
        layers=layers,
        layers_compressed=True,
        tags=tuple(sorted(set(tags))),
        created=created,
        platform=None,
        parent_digest="",
        source_kind=ctx.source_kind,
        source_path=ctx.source_path,
        exactness=IMPORTED,
        id_origin="imported",
        declared_compressed_size=declared,
    )


_PARSER_WHAT = "the document"
_PARSER_SAYS = f"{_PARSER_WHAT} is "
# As the document parser words it when one value it reads at once holds too many, so that a file
# is refused alike on one line, as JSON lines, or pretty-printed.
_TOO_MANY_VALUES = f"{_PARSER_WHAT} holds a value of more than {MAX_PARSED_VALUES} values"


def _document_text(pieces: Iterable[bytes], where: str) -> JsonText:
    """A single JSON document, one value at a time, no value longer than MAX_VALUE_BYTES."""
    return JsonText(pieces, where, _PARSER_WHAT, max_value=MAX_VALUE_BYTES, decoder=_JSON, byte_order_mark=True)


def _pieces(f: BinaryIO, where: str) -> Iterator[bytes]:
    total = 0
    while True:
        try:
            piece = f.read(_PIECE)
        except OSError as exc:
            raise SourceError(where, exc.strerror or str(exc)) from None
        if not piece:
            return
        total += len(piece)
        if total > MAX_EXPORT_BYTES:
            raise SourceError(where, f"more than {MAX_EXPORT_BYTES} bytes, the limit for one export")
        yield piece


def _lines(pieces: Iterator[bytes], where: str, number: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each line that is not blank; the pieces start at line `number`."""
    parts: list[bytes] = []  # the line read so far, without a newline yet
    size = 0
    for piece in pieces:
        if not parts and not piece.strip(_BLANK):
            number += piece.count(b"\n")  # a run of blank lines costs one scan, not one step a line
            continue
        if b"\n" not in piece:
            parts.append(piece)
            size += len(piece)
            if size > MAX_VALUE_BYTES:
                raise SourceError(f"{where} line {number}", f"longer than the {MAX_VALUE_BYTES}-byte limit")
            continue
        lines = b"".join((*parts, piece)).split(b"\n")
        tail = lines.pop()
        parts, size = [tail], len(tail)
        for line in lines:
            if len(line) > MAX_VALUE_BYTES:
                raise SourceError(f"{where} line {number}", f"longer than the {MAX_VALUE_BYTES}-byte limit")
            if line.strip(_BLANK):
                yield number, line
            number += 1
    last = b"".join(parts)
    if last.strip(_BLANK):
        yield number, last


def _line_document(line: bytes, where: str, number: int) -> object:
    place = f"{where} line {number}"
    # Counted before it is parsed: `[{}],` is 5 bytes of text and ~400 of objects, so a line within
    # MAX_VALUE_BYTES could take over a GB.
    if too_many_values(line, MAX_PARSED_VALUES):
        raise SourceError(place, _TOO_MANY_VALUES)
    try:
        return _JSON.decode(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SourceError(place, str(exc)) from None
    except ValueError as exc:
        raise SourceError(place, f"not valid JSON ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise SourceError(place, "not valid JSON (nested too deeply)") from None


def _raw_images(pieces: Iterator[bytes], where: str, notes: list[str]) -> Iterator[tuple[str, object]]:
    """(where, raw image) of each image of the input, JSON lines or one document.

    It is JSON lines, as `imgdex get --ids-from` writes them, when its first line that is not blank
    is a JSON value of its own and more follows; otherwise it is one document (which may be a
    single line, or a pretty-printed one)."""
    first = 1
    head: list[bytes] = []  # from the first character that is not blank up to a newline
    size = 0
    for piece in pieces:
        if not head:
            blanks = len(piece) - len(piece.lstrip(_BLANK))
            first += piece.count(b"\n", 0, blanks)
            piece = piece[blanks:]
            if not piece:
                continue
        head.append(piece)
        size += len(piece)
        if b"\n" in piece or size > MAX_VALUE_BYTES:
            break
    data = b"".join(head)
    line, newline, rest = data.partition(b"\n")
    whole_line = (newline or size <= MAX_VALUE_BYTES) and len(line) <= MAX_VALUE_BYTES
    if whole_line and too_many_values(line, MAX_PARSED_VALUES):
        # Too many to parse at once. Alone in the input, it is a document written on one line,
        # read a value at a time as it is when pretty-printed; followed by more, it is a JSON line.
        if next(_lines(chain([rest], pieces), where, first + 1), None) is not None:
            raise SourceError(f"{where} line {first}", _TOO_MANY_VALUES)
        # In pieces, as it was read: the parser counts the values of a window before it grows it,
        # and the whole line as one window would be parsed before any count.
        head.clear()
        data = b""
        pieces = (line[start : start + _PIECE] for start in range(0, len(line), _PIECE))
    elif whole_line:
        try:
            value = _JSON.decode(line.decode("utf-8-sig"))
        except ValueError as exc:
            if "Extra data" in str(exc):  # two values on one line
                raise SourceError(f"{where} line {first}", f"not valid JSON ({str(exc).splitlines()[0]})") from None
        except RecursionError:
            pass  # reported by the document parser
        else:
            lines = _lines(chain([rest], pieces), where, first + 1)
            following = next(lines, None)
            if following is None:
                yield from _images(value, where, notes)
                return
            yield from _images(value, f"{where} line {first}", notes)
            for number, text in chain([following], lines):
                yield from _images(_line_document(text, where, number), f"{where} line {number}", notes)
            return
    try:
        yield from _document(_document_text(chain([data], pieces), where), where, notes)
    except SourceError as exc:
        # "not valid JSON (...)", as for the other shapes, rather than the parser's "the document is ..."
        if not exc.reason.startswith(_PARSER_SAYS):
            raise
        raise SourceError(exc.where, exc.reason[len(_PARSER_SAYS) :]) from None


def _document(text: JsonText, where: str, notes: list[str]) -> Iterator[tuple[str, object]]:
    first = text.peek()
    if first == "[":
        for position, element in enumerate(text.elements()):
            yield from _images(element, f"{where}[{position}]", notes)
    elif first == "{":
        yield from _object(text, where, notes)
    else:
        yield from _images(text.value(), where, notes)
    if text.peek() != "":
        text.fail("Extra data")


def _object(text: JsonText, where: str, notes: list[str]) -> Iterator[tuple[str, object]]:
    """The images of a top-level object: its `images` list one image at a time, or the object
    itself (an image, or an `Image.List` response without a list)."""
    members: dict = {}  # all but a list of images handed out one by one
    kept = 0
    values = 0  # in the members kept, counted as the parser counts them
    streamed = False
    for key in text.members():
        # An object with an `id` is an image, whatever else it holds; one with an `images`
        # list before any `id` is taken for an Image.List response.
        if key == "images" and not streamed and "id" not in members and text.peek() == "[":
            streamed = True
            for position, element in enumerate(text.elements()):
                yield f"{where} images[{position}]", element
        else:
            if key in members and type(members) is not _Repeated:
                members = _Repeated(members)
                members.key = key
            start = text.offset()
            members[key] = text.value()
            length = text.offset() - start
            kept += length
            if kept > MAX_VALUE_BYTES:
                raise SourceError(where, f"the object is longer than the {MAX_VALUE_BYTES}-byte limit")
            # The members are kept together, so they are bounded together, as one value read at once
            # is: each alone may stay under the parser's count, fifteen such make an image of ~800 MB.
            # The value's text is still in the window, which only ever drops what lies before a value.
            end = text.pos
            begin = max(end - length, 0)
            values += 2 + text.marks(begin, end)
            if values > MAX_PARSED_VALUES:
                raise SourceError(where, _TOO_MANY_VALUES)
    if not streamed:
        yield from _images(members, where, notes)
        return
    if "images" in members:
        raise SourceError(where, "the response has the field 'images' twice")
    _repeats(members, where, "the response")
    doc = _camel(members)
    if "id" in doc:
        raise SourceError(where, "the response has an id after its images list")
    if doc.get("nextPageToken"):
        notes.append(f"{where}: the response has a nextPageToken; images of later pages are not in this file")


def _images(value: object, where: str, notes: list[str]) -> Iterator[tuple[str, object]]:
    """(where, raw image) of each image in a document of any accepted shape."""
    if isinstance(value, list):
        for position, item in enumerate(value):
            yield from _images(item, f"{where}[{position}]", notes)
        return
    if not isinstance(value, dict):
        yield where, value  # reported as "not a JSON object"
        return
    doc = _camel(value)
    if "id" in doc:
        yield where, value
        return
    if "images" in doc or "nextPageToken" in doc or not doc:
        _repeats(value, where, "the response")
        images = doc.get("images")
        images = [] if images is None else images
        if not isinstance(images, list):
            raise SourceError(where, "images is not a list")
        if doc.get("nextPageToken"):
            notes.append(f"{where}: the response has a nextPageToken; images of later pages are not in this file")
        for position, item in enumerate(images):
            yield f"{where} images[{position}]", item
        return
    yield where, value


def _shard_key(raw: object, ordinal: int) -> str:
    """The shard key of an image: its real id, so an image listed twice goes to one shard. One
    without an id (an error either way) is keyed by its place in the file."""
    image_id = raw.get("id") if isinstance(raw, dict) else None
    return image_id if isinstance(image_id, str) and image_id else f"#{ordinal}"


@dataclass
class YcrJson:
    location: str
    kind: str = "ycr-json"
    reads_layers = False
    reads_index = False

    def records(self, ctx: Context) -> Iterator[ImageRecord | SourceError]:
        registry = ctx.registry or DEFAULT_REGISTRY
        if self.location == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            if stdin is None:
                raise SourceError(self.location, "standard input is closed")
            return self._records(stdin, False, registry, ctx)
        f = _open(self.location)
        return self._records(f, True, registry, ctx)

    def _records(self, f: BinaryIO, own: bool, registry: str, ctx: Context) -> Iterator[ImageRecord | SourceError]:
        try:
            if own and stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                # A first pass checks the whole text, so that a malformed file lands nothing.
                for _ in _raw_images(_pieces(f, self.location), self.location, []):
                    pass
                f.seek(0)
            yield from self._images(_pieces(f, self.location), registry, ctx)
        finally:
            if own:
                f.close()

    def _images(self, pieces: Iterator[bytes], registry: str, ctx: Context) -> Iterator[ImageRecord | SourceError]:
        notes: list[str] = []
        found = 0
        # An id listed twice must be one image: the store merges records of one id field by field,
        # which would answer a document that neither entry holds. Hashes, not records, so memory
        # stays ~16 bytes an image; two ids of one 64-bit hash (~1 in 10^7 at a million images)
        # would fail the second as a conflict.
        ids, contents = HashSet(), HashSet()
        for where, raw in _raw_images(pieces, self.location, notes):
            found += 1
            if ctx.shard is not None and not ctx.shard.owns(_shard_key(raw, found)):
                continue
            try:
                record = image_record(raw, registry, ctx, where, notes)
            except SourceError as exc:
                yield exc
            else:
                content = hash(record)
                if hash(record.id) not in ids:
                    ids.update((hash(record.id),))
                    contents.update((content,))
                    yield record
                elif content not in contents:
                    reason = f"image {record.id} is listed twice with different contents; the first is kept"
                    yield SourceError(where, reason)
            for note in notes:
                ctx.note(note)
            notes.clear()
        for note in notes:
            ctx.note(note)
        if not found:
            ctx.note(f"{self.location}: no images in the file")


def _open(path: str) -> BinaryIO:
    """A regular file, or a pipe (`<(yc ...)`, /dev/stdin in a pipeline), which is read as a stream
    as standard input is; anything else (a device would never end) is refused before it is read.
    The open does not block: a FIFO that no one writes reads as empty instead of waiting."""
    try:
        return open_readable(path, pipes=True, buffering=0)
    except FileNotFoundError:
        raise SourceError(path, "no such file") from None
    except OSError as exc:
        raise SourceError(path, exc.strerror or str(exc)) from None
