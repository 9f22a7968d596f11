"""Fields of decoded JSON read by the type they must have: anything else reads as empty.

Sources take documents from registries, archives and daemons that may be malformed or hostile;
a field of the wrong type is treated as absent, so the check happens in one place and never raises.
`type() is` rather than isinstance(): json.loads makes no subclasses, and this runs for every field of every image.
"""

from __future__ import annotations


def string_at(doc: dict, key: str) -> str:
    value = doc.get(key)
    return value if type(value) is str else ""


def object_at(doc: dict, key: str) -> dict:
    value = doc.get(key)
    return value if type(value) is dict else {}


def list_at(doc: dict, key: str) -> list:
    value = doc.get(key)
    return value if type(value) is list else []
