"""`docker save` archives: the classic layout and the Docker 25+ one (an OCI layout beside manifest.json).

Classic archives carry no manifest, so their records have no digest and uncompressed layer
sizes. Docker 25+ archives carry real manifests in `blobs/`; those are walked as an OCI
layout and `manifest.json` only adds the names it knows.
"""
from __future__ import annotations

import re
from typing import Iterator

from ..errors import ImgdexError, SourceError
from ..model import UNCOMPRESSED, Blob, ImageRecord
from ..references import Reference, parse_reference
from .layout import TarBlobs, top_descriptors, walk_layout
from .parse import MAX_JSON_BYTES, Context, load_json, parse_descriptor, record_from_config, sha256_digest
from .tarball import TarMembers

_HEX_NAME = re.compile(r"(?:^|/)([a-f0-9]{64})(?:\.json)?$")


def _repo_tags(entry: dict, ctx: Context, where: str) -> list[Reference]:
    tags = entry.get("RepoTags") or []
    if not isinstance(tags, list):
        raise SourceError(where, "manifest.json: RepoTags is not a list")
    names = []
    for text in tags:
        try:
            names.append(parse_reference(text))
        except (ImgdexError, TypeError) as exc:
            ctx.note(f"{where}: ignoring RepoTag {text!r}: {exc}")
    return names


def _entries(members: TarMembers) -> list[dict]:
    where = members.path
    if members.size("manifest.json") is None:
        raise SourceError(where, "missing manifest.json: not a docker save archive")
    entries = load_json(members.read("manifest.json", MAX_JSON_BYTES, "manifest.json"), where, "manifest.json")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SourceError(where, "manifest.json is not a list of objects")
    return entries


def _config_digest(members: TarMembers, entry: dict, where: str) -> tuple[bytes, str]:
    config_name = entry.get("Config")
    if not isinstance(config_name, str) or not config_name:
        raise SourceError(where, "manifest.json entry has no Config")
    raw = members.read(config_name, MAX_JSON_BYTES, "config")
    digest = sha256_digest(raw)
    named = _HEX_NAME.search(config_name)
    if named and f"sha256:{named.group(1)}" != digest:
        raise SourceError(where, f"config {config_name!r} digest mismatch: its bytes hash to {digest}")
    return raw, digest


def _classic_records(members: TarMembers, entry: dict, ctx: Context) -> list[ImageRecord]:
    where = members.path
    config_raw, config_digest = _config_digest(members, entry, where)
    layer_paths = entry.get("Layers") or []
    if not isinstance(layer_paths, list) or not all(isinstance(p, str) for p in layer_paths):
        raise SourceError(where, "manifest.json: Layers is not a list of paths")
    sizes = []
    for layer_path in layer_paths:
        size = members.size(layer_path)
        if size is None:
            raise SourceError(where, f"layer {layer_path!r} listed in manifest.json is missing from the archive")
        sizes.append(size)
    foreign: dict[str, Blob] = {}
    sources = entry.get("LayerSources") or {}
    if isinstance(sources, dict):
        for diff_id, raw in sources.items():
            foreign[diff_id] = parse_descriptor(raw, where, f"LayerSources[{diff_id}]")
    records = record_from_config(
        config_raw, config_digest, sizes, _repo_tags(entry, ctx, where), ctx, where, UNCOMPRESSED, foreign
    )
    if ctx.verify and records:
        # Stored layers are uncompressed tars: their sha256 must be the config's diff_ids.
        for layer_path, layer in zip(layer_paths, records[0].layers):
            if layer.urls:
                continue
            actual = members.sha256(layer_path)
            if f"sha256:{actual}" != layer.digest:
                raise SourceError(where, f"layer {layer_path!r} content hashes to sha256:{actual}, the config's diff_id is {layer.digest}")
    return records


def read_docker_archive(members: TarMembers, ctx: Context) -> Iterator[ImageRecord | SourceError]:
    where = members.path
    entries = _entries(members)
    blobs = TarBlobs(members)
    covered: set[str] = set()
    has_layout = members.size("index.json") is not None and bool(
        top_descriptors(members.read("index.json", MAX_JSON_BYTES, "index.json"), where)
    )
    if has_layout:
        tags_by_config: dict[str, list[Reference]] = {}
        for entry in entries:
            try:
                _, digest = _config_digest(members, entry, where)
            except SourceError as exc:
                yield exc
                continue
            tags_by_config.setdefault(digest, []).extend(_repo_tags(entry, ctx, where))

        def extra_names(descriptor: Blob) -> list[Reference]:
            try:
                manifest = load_json(blobs.read_blob(descriptor.digest, MAX_JSON_BYTES), where, "manifest")
            except SourceError:
                return []  # the walk reports it
            config = manifest.get("config") if isinstance(manifest, dict) else None
            digest = config.get("digest") if isinstance(config, dict) else None
            return tags_by_config.get(digest, []) if isinstance(digest, str) else []

        index_raw = members.read("index.json", MAX_JSON_BYTES, "index.json")
        for item in walk_layout(blobs, index_raw, ctx, where, extra_names=extra_names):
            if isinstance(item, ImageRecord) and item.config is not None:
                covered.add(item.config.digest)
            yield item
    for entry in entries:
        try:
            if has_layout and _config_digest(members, entry, where)[1] in covered:
                continue
            yield from _classic_records(members, entry, ctx)
        except SourceError as exc:
            yield exc
