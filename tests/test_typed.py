"""The typed fast path (`indexer/sources/typed.py`) against the exact parser it stands in for.

On a valid document both give the same record; on any document the fast path either gives what
the exact parser gives or leaves the document to it, so records and error messages never depend
on which path read them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from indexer import timestamps
from indexer.errors import SourceError
from indexer.model import Blob
from indexer.references import Reference
from indexer.sources import configbounds, mediatypes as mt, parse, typed
from indexer.sources.parse import Context, parse_config, parse_config_exact, walk

SLOW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- documents

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
# Mostly what real configs hold, sometimes anything else in the same place.
texts = st.text(max_size=16) | st.sampled_from(["", "linux", "amd64", "PATH=/usr/bin", "é", "\U0001f600", "a\tb"])


def maybe(valid, other=json_values):
    return st.one_of(valid, valid, valid, other)


def rfc3339() -> st.SearchStrategy[str]:
    """RFC 3339 times in every form `timestamps.parse` takes, and some it does not."""
    fraction = st.sampled_from(
        ["", ".0", ".5", ".000", ".500", ".123", ".000001", ".120000", ".123456789", ".100000000"]
    )
    zone = st.sampled_from(["Z", "z", "+00:00", "-07:30", "+14:00"])
    parts = st.tuples(
        st.integers(0, 9999),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 24),
        st.integers(0, 60),
        st.integers(0, 61),
        fraction,
        st.sampled_from(["T", "t", " "]),
        zone,
    )
    return parts.map(lambda p: f"{p[0]:04d}-{p[1]:02d}-{p[2]:02d}{p[7]}{p[3]:02d}:{p[4]:02d}:{p[5]:02d}{p[6]}{p[8]}")


history_entries = st.fixed_dictionaries(
    {},
    optional={
        "created": maybe(rfc3339() | texts),
        "created_by": maybe(texts),
        "comment": maybe(texts),
        "empty_layer": maybe(st.booleans()),
        "author": json_values,
    },
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "created": maybe(rfc3339() | texts),
        "os": maybe(texts),
        "architecture": maybe(texts),
        "variant": maybe(texts),
        "config": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "Labels": maybe(st.dictionaries(texts, maybe(texts), max_size=4) | st.none()),
                    "Env": maybe(st.lists(maybe(texts), max_size=4) | st.none()),
                    "Entrypoint": maybe(st.lists(texts, max_size=3) | st.none()),
                    "Cmd": maybe(st.lists(texts, max_size=3) | st.none()),
                    "ExposedPorts": json_values,
                },
            )
            | st.none()
        ),
        "rootfs": maybe(
            st.fixed_dictionaries(
                {"type": st.just("layers")},
                optional={"diff_ids": maybe(st.lists(st.sampled_from([digest_of(b"a"), digest_of(b"b")]), max_size=3))},
            )
        ),
        "history": maybe(st.lists(maybe(history_entries), max_size=5) | st.none()),
        "extra": json_values,
    },
)


def encode(doc, data: st.DataObject) -> bytes:
    """JSON text of `doc` as tools write it: compact or indented, escaped or raw UTF-8."""
    return json.dumps(doc, ensure_ascii=data.draw(st.booleans()), indent=data.draw(st.sampled_from([None, 2]))).encode(
        "utf-8"
    )


def mutate(text: bytes, data: st.DataObject) -> bytes:
    """`text` with a few bytes changed, inserted or removed: mostly no longer what it was."""
    out = bytearray(text)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(out)))
        what = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = data.draw(
            st.sampled_from([0x00, 0x22, 0x5C, 0x7B, 0x5B, 0x5D, 0x7D, 0x2C, 0x3A, 0xED, 0xA0, 0xFF, 0xC3, 0x75, 0x64])
        )
        if what == "insert":
            out[at:at] = bytes([byte])
        elif out and at < len(out):
            if what == "flip":
                out[at] = byte
            else:
                del out[at]
    return bytes(out)


def exact_config(data: bytes):
    try:
        return parse_config_exact(data, "f")
    except SourceError as exc:
        return str(exc)


def paths_agree(text: bytes):
    """The typed decoder answers as the exact parser does or leaves the config to it, and
    parse_config gives the exact parser's config or its message. Returns the exact answer."""
    exact = exact_config(text)
    fast = typed.decode_config(text)
    assert fast is None or fast == exact
    try:
        assert parse_config(text, "f") == exact
    except SourceError as exc:
        assert str(exc) == exact
    return exact


