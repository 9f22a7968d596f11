"""Docker schema1 manifests (deprecated, but still served by old registries): what can be recorded.

The shared parser refuses schema1, since it has no config blob. A registry still serves some, so
the registry source records them itself: the digest is verified (over the JWS payload for signed
manifests, as distribution computes it), and everything is read from that payload alone, as
distribution reads it: layers come from `fsLayers` without the throwaway entries, sizes from a
HEAD of each blob, and the image facts from the top `v1Compatibility`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Callable

from .. import timestamps
from ..errors import SourceError
from ..model import EXACT_MANIFEST, KIND_IMAGE, Blob, HistoryEntry, ImageRecord, Platform
from ..references import DIGEST_ALGORITHMS, DIGEST_RE, Reference
from . import configbounds
from . import mediatypes as mt
from .jsonstream import LongInteger, loads
from .parse import Context, _strings, check_values, group_names, load_object, new_record


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical_payload(data: bytes, doc: dict, where: str) -> bytes:
    """The bytes a signed schema1 manifest's digest and signatures cover: the JWS payload, which
    is `data[:formatLength] + formatTail` of the protected header (libtrust's pretty signature).
    Nothing else of the served bytes is covered, so nothing else may be read from them."""
    signatures = doc.get("signatures")
    if not signatures:
        return data
    if not isinstance(signatures, list) or not all(isinstance(signature, dict) for signature in signatures):
        raise SourceError(where, "schema1 manifest: signatures is not a list of objects")
    formats = {_format(signature, where) for signature in signatures}
    # Each signature names its own payload: if they differ, no one payload is the manifest
    # (distribution refuses such a manifest too).
    if len(formats) != 1:
        raise SourceError(where, "schema1 manifest: the signatures disagree on formatLength/formatTail")
    [(length, tail)] = formats
    if not 0 < length <= len(data):
        raise SourceError(where, "schema1 manifest: formatLength is out of range")
    return data[:length] + tail


# What a schema1 manifest must hold when no escape can spell its key: a cheap test before the parse.
_VERSION_ONE = re.compile(rb'"schemaVersion"\s*:\s*1')


def is_schema1(data: bytes) -> bool:
    """Whether `data` is a schema1 manifest by what it holds, for a source that gives no media type."""
    # UTF-8 text (json.loads would also read UTF-16 and UTF-32) without escapes holds the key as
    # it is spelled, with a value that starts with 1 (1, 1.0, 1e0) if it is one.
    plain = data[:1] in (b"{", b" ", b"\t", b"\r", b"\n") and b"\x00" not in data[:4] and b"\\u" not in data
    if plain and not _VERSION_ONE.search(data):
        return False
    if configbounds.too_many_values(data):
        return False  # the walk refuses it
    try:
        doc = loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    # An integer, as Go decodes it: neither `true` nor `1.0` (which Python holds equal to 1).
    return isinstance(doc, dict) and type(doc.get("schemaVersion")) is int and doc["schemaVersion"] == 1


def payload_digest(data: bytes) -> str:
    """The sha256 digest of a schema1 manifest served without one: that of its JWS payload, as
    distribution computes it, not of the signed bytes; that of `data` when it has no payload to
    find (its walk then says why)."""
    try:
        data = canonical_payload(data, _load(data, "", "schema1 manifest"), "")
    except SourceError:
        pass
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _format(signature: dict, where: str) -> tuple[int, bytes]:
    """(formatLength, formatTail) of one signature's protected header."""
    try:
        protected = loads(_b64url(signature["protected"]))
        length = protected["formatLength"]
        tail = _b64url(protected["formatTail"])
    except (KeyError, TypeError, ValueError, binascii.Error, RecursionError):
        raise SourceError(where, "schema1 manifest: a signature has no usable formatLength/formatTail") from None
    if type(length) is LongInteger:
        raise SourceError(where, "schema1 manifest: formatLength is out of range")
    if type(length) is not int:
        raise SourceError(where, "schema1 manifest: formatLength is not an integer")
    return length, tail


def _load(data: bytes, where: str, what: str) -> dict:
    """Bounded as the walk bounds every manifest it parses: the payload is parsed too, and its
    tail comes out of a base64 string, which the served document counts as a single value."""
    check_values(data, where, what)
    return load_object(data, where, what)


def _v1(entry: object, where: str, position: int) -> dict:
    raw = entry.get("v1Compatibility") if isinstance(entry, dict) else None
    if not isinstance(raw, str):
        raise SourceError(where, f"schema1 manifest: history[{position}] has no v1Compatibility")
    try:
        doc = loads(raw)
    except (ValueError, RecursionError):
        raise SourceError(where, f"schema1 manifest: history[{position}].v1Compatibility is not JSON") from None
    if not isinstance(doc, dict):
        raise SourceError(where, f"schema1 manifest: history[{position}].v1Compatibility is not an object")
    return doc


def schema1_records(
    data: bytes,
    digest: str,
    media_type: str,
    names: list[Reference],
    ctx: Context,
    where: str,
    blob_size: Callable[[str], int],
) -> list[ImageRecord]:
    """Records of one schema1 manifest; `digest` is what the registry said ('' if nothing)."""
    envelope = _load(data, where, "schema1 manifest")
    payload = canonical_payload(data, envelope, where)
    algorithm = digest.partition(":")[0] if digest else "sha256"
    if algorithm not in DIGEST_ALGORITHMS:
        raise SourceError(where, f"schema1 manifest uses unsupported digest algorithm {algorithm!r}")
    actual = f"{algorithm}:{hashlib.new(algorithm, payload).hexdigest()}"
    if digest and digest != actual:
        raise SourceError(
            where, f"schema1 manifest digest mismatch: the registry says {digest}, the payload hashes to {actual}"
        )
    doc = envelope if payload == data else _load(payload, where, "schema1 manifest payload")
    fs_layers, history = doc.get("fsLayers"), doc.get("history")
    if (
        not isinstance(fs_layers, list)
        or not isinstance(history, list)
        or len(fs_layers) != len(history)
        or not fs_layers
    ):
        raise SourceError(where, "schema1 manifest: fsLayers and history are missing or of different lengths")
    v1s = [_v1(entry, where, i) for i, entry in enumerate(history)]
    layers = []
    entries = []
    # schema1 lists the top layer first; images list the base first
    for position in range(len(fs_layers) - 1, -1, -1):
        layer, v1 = fs_layers[position], v1s[position]
        blob_sum = layer.get("blobSum") if isinstance(layer, dict) else None
        if not isinstance(blob_sum, str) or not DIGEST_RE.fullmatch(blob_sum):
            raise SourceError(where, f"schema1 manifest: fsLayers[{position}] has an invalid blobSum")
        throwaway = v1.get("throwaway") is True
        container = v1.get("container_config") if isinstance(v1.get("container_config"), dict) else {}
        entries.append(
            HistoryEntry(
                created=v1.get("created") if isinstance(v1.get("created"), str) else "",
                created_by=" ".join(_strings(container.get("Cmd"))),
                comment=v1.get("comment") if isinstance(v1.get("comment"), str) else "",
                empty_layer=throwaway,
            )
        )
        if not throwaway:
            layers.append(Blob(blob_sum, blob_size(blob_sum), "application/vnd.docker.image.rootfs.diff.tar.gzip"))
    top = v1s[0]
    config = top.get("config") if isinstance(top.get("config"), dict) else {}
    labels = config.get("Labels") if isinstance(config.get("Labels"), dict) else {}
    created = top.get("created") if isinstance(top.get("created"), str) else ""
    architecture = doc.get("architecture") if isinstance(doc.get("architecture"), str) else ""
    os_name = top.get("os") if isinstance(top.get("os"), str) else ""
    platform = None
    if os_name or architecture:
        fallback = top.get("architecture") if isinstance(top.get("architecture"), str) else ""
        platform = Platform(os_name, architecture or fallback)
    final = digest or actual
    return [
        new_record(
            ctx,
            registry,
            name,
            digest=final,
            config_blob=None,
            layers=tuple(layers),
            media_type=media_type
            if media_type in mt.SCHEMA1
            else mt.DOCKER_SCHEMA1_SIGNED
            if envelope.get("signatures")
            else mt.DOCKER_SCHEMA1,
            kind=KIND_IMAGE,
            tags=tags,
            created=timestamps.normalise(created) if created else None,
            platform=platform,
            parent_digest="",
            exactness=EXACT_MANIFEST,
            labels=tuple(sorted((k, v) for k, v in labels.items() if isinstance(v, str))),
            env=_strings(config.get("Env")),
            entrypoint=_strings(config.get("Entrypoint")),
            cmd=_strings(config.get("Cmd")),
            history=tuple(entries),
            # The payload, not the served bytes: it is what the digest names (the rest of the
            # served bytes is signatures no one checked, and anything a registry adds there).
            manifest_raw=payload,
        )
        for registry, name, tags in group_names(names, ctx)
    ]
