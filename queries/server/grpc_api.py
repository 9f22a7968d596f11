"""The gRPC side: the official generated servicers, health, reflection and the bearer-token check.

Messages and service definitions all come from the yandexcloud package. Responses are the JSON
dicts of `api` turned into messages: images by a direct builder (four times faster than
`json_format.ParseDict`, which it falls back to for any key it does not know), a list's images
in place from their rows (the same fields `render.to_response` writes), everything else by
ParseDict. Methods the index cannot answer (every write, access bindings, IP permissions)
answer UNIMPLEMENTED.
"""

from __future__ import annotations

import datetime
import functools
import hmac
import sys
import threading
import traceback
from concurrent import futures

import grpc
from google.protobuf import json_format, timestamp_pb2
from yandex.cloud.containerregistry.v1 import (
    blob_pb2,
    image_pb2,
    image_service_pb2,
    image_service_pb2_grpc,
    registry_pb2,
    registry_service_pb2,
    registry_service_pb2_grpc,
    repository_pb2,
    repository_service_pb2,
    repository_service_pb2_grpc,
)

from indexer.errors import Unimplemented, first_line

from .. import render
from . import api as api_module
from .api import INTERNAL, Api, status_of

_CODES = {code.value[0]: code for code in grpc.StatusCode}

# What render.to_response writes; anything else goes through ParseDict.
_IMAGE_KEYS = frozenset({"id", "name", "digest", "compressedSize", "config", "layers", "tags", "createdAt"})
_BLOB_KEYS = frozenset({"id", "digest", "size", "urls"})


def _blob(doc: dict) -> blob_pb2.Blob:
    return blob_pb2.Blob(
        id=doc.get("id", ""), digest=doc.get("digest", ""), size=int(doc.get("size", 0)), urls=doc.get("urls", ())
    )


_EPOCH = datetime.datetime(1970, 1, 1)
_SECOND = datetime.timedelta(seconds=1)
# Seconds a shutdown waits for the Watch streams to be told NOT_SERVING.
_TELL_WATCHES = 1.0


