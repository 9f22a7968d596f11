"""`ycr-json:PATH`: Image resources that Yandex Cloud Container Registry itself produced.

Accepts an `Image.List` response (`{"images": [...], "nextPageToken": ...}`), one `Image.Get`
response, a JSON array of either, JSON lines, and the snake_case output of
`yc container image list --format json`. `PATH` may be `-` for standard input.

The records keep YCR's real ids (image and blob ids), the push time as `createdAt` and YCR's
own compressed size, so that the stored resource renders as the imported document. Names are
`REGISTRY_ID/REPO` under the registry host `cr.yandex` unless `--registry` says otherwise.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Iterator

from .. import timestamps
from ..errors import ImgdexError, SourceError
from ..model import IMPORTED, KIND_IMAGE, KIND_INDEX, Blob, ImageRecord
from ..references import ID_RE, is_valid_digest, is_valid_tag, parse_reference
from .parse import INT64_MAX, Context, check_sizes

DEFAULT_REGISTRY = "cr.yandex"
_IMAGE_FIELDS = {"id", "name", "digest", "compressedSize", "config", "layers", "tags", "createdAt"}
_BLOB_FIELDS = {"id", "digest", "size", "urls"}
_SNAKE = {"compressed_size": "compressedSize", "created_at": "createdAt", "next_page_token": "nextPageToken"}


def _camel(doc: dict) -> dict:
    return {_SNAKE.get(key, key): value for key, value in doc.items()}


_DECIMAL = re.compile(r"-?[0-9]+", re.ASCII)


def _int64(value: object, where: str, what: str) -> int:
    """proto3 JSON writes int64 as a string of ASCII digits; older tools and yc write a number.
    A float (1e30, 12.0) is refused: the size it stands for is not known exactly."""
    if type(value) is int:
        number = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = int(value)
    else:
        raise SourceError(where, f"{what} is not an integer ({value!r})")
    if number < 0 or number > INT64_MAX:
        raise SourceError(where, f"{what} is out of range ({number}; 0 to 2**63-1)")
    return number


def _blob(raw: object, where: str, what: str, notes: list[str]) -> Blob:
    if not isinstance(raw, dict):
        raise SourceError(where, f"{what} is not an object")
    unknown = sorted(set(raw) - _BLOB_FIELDS)
    if unknown:
        notes.append(f"{where}: {what} has fields that are not part of Blob and are not kept: {', '.join(unknown)}")
    digest = raw.get("digest", "")
    if not isinstance(digest, str) or (digest and not is_valid_digest(digest)):
        raise SourceError(where, f"{what} has an invalid digest {digest!r}")
    blob_id = raw.get("id", "")
    if not isinstance(blob_id, str):
        raise SourceError(where, f"{what} has an invalid id")
    urls = raw.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise SourceError(where, f"{what} has invalid urls")
    size = _int64(raw.get("size", 0), where, f"{what} size")
    return Blob(digest=digest, size=size, media_type="", urls=tuple(urls), id=blob_id)


def image_record(raw: object, registry: str, ctx: Context, where: str, notes: list[str]) -> ImageRecord:
    """One Image message (camelCase or snake_case JSON) -> an imported record."""
    if not isinstance(raw, dict):
        raise SourceError(where, "an image is not a JSON object")
    doc = _camel(raw)
    unknown = sorted(set(doc) - _IMAGE_FIELDS)
    if unknown:
        notes.append(f"{where}: fields that are not part of Image are not kept: {', '.join(unknown)}")
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
    digest = doc.get("digest", "")
    if not isinstance(digest, str) or (digest and not is_valid_digest(digest)):
        raise SourceError(where, f"image {image_id} has an invalid digest {digest!r}")
    config = _blob(doc["config"], where, "config", notes) if doc.get("config") is not None else None
    raw_layers = doc.get("layers", [])
    if not isinstance(raw_layers, list):
        raise SourceError(where, f"image {image_id}: layers is not a list")
    layers = tuple(_blob(layer, where, f"layers[{i}]", notes) for i, layer in enumerate(raw_layers))
    check_sizes(layers, config, where, f"image {image_id}")
    raw_tags = doc.get("tags", [])
    if not isinstance(raw_tags, list):
        raise SourceError(where, f"image {image_id}: tags is not a list")
    tags = []
    for tag in raw_tags:
        if is_valid_tag(tag):
            tags.append(tag)
        else:
            notes.append(f"{where}: image {image_id}: ignoring tag {tag!r}: not a valid tag")
    created_text = doc.get("createdAt")
    created = None
    if created_text is not None:
        created = timestamps.normalise(created_text) if isinstance(created_text, str) else None
        if created is None:
            raise SourceError(where, f"image {image_id}: createdAt {created_text!r} is not an RFC 3339 time")
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


def _documents(text: str, where: str) -> list:
    try:
        return [json.loads(text)]
    except ValueError as exc:
        if "Extra data" not in str(exc):
            raise SourceError(where, f"not valid JSON ({str(exc).splitlines()[0]})") from None
    out = []  # JSON lines, as `imgdex get --ids-from` writes them
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                raise SourceError(f"{where} line {number}", f"not valid JSON ({str(exc).splitlines()[0]})") from None
    return out


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
        images = doc.get("images") or []
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
        try:
            if self.location == "-":
                text = sys.stdin.read()
            else:
                with open(self.location, encoding="utf-8") as f:
                    text = f.read()
        except FileNotFoundError:
            raise SourceError(self.location, "no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(self.location, getattr(exc, "strerror", None) or str(exc)) from None
        return self._records(text, registry, ctx)

    def _records(self, text: str, registry: str, ctx: Context) -> Iterator[ImageRecord | SourceError]:
        notes: list[str] = []
        found = 0
        documents = _documents(text, self.location)
        for position, document in enumerate(documents):
            base = self.location if len(documents) == 1 else f"{self.location} line {position + 1}"
            for where, raw in _images(document, base, notes):
                found += 1
                if ctx.shard is not None and not ctx.shard.owns(_shard_key(raw, found)):
                    continue
                try:
                    yield image_record(raw, registry, ctx, where, notes)
                except SourceError as exc:
                    yield exc
                for note in notes:
                    ctx.note(note)
                notes.clear()
        for note in notes:
            ctx.note(note)
        if not found:
            ctx.note(f"{self.location}: no images in the file")