# ----------------------------------------------------------------------------- configs


@SLOW
@given(configs, st.data())
def test_a_valid_config_decodes_alike_on_both_paths(doc, data):
    text = encode(doc, data)
    exact = exact_config(text)
    fast = typed.decode_config(text)
    assert fast is None or fast == exact
    assert parse_config(text, "f") == exact


@SLOW
@given(configs, st.data())
def test_any_config_bytes_decode_alike_or_go_to_the_exact_parser(doc, data):
    paths_agree(mutate(encode(doc, data), data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_never_decode_as_a_config_the_exact_parser_refuses(data):
    fast = typed.decode_config(data)
    assert fast is None or fast == exact_config(data)


def test_plain_configs_take_the_fast_path():
    # Not a test of speed: that the typed decoder answers for the documents tools write.
    doc = {
        "created": "2026-11-29T10:54:27.000347894Z",
        "os": "linux",
        "architecture": "arm64",
        "variant": "v8",
        "config": {"Labels": {"b": "2", "a": "1"}, "Env": ["A=1"], "Entrypoint": ["/e"], "Cmd": None},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(b"a")]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "ADD x"}, {"empty_layer": True}],
    }
    for text in (json.dumps(doc).encode(), json.dumps(doc, indent=2, ensure_ascii=False).encode()):
        fast = typed.decode_config(text)
        assert fast is not None and fast == parse_config_exact(text, "f")
        assert fast.labels == (("a", "1"), ("b", "2")) and fast.cmd == ()


@pytest.mark.parametrize(
    "text",
    [
        b'{"os": "linux", "os": 3}',  # json.loads keeps the last of repeated keys
        b'{"config": {"Env": ["A", 1]}}',  # the exact parser drops what is not a string
        b'{"created": null, "history": [1, {"created_by": "x"}]}',
        b'{"os": "\\ud800"}',  # a lone surrogate: refused with a message of the exact parser's
        b'{"os": "linux", "x": "\xed\xa0\x80"}',  # an encoded one, where msgspec does not look
        b'{"os": "linux", "x": "\xff"}',  # not UTF-8, where msgspec does not look
        b'\xef\xbb\xbf{"os": "linux"}',  # a byte order mark: refused, as Go refuses it
        '{"os": "linux"}'.encode("utf-16-le"),  # UTF-16, which json.loads would take
        b'{"os": "linux", "x": NaN}',
        b'{"os": "linux", "x": ' + b"[" * 990 + b"]" * 990 + b"}",  # deeper than json.loads goes
        b"[]",
        b"",
    ],
)
def test_unusual_configs_go_to_the_exact_parser(text):
    assert typed.decode_config(text) is None
    exact = exact_config(text)
    try:
        assert parse_config(text, "f") == exact
    except SourceError as exc:
        assert str(exc) == exact


@settings(max_examples=1000, deadline=None)
@given(rfc3339() | st.text(max_size=32))
@example("2026-11-29T10:54:27.000347894Z")
@example("2026-11-29T10:54:27.500000Z")
@example("1000-01-01T00:00:00Z")
@example("0000-01-01T00:00:00Z")
@example("2026-02-29T00:00:00Z")
def test_canonical_times_are_kept_as_normalise_would(text):
    assert typed._created(text) == timestamps.normalise(text)


# ----------------------------------------------------------------------------- bounds

# Each list a config may hold no more than MAX_ENTRIES of, by its name in messages: a config
# holding `n` entries of it, and the field of ImageConfig that keeps them.
BOUNDED = {
    "history": (lambda n: {"history": [{"created_by": "RUN x"}] * n}, "history"),
    "rootfs.diff_ids": (lambda n: {"rootfs": {"type": "layers", "diff_ids": [digest_of(b"a")] * n}}, "diff_ids"),
    "Env": (lambda n: {"config": {"Env": ["A=1"] * n}}, "env"),
    "Entrypoint": (lambda n: {"config": {"Entrypoint": ["/e"] * n}}, "entrypoint"),
    "Cmd": (lambda n: {"config": {"Cmd": ["c"] * n}}, "cmd"),
    "Labels": (lambda n: {"config": {"Labels": {f"k{i}": "v" for i in range(n)}}}, "labels"),
}