def _timestamp(text: str) -> timestamp_pb2.Timestamp:
    """`createdAt` as render writes it (UTC, `Z`, 0-9 fractional digits) without Timestamp.FromJsonString.

    FromJsonString parses with strptime: a third of the time of a 100-image page went there.
    """
    fraction = text[19:-1]
    if (
        len(text) >= 20
        and text[-1] == "Z"
        and text[10] == "T"
        and (not fraction or (fraction[0] == "." and 1 < len(fraction) <= 10 and fraction[1:].isdigit()))
    ):
        try:
            moment = datetime.datetime.fromisoformat(text[:19])
        except ValueError:
            moment = None
        if moment is not None:
            nanos = int(fraction[1:].ljust(9, "0")) if fraction else 0
            return timestamp_pb2.Timestamp(seconds=(moment - _EPOCH) // _SECOND, nanos=nanos)
    message = timestamp_pb2.Timestamp()
    message.FromJsonString(text)
    return message


def image_message(doc: dict) -> image_pb2.Image:
    """The Image whose MessageToJson is `doc`."""
    config, layers = doc.get("config"), doc.get("layers", ())
    if not (
        doc.keys() <= _IMAGE_KEYS
        and (config is None or config.keys() <= _BLOB_KEYS)
        and all(layer.keys() <= _BLOB_KEYS for layer in layers)
    ):
        return json_format.ParseDict(doc, image_pb2.Image())
    created = doc.get("createdAt")
    return image_pb2.Image(
        id=doc["id"],
        name=doc.get("name", ""),
        digest=doc.get("digest", ""),
        compressed_size=int(doc.get("compressedSize", 0)),
        config=_blob(config) if config is not None else None,
        layers=[_blob(layer) for layer in layers],
        tags=doc.get("tags", ()),
        created_at=_timestamp(created) if created else None,
    )


def _length_prefixed(tag: int, data: bytes) -> bytes:
    """`data` as one length-delimited field of a message: the field's key, a varint length, the bytes."""
    size, head = len(data), bytearray([tag])
    while size > 0x7F:
        head.append((size & 0x7F) | 0x80)
        size >>= 7
    head.append(size)
    return bytes(head) + data


_IMAGES_FIELD = (image_service_pb2.ListImagesResponse.DESCRIPTOR.fields_by_name["images"].number << 3) | 2


def image_field(row: tuple) -> bytes:
    """One row as the encoded `images` entry of a ListImagesResponse: what the server keeps per image."""
    return _length_prefixed(_IMAGES_FIELD, image_message(render.to_response(row)).SerializeToString())


def list_images(api: Api, request) -> image_service_pb2.ListImagesResponse:
    """A page from the images' kept encodings: one parse in C, where building each Image in Python
    took most of a page's time."""
    fields, token = api.list_rendered(request, "grpc-image-fields", image_field)
    response = image_service_pb2.ListImagesResponse.FromString(b"".join(fields))
    response.next_page_token = token
    return response


def _parse(message_class):
    return lambda doc: json_format.ParseDict(doc, message_class())


def _answer(context, method, request, to_message):
    try:
        return to_message(method(request))
    except Exception as exc:  # every failure is a status, never a dropped stream
        status = status_of(exc)
        if status is INTERNAL:
            traceback.print_exc(file=sys.stderr)
        context.abort(_CODES[status.code], api_module.error_body(exc)["message"])


def _unimplemented(service: str, method: str):
    def handler(self, request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            str(Unimplemented(f"{service}.{method} is not served by the read-only index")),
        )

    handler.__name__ = method
    return handler


def _servicer(base, service_descriptor, served: dict):
    """A subclass of the generated servicer: `served` methods answered, every other one UNIMPLEMENTED."""
    namespace = {}
    for method in service_descriptor.methods:
        if method.name in served:
            method_fn, to_message = served[method.name]

            def handler(self, request, context, _m=method_fn, _t=to_message):
                call = getattr(self.api, _m) if isinstance(_m, str) else functools.partial(_m, self.api)
                return _answer(context, call, request, _t)

            handler.__name__ = method.name
            namespace[method.name] = handler
        else:
            namespace[method.name] = _unimplemented(service_descriptor.name, method.name)

    def __init__(self, api: Api):
        self.api = api

    namespace["__init__"] = __init__
    return type(service_descriptor.name, (base,), namespace)


ImageService = _servicer(
    image_service_pb2_grpc.ImageServiceServicer,
    image_service_pb2.DESCRIPTOR.services_by_name["ImageService"],
    {"Get": ("get_image", image_message), "List": (list_images, lambda response: response)},
)
RepositoryService = _servicer(
    repository_service_pb2_grpc.RepositoryServiceServicer,
    repository_service_pb2.DESCRIPTOR.services_by_name["RepositoryService"],
    {
        "Get": ("get_repository", _parse(repository_pb2.Repository)),
        "GetByName": ("get_repository_by_name", _parse(repository_pb2.Repository)),
        "List": ("list_repositories", _parse(repository_service_pb2.ListRepositoriesResponse)),
    },
)
RegistryService = _servicer(
    registry_service_pb2_grpc.RegistryServiceServicer,
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    {
        "Get": ("get_registry", _parse(registry_pb2.Registry)),
        "List": ("list_registries", _parse(registry_service_pb2.ListRegistriesResponse)),
    },
)

SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (image_service_pb2, "ImageService"),
        (repository_service_pb2, "RepositoryService"),
        (registry_service_pb2, "RegistryService"),
    )
)


