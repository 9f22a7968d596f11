"""`docker save` archives: the classic layout and the Docker 25+ one (an OCI layout beside manifest.json).

Classic archives carry no manifest, so their records have no digest and uncompressed layer
sizes. Docker 25+ archives carry real manifests in `blobs/`; those are walked as an OCI
layout and `manifest.json` only adds the names it knows.

The image ID is the sha256 of the config's bytes, whatever the member is called: docker load,
skopeo and go-containerregistry accept a `<hex>.json` whose name is not its digest, and so
does this reader, with a note.
"""

from __future__ import annotations

import re
from typing import Iterator

from ..errors import ImgdexError, SourceError
from ..model import UNCOMPRESSED, Blob, ImageConfig, ImageRecord
from ..references import Reference, is_valid_digest, parse_reference
from ..shard import in_shard
from . import configbounds
from .layout import TarBlobs, descriptor_key, shard_keys, tar_index, walk_layout
from .parse import (
    MAX_INDEX_DEPTH,
    MAX_JSON_BYTES,
    MAX_PARSED_BYTES,
    Context,
    load_json,
    parse_config,
    parse_descriptor,
    parsed_size,
    record_from_config,
    sha256_digest,
)
from .tarball import TarMembers

_HEX_NAME = re.compile(r"(?:^|/)([a-f0-9]{64})(?:\.json)?$")
_POSITION = re.compile(r"@([0-9]{1,9})")

# One image of an archive, as skopeo names it after the path: `@N`, the Nth entry of
# manifest.json, or a reference whose tag is one of an entry's RepoTags.
Selection = int | Reference


def parse_selection(text: str, where: str) -> Selection:
    """`@N` or `NAME[:TAG]` (the tag `latest` when none is given), as skopeo reads them."""
    position = _POSITION.fullmatch(text)
    if position:
        return int(position.group(1))
    if text.startswith("@"):
        raise SourceError(where, f"invalid image position {text!r}: expected @N, N a number from 0")
    try:
        ref = parse_reference(text)
    except ImgdexError as exc:
        raise SourceError(where, str(exc)) from None
    if ref.digest:
        # RepoTags hold tags only: a digest would never match one
        raise SourceError(where, f"the image must be named by a tag, not a digest: {text!r}")
    return ref if ref.tag else Reference(ref.registry, ref.name, "latest")


def _selected(entries: list[dict], selection: Selection, ctx: Context, where: str) -> int:
    """The position in manifest.json of the selected image; the first that carries the tag."""
    if isinstance(selection, int):
        if selection >= len(entries):
            raise SourceError(where, f"manifest.json lists {len(entries)} images: there is no @{selection}")
        return selection
    for position, entry in enumerate(entries):
        if selection in _repo_tags(entry, ctx, where, quiet=True):
            return position
    raise SourceError(where, f"manifest.json has no image tagged {selection}")


def _listed(entry: dict, key: str) -> object:
    """An entry's list, [] when absent or null, as Go reads them; any other value as it is, for the
    caller to refuse (`""`, `0` or `false` read as empty were no list to docker load)."""
    value = entry.get(key)
    return [] if value is None else value


def _repo_tags(entry: dict, ctx: Context, where: str, quiet: bool = False) -> list[Reference]:
    """The entry's RepoTags; what is no reference is noted (unless `quiet`: read again) and skipped."""
    tags = _listed(entry, "RepoTags")
    if not isinstance(tags, list):
        if quiet:
            return []
        raise SourceError(where, "manifest.json: RepoTags is not a list")
    names = []
    for text in tags:
        if not isinstance(text, str):
            if not quiet:
                ctx.note(f"{where}: ignoring a RepoTag that is not a string ({type(text).__name__})")
            continue
        try:
            ref = parse_reference(text)
        except ImgdexError as exc:
            if not quiet:
                ctx.note(f"{where}: ignoring RepoTag {text!r}: {exc}")
            continue
        if ref.digest:  # names a manifest this archive does not hold; `docker load` refuses it
            if not quiet:
                ctx.note(f"{where}: ignoring RepoTag {text!r}: a RepoTag names no digest")
            continue
        names.append(ref)
    return names


