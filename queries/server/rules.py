"""The API's request validation rules for the server, read from the official request messages.

The field rules come from the request messages themselves: the yandexcloud protos carry them as
`yandex.cloud.validation` options (`required`, `length`, `value`, `size`, `pattern`), so they are
read from the descriptors once, at import, and cannot drift from the official API. The rule types,
the checks, the defaults and the precedence live in `queries.api_rules`, which `imgdex list` uses
as well; ListImagesRequest is checked there, by `listing`, for both. Every violation is a
`QueryError`, which the transports answer with INVALID_ARGUMENT.
"""

from __future__ import annotations

import re

from google.protobuf.message import Message
from yandex.cloud import validation_pb2
from yandex.cloud.containerregistry.v1 import image_service_pb2, registry_service_pb2, repository_service_pb2

from ..api_rules import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Bound, FieldRule, check, page_size

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "Bound", "FieldRule", "RULES", "page_size", "rules_of", "validate"]


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


def validate(request: Message) -> None:
    """Every field rule of `request`'s message type; QueryError names the first field that breaks one."""
    rules = RULES.get(request.DESCRIPTOR.full_name, ())
    check(rules, {rule.name: getattr(request, rule.name) for rule in rules})
