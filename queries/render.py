"""Stored record -> the Yandex Cloud `Image` REST shape, and its text forms.

`to_response` is the one bridge between the store and the wire format. It follows the proto3
JSON mapping of yandex.cloud.containerregistry.v1.Image: camelCase names, int64 as strings,
default values omitted, fields in proto order.
"""

from __future__ import annotations

import json
from collections import namedtuple
from json.encoder import encode_basestring as _escape

from indexer.errors import printable
from indexer.store.columns import RESPONSE_COLUMNS

# Layers come as JSON text: DuckDB turns a list of structs into Python dicts several times slower
# than json.loads parses the same list.
_SELECTED_AS = {"layers": "to_json(layers)::VARCHAR"}
# What `to_response` reads, in the order of `RESPONSE_COLUMNS` (the column table's response fields,
# in proto order; the id first).
SELECT = ", ".join(_SELECTED_AS.get(name, name) for name in RESPONSE_COLUMNS)
# A selected row by column name: renderers read fields by name, never by position.
Row = namedtuple("Row", RESPONSE_COLUMNS)
assert RESPONSE_COLUMNS[0] == "id", "readers key rows by their first value"


def _blob(blob_id: str, digest: str, size: int | None, urls) -> dict:
    out = {}
    # Empty only for a blob a YCR export gives without one
    if blob_id:
        out["id"] = blob_id
    # Empty in a YCR export that gives a layer without one; proto3 JSON omits an empty string.
    if digest:
        out["digest"] = digest
    if size:
        out["size"] = str(size)
    if urls:
        out["urls"] = list(urls)
    return out


def to_response(row: tuple) -> dict:
    """One row of `SELECT {SELECT} FROM images` as an Image message in JSON form."""
    r = Row._make(row)
    layers = json.loads(r.layers) if r.layers else None
    out: dict = {"id": r.id}
    if r.name:
        out["name"] = r.name
    if r.digest:
        out["digest"] = r.digest
    if r.compressed_size:
        out["compressedSize"] = str(r.compressed_size)
    # NULL when the image has no config (an index); "" for a config given without a digest.
    if r.config_digest is not None:
        out["config"] = _blob(r.config_id, r.config_digest, r.config_size, r.config_urls)
    if layers:
        out["layers"] = [_blob(layer["id"], layer["digest"], layer["size"], layer["urls"]) for layer in layers]
    if r.tags:
        out["tags"] = list(r.tags)
    if r.created:
        out["createdAt"] = r.created
    return out


def list_response(images: list[dict], next_page_token: str) -> dict:
    out: dict = {}
    if images:
        out["images"] = images
    if next_page_token:
        out["nextPageToken"] = next_page_token
    return out


def to_json(doc) -> str:
    """As MessageToJson prints it: exactly `json.dumps(doc, indent=2, ensure_ascii=False)`.

    json.dumps indents with its pure-Python encoder, which took 5-9 ms for a page of 100 images;
    this writes the same text in a third of the time (strings through json's C escaper).
    """
    out: list[str] = []
    _write(doc, "\n", out)
    return "".join(out)


def _write(value, newline: str, out: list[str]) -> None:
    # `newline` is "\n" and the current indentation, so that each item costs one string join.
    if type(value) is str:
        out.append(_escape(value))
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = newline + "  "
        separator = "{" + inner
        for key, item in value.items():
            out.append(separator + _escape(key if type(key) is str else _key(key)) + ": ")
            _write(item, inner, out)
            separator = "," + inner
        out.append(newline + "}")
    elif isinstance(value, (list, tuple)):
        if not value:
            out.append("[]")
            return
        inner = newline + "  "
        separator = "[" + inner
        for item in value:
            out.append(separator)
            _write(item, inner, out)
            separator = "," + inner
        out.append(newline + "]")
    else:
        out.append(json.dumps(value, ensure_ascii=False))


def _key(key) -> str:
    """A non-string key as json.dumps writes it."""
    text = json.dumps(key)
    return text[1:-1] if text.startswith('"') else text


