"""The API's request validation rules, in one place.

The field rules come from the request messages themselves: the yandexcloud protos carry them as
`yandex.cloud.validation` options (`required`, `length`, `value`, `size`, `pattern`), so they are
read from the descriptors once, at import, and cannot drift from the official API. What the
options cannot say (defaults and which field wins over which) is written out below, as the API
reference describes it. Every violation is a `QueryError`, which the transports answer with
INVALID_ARGUMENT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf.message import Message
from yandex.cloud import validation_pb2
from yandex.cloud.containerregistry.v1 import image_service_pb2, registry_service_pb2, repository_service_pb2

from indexer.errors import QueryError

# The same values `imgdex list` applies; the API reference names them too.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_BOUND = re.compile(r"^\s*(<=|>=|<|>)?\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


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


def _field_rule(field) -> FieldRule | None:
    options = field.GetOptions()
    ext = options.Extensions

    def bound(extension):
        return Bound.parse(ext[extension]) if options.HasExtension(extension) else None

    pattern = None
    if options.HasExtension(validation_pb2.pattern):
        pattern = re.compile(ext[validation_pb2.pattern])
    rule = FieldRule(
        name=field.name,
        required=options.HasExtension(validation_pb2.required) and ext[validation_pb2.required],
        length=bound(validation_pb2.length),
        value=bound(validation_pb2.value),
        size=bound(validation_pb2.size),
        pattern=pattern,
    )
    return rule if rule != FieldRule(field.name) else None


def rules_of(message_class) -> tuple[FieldRule, ...]:
    fields = message_class.DESCRIPTOR.fields
    # Map fields (labels) are not in any request served here; their rules apply to keys and values.
    return tuple(r for r in (_field_rule(f) for f in fields if not f.message_type) if r is not None)


SERVED_REQUESTS = (
    image_service_pb2.GetImageRequest,
    image_service_pb2.ListImagesRequest,
    repository_service_pb2.GetRepositoryRequest,
    repository_service_pb2.GetRepositoryByNameRequest,
    repository_service_pb2.ListRepositoriesRequest,
    registry_service_pb2.GetRegistryRequest,
    registry_service_pb2.ListRegistriesRequest,
)

RULES: dict[str, tuple[FieldRule, ...]] = {cls.DESCRIPTOR.full_name: rules_of(cls) for cls in SERVED_REQUESTS}


def _check_one(rule: FieldRule, value) -> None:
    if isinstance(value, str):
        if rule.length is not None and not rule.length.holds(len(value)):
            raise QueryError(rule.length.describe(f"{rule.name} length"))
        if rule.pattern is not None and not rule.pattern.fullmatch(value):
            raise QueryError(f"{rule.name} {value!r} does not match {rule.pattern.pattern}")
    elif isinstance(value, int) and not isinstance(value, bool):
        if rule.value is not None and not rule.value.holds(value):
            raise QueryError(rule.value.describe(rule.name))


def validate(request: Message) -> None:
    """Every field rule of `request`'s message type; QueryError names the first field that breaks one."""
    for rule in RULES.get(request.DESCRIPTOR.full_name, ()):
        value = getattr(request, rule.name)
        if rule.required and not value:
            raise QueryError(f"{rule.name} is required")
        if isinstance(value, (str, int)):
            # An empty string is an unset field: only `required` speaks about it.
            if value or rule.value is not None:
                _check_one(rule, value)
            continue
        items = list(value)
        if rule.size is not None and not rule.size.holds(len(items)):
            raise QueryError(rule.size.describe(f"{rule.name} size"))
        for item in items:
            _check_one(rule, item)


def page_size(requested: int) -> int:
    """0 (unset) means the default page; the upper bound is the field's own rule."""
    if requested < 0:
        raise QueryError("page_size must be at least 0")
    return requested or DEFAULT_PAGE_SIZE


@dataclass(frozen=True)
class ImageScope:
    """Which images a ListImagesRequest asks for, after the precedence rules."""

    registry_id: str
    repository_name: str
    folder_id: str


def image_scope(request: image_service_pb2.ListImagesRequest) -> ImageScope:
    # The reference: registry_id is ignored when repository_name is set, and folder_id when
    # either of the two is set.
    repository = request.repository_name
    registry = "" if repository else request.registry_id
    folder = "" if (repository or request.registry_id) else request.folder_id
    return ImageScope(registry, repository, folder)
