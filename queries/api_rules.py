"""The Container Registry API's request rules, shared by `imgdex list` and `imgdex serve`.

The server reads the field rules of every request it answers from the official request messages
(`queries.server.rules`); this module holds the rule types, the checks and the ListImagesRequest
rules as plain constants, so that the CLI applies the very same rules without importing protobuf
on its start-up path. A test holds the constants equal to what the official descriptors say.
What the descriptors cannot say (defaults, precedence, the filter grammar) is written out here as
the API reference states it. Every violation is a `QueryError`: INVALID_ARGUMENT on the wire, one
line and exit 1 in the CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from indexer.errors import QueryError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# A repository name, and a value in a ListImagesRequest filter (at most 256 characters): the
# reference gives both the same grammar; the request field also admits "" (unset).
NAME_PATTERN = r"[a-z0-9]+(?:[._-][a-z0-9]+)*(/([a-z0-9]+(?:[._-][a-z0-9]+)*))*"
NAME = re.compile(NAME_PATTERN)
FILTER_VALUE_MAX = 256

_BOUND = re.compile(r"^\s*(<=|>=|<|>)?\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
_SHOWN = 120


@dataclass(frozen=True)
class Bound:
    """An inclusive range read from a validation option such as `<=50`, `>0` or `1-63`."""

    low: int | None
    high: int | None
    text: str

    @classmethod
    def parse(cls, text: str) -> "Bound | None":
        m = _BOUND.match(text)
        if not m:
            return None  # a form these protos do not use today: not enforced rather than guessed
        op, first, second = m.group(1), int(m.group(2)), m.group(3)
        if second is not None:
            return cls(first, int(second), text)
        return {
            "<=": cls(None, first, text),
            "<": cls(None, first - 1, text),
            ">=": cls(first, None, text),
            ">": cls(first + 1, None, text),
            None: cls(first, first, text),
        }[op]

    def holds(self, value: int) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self, what: str) -> str:
        if self.low is None:
            return f"{what} must be at most {self.high}"
        if self.high is None:
            return f"{what} must be at least {self.low}"
        if self.low == self.high:
            return f"{what} must be exactly {self.low}"
        return f"{what} must be between {self.low} and {self.high}"


@dataclass(frozen=True)
class FieldRule:
    name: str
    required: bool = False
    length: Bound | None = None  # characters of a string, each element's for a repeated one
    value: Bound | None = None  # a number's value
    size: Bound | None = None  # elements of a repeated field
    pattern: re.Pattern | None = None


# ListImagesRequest, field by field in proto order, as its validation options state them.
LIST_IMAGES = (
    FieldRule("registry_id", length=Bound.parse("<=50")),
    FieldRule("repository_name", pattern=re.compile("|" + NAME_PATTERN)),
    FieldRule("folder_id", length=Bound.parse("<=50")),
    FieldRule("page_size", value=Bound.parse(f"<={MAX_PAGE_SIZE}")),
    FieldRule("page_token", length=Bound.parse("<=100")),
    FieldRule("filter", length=Bound.parse("<=1000")),
    FieldRule("order_by", length=Bound.parse("<=100")),
)


def cut(value: str) -> str:
    """A value cut short, so that a message stays one short line (and fits a gRPC status)."""
    return value if len(value) <= _SHOWN else value[:_SHOWN] + "..."


def shown(value: str) -> str:
    """A value as messages quote it: cut short."""
    return repr(cut(value))


def _violation(rule: FieldRule, message: str) -> QueryError:
    # A page token that breaks a rule cannot be one the API handed out: it is reported as every
    # other bad token is, with the rule it broke.
    return QueryError(f"invalid page token: {message}" if rule.name == "page_token" else message)


def check_field(rule: FieldRule, value) -> None:
    """One value (one element of a repeated field) against its rule."""
    if isinstance(value, str):
        if rule.length is not None and not rule.length.holds(len(value)):
            raise _violation(rule, rule.length.describe(f"{rule.name} length"))
        if rule.pattern is not None and not rule.pattern.fullmatch(value):
            raise _violation(rule, f"{rule.name} {shown(value)} does not match {rule.pattern.pattern}")
    elif isinstance(value, int) and not isinstance(value, bool):
        if rule.value is not None and not rule.value.holds(value):
            raise _violation(rule, rule.value.describe(rule.name))


def check(rules: tuple[FieldRule, ...], values: Mapping[str, object]) -> None:
    """Every rule over `values` (field name -> value); QueryError names the first field that breaks one."""
    for rule in rules:
        value = values[rule.name]
        if rule.required and not value:
            raise QueryError(f"{rule.name} is required")
        if isinstance(value, (str, int)):
            # An empty string is an unset field: only `required` speaks about it.
            if value or rule.value is not None:
                check_field(rule, value)
            continue
        items = list(value)
        if rule.size is not None and not rule.size.holds(len(items)):
            raise QueryError(rule.size.describe(f"{rule.name} size"))
        for item in items:
            check_field(rule, item)


def page_size(requested: int) -> int:
    """0 (unset) means the default page; the upper bound is the field's own rule."""
    if requested < 0:
        raise QueryError("page_size must be at least 0")
    return requested or DEFAULT_PAGE_SIZE


def filter_value_problem(value: str) -> str:
    """What is wrong with a name a filter compares with, as the reference states it; "" when nothing."""
    if len(value) > FILTER_VALUE_MAX:
        return f"value {shown(value)} is longer than {FILTER_VALUE_MAX} characters"
    if not NAME.fullmatch(value):
        return f"value {shown(value)} is not a repository name ({NAME_PATTERN})"
    return ""


@dataclass(frozen=True)
class ImageScope:
    """Which images a ListImagesRequest asks for, after the precedence rules."""

    registry_id: str
    repository_name: str
    folder_id: str


def image_scope(registry_id: str, repository_name: str, folder_id: str) -> ImageScope:
    # The reference: registry_id is ignored when repository_name is set, and folder_id when
    # either of the two is set.
    registry = "" if repository_name else registry_id
    folder = "" if (repository_name or registry_id) else folder_id
    return ImageScope(registry, repository_name, folder)