def token_matches(header: str | bytes | None, token: bytes) -> bool:
    """`Bearer TOKEN`, the token compared in constant time."""
    if header is None:
        return False
    if isinstance(header, str):
        # http.client reads a header's bytes as latin-1: encoded so, the header is the bytes that
        # came, and a byte is compared with the token's byte, never with two bytes of its UTF-8.
        # A character beyond latin-1 (grpcio reads metadata as UTF-8 where it can) is none of a
        # token's visible ASCII.
        try:
            header = header.encode("latin-1")
        except UnicodeEncodeError:
            return False
    scheme, _, given = header.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Every call, health and reflection included, must carry `authorization: Bearer TOKEN`."""

    def __init__(self, token: bytes):
        self._token = token

    def intercept_service(self, continuation, handler_call_details):
        header = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                header = value
                break
        handler = continuation(handler_call_details)
        if token_matches(header, self._token):
            return handler
        if handler is None:
            # grpcio answers a method no servicer has UNIMPLEMENTED: which services and methods
            # exist would be learned without the token, a method at a time.
            return _DENY_UNKNOWN
        return _deny(handler)


class _Undecodable:
    """A request whose bytes are not its message (a string that is not UTF-8, a cut field)."""

    def __init__(self, reason: str):
        self.reason = reason


class DecodingInterceptor(grpc.ServerInterceptor):
    """A request that does not decode as its message is INVALID_ARGUMENT, as REST answers 400 for
    a target that is not UTF-8; grpcio's own answer is INTERNAL, which reads as the server's fault.
    On a stream of requests (reflection's) the call ends so when the method reads the first such
    message."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer

        def lenient(data: bytes):
            try:
                return decode(data)
            except Exception as exc:  # DecodeError, and whatever a message's parser raises
                return _Undecodable(first_line(exc))

        field = _ARITIES[handler.request_streaming, handler.response_streaming]
        behaviour = getattr(handler, field)
        if handler.request_streaming:

            def checked(requests, context, *send_response_callback):
                return behaviour(_decoded(requests, context), context, *send_response_callback)

        else:

            def checked(request, context, *send_response_callback):
                return behaviour(_decoded_one(request, context), context, *send_response_callback)

        return handler._replace(request_deserializer=lenient, **{field: _like(checked, behaviour)})


_ARITIES = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def _decoded_one(request, context):
    if isinstance(request, _Undecodable):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {request.reason}")
    return request


def _decoded(requests, context):
    for request in requests:
        yield _decoded_one(request, context)


def _like(wrapper, behaviour):
    """`wrapper` run by grpcio as it would run `behaviour`. grpcio reads how to run a method off the
    function it calls: health's Watch is non-blocking (it answers through a callback and returns at
    once), and called as a plain generator it held a worker for as long as its client watched, so
    `--workers` watches held every other call."""
    for name in ("experimental_non_blocking", "experimental_thread_pool"):
        if hasattr(behaviour, name):
            setattr(wrapper, name, getattr(behaviour, name))
    return wrapper


def _unauthenticated(request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (authorization: Bearer TOKEN)")


def _deny(handler):
    return handler._replace(**{_ARITIES[handler.request_streaming, handler.response_streaming]: _unauthenticated})


# A method of no service has no arity to take: a stream of raw messages each way stands for any
# call, and the abort comes before a message is read.
_DENY_UNKNOWN = grpc.stream_stream_rpc_method_handler(_unauthenticated)


# The largest valid request of any served method is a ListImagesRequest at its rules' limits:
# filter 1,000 characters, page_token and order_by 100, registry_id and folder_id 50, each
# character at most 4 bytes in UTF-8 (5,200 bytes); a repository_name, which has no length rule,
# of 255 characters (distribution's limit, which every indexed name keeps: a longer one names
# nothing); page_size; and each field's key and length: 5,484 bytes. gRPC's default, 4 MiB, let
# every call waiting for a worker hold 4 MB. 16 KiB leaves room for fields a newer SDK may add.
MAX_REQUEST_BYTES = 16 * 1024
# Calls answered or waiting per worker: a burst waits its turn, and beyond it a call is refused at
# once with RESOURCE_EXHAUSTED instead of queueing without bound.
CALLS_PER_WORKER = 4
# grpcio reads a unary call's request on the worker that will answer it: a client that sends the
# headers of a call and never its message holds a worker, and --workers such calls held every
# other call, health checks too, for as long as they liked. A connection is closed this long after
# it opened (a client's channel reconnects at once, as after any GOAWAY), and its calls still
# running are cancelled after the grace: no call holds a worker for longer than the two.
MAX_CONNECTION_AGE_MS = 60_000
MAX_CONNECTION_AGE_GRACE_MS = 30_000
IDLE_CONNECTION_MS = 30_000


def _bounded_reflection(base: type, streams: int) -> type:
    """The reflection servicer, with at most `streams` streams open at once. A stream holds a worker
    for as long as its client keeps it open (grpcurl's closes, grpcui's stays), and `--workers` of
    them held every call for up to 90 s; past the bound a stream is RESOURCE_EXHAUSTED at once."""
    slots = threading.BoundedSemaphore(streams)

    class BoundedReflection(base):
        def ServerReflectionInfo(self, request_iterator, context):
            if not slots.acquire(blocking=False):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {streams} reflection streams at once")
            try:
                yield from super().ServerReflectionInfo(request_iterator, context)
            finally:
                slots.release()

    return BoundedReflection


class GrpcServer:
    """The gRPC server with the three services, health (if installed) and reflection (if installed)."""

    def __init__(self, api: Api, address: str, workers: int, token: bytes | None, max_connections: int | None = None):
        from .rest_api import default_max_connections  # rest_api imports this module

        # The token is checked first: a call without it learns nothing about its request.
        interceptors = [BearerTokenInterceptor(token)] if token else []
        interceptors.append(DecodingInterceptor())
        self._pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgdex-grpc")
        options = [
            # SO_REUSEPORT off: a second server on a taken port must fail, not share it silently.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
            ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
            # Connections held at once: a quarter of the open-files limit (REST takes half), so
            # that idle gRPC connections cannot use up the descriptors that REST and the store's
            # files need; past it, a new connection is closed at once. One that sends no call is
            # closed when idle as long as REST waits for a request.
            ("grpc.max_allowed_incoming_connections", max_connections or default_max_connections(4)),
            ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
        ]
        self.server = grpc.server(
            self._pool,
            interceptors=interceptors,
            options=options,
            maximum_concurrent_rpcs=workers * CALLS_PER_WORKER,
        )
        image_service_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(api), self.server)
        repository_service_pb2_grpc.add_RepositoryServiceServicer_to_server(RepositoryService(api), self.server)
        registry_service_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryService(api), self.server)
        names = list(SERVICE_NAMES)
        self.health = None
        try:
            from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        except ImportError:
            health = None
        if health is not None:
            self.health = health.HealthServicer()
            self._health_status = health_pb2.HealthCheckResponse
            self._health_lock = threading.Lock()
            self._serving: bool | None = None
            self._source = api.source
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
            self._source.subscribe(self._follow)
            self._follow()
            names.append(health.SERVICE_NAME)
        self.reflection = False
        try:
            from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
        except ImportError:
            reflection = None
        if reflection is not None:
            names.append(reflection.SERVICE_NAME)
            servicer = _bounded_reflection(reflection.ReflectionServicer, max(1, workers // 2))(names)
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, self.server)
            self.reflection = True
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address} for gRPC: {exc}") from None
        if not self.port:
            raise OSError(f"cannot listen on {address} for gRPC")

    def _follow(self, _snapshot=None) -> None:
        """Health says what a call would meet: until a completed index run is loaded every call
        answers UNAVAILABLE, and a probe that saw SERVING would send traffic to a server that can
        answer nothing. A loaded snapshot stays in memory whatever later happens to the store, so
        only the first one and the end of serving change the answer."""
        with self._health_lock:
            # Read under the lock, not taken from the caller: the last of two racing calls then
            # always sets what is served now, never what was served when it was called.
            serving = self._source.current is not None
            # Watch streams get a message per `set`: one per change, not one per index run.
            if serving == self._serving:
                return
            self._serving = serving
            status = self._health_status.SERVING if serving else self._health_status.NOT_SERVING
            for name in ("", *SERVICE_NAMES):
                self.health.set(name, status)

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float):
        """Refuses new calls at once, lets running ones finish within `grace` seconds; an Event."""
        if self.health is not None:
            # Watch streams are told NOT_SERVING first. grpc's send to a stream whose client is
            # cancelling it can wait for ever (a test's teardown hung so, and a SIGTERM would
            # have too): the shutdown goes on after a moment, and its cancellation ends the wait.
            told = threading.Thread(target=self.health.enter_graceful_shutdown, name="health-shutdown", daemon=True)
            told.start()
            told.join(min(grace, _TELL_WATCHES))
        return self.server.stop(grace)
