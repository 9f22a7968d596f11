"""Base images and derived images, answered from the ChainIDs that index runs stored.

Image A is a base of image B when A's top ChainID (`chain_id`) is one of B's proper prefixes
(`chain_ids[i]`, i below B's layer count): A's layers are B's first i layers, whatever their
compression, registry or source. B's nearest base is the base with the most layers; every
resource that ends on that same ChainID is listed (the same image in two repositories, or seen
by an engine and a registry), exact records first. Only images have lineage: an index has no
layers, so its platform children answer for it; a record without diff_ids (imported YCR JSON,
a schema 1 manifest) has none.

The answers follow the proto3 JSON conventions of the Image responses: camelCase names, default
values omitted. Layer counts are int32 fields, which proto3 JSON prints as numbers (int64 fields,
such as compressedSize, are strings).
"""

from __future__ import annotations

from typing import Callable

from indexer.errors import ImgdexError, NotFound, QueryError, StoreError, printable
from indexer.references import DEFAULT_PLATFORM, parse_reference

from . import lookup
from .render import format_table

BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"

# How the base an image declares (annotations or labels) relates to the computed one.
AGREES = "AGREES"  # it is the nearest base (or one of the resources sharing its chain)
ANCESTOR = "ANCESTOR"  # it is a base further down, as when a base's labels were inherited
DIFFERS = "DIFFERS"  # it is indexed, and is not a base of this image
NOT_INDEXED = "NOT_INDEXED"  # nothing indexed matches it, so it cannot be checked
NOT_CHECKED = "NOT_CHECKED"  # this image's own lineage is unknown, so nothing can be checked

_SUBJECT = (
    "SELECT id, registry, name, kind, digest, config_raw IS NOT NULL, chain_ids, len(diff_ids), len(layers), "
    "labels[?] AS base_name, labels[?] AS base_digest, manifest_raw, id_origin = 'imported' FROM images WHERE id = ?"
)

# Bases end on a proper prefix of the image's chain: one equality per stored row, no list scan.
# The top ChainID must sit at the base's own depth: C1 is the first diff_id itself, so a one-layer
# image whose diff_id was made to read as this image's C2 would otherwise pass for a base.
_BASES = """
    SELECT id, registry, name, digest, tags, exactness, parent_digest, len(chain_ids) AS shared
    FROM images
    WHERE kind = 'image' AND chain_id IN (SELECT unnest($1::VARCHAR[]))
      AND ($1::VARCHAR[])[len(chain_ids)] = chain_id
    ORDER BY shared DESC, exactness DESC, registry, name, id
"""

# Descendants carry the image's top ChainID at its own depth k. A descendant's distance is one
# more than the number of other descendants' ChainIDs it passes through above k, since any image
# between the two is itself a descendant.
_DERIVED = """
    WITH descendants AS (
        SELECT id, registry, name, digest, tags, exactness, chain_ids, chain_id
        FROM images
        WHERE kind = 'image' AND len(chain_ids) > ? AND chain_ids[?] = ?
    ),
    passed AS (
        SELECT id, unnest(list_slice(chain_ids, ? + 1, len(chain_ids) - 1)) AS chain FROM descendants
    ),
    levels AS (
        SELECT id, count(DISTINCT chain) AS between FROM passed
        WHERE chain IN (SELECT chain_id FROM descendants)
        GROUP BY id
    )
    SELECT d.id, d.registry, d.name, d.digest, d.tags, d.exactness, 1 + coalesce(l.between, 0) AS distance
    FROM descendants d LEFT JOIN levels l USING (id)
    {where}
    ORDER BY distance, registry, name, exactness DESC, digest, id
"""


class _Subject:
    """The image a lineage question is about: a platform child when IMAGE named an index."""

    def __init__(self, row: tuple):
        (
            self.id,
            self.registry,
            self.name,
            self.kind,
            self.digest,
            self.config_read,
            chain_ids,
            self.diff_count,
            self.layer_count,
            self.label_name,
            self.label_digest,
            self.manifest_raw,
            self.imported,
        ) = row
        self.chain_ids: list[str] = list(chain_ids or ())


def _subject(con, image_id: str, platform: str) -> _Subject:
    params = [BASE_NAME, BASE_DIGEST]
    try:
        row = con.execute(_SUBJECT, [*params, image_id]).fetchone()
    except QueryError as exc:
        if "chain_ids" not in str(exc):
            raise
        # Stores are not migrated (see the README): name the remedy rather than DuckDB's binder error.
        raise StoreError(
            f"store {con.store} has no lineage columns (it was written by an older imgdex); re-index into a new store"
        ) from None
    if row is not None and row[3] == "index":
        # Asked for by id, an index is itself; its lineage is its platform child's.
        row = con.execute(_SUBJECT, [*params, lookup.pick_platform(con, row[:6], platform)]).fetchone()
    if row is None:
        raise NotFound(f"image {image_id} not found")
    return _Subject(row)