def _entries(members: TarMembers) -> list[dict]:
    where = members.where
    if members.size("manifest.json") is None:
        raise SourceError(where, "missing manifest.json: not a docker save archive")
    data = members.read("manifest.json", MAX_JSON_BYTES, "manifest.json")
    if parsed_size(data) > MAX_PARSED_BYTES:
        # A docker save lists a few dozen values per image, most of them long strings.
        raise SourceError(where, f"manifest.json holds too many values for its {len(data)} bytes")
    entries = load_json(data, where, "manifest.json")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SourceError(where, "manifest.json is not a list of objects")
    return entries


# Config bytes read from the file (not held from a streaming pass) kept for the entries that name
# them again, and how many bytes of configs read again, once those are not kept, an archive may cost.
_KEPT_CONFIG_BYTES = 64 * 1024 * 1024
_REREAD_CONFIG_BYTES = 1024 * 1024 * 1024


class _Configs:
    """Config members with the digest of their bytes; a name that claims another digest is noted once.

    A member is read, hashed and parsed once however many entries name it (under one name or
    through links): a manifest.json of many thousand entries naming one 8 MiB config took
    hours. Parsed configs are kept for members held in memory, and for others up to
    _KEPT_CONFIG_BYTES; past that, reading them again has an allowance per archive."""

    def __init__(self, members: TarMembers, ctx: Context):
        self.members = members
        self.ctx = ctx
        self._noted: set[str] = set()
        self._known: dict[int, tuple[bytes, str, ImageConfig | None]] = {}
        self._seen: set[int] = set()
        self._kept = 0
        self._reread = 0
        self.exhausted = False  # the allowance ran out: the rest of the archive is not read

    def read(self, entry: dict) -> tuple[bytes, str]:
        raw, digest, _ = self._read(entry, parse=False)
        return raw, digest

    def read_parsed(self, entry: dict) -> tuple[bytes, str, ImageConfig]:
        raw, digest, config = self._read(entry, parse=True)
        assert config is not None
        return raw, digest, config

    def _read(self, entry: dict, parse: bool) -> tuple[bytes, str, ImageConfig | None]:
        where = self.members.where
        config_name = entry.get("Config")
        if not isinstance(config_name, str) or not config_name:
            raise SourceError(where, "manifest.json entry has no Config")
        same = self.members.same(config_name)
        key, held = same if same is not None else (0, False)
        known = self._known.get(key) if same is not None else None
        if known is not None:
            raw, digest, config = known
            if parse and config is None:
                config = parse_config(raw, where)
                self._known[key] = (raw, digest, config)
            self._note_name(config_name, digest)
            return raw, digest, config
        raw = self.members.read(config_name, MAX_JSON_BYTES, "config")
        if key in self._seen:
            self._reread += len(raw)
            if self._reread > _REREAD_CONFIG_BYTES:
                self.exhausted = True
                raise SourceError(
                    where,
                    f"manifest.json names its configs again and again: over {_REREAD_CONFIG_BYTES >> 20} MiB "
                    "read a second time; the rest of its entries are not read",
                )
        digest = sha256_digest(raw)
        config = parse_config(raw, where) if parse else None
        if same is not None:
            self._seen.add(key)
            if held or self._kept + len(raw) <= _KEPT_CONFIG_BYTES:
                self._known[key] = (raw, digest, config)
                self._kept += 0 if held else len(raw)
        self._note_name(config_name, digest)
        return raw, digest, config

    def _note_name(self, config_name: str, digest: str) -> None:
        named = _HEX_NAME.search(config_name)
        if named and f"sha256:{named.group(1)}" != digest and config_name not in self._noted:
            self._noted.add(config_name)
            self.ctx.note(
                f"{self.members.where}: config {config_name!r} is named sha256:{named.group(1)} but its bytes hash "
                f"to {digest}; the image ID is {digest}"
            )


