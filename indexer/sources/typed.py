"""Typed decoding of manifests and configs: the fast path of `parse.py`.

msgspec decodes a document straight into the few fields a record keeps, in C, checking their
types as it goes. It answers only for documents whose meaning is plain: every field it reads has
the type the exact parser expects, every descriptor is valid, and the bytes are what `json.loads`
would take. For anything else it answers None, and the caller hands the bytes to the exact parser
(`parse.py`), which gives the same result or the error message. So whichever path decodes a
document, the record, or the message, is the same; `tests/test_typed.py` holds them equal.
"""

from __future__ import annotations

import re

import msgspec

from .. import timestamps
from ..model import Blob, HistoryEntry, ImageConfig
from ..references import is_valid_digest
from . import configbounds
from . import mediatypes as mt

INT64_MAX = 2**63 - 1
# json.loads raises RecursionError at a depth that depends on the caller's stack, msgspec a few
# levels deeper: a document that may nest beyond this goes to the exact parser, so the two agree.
# Deeper nesting needs more opening brackets than this, and twice as many bytes.
_SAFE_DEPTH = 400
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{[")  # deleted, to count the brackets fast
# Shapes of descriptors validated once per run (the caller's Context.descriptors), as the exact
# parser does; bounded alike.
_MAX_SHAPES = 100_000


class _Descriptor(msgspec.Struct, gc=False):
    digest: str
    size: int
    mediaType: str = ""  # noqa: N815 - the JSON key
    urls: list[str] | None = None


class _Manifest(msgspec.Struct, gc=False):
    config: _Descriptor
    mediaType: str = ""  # noqa: N815
    layers: list[_Descriptor] | None = None
    artifactType: str = ""  # noqa: N815
    manifests: object = None  # an index's key: the exact parser says why such a manifest is refused


class _History(msgspec.Struct, gc=False):
    created: str = ""
    created_by: str = ""
    comment: str = ""
    empty_layer: bool = False


class _Inner(msgspec.Struct, gc=False):
    Labels: dict[str, str] | None = None  # noqa: N815
    Env: list[str] | None = None  # noqa: N815
    Entrypoint: list[str] | None = None  # noqa: N815
    Cmd: list[str] | None = None  # noqa: N815


class _RootFS(msgspec.Struct, gc=False):
    diff_ids: list[str] | None = None


class _Config(msgspec.Struct, gc=False):
    created: str = ""
    os: str = ""
    architecture: str = ""
    variant: str = ""
    config: _Inner | None = None
    rootfs: _RootFS | None = None
    history: list[_History] | None = None


# RFC 3339 text that `timestamps.normalise` returns unchanged: UTC as "Z", 0, 3, 6 or 9 fractional
# digits of which the last three are not all zero, and a day that every month has.
_CANONICAL = re.compile(
    r"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{0,6}(?:[1-9][0-9]{2}|0[1-9][0-9]|00[1-9]))?Z",
    re.ASCII,
)

_MANIFEST = msgspec.json.Decoder(_Manifest)
_CONFIG = msgspec.json.Decoder(_Config)


def _plain(data: bytes) -> bool:
    """Whether `data` is text that json.loads and msgspec read alike. msgspec refuses escaped lone
    surrogates, which json.loads takes (and the exact parser then refuses with a message of its
    own), but does not check the UTF-8 of values it skips; and it nests a little deeper."""
    if len(data) > 2 * _SAFE_DEPTH and len(data.translate(None, _NOT_BRACKETS)) > _SAFE_DEPTH:
        return False
    if data.isascii():
        return True
    try:
        data.decode("utf-8")  # strict: refuses encoded surrogates too, which json.loads takes
    except UnicodeDecodeError:
        return False
    return True


def _descriptor(raw: _Descriptor, shapes: dict | None) -> Blob | None:
    urls = raw.urls
    if not urls:
        key = (raw.mediaType, raw.digest, raw.size)
        if shapes is not None:
            known = shapes.get(key)
            if known is not None:
                return known
    if not 0 <= raw.size <= INT64_MAX or not is_valid_digest(raw.digest):
        return None
    blob = Blob(raw.digest, raw.size, raw.mediaType, tuple(urls) if urls else ())
    if not urls and shapes is not None and len(shapes) < _MAX_SHAPES and len(raw.mediaType) <= mt.MAX_LENGTH:
        shapes[key] = blob
    return blob


def decode_manifest(
    data: bytes, declared: str, shapes: dict | None = None
) -> tuple[str, Blob, tuple[Blob, ...], str] | None:
    """(media type, config descriptor, layer descriptors, artifactType) of an image manifest whose
    descriptor declared `declared` as its media type; None to leave it to the exact parser (an
    index, a schema 1 manifest, no media type to go by, a document of one kind listed as the other,
    or anything unusual)."""
    if not _plain(data):
        return None
    try:
        doc = _MANIFEST.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    media_type = doc.mediaType or declared
    # Listed as an index, or holding an index's key: the exact parser reads or refuses it.
    if media_type not in mt.MANIFESTS or declared in mt.INDEXES or doc.manifests is not None:
        return None
    config = _descriptor(doc.config, shapes)
    if config is None:
        return None
    layers = []
    for raw in doc.layers or ():
        layer = _descriptor(raw, shapes)
        if layer is None:
            return None
        layers.append(layer)
    return media_type, config, tuple(layers), doc.artifactType


def decode_config(data: bytes) -> ImageConfig | None:
    """What the store keeps of an image config; None to leave it to the exact parser (which
    refuses a config over the bounds of `configbounds` with a message of its own)."""
    if not _plain(data) or configbounds.too_many_values(data):
        return None
    try:
        doc = _CONFIG.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    inner = doc.config
    rootfs = doc.rootfs
    history = doc.history
    if _over(history) or (rootfs is not None and _over(rootfs.diff_ids)):
        return None
    if inner is not None and (_over(inner.Labels) or _over(inner.Env) or _over(inner.Entrypoint) or _over(inner.Cmd)):
        return None
    if inner is None:
        labels = env = entrypoint = cmd = ()
    else:
        labels = tuple(sorted(inner.Labels.items())) if inner.Labels else ()
        env = tuple(inner.Env) if inner.Env else ()
        entrypoint = tuple(inner.Entrypoint) if inner.Entrypoint else ()
        cmd = tuple(inner.Cmd) if inner.Cmd else ()
    return ImageConfig(
        created=_created(doc.created) if doc.created else None,
        os=doc.os,
        architecture=doc.architecture,
        variant=doc.variant,
        labels=labels,
        env=env,
        entrypoint=entrypoint,
        cmd=cmd,
        diff_ids=tuple(rootfs.diff_ids) if rootfs is not None and rootfs.diff_ids else (),
        history=tuple([HistoryEntry(h.created, h.created_by, h.comment, h.empty_layer) for h in history])
        if history
        else (),
    )


def _over(entries: list | dict | None) -> bool:
    return entries is not None and len(entries) > configbounds.MAX_ENTRIES


def _created(text: str) -> str | None:
    """`timestamps.normalise(text)`; most configs hold the canonical form already."""
    if _CANONICAL.fullmatch(text) and len(text) in (20, 24, 27, 30):
        return text
    return timestamps.normalise(text)