def refusal(text: bytes) -> str:
    with pytest.raises(SourceError) as refused:
        parse_config(text, "f")
    return str(refused.value)


@pytest.mark.parametrize("what", BOUNDED)
def test_a_config_listing_more_entries_than_the_bound_is_refused_on_both_paths(what):
    build, field = BOUNDED[what]
    most = configbounds.MAX_ENTRIES
    at = json.dumps(build(most)).encode()
    kept = parse_config(at, "f")
    assert kept == parse_config_exact(at, "f") and len(getattr(kept, field)) == most
    over = json.dumps(build(most + 1)).encode()
    assert typed.decode_config(over) is None
    message = f"f: config {what} has {most + 1} entries, more than the {most} a config may list"
    assert exact_config(over) == message
    assert refusal(over) == message


@pytest.mark.parametrize("what", BOUNDED)
def test_the_typed_decoder_counts_entries_as_the_exact_parser_does(what, monkeypatch):
    # Under the real bound a history this long has too many brackets for the typed decoder to
    # answer at all: a small bound has it count every list itself.
    build, _ = BOUNDED[what]
    monkeypatch.setattr(configbounds, "MAX_ENTRIES", 3)
    at = json.dumps(build(3)).encode()
    assert typed.decode_config(at) is not None and typed.decode_config(at) == parse_config_exact(at, "f")
    over = json.dumps(build(4)).encode()
    assert typed.decode_config(over) is None
    assert refusal(over) == f"f: config {what} has 4 entries, more than the 3 a config may list"