def _classic_records(members: TarMembers, configs: _Configs, entry: dict, ctx: Context) -> list[ImageRecord]:
    where = members.where
    config_raw, config_digest, config = configs.read_parsed(entry)
    layer_paths = _listed(entry, "Layers")
    if not isinstance(layer_paths, list) or not all(isinstance(p, str) for p in layer_paths):
        raise SourceError(where, "manifest.json: Layers is not a list of paths")
    sizes = []
    for layer_path in layer_paths:
        size = members.layer_size(layer_path)
        if size is None:
            raise SourceError(where, f"layer {layer_path!r} listed in manifest.json is missing from the archive")
        sizes.append(size)
    foreign: dict[str, Blob] = {}
    sources = entry.get("LayerSources")
    if sources is not None and not isinstance(sources, dict):
        raise SourceError(where, "manifest.json: LayerSources is not an object")
    for diff_id, raw in (sources or {}).items():
        foreign[diff_id] = parse_descriptor(raw, where, f"LayerSources[{diff_id}]")
    records = record_from_config(
        config_raw, config_digest, sizes, _repo_tags(entry, ctx, where), ctx, where, UNCOMPRESSED, foreign, config
    )
    if ctx.verify and records:
        # A layer's tar, decompressed if it is stored compressed, must hash to the config's diff_id.
        for layer_path, layer in zip(layer_paths, records[0].layers):
            if layer.urls:
                continue
            actual = members.diff_id(layer_path)
            if f"sha256:{actual}" != layer.digest:
                raise SourceError(
                    where,
                    f"layer {layer_path!r} content hashes to sha256:{actual}, the config's diff_id is {layer.digest}",
                )
    return records


def _entry_key(entry: dict, position: int) -> str:
    """The shard key of an entry whose config cannot be read: its config member's name."""
    config_name = entry.get("Config")
    return config_name if isinstance(config_name, str) and config_name else f"manifest.json[{position}]"


def _configs_below(blobs: TarBlobs, digest: str, memo: dict, depth: int = 0) -> tuple[str, ...]:
    """The config digests a manifest (or an index, through its children) names: what a walk of it
    could cover. Best effort: what cannot be read covers nothing, as it would in the walk.

    Each (digest, depth) is read once per archive: a chain of indexes that each list the next ten
    times would otherwise be read 10**depth times."""
    if depth > MAX_INDEX_DEPTH:
        return ()
    known = memo.get((digest, depth))
    if known is not None:
        return known
    memo[(digest, depth)] = found = ()
    if blobs.blob_size(digest) is None:
        return found
    try:
        data = blobs.read_blob(digest, MAX_JSON_BYTES)
        if configbounds.too_many_values(data):
            return found  # the walk refuses it
        doc = load_json(data, blobs.members.where, "manifest")
    except SourceError:
        return found
    if not isinstance(doc, dict):
        return found
    config = doc.get("config")
    configs: dict[str, None] = {}
    if isinstance(config, dict) and isinstance(config.get("digest"), str):
        configs[config["digest"]] = None
    children = doc.get("manifests")
    for child in children if isinstance(children, list) else ():
        if isinstance(child, dict) and isinstance(child.get("digest"), str):
            configs.update(dict.fromkeys(_configs_below(blobs, child["digest"], memo, depth + 1)))
    memo[(digest, depth)] = found = tuple(configs)
    return found


class _ConfigOwners:
    """Whose shard decides the manifest.json entry of a config: that of the first top-level
    descriptor, in index.json order, whose walk could cover it (that shard, and only it, knows
    whether the walk did, or the entry needs its classic record). Read once, when first asked."""

    def __init__(self, blobs: TarBlobs, index, keys: list[str]):
        self.blobs = blobs
        self.index = index
        self.keys = keys
        self._owners: dict[str, str] | None = None

    def get(self, config_digest: str) -> str | None:
        if self._owners is None:
            self._owners = {}
            memo: dict = {}
            for position, (raw, _) in enumerate(self.index.descriptors()):
                digest = descriptor_key(raw, position)
                if is_valid_digest(digest):
                    for config in _configs_below(self.blobs, digest, memo):
                        self._owners.setdefault(config, self.keys[position])
        return self._owners.get(config_digest)


