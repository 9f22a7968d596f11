"""The read methods of the Container Registry API over the served snapshot, transport-neutral.

Each method takes the official request message (the gRPC servicers get it from the wire, the
REST routes build it from the path and query string), applies `rules`, runs on one snapshot from
start to end and answers the response as the JSON dict MessageToJson prints: for images, the
very dict `imgdex get` and `imgdex list` print (`render` over the row `lookup.by_id` selects,
and `listing` itself).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import threading
from typing import NamedTuple

from yandex.cloud.containerregistry.v1 import image_service_pb2, registry_service_pb2, repository_service_pb2

from indexer.errors import ImgdexError, NotFound, QueryError, StoreError

from .. import listing, render
from . import catalog, rules
from .snapshots import SnapshotSource


class Unauthenticated(ImgdexError):
    """A request without the server's bearer token."""


class Unimplemented(ImgdexError):
    """A method the index cannot answer: every write, and reads of data it does not hold."""


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
    """google.rpc.Status in JSON, as the public REST API answers an error."""
    message = str(exc) if isinstance(exc, ImgdexError) else "internal error"
    return {"code": status_of(exc).code, "message": message, "details": []}


class PageTokens:
    """Keeps page tokens within the API's 100 characters.

    `listing` tokens carry the last row's sort keys, which can be longer (a digest alone is 71
    characters). A longer one is handed out as `~` and 20 characters of its hash and mapped back
    when it returns; the map is bounded and lives as long as the process, so such a token does
    not survive a restart. Tokens that fit pass through untouched, so nothing is kept for them.
    """

    LIMIT = 100

    def __init__(self, capacity: int = 100_000):
        self._map: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        self.bridged = 0  # how many long tokens were shortened, for tests and reports

    def outgoing(self, token: str) -> str:
        if len(token) <= self.LIMIT:
            return token
        short = "~" + base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()[:15]).decode()
        with self._lock:
            self._map[short] = token
            self._map.move_to_end(short)
            while len(self._map) > self._capacity:
                self._map.popitem(last=False)
            self.bridged += 1
        return short

    def incoming(self, token: str) -> str:
        if not token.startswith("~"):
            return token
        with self._lock:
            long = self._map.get(token)
        if long is None:
            raise QueryError("page token is unknown or expired; start the list again")
        return long


class Api:
    def __init__(self, source: SnapshotSource):
        self.source = source
        self.tokens = PageTokens()

    # ImageService

    def get_image(self, request: image_service_pb2.GetImageRequest) -> dict:
        rules.validate(request)
        # Ids only, as the API: a reference or an image ID prefix is not an image id.
        with self.source.use() as snapshot:
            row = snapshot.image_row(request.image_id)
        if row is None:
            raise NotFound(f"image {request.image_id} not found")
        return render.to_response(row)

    def list_images(self, request: image_service_pb2.ListImagesRequest) -> dict:
        rules.validate(request)
        scope = rules.image_scope(request)
        # The index records no folders: a folder_id alone does not narrow the list.
        query = listing.Query(
            registry_id=scope.registry_id,
            repository_name=scope.repository_name,
            filter=request.filter,
            order_by=request.order_by,
            page_size=rules.page_size(request.page_size),
            page_token=self.tokens.incoming(request.page_token),
        )
        with self.source.use() as snapshot:
            result = listing.list_images(snapshot.cursor(), query)
        if result.get("nextPageToken"):
            result["nextPageToken"] = self.tokens.outgoing(result["nextPageToken"])
        return result

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