def _entry(row, **counts) -> dict:
    image_id, _registry, name, digest, tags = row[:5]
    out: dict = {"id": image_id}
    if name:
        out["name"] = name
    if digest:
        out["digest"] = digest
    if tags:
        out["tags"] = list(tags)
    out.update((key, value) for key, value in counts.items() if value)
    return out


Note = Callable[[str], None]


def _unknown(subject: _Subject, note: Note | None) -> bool:
    if subject.kind == "image" and subject.chain_ids:
        return False
    if note is not None:
        if subject.kind != "image":
            what = "is not an image, so its lineage is unknown"
        elif subject.diff_count and subject.diff_count != subject.layer_count:
            what = (
                f"has a config listing {subject.diff_count} diff_ids for {subject.layer_count} layers, "
                "so its lineage is unknown"
            )
        elif subject.diff_count:
            what = "has diff_ids that are not all sha256 digests, so its lineage is unknown"
        elif not subject.layer_count:
            what = "has no layers, so it has no lineage"
        elif subject.imported:
            # An import wins whole over a manifest source of the same image, config and all, so
            # "no config was indexed" would be wrong once the image was also indexed from one.
            what = "has no known diff_ids (an imported record carries none), so its lineage is unknown"
        elif subject.config_read:
            what = (
                "has a config without usable rootfs.diff_ids (missing, or not a list of strings), "
                "so its lineage is unknown"
            )
        else:
            what = "has no known diff_ids (no image config was indexed), so its lineage is unknown"
        note(f"image {subject.id} {what}")
    return True


def bases(
    con, image_id: str, platform: str = DEFAULT_PLATFORM, *, everything: bool = False, note: Note | None = None
) -> dict:
    """{"bases": [...]}: the nearest base's resources, then (with `everything`) the bases below it,
    nearest first; {} when there is none. `declaredBase` reports the base the image declares.
    `note` hears why an image has no lineage at all."""
    subject = _subject(con, image_id, platform)
    unknown = _unknown(subject, note)
    total = len(subject.chain_ids)
    rows = []
    if subject.kind == "image" and total > 1:
        rows = con.execute(_BASES, [subject.chain_ids[:-1]]).fetchall()
    nearest = rows[0][7] if rows else 0
    shown = rows if everything else [row for row in rows if row[7] == nearest]
    out: dict = {}
    if shown:
        out["bases"] = [_entry(row, sharedLayers=row[7], totalLayers=total) for row in shown]
    declared = _declared(con, subject, rows, unknown)
    if declared:
        out["declaredBase"] = declared
    return out


def derived(
    con, image_id: str, platform: str = DEFAULT_PLATFORM, *, everything: bool = False, note: Note | None = None
) -> dict:
    """{"images": [...]}: the images whose nearest base is the image (with `everything`, all its
    descendants, nearest first); {} when there is none."""
    subject = _subject(con, image_id, platform)
    if _unknown(subject, note):
        return {}
    depth = len(subject.chain_ids)
    sql = _DERIVED.format(where="" if everything else "WHERE distance = 1")
    rows = con.execute(sql, [depth, depth, subject.chain_ids[-1], depth]).fetchall()
    if not rows:
        return {}
    return {"images": [_entry(row, sharedLayers=depth) for row in rows]}


# ----------------------------------------------------------------------------- declared bases


def _annotations(manifest_raw: bytes | None) -> dict:
    if not manifest_raw or BASE_NAME.encode() not in manifest_raw and BASE_DIGEST.encode() not in manifest_raw:
        return {}
    annotations = lookup.json_object(manifest_raw).get("annotations")
    return annotations if isinstance(annotations, dict) else {}