def _text(value) -> str:
    return _escape(value) if type(value) is str else json.dumps(value, ensure_ascii=False)


def _blob_json(blob_id, digest, size, urls, newline: str) -> str:
    inner = newline + "  "
    fields = []
    if blob_id:
        fields.append(inner + '"id": ' + _text(blob_id))
    if digest:
        fields.append(inner + '"digest": ' + _text(digest))
    if size:
        fields.append(inner + '"size": "' + str(size) + '"')
    if urls:
        fields.append(inner + '"urls": [' + ",".join(inner + "  " + _text(u) for u in urls) + inner + "]")
    # An empty message, as json.dumps(indent=2) writes it
    return "{" + ",".join(fields) + newline + "}" if fields else "{}"


def _image_json(r: Row, layers: list | None, out: list[str]) -> None:
    """`to_response(row)` as `to_json` writes it inside a list response (at four spaces); `layers` parsed."""
    nl = "\n      "
    out.append("{" + nl + '"id": ' + _text(r.id))
    if r.name:
        out.append("," + nl + '"name": ' + _text(r.name))
    if r.digest:
        out.append("," + nl + '"digest": ' + _text(r.digest))
    if r.compressed_size:
        out.append("," + nl + '"compressedSize": "' + str(r.compressed_size) + '"')
    if r.config_digest is not None:
        out.append("," + nl + '"config": ' + _blob_json(r.config_id, r.config_digest, r.config_size, r.config_urls, nl))
    if layers:
        inner = nl + "  "
        blobs = [inner + _blob_json(x["id"], x["digest"], x["size"], x["urls"], inner) for x in layers]
        out.append("," + nl + '"layers": [' + ",".join(blobs) + nl + "]")
    if r.tags:
        out.append("," + nl + '"tags": [' + ",".join(nl + "  " + _text(t) for t in r.tags) + nl + "]")
    if r.created:
        out.append("," + nl + '"createdAt": ' + _text(r.created))
    out.append("\n    }")


def list_fragment(row: tuple) -> str:
    """One image of a list response as `to_json` writes it there (at four spaces): what a server
    keeps per image. Half the time of building the image's dict and writing it."""
    out: list[str] = []
    r = Row._make(row)
    _image_json(r, json.loads(r.layers or "null"), out)
    return "".join(out)


def list_json_of(fragments: list[str], next_page_token: str) -> str:
    """`to_json(list_response([to_response(row) ...], next_page_token))` from the rows' `list_fragment`s."""
    if not fragments:
        return to_json(list_response([], next_page_token))
    out = ['{\n  "images": [\n    ', ",\n    ".join(fragments), "\n  ]"]
    if next_page_token:
        out.append(',\n  "nextPageToken": ' + _text(next_page_token))
    out.append("\n}")
    return "".join(out)


def to_json_line(doc: dict) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def to_yaml(doc) -> str:
    import yaml

    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)


def human_size(size: int) -> str:
    """Sizes as yc prints them: 1024-based units with one decimal."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_table(headers: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """A yc-style table; the cells of the `numeric` columns are right-aligned, as yc aligns numbers.
    Control characters are escaped (`\x1b`): a stored name or id must not drive the terminal."""
    headers = [printable(h) for h in headers]
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells) -> str:
        padded = (
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        )
        return "|" + "|".join(f" {c} " for c in padded) + "|"

    out = [rule, "|" + "|".join(f" {h.center(w)} " for h, w in zip(headers, widths, strict=True)) + "|", rule]
    out += [line(row) for row in rows]
    out.append(rule)
    return "\n".join(out)


def images_table(images: list[dict]) -> str:
    rows = []
    for image in images:
        created = image.get("createdAt", "")
        rows.append(
            [
                image["id"],
                created[:19].replace("T", " ") if created else "",
                image.get("name", ""),
                ",".join(image.get("tags", [])),
                human_size(int(image.get("compressedSize", "0"))),
            ]
        )
    return format_table(["ID", "CREATED", "NAME", "TAGS", "COMPRESSED SIZE"], rows, numeric=(4,))
