"""The read methods of the Container Registry API over the served snapshot, transport-neutral.

Each method takes the official request message (the gRPC servicers get it from the wire, the
REST routes build it from the path and query string), applies the API's rules (`rules`; ListImages
through `listing`, which applies them for `imgdex list` too), runs on one snapshot from start to
end and answers the response as the JSON dict MessageToJson prints: for images, the very dict
`imgdex get` and `imgdex list` print (`render` over the row `lookup.by_id` selects, and `listing`
itself, with its page steps answered from memory by `pages`).
"""

from __future__ import annotations

import sys
from typing import Callable, NamedTuple

from yandex.cloud.containerregistry.v1 import image_service_pb2, registry_service_pb2, repository_service_pb2

from indexer.errors import ImgdexError, NotFound, QueryError, StoreError, Unauthenticated, Unimplemented

from .. import api_rules, listing, render
from . import catalog, rules
from .pages import ServedPages
from .snapshots import NotServing, SnapshotSource


class Status(NamedTuple):
    code: int  # google.rpc.Code, as gRPC and the REST error body carry it
    http: int


# The google.rpc.Code to HTTP mapping of the public REST API (and grpc-gateway).
INVALID_ARGUMENT = Status(3, 400)
NOT_FOUND = Status(5, 404)
UNIMPLEMENTED = Status(12, 501)
INTERNAL = Status(13, 500)
UNAVAILABLE = Status(14, 503)
UNAUTHENTICATED = Status(16, 401)

_STATUS = (
    (NotFound, NOT_FOUND),
    (QueryError, INVALID_ARGUMENT),
    (Unauthenticated, UNAUTHENTICATED),
    (Unimplemented, UNIMPLEMENTED),
    (StoreError, UNAVAILABLE),  # no snapshot yet, or one that cannot be read: worth a retry
)


def status_of(exc: BaseException) -> Status:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return INTERNAL


def error_body(exc: BaseException) -> dict:
    """google.rpc.Status in JSON, as the public REST API answers an error. A store failure's own
    message names the store's files: it goes to this server's log, and the client is told the
    index cannot be read (UNAVAILABLE, worth a retry)."""
    if isinstance(exc, StoreError) and not isinstance(exc, NotServing):
        print(f"imgdex: {exc}", file=sys.stderr, flush=True)
        message = "the index cannot be read now"
    else:
        message = str(exc) if isinstance(exc, ImgdexError) else "internal error"
    return {"code": status_of(exc).code, "message": message, "details": []}


class _KeptPages(ServedPages):
    """Pages whose rows are read only for the images not rendered yet: the others are `(id,)`."""

    def __init__(self, snapshot, kept: dict):
        super().__init__(snapshot)
        self._kept = kept

    def rows(self, ids: list[str]) -> list[tuple]:
        missing = [image_id for image_id in ids if image_id not in self._kept]
        read = dict(zip(missing, super().rows(missing), strict=True)) if missing else {}
        return [read.get(image_id) or (image_id,) for image_id in ids]


# Rendered images kept per served version and form: ~0.5 KB each, so 150 MB for two forms at most.
MAX_RENDERED = 150_000


class Api:
    def __init__(self, source: SnapshotSource):
        self.source = source

    # ImageService

    def get_image(self, request: image_service_pb2.GetImageRequest) -> dict:
        rules.validate(request)
        # Ids only, as the API: a reference or an image ID prefix is not an image id.
        with self.source.use() as snapshot:
            row = snapshot.image_row(request.image_id)
        if row is None:
            raise NotFound(f"image {api_rules.cut(request.image_id)} not found")
        return render.to_response(row)

    def list_rendered(
        self, request: image_service_pb2.ListImagesRequest, form: str, render_one: Callable[[tuple], object]
    ) -> tuple[list, str]:
        """The page's images as `render_one` renders each, and the next page token. Each image is
        rendered once per served version and kept (`form` names the rendering): a page of 100
        otherwise spends most of its time building the same responses again."""
        query = listing.Query(
            registry_id=request.registry_id,
            repository_name=request.repository_name,
            filter=request.filter,
            order_by=request.order_by,
            page_size=request.page_size,
            page_token=request.page_token,
            folder_id=request.folder_id,
        )
        with self.source.use() as snapshot:
            kept = snapshot.derived(form, lambda _snapshot: {})
            page = listing.page(snapshot.cursor(), query, _KeptPages(snapshot, kept))
            rendered = []
            for row in page.rows:
                item = kept.get(row[0])
                if item is None:
                    item = render_one(row)
                    if len(kept) < MAX_RENDERED:
                        kept[row[0]] = item
                rendered.append(item)
        return rendered, page.next_page_token

    def list_images(self, request: image_service_pb2.ListImagesRequest) -> dict:
        images, token = self.list_rendered(request, "image-docs", render.to_response)
        return render.list_response(images, token)

    # RepositoryService

    def get_repository(self, request: repository_service_pb2.GetRepositoryRequest) -> dict:
        rules.validate(request)
        with self.source.use() as snapshot:
            return catalog.get_repository(snapshot, request.repository_id)

    def get_repository_by_name(self, request: repository_service_pb2.GetRepositoryByNameRequest) -> dict:
        rules.validate(request)
        with self.source.use() as snapshot:
            return catalog.get_repository_by_name(snapshot, request.repository_name)

    def list_repositories(self, request: repository_service_pb2.ListRepositoriesRequest) -> dict:
        rules.validate(request)
        size = rules.page_size(request.page_size)
        with self.source.use() as snapshot:
            return catalog.list_repositories(
                snapshot, request.registry_id, request.filter, request.order_by, size, request.page_token
            )

    # RegistryService

    def get_registry(self, request: registry_service_pb2.GetRegistryRequest) -> dict:
        rules.validate(request)
        with self.source.use() as snapshot:
            return catalog.get_registry(snapshot, request.registry_id)

    def list_registries(self, request: registry_service_pb2.ListRegistriesRequest) -> dict:
        rules.validate(request)
        size = rules.page_size(request.page_size)
        # folder_id is required by the API, but the index records no folders: every registry
        # it knows is listed.
        with self.source.use() as snapshot:
            return catalog.list_registries(snapshot, request.filter, size, request.page_token)