def read_docker_archive(
    members: TarMembers, ctx: Context, selection: Selection | None = None
) -> Iterator[ImageRecord | SourceError]:
    """The archive's images, or the one `selection` names. With `ctx.shard`, the layout's
    descriptors are sharded as a layout's are (`shard_keys`), an entry whose config a descriptor
    names goes with that descriptor, and an image known only from manifest.json is keyed by its
    config digest (the image ID)."""
    where = members.where
    entries = _entries(members)
    chosen = _selected(entries, selection, ctx, where) if selection is not None else None
    blobs = TarBlobs(members)
    configs = _Configs(members, ctx)
    covered: set[str] = set()
    index = tar_index(members) if members.size("index.json") is not None else None
    has_layout = index is not None and index.count() > 0
    shard = ctx.shard
    keys = shard_keys(blobs, index, where) if has_layout and shard is not None else None
    owners = _ConfigOwners(blobs, index, keys) if keys is not None else None

    def entry_owned(config_digest: str) -> bool:
        if shard is None:
            return True
        owner = owners.get(config_digest) if owners is not None else None
        return shard.owns(owner if owner is not None else config_digest)

    if has_layout:
        tags_by_config: dict[str, list[Reference]] = {}
        chosen_config = ""
        for position, entry in enumerate(entries):
            try:
                _, digest = configs.read(entry)
            except SourceError as exc:
                if configs.exhausted:
                    yield exc
                    return
                # of a chosen image, only its own error: the others are not asked for
                if chosen in (None, position) and in_shard(shard, _entry_key(entry, position)):
                    yield exc
                if position == chosen:
                    return
                continue
            if position == chosen:
                chosen_config = digest
            tags_by_config.setdefault(digest, []).extend(_repo_tags(entry, ctx, where))

        # By manifest digest: index.json may list one manifest thousands of times, and each
        # listing read, counted and parsed it again before the walk's allowance could refuse it.
        names_of: dict[str, list[Reference]] = {}

        def extra_names(descriptor: Blob) -> list[Reference]:
            names = names_of.get(descriptor.digest)
            if names is None:
                names = names_of[descriptor.digest] = _names_for(descriptor)
            return names

        def _names_for(descriptor: Blob) -> list[Reference]:
            try:
                data = blobs.read_blob(descriptor.digest, MAX_JSON_BYTES)
                if configbounds.too_many_values(data):
                    return []  # the walk refuses it
                manifest = load_json(data, where, "manifest")
            except SourceError:
                return []  # the walk reports it
            config = manifest.get("config") if isinstance(manifest, dict) else None
            digest = config.get("digest") if isinstance(config, dict) else None
            return tags_by_config.get(digest, []) if isinstance(digest, str) else []

        wanted = None
        if chosen_config:
            memo: dict = {}

            def wanted(position: int, raw) -> bool:
                # the descriptors whose walk could reach the chosen image, as `_ConfigOwners` finds them
                digest = descriptor_key(raw, position)
                return is_valid_digest(digest) and chosen_config in _configs_below(blobs, digest, memo)

        for item in walk_layout(blobs, index, ctx, where, extra_names=extra_names, keys=keys, wanted=wanted):
            if isinstance(item, ImageRecord) and item.config is not None:
                covered.add(item.config.digest)
            yield item
    for position, entry in enumerate(entries):
        if chosen is not None and position != chosen:
            continue
        try:
            if has_layout or shard is not None:
                try:
                    _, digest = configs.read(entry)
                except SourceError:
                    if in_shard(shard, _entry_key(entry, position)):
                        raise
                    continue
                if (has_layout and digest in covered) or not entry_owned(digest):
                    continue
            yield from _classic_records(members, configs, entry, ctx)
        except SourceError as exc:
            yield exc
            if configs.exhausted:
                return
