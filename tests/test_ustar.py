"""The plain ustar header reader (indexer/sources/ustar.py) against tarfile: for any archive,
well formed or damaged, reading an uncompressed tar gives the same members or the same error
with it as without it."""

from __future__ import annotations

import io
import tarfile
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.errors import SourceError
from indexer.sources import tarball, ustar

_NAMES = st.lists(
    st.sampled_from(["manifest.json", "repositories", "blobs", "sha256", "a" * 99, "b" * 160, "é", "..", ".", ""]),
    min_size=1,
    max_size=3,
).map("/".join)
_MEMBER = st.tuples(
    st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]),
    _NAMES,
    st.integers(0, 1500),
    _NAMES | st.just("/etc/passwd"),
)


def _archive(members, tar_format) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tar_format) as tar:
        for kind, name, size, target in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = target
            if info.isreg():
                info.size = size
                tar.addfile(info, io.BytesIO(b"x" * size))
            else:
                tar.addfile(info)
    return out.getvalue()


def _read(path: str, monkeypatch, plain: bool):
    with monkeypatch.context() as patch:
        if not plain:
            patch.setattr(ustar, "scan", lambda fd, size, take: False)
        try:
            with open(path, "rb") as f:
                return tarball._scan_seekable(f, "archive.tar")
        except SourceError as exc:
            return str(exc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    members=st.lists(_MEMBER, max_size=5),
    tar_format=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    damage=st.one_of(
        st.none(),
        st.tuples(st.just("cut"), st.integers(0, 8000)),
        st.tuples(st.just("byte"), st.integers(0, 8000), st.integers(0, 255)),
        # A byte of a header changed and its checksum made right again: the fields themselves.
        st.tuples(st.just("field"), st.integers(0, 511), st.sampled_from(b" \x00/0789+-_\x80\xffa\x1c")),
    ),
)
def test_same_members_or_error_as_tarfile(members, tar_format, damage, tmp_path, monkeypatch):
    try:
        data = _archive(members, tar_format)
    except ValueError:  # a name or link the format cannot hold
        return
    if damage and damage[0] == "cut":
        data = data[: damage[1]]
    elif damage and damage[0] == "field":
        data = _fixed(data[: damage[1]] + bytes([damage[2]]) + data[damage[1] + 1 :]) + data[512:]
    elif damage and damage[1] < len(data):
        data = data[: damage[1]] + bytes([damage[2]]) + data[damage[1] + 1 :]
    path = tmp_path / "archive.tar"
    path.write_bytes(data)
    assert _read(str(path), monkeypatch, plain=True) == _read(str(path), monkeypatch, plain=False)


def _fixed(block: bytes) -> bytes:
    """The first header block of `block` with its checksum made right."""
    block = block[:148] + b" " * 8 + block[156:512]
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def _header(name: bytes, kind: bytes, *, prefix: bytes = b"", size: bytes = b"0", mode: bytes = b"644") -> bytes:
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100 : 100 + len(mode)] = mode
    block[108:124] = b"0001750\x000001750\x00"  # uid, gid
    block[124 : 124 + len(size)] = size
    block[136:148] = b"14712345670\x00"  # mtime
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[345 : 345 + len(prefix)] = prefix
    return _fixed(bytes(block))


@pytest.mark.parametrize(
    "blocks",
    [
        [_header(b"/", b"5", prefix=b"x")],  # a directory named by its prefix alone
        [_header(b"old/", b"\0")],  # old tar's directory: a regular file named with a slash
        [_header(b"d", b"5", size=b"1"), _header(b"f", b"0", size=b" 3 ")],  # a directory's size skips nothing
        [_header(b"h", b"1", size=b"2000"), _header(b"f", b"0")],  # nor does a hard link's
        [_header(b"f", b"0", size=b"", mode=b"")],  # empty numbers are 0
        [_header(b"f", b"0", size=b"1_0")],  # underscores: tarfile's int() takes them, this reader does not
        [_header(b"f", b"0", size=b"\x1c1")],  # a blank to str.strip but not to bytes.strip
        [_header(b"f", b"0", size=b"18")],  # not octal
        [_header(b"f", b"0", size=b"00000000003\x00", mode=b"0000644\x00")],  # the usual widths
        [_header(b"f", b"0", size=b"00000000003\x00", mode=b"0000648\x00")],  # the usual width, not octal
        [_header(b"f", b"0", size=b"00000000003 ", mode=b"0000644 ")],  # the usual width, blank-ended
        [_header(b"f", b"0", size=b"\x80" + bytes(10) + b"\x03")],  # base-256
    ],
)
def test_edge_headers_read_as_tarfile_reads_them(blocks, tmp_path, monkeypatch):
    path = tmp_path / "archive.tar"
    path.write_bytes(b"".join(b.ljust(512, b"\0") for b in blocks) + bytes(4096))
    assert _read(str(path), monkeypatch, plain=True) == _read(str(path), monkeypatch, plain=False)
    data = path.read_bytes()
    headers = _headers(data)
    if headers is not None:  # what it read, field by field, is what tarfile reads
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            expected = [(i.name, i.type, i.linkname, i.size, i.offset_data) for i in tar]
        assert [(h.name, h.type, h.linkname, h.size, h.offset_data) for h in headers] == expected


def _headers(data: bytes) -> list[ustar.Header] | None:
    seen: list[ustar.Header] = []
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        return seen if ustar.scan(f.fileno(), len(data), seen.append) else None


def test_reads_plain_ustar_members_and_their_offsets():
    data = _archive(
        [
            (tarfile.DIRTYPE, "blobs/", 0, ""),
            (tarfile.REGTYPE, "blobs/a", 700, ""),
            (tarfile.SYMTYPE, "l", 0, "blobs/a"),
        ],
        tarfile.USTAR_FORMAT,
    )
    headers = _headers(data)
    assert [(h.name, h.type, h.linkname, h.size, h.offset_data) for h in headers] == [
        ("blobs", b"5", "", 0, 512),
        ("blobs/a", b"0", "", 700, 1024),
        ("l", b"2", "blobs/a", 0, 2560),
    ]


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_leaves_extended_headers_to_tarfile(tar_format):
    assert _headers(_archive([(tarfile.REGTYPE, "n" * 150, 3, "")], tar_format)) is None


def test_leaves_a_bad_checksum_to_tarfile():
    data = bytearray(_archive([(tarfile.REGTYPE, "a", 3, "")], tarfile.USTAR_FORMAT))
    data[0:1] = b"b"
    assert _headers(bytes(data)) is None
