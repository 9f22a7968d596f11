"""Stored record -> the Yandex Cloud `Image` REST shape, and its text forms.

`to_response` is the one bridge between the store and the wire format. It follows the proto3
JSON mapping of yandex.cloud.containerregistry.v1.Image: camelCase names, int64 as strings,
default values omitted, fields in proto order.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
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


# Plain scalars that some mainstream YAML reader takes for something other than a string. PyYAML
# quotes only what its own YAML 1.1 resolver would misread; a reader of the output may follow YAML
# 1.2's core schema (ruamel.yaml, js-yaml, go-yaml v3) or read 1.1 more widely than PyYAML does
# (go-yaml v2, Ruby's Psych), and would read a tag `08`, `1e3` or `y` back as a number or a boolean.
# A string matching this is quoted; `1.2.3`, `v1`, `latest` match no reader's rule and stay plain.
_NOT_A_STRING = re.compile(
    r"""(?:
        # booleans of YAML 1.1 (1.2 keeps only true/false); go-yaml v2 reads y and n too
        y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF
        |~|null|Null|NULL
        # decimal numbers: 1.2 reads leading zeros (08) and exponents without a sign (1e3); 1.1
        # readers skip `_` (1_000), Psych skips `,` too; go-yaml v2 drops `_` before reading
        |[-+]?(?:\.[0-9_]+|[0-9_][0-9_,]*(?:\.[0-9_,]*)?)(?:[eE][-+]?[0-9_]+)?
        # binary, octal (1.2's 0o17) and hexadecimal; Go's parser takes upper-case prefixes too
        |[-+]?0[bB][01_]+|[-+]?0[oO][0-7_]+|[-+]?0[xX][0-9a-fA-F_]+
        # base 60 (1.1): 12:30, 1:20:30.5
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?
        # infinities and NaN; no rule signs NaN, but quoting `-.nan` costs nothing
        |[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)
        # dates and times (1.1); Psych also reads a zone without its colon (+0530)
        |-?[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}
         (?:(?:[Tt]|[\ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]*)?
            (?:[\ \t]*(?:Z|[-+][0-9]{1,2}(?::?[0-9]{2})?))?)?
        # merge key and value key (1.1)
        |<<|=
    )\Z""",
    re.VERBOSE,
)
# PyYAML writes NEL, LS and PS raw inside single quotes, followed by indentation: a YAML 1.1 reader
# (PyYAML too) folds a NEL there into a space, and a YAML 1.2 reader, for which none of the three
# breaks a line, keeps the indentation as text. Double quotes escape them (\N, \L, \P).
_RAW_BREAKS = re.compile("[\x85\u2028\u2029]")


@functools.cache
def _dumper():
    """PyYAML's safe dumper, told that `_NOT_A_STRING` resolves to a non-string: it then quotes
    such a string as it quotes one its own resolver would misread."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def represent_str(self, data):
            style = '"' if _RAW_BREAKS.search(data) else None
            return self.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, Dumper.represent_str)
    # None: tried for a scalar whatever its first character. The tag only has to differ from str.
    Dumper.add_implicit_resolver("tag:yaml.org,2002:int", _NOT_A_STRING, None)
    return Dumper


def to_yaml(doc) -> str:
    import yaml

    return yaml.dump(doc, Dumper=_dumper(), sort_keys=False, allow_unicode=True, default_flow_style=False)


# Up to EB, as `docker images` (go-units) and humanize go: a stored size is an int64, at most
# 8 EiB, which TB as the last unit printed as 8388608.0 TB.
_UNITS = ("B", "KB", "MB", "GB", "TB", "PB", "EB")


def human_size(size: int) -> str:
    """Sizes as yc prints them: 1024-based units with one decimal."""
    # The unit is picked in integers: past 2**53 a float rounds 1024**6 - 1 up to 1 EB.
    power = 0
    while power < len(_UNITS) - 1 and size >= 1024 ** (power + 1):
        power += 1
    if power == 0:
        return f"{size} B"
    return f"{size / 1024**power:.1f} {_UNITS[power]}"


# Combining marks (nonspacing, enclosing) and format characters such as U+200B take no column.
_ZERO_WIDTH = frozenset(("Mn", "Me", "Cf"))


def _width(text: str) -> int:
    """The columns a terminal gives `text`: two for a wide (CJK) character, none for a combining
    mark or a zero-width format character, which draw over or between their neighbours."""
    if text.isascii():
        return len(text)
    width = 0
    for char in text:
        if unicodedata.category(char) in _ZERO_WIDTH and char != "\xad":  # a soft hyphen is drawn
            continue
        if "\u1160" <= char <= "\u11ff":  # Hangul vowels and finals join the syllable before them
            continue
        width += 2 if unicodedata.east_asian_width(char) in "WF" else 1
    return width


def _pad(text: str, width: int, align: str) -> str:
    """`text` padded to `width` terminal columns, as str.ljust/rjust/center pad to characters."""
    missing = width - _width(text)
    if missing <= 0:
        return text
    if align == "right":
        return " " * missing + text
    if align == "center":
        # Where str.center puts an odd space, so that ASCII headers stay as they were
        left = missing // 2 + (missing & width & 1)
        return " " * left + text + " " * (missing - left)
    return text + " " * missing


def format_table(headers: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """A yc-style table; the cells of the `numeric` columns are right-aligned, as yc aligns numbers.
    Control characters are escaped (`\x1b`): a stored name or id must not drive the terminal.
    Cells are padded to terminal columns, so that wide (CJK) characters and combining marks keep
    the rules straight."""
    headers = [printable(h) for h in headers]
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [_width(h) for h in headers]
    for row in rows:
        widths = [max(w, _width(cell)) for w, cell in zip(widths, row, strict=False)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells) -> str:
        padded = (
            _pad(c, w, "right" if i in numeric else "left") for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        )
        return "|" + "|".join(f" {c} " for c in padded) + "|"

    out = [rule, "|" + "|".join(f" {_pad(h, w, 'center')} " for h, w in zip(headers, widths, strict=True)) + "|", rule]
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