@SLOW
@given(configs, st.integers(0, 5), st.data())
def test_configs_near_the_entry_bound_decode_alike_on_both_paths(doc, bound, data):
    # Entries of the wrong type count too: the exact parser built them before it dropped them.
    text = encode(doc, data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(configbounds, "MAX_ENTRIES", bound)
        paths_agree(text)


def count_values(doc) -> int:
    """Values of a parsed document, keys included."""
    if isinstance(doc, list):
        return 1 + sum(count_values(v) for v in doc)
    if isinstance(doc, dict):
        return 1 + sum(1 + count_values(v) for v in doc.values())
    return 1


# Strings full of what the count must not take for structure: separators, brackets, escapes.
tricky_texts = st.text(alphabet=',:[{]}"\\ab\u00e9', max_size=12)
tricky_values = st.recursive(
    st.none() | st.integers() | tricky_texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(tricky_texts, children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(tricky_values, st.integers(1, 40), st.integers(1, 16), st.booleans(), st.sampled_from([None, 1]))
def test_the_value_count_bounds_what_is_parsed_and_refuses_no_config_of_few_values(doc, most, window, ascii, indent):
    text = json.dumps(doc, ensure_ascii=ascii, indent=indent).encode()
    values = count_values(doc)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(configbounds, "MAX_VALUES", most)
        patch.setattr(configbounds, "_WINDOW", window)  # windows end anywhere, strings cross them
        refused = configbounds.too_many_values(text)
    if not refused:
        assert values <= most  # what either parser builds stays within the bound
    if 2 * values <= most:
        assert not refused  # only empty arrays and objects are counted twice


@SLOW
@given(configs, st.integers(1, 60), st.data())
def test_configs_near_the_value_bound_decode_alike_on_both_paths(doc, most, data):
    text = encode(doc, data)
    if data.draw(st.booleans()):
        text = mutate(text, data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(configbounds, "MAX_VALUES", most)
        exact = paths_agree(text)
        if configbounds.too_many_values(text):
            assert exact == f"f: config holds too many values for its {len(text)} bytes"


def test_a_large_config_of_many_tiny_values_is_refused_before_it_is_parsed(monkeypatch):
    # 8 MiB of `{}` is 2.8 million history entries: ~650 MB of objects.
    text = b'{"os":"linux","history":[' + b",".join([b"{}"] * ((8 << 20) // 3)) + b"]}"
    monkeypatch.setattr(parse, "load_object", lambda *args: pytest.fail("parsed by json.loads"))
    monkeypatch.setattr(typed, "_CONFIG", None)  # any decode by msgspec fails the test
    assert refusal(text) == f"f: config holds too many values for its {len(text)} bytes"


@pytest.mark.parametrize("escaped", [False, True])
@pytest.mark.parametrize("label", ["json", "plain"])
def test_a_large_config_whose_strings_are_full_of_separators_is_kept(label, escaped):
    # A label may hold a whole JSON document (buildpacks' metadata): its commas and colons are
    # text, not values, however many. (Its brackets leave it to the exact parser; without them
    # the typed decoder answers.)
    inner = json.dumps([{"k": [1, 2], "v": 'x,y:"z"'}] * 120_000) if label == "json" else ',:"\\' * 200_000
    doc = {"os": "linux", "config": {"Labels": {"meta": inner}}, "history": [{"created_by": ",:" * 300_000}]}
    text = json.dumps(doc, ensure_ascii=escaped).encode()
    assert len(text) > 2 * configbounds.MAX_VALUES
    assert text.count(b",") + text.count(b":") > configbounds.MAX_VALUES  # so they are counted again
    kept = parse_config(text, "f")
    assert kept == parse_config_exact(text, "f") and kept.labels == (("meta", inner),)
    fast = typed.decode_config(text)
    assert fast == kept if label == "plain" else fast is None


# ----------------------------------------------------------------------------- manifests


class MemoryBlobs:
    def __init__(self, blobs: dict[str, bytes], sizes: dict[str, int] | None = None):
        self.blobs = blobs
        self.sizes = sizes or {}

    def read_blob(self, digest, limit):
        if digest not in self.blobs:
            raise SourceError("mem", f"blob {digest} is missing")
        return self.blobs[digest]

    def blob_size(self, digest):
        if digest in self.sizes:
            return self.sizes[digest]
        data = self.blobs.get(digest)
        return None if data is None else len(data)


def _walked(store, descriptor, names, fast: bool, monkeypatch) -> list:
    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(typed, "decode_manifest", lambda *args, **kwargs: None)
            patch.setattr(typed, "decode_config", lambda *args, **kwargs: None)
        notes: list[str] = []
        ctx = Context(source_kind="oci", source_path="/l", note=notes.append)
        out = [
            str(item) if isinstance(item, SourceError) else item for item in walk(store, descriptor, names, ctx, "/l")
        ]
    return out + notes


LAYER_TYPES = [mt.OCI_LAYER_TAR + "+gzip", mt.OCI_LAYER_TAR, "application/vnd.docker.image.rootfs.diff.tar.gzip"]
descriptor_sizes = st.integers(0, 2**63 - 1) | st.sampled_from([-1, 2**63, 2**64, 1.0, True, "3", None])


@st.composite
def layouts(draw, broken: bool):
    """(store, top descriptor, names) of one image manifest, its config and layers; with `broken`,
    any of their parts may be wrong in any way the exact parser has words for."""
    config_doc = draw(configs)
    config = json.dumps(config_doc).encode()
    layers = [draw(st.binary(min_size=1, max_size=8)) for _ in range(draw(st.integers(0, 4)))]
    blobs = {digest_of(layer): layer for layer in layers}
    blobs[digest_of(config)] = config

    def descriptor(data: bytes, media_type: str) -> dict:
        out = {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}
        if broken and draw(st.integers(0, 5)) == 0:
            key = draw(st.sampled_from(["mediaType", "digest", "size", "urls", "annotations"]))
            out[key] = draw(
                {
                    "mediaType": st.sampled_from(["", "x/y", 3, None]),
                    "digest": st.sampled_from(["sha256:abc", "md5:" + "0" * 32, "", None, digest_of(b"missing")]),
                    "size": descriptor_sizes,
                    "urls": st.sampled_from([[], None, ["https://x/y"], "u", [1], 0, False]),
                    "annotations": json_values,
                }[key]
            )
        return out

    config_type = draw(st.sampled_from([mt.OCI_CONFIG, mt.OCI_CONFIG, mt.DOCKER_CONFIG, "application/x-artifact"]))
    manifest: dict = {
        "schemaVersion": 2,
        "mediaType": draw(st.sampled_from([mt.OCI_MANIFEST, mt.DOCKER_MANIFEST, ""])),
        "config": descriptor(config, config_type),
        "layers": [descriptor(layer, draw(st.sampled_from(LAYER_TYPES))) for layer in layers],
    }
    if draw(st.booleans()):
        manifest["annotations"] = {"a": "b"}
    if draw(st.integers(0, 4)) == 0:
        manifest["artifactType"] = draw(st.sampled_from(["", "application/x", 3, None]))
    if broken:
        for key in draw(st.lists(st.sampled_from(["mediaType", "config", "layers", "schemaVersion"]), max_size=2)):
            manifest[key] = draw(json_values | st.sampled_from([mt.OCI_INDEX, mt.DOCKER_SCHEMA1]))
    text = json.dumps(manifest, indent=draw(st.sampled_from([None, 3]))).encode()
    if broken and draw(st.integers(0, 3)) == 0:
        text = mutate(text, draw(st.data()))
    blobs[digest_of(text)] = text
    sizes = {}
    if broken and layers and draw(st.integers(0, 5)) == 0:
        sizes[digest_of(layers[0])] = len(layers[0]) + 1  # the stored layer is not the size it says
    declared = draw(st.sampled_from([mt.OCI_MANIFEST, mt.DOCKER_MANIFEST, ""]))
    top = Blob(digest_of(text), len(text), declared)
    names = draw(st.sampled_from([[], [Reference("cr.example", "team/app", "1.0")], [Reference("r", "Bad", "x")]]))
    return MemoryBlobs(blobs, sizes), top, names


def _both_paths(layout) -> tuple:
    store, top, names = layout
    with pytest.MonkeyPatch.context() as patch:
        return _walked(store, top, names, False, patch), _walked(store, top, names, True, patch)


@SLOW
@given(layouts(broken=False))
def test_a_valid_manifest_gives_the_same_records_on_both_paths(layout):
    exact, fast = _both_paths(layout)
    assert fast == exact


@SLOW
@given(layouts(broken=True))
def test_any_manifest_gives_the_same_records_or_message_on_both_paths(layout):
    exact, fast = _both_paths(layout)
    assert fast == exact


@SLOW
@given(layouts(broken=True))
def test_the_typed_manifest_decoder_answers_only_for_what_the_exact_parser_accepts(layout):
    store, top, names = layout
    data = store.blobs[top.digest]
    decoded = typed.decode_manifest(data, top.media_type, {})
    if decoded is None:
        return
    media_type, config, layers, artifact_type = decoded
    doc = json.loads(data)  # the fast path took it, so json.loads must too
    assert media_type == (doc.get("mediaType") or top.media_type) and media_type in mt.MANIFESTS
    assert config == parse.parse_descriptor(doc["config"], "w", "config")
    assert layers == tuple(parse.parse_descriptor(d, "w", "layer") for d in doc.get("layers") or [])
    assert artifact_type == (doc.get("artifactType") or "")


def test_descriptor_shapes_are_shared_between_the_paths():
    # Both paths remember a validated plain descriptor under the same key, with the same value.
    shapes: dict = {}
    layer = b"layer"
    config = b"{}"
    manifest = json.dumps(
        {
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": digest_of(config), "size": 2},
            "layers": [{"mediaType": LAYER_TYPES[0], "digest": digest_of(layer), "size": 5}],
        }
    ).encode()
    decoded = typed.decode_manifest(manifest, "", shapes)
    assert decoded is not None
    raw = {"mediaType": LAYER_TYPES[0], "digest": digest_of(layer), "size": 5}
    assert parse.parse_descriptor(raw, "w", "layer", shapes) is decoded[2][0]
    assert shapes == {
        (mt.OCI_CONFIG, digest_of(config), 2): decoded[1],
        (LAYER_TYPES[0], digest_of(layer), 5): decoded[2][0],
    }


def test_a_real_layout_is_read_alike_on_both_paths(monkeypatch):
    from pathlib import Path

    from indexer.sources import parse_source

    fixtures = Path(__file__).parent / "fixtures" / "real"
    for path in sorted(fixtures.glob("*.tar")):
        outputs = []
        for fast in (False, True):
            with monkeypatch.context() as patch:
                if not fast:
                    patch.setattr(typed, "decode_manifest", lambda *args, **kwargs: None)
                    patch.setattr(typed, "decode_config", lambda *args, **kwargs: None)
                source = parse_source(str(path))
                ctx = Context(source_kind=source.kind, source_path=source.location)
                outputs.append([str(r) if isinstance(r, Exception) else r for r in source.records(ctx)])
        assert outputs[0] == outputs[1], path.name
        assert outputs[0], path.name


KINDS = {mt.OCI_MANIFEST: "manifest", mt.DOCKER_MANIFEST: "manifest", mt.OCI_INDEX: "index", mt.DOCKER_LIST: "index"}


@st.composite
def listed_anyhow(draw):
    """(store, top descriptor, names, whether its kinds disagree): an image manifest, or an index of
    one, listed under any manifest or index media type or none, its own mediaType any of them or
    none, sometimes holding a key only the other kind holds."""
    store, top, names = draw(layouts(broken=False))
    doc = json.loads(store.blobs[top.digest])
    if draw(st.booleans()):
        doc = {
            "schemaVersion": 2,
            "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": top.digest, "size": top.size}],
        }
    own = draw(st.sampled_from([None, *KINDS]))
    if own is None:
        doc.pop("mediaType", None)
    else:
        doc["mediaType"] = own
    stray = draw(st.sampled_from([None, "manifests", "config", "layers"]))
    if stray is not None and stray not in doc:
        doc[stray] = draw(st.sampled_from([None, [], {}]))
    text = json.dumps(doc).encode()
    store.blobs[digest_of(text)] = text
    declared = draw(st.sampled_from(["", *KINDS]))
    if not declared:
        confused = False
    else:
        other_keys = ("manifests",) if KINDS[declared] == "manifest" else ("config", "layers")
        confused = (own is not None and KINDS[own] != KINDS[declared]) or any(
            doc.get(key) is not None for key in other_keys
        )
    return store, Blob(digest_of(text), len(text), declared), names, confused


@SLOW
@given(listed_anyhow())
def test_a_document_listed_as_the_other_kind_is_refused_alike_on_both_paths(listed):
    store, top, names, confused = listed
    exact, fast = _both_paths((store, top, names))
    assert fast == exact
    refusals = [item for item in exact if isinstance(item, str) and f"is listed as {top.media_type} but" in item]
    if confused:
        assert exact == refusals and len(refusals) == 1, exact
    else:
        assert not refusals


def test_a_manifest_listed_as_an_index_is_refused_by_the_fast_path_too(monkeypatch):
    # The fast path read it as the image its own mediaType names, whatever its descriptor said.
    config = b"{}"
    manifest = json.dumps(
        {
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": digest_of(config), "size": 2},
            "layers": [],
        }
    ).encode()
    store = MemoryBlobs({digest_of(config): config, digest_of(manifest): manifest})
    for declared in (mt.OCI_INDEX, mt.DOCKER_LIST):
        assert typed.decode_manifest(manifest, declared, {}) is None
        out = _walked(store, Blob(digest_of(manifest), len(manifest), declared), [], True, monkeypatch)
        assert out == [
            f"/l: manifest {digest_of(manifest)} is listed as {declared} but its own mediaType is '{mt.OCI_MANIFEST}'"
        ]


# ----------------------------------------------------------------------------- big numbers

# Integers past the digits int() converts (4,300), and some just within it. Go skips a field it
# does not know without converting it; msgspec does too, and the exact parser keeps such a number
# as a LongInteger: a document is read alike whichever path reads it, and only a size of such a
# number is refused, in the same words on both.
big_numbers = st.tuples(st.sampled_from(["", "-"]), st.sampled_from(["9", "1", "0.5"]), st.integers(4290, 6000)).map(
    lambda p: p[0] + ("1" + "0" * p[2] + ".5" if p[1] == "0.5" else p[1] * p[2])
)
_MARK = "\x00big{}"
# Where a number goes: a key of its own, where nothing reads it, or in place of a value imgdex reads.
UNREAD = ("extra", "nested", "deep")


def _place(doc: dict, where: str, mark: str, data: st.DataObject) -> None:
    if where == "extra":
        doc[data.draw(st.sampled_from(["x", "schemaVersionX", "annotations_", "n"]))] = mark
    elif where == "nested":
        doc["x"] = data.draw(st.sampled_from([[1, mark], {"k": [mark, {"m": mark}]}, [[[mark]]]]))
    elif where == "deep":  # past the fast path's depth: read by the exact parser alone
        nested: object = mark
        for _ in range(typed._SAFE_DEPTH + 50):
            nested = [nested]
        doc["deep"] = nested
    else:  # a key that is read: `where` is its path, one key or two
        parts = where.split(".")
        inner = doc
        for key in parts[:-1]:
            value = inner.get(key)
            if isinstance(value, list):
                value = value[0] if value and isinstance(value[0], dict) else None
            if not isinstance(value, dict):
                return
            inner = value
        inner[parts[-1]] = mark


def with_big_numbers(doc: dict, places: list[str], data: st.DataObject) -> tuple[bytes, bytes]:
    """`doc` as JSON with big numbers in `places`, and the same text with each of them 0."""
    doc = json.loads(json.dumps(doc))
    numbers = []
    for position, where in enumerate(places):
        numbers.append(data.draw(big_numbers))
        _place(doc, where, _MARK.format(position), data)
    text = json.dumps(doc).encode()
    zero = text
    for position, number in enumerate(numbers):
        mark = json.dumps(_MARK.format(position)).encode()
        text, zero = text.replace(mark, number.encode()), zero.replace(mark, b"0")
    return text, zero


def _no_advice(answer) -> None:
    assert "sys.set_int_max_str_digits" not in str(answer) and "integer string conversion" not in str(answer)


CONFIG_PLACES = UNREAD + ("created", "os", "config.Labels", "config.Env", "rootfs.diff_ids", "history.empty_layer")


@SLOW
@given(configs, st.lists(st.sampled_from(CONFIG_PLACES), min_size=1, max_size=3), st.data())
def test_configs_with_big_numbers_decode_alike_on_both_paths(doc, places, data):
    text, zero = with_big_numbers(doc, places, data)
    exact = paths_agree(text)
    _no_advice(exact)
    if all(where in UNREAD for where in places):
        assert exact == exact_config(zero)


MANIFEST_PLACES = UNREAD + ("schemaVersion", "mediaType", "config.size", "layers.size", "annotations.a", "config.x")


def _without_digests(items: list, digests: tuple[str, ...]) -> list:
    out = []
    for item in items:
        if isinstance(item, str):
            for digest in digests:
                item = item.replace(digest, "D")
        else:
            item = dataclasses.replace(item, id="", digest="", manifest_raw=b"")
        out.append(item)
    return out


@SLOW
@given(
    st.booleans().flatmap(layouts),
    st.lists(st.sampled_from(MANIFEST_PLACES), min_size=1, max_size=3),
    st.data(),
)
def test_manifests_with_big_numbers_give_the_same_records_or_message_on_both_paths(layout, places, data):
    store, top, names = layout
    try:
        doc = json.loads(store.blobs[top.digest])
    except ValueError:
        return  # mutated past JSON: nowhere to put a number
    if not isinstance(doc, dict):
        return
    text, zero = with_big_numbers(doc, places, data)
    answers = []
    for variant in (text, zero):
        blobs = MemoryBlobs({**store.blobs, digest_of(variant): variant}, store.sizes)
        exact, fast = _both_paths((blobs, Blob(digest_of(variant), len(variant), top.media_type), names))
        assert fast == exact
        _no_advice(exact)
        answers.append(_without_digests(exact, (digest_of(variant),)))
    if all(where in UNREAD for where in places):
        assert answers[0] == answers[1]