def _declared(con, subject: _Subject, rows: list[tuple], unknown: bool) -> dict:
    """The base the manifest annotations (else the config labels) name, and how it relates to `rows`;
    NOT_CHECKED when the image's own lineage is `unknown`."""
    annotations = _annotations(subject.manifest_raw)
    name, digest = _text(annotations.get(BASE_NAME)), _text(annotations.get(BASE_DIGEST))
    if not name and not digest:
        # Annotations and labels are two declarations, never halves of one: labels are inherited,
        # so a label's digest beside an annotation's name would name the base's own base.
        name, digest = subject.label_name or "", subject.label_digest or ""
    if not name and not digest:
        return {}
    try:
        ref = parse_reference(name) if name else None
    except ImgdexError:
        ref = None
    out: dict = {}
    if name:
        out["name"] = name
    if digest:
        out["digest"] = digest
    if unknown:
        out["agreement"] = NOT_CHECKED  # no chain to hold it against: "DIFFERS" would be a guess
        return out
    nearest = rows[0][7] if rows else 0
    # A name may pin its digest (`os@sha256:…`): that names one image, not any in the repository.
    pinned = digest or (ref.digest if ref is not None else "")
    # A digest may name an index: any manifest below it is the base it declares. Looked up from the
    # index's own list, since a manifest that two indexes share names only one as its parent.
    pinned_members = {pinned, *lookup.index_members(con, pinned)} if pinned else set()
    tagged = _tagged_members(con, ref)
    matched = [row for row in rows if _matches(row, ref, pinned_members, tagged)]
    if matched:
        out["agreement"] = AGREES if matched[0][7] == nearest else ANCESTOR
    elif _indexed(con, ref, pinned):
        out["agreement"] = DIFFERS
    else:
        out["agreement"] = NOT_INDEXED
    return out


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _tagged_members(con, ref) -> set[str]:
    """The digests of the manifests below the indexes that carry the declared tag in its repository."""
    if ref is None or not ref.tag:
        return set()
    indexes = con.execute(
        "SELECT DISTINCT digest FROM images WHERE registry = ? AND name = ? AND kind = 'index' "
        "AND list_contains(tags, ?) AND coalesce(digest, '') <> ''",
        [ref.registry, ref.name, ref.tag],
    ).fetchall()
    return {member for (digest,) in indexes for member in lookup.index_members(con, digest)}


def _matches(row: tuple, ref, digests: set[str], tagged: set[str]) -> bool:
    """Whether `row` is the declared base: one of `digests` (the digest declared, and the
    manifests below it if it names an index), else by name and tag, where `tagged` holds the
    manifests below the indexes that carry the tag."""
    _id, registry, name, own_digest, tags = row[:5]
    if digests and own_digest:
        return own_digest in digests
    if ref is None:
        return False
    # A record without a manifest digest (classic docker save) can only be matched by name. A
    # platform child is untagged, its tags being its index's: it is the tag's image only when an
    # index carrying the tag lists it, or `os:9` would agree with a child of `os:1`.
    return (registry, name) == (ref.registry, ref.name) and (not ref.tag or ref.tag in tags or own_digest in tagged)


def _indexed(con, ref, digest: str) -> bool:
    if digest:
        found = con.execute("SELECT count(*) FROM images WHERE digest = ?", [digest]).fetchone()[0]
        if found:
            return True
    if ref is None:
        return False
    sql, params = "SELECT count(*) FROM images WHERE registry = ? AND name = ?", [ref.registry, ref.name]
    if digest:
        # As in `_matches`: a digest names one image, so the name stands only for records that
        # have no digest to compare (a tag that has moved on since the build is another image).
        sql += " AND coalesce(digest, '') = ''"
    if ref.tag:
        # Another tag of the repository is another image: `os:9` is not indexed when only `os:1` is.
        sql, params = sql + " AND list_contains(tags, ?)", [*params, ref.tag]
    return bool(con.execute(sql, params).fetchone()[0])


# ----------------------------------------------------------------------------- tables


def _cells(entry: dict) -> list[str]:
    return [entry["id"], entry.get("name", ""), entry.get("digest", ""), ",".join(entry.get("tags", []))]


def bases_table(doc: dict) -> str:
    rows = [[*_cells(e), str(e["sharedLayers"]), str(e["totalLayers"])] for e in doc.get("bases", [])]
    text = format_table(["ID", "NAME", "DIGEST", "TAGS", "SHARED LAYERS", "TOTAL LAYERS"], rows, numeric=(4, 5))
    declared = doc.get("declaredBase")
    if declared:
        named = declared.get("name", "") + ("@" + declared["digest"] if declared.get("digest") else "")
        # The name is an image's own text, as the cells are: escaped so it cannot drive the terminal.
        text += f"\ndeclared base: {printable(named)} ({_AGREEMENT_TEXT[declared['agreement']]})"
    return text


_AGREEMENT_TEXT = {
    AGREES: "agrees with the computed nearest base",
    ANCESTOR: "disagrees: it is a base further down than the computed nearest base",
    DIFFERS: "disagrees: it is indexed but is not a base of this image",
    NOT_INDEXED: "not indexed, so not checked",
    NOT_CHECKED: "not checked: this image's lineage is unknown",
}


def derived_table(doc: dict) -> str:
    rows = [[*_cells(e), str(e["sharedLayers"])] for e in doc.get("images", [])]
    return format_table(["ID", "NAME", "DIGEST", "TAGS", "SHARED LAYERS"], rows, numeric=(4,))
