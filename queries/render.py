"""Stored record -> the Yandex Cloud `Image` REST shape, and its text forms.

`to_response` is the one bridge between the store and the wire format. It follows the proto3
JSON mapping of yandex.cloud.containerregistry.v1.Image: camelCase names, int64 as strings,
default values omitted, fields in proto order.
"""
from __future__ import annotations

import json

# What `to_response` reads, in this order. Layers come as JSON text: DuckDB turns a list of
# structs into Python dicts several times slower than json.loads parses the same list.
COLUMNS = (
    "id", "name", "digest", "compressed_size", "config_id", "config_digest", "config_size", "config_urls",
    "to_json(layers)::VARCHAR", "tags", "created",
)
SELECT = ", ".join(COLUMNS)


def _blob(blob_id: str, digest: str, size: int | None, urls) -> dict:
    out = {"id": blob_id, "digest": digest}
    if size:
        out["size"] = str(size)
    if urls:
        out["urls"] = list(urls)
    return out


def to_response(row: tuple) -> dict:
    """One row of `SELECT {SELECT} FROM images` as an Image message in JSON form."""
    image_id, name, digest, compressed_size, config_id, config_digest, config_size, config_urls, layers_json, tags, created = row
    layers = json.loads(layers_json) if layers_json else None
    out: dict = {"id": image_id}
    if name:
        out["name"] = name
    if digest:
        out["digest"] = digest
    if compressed_size:
        out["compressedSize"] = str(compressed_size)
    if config_digest:
        out["config"] = _blob(config_id, config_digest, config_size, config_urls)
    if layers:
        out["layers"] = [_blob(layer["id"], layer["digest"], layer["size"], layer["urls"]) for layer in layers]
    if tags:
        out["tags"] = list(tags)
    if created:
        out["createdAt"] = created
    return out


def list_response(images: list[dict], next_page_token: str) -> dict:
    out: dict = {}
    if images:
        out["images"] = images
    if next_page_token:
        out["nextPageToken"] = next_page_token
    return out


def to_json(doc: dict) -> str:
    """As MessageToJson prints it."""
    return json.dumps(doc, indent=2, ensure_ascii=False)


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


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    def line(cells, center=False):
        return "|" + "|".join(f" {c.center(w) if center else c.ljust(w)} " for c, w in zip(cells, widths)) + "|"
    out = [rule, line(headers, center=True), rule]
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
    return format_table(["ID", "CREATED", "NAME", "TAGS", "COMPRESSED SIZE"], rows)
