"""Local sources against hostile or unusual input: bounded memory whatever an archive holds, only
regular files read, large top-level indexes, folders of archives, standard input, config names
that are not their digest, one-line messages whatever a name holds, and configs of a great many
tiny entries."""

from __future__ import annotations

import bz2
import collections
import copy
import gzip
import hashlib
import io
import json
import lzma
import os
import pty
import subprocess
import sys
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import (
    OCI_CONFIG,
    OCI_LAYER_GZ,
    OCI_MANIFEST,
    Blobs,
    classic_save_files,
    digest_of,
    dumps,
    named,
    tar_bytes,
    write_dir,
    write_tar,
)
from conftest import REAL
from expectations import REPOSITORY, expected_documents
from indexer.errors import SourceError, printable
from indexer.model import ImageRecord, Platform
from indexer.sources import jsonstream, layout, parse_source, tarball
from indexer.sources.layout import IndexJson, top_descriptors
from indexer.sources.parse import MAX_JSON_BYTES, Context
from indexer.sources.tarball import MAX_KEPT_BYTES, TarMembers
from test_badinput import assert_within_limits, error_lines, run_measured, sql_rows, run_fed_without_end

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

with open(os.path.join(REAL, "expected.json")) as _f:
    REAL_EXPECTED = json.load(_f)

TRANSPORTS_TEXT = (
    "valid: docker-archive:, oci-archive:, oci:, dir:, docker-daemon:, containers-storage:, docker://, ycr-json:"
)


def collect(spec: str, **ctx):
    notes: list[str] = []
    source = parse_source(spec)
    context = Context(source.kind, source.location, note=notes.append, **ctx)
    items = list(source.records(context))
    return [i for i in items if isinstance(i, ImageRecord)], [i for i in items if isinstance(i, SourceError)], notes


def save(tag: str, layer: bytes = b"layer") -> dict[str, bytes]:
    return classic_save_files([{"tags": [tag], "layers": [layer], "created": "2024-05-01T12:00:00Z"}])


def layout_files(ref: str) -> tuple[dict[str, bytes], dict]:
    blobs = Blobs()
    manifest = blobs.image(layers=(ref.encode(),))
    return blobs.layout_files([named(manifest, containerd=ref)]), manifest


def blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":")[1]


def gzip_tar(members: list[tuple[str, bytes]], repeat: list[tuple[str, int, bytes]] = ()) -> bytes:
    """A gzip tar of `members`, then of members (name, size, fill) whose data repeats one byte.

    gzip members concatenate, so a large repeated body is compressed once: a 1.6 GB stream costs
    a second to build and 1.6 MB to hold."""
    out = [
        gzip.compress(
            b"".join(_header(name, len(data)) + data + b"\0" * (-len(data) % 512) for name, data in members), mtime=0
        )
    ]
    bodies: dict[tuple[int, bytes], bytes] = {}
    for name, size, fill in repeat:
        out.append(gzip.compress(_header(name, size), mtime=0))
        if (size, fill) not in bodies:
            body = b"{" + fill * (size - 1) + b"\0" * (-size % 512)
            bodies[size, fill] = gzip.compress(body, compresslevel=9, mtime=0)
        out.append(bodies[size, fill])
    out.append(gzip.compress(b"\0" * 1024, mtime=0))
    return b"".join(out)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    return info.tobuf(format=tarfile.GNU_FORMAT)


def hexname(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest() + ".json"


def one_line_messages(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    stray = [line for line in lines if not line.startswith("imgdex: ")]
    assert not stray, f"lines that are not `imgdex: ` messages: {stray!r}\n{stderr}"
    return lines


# ---------------------------------------------------------------------------------------------
# 1. A streaming pass keeps only what can be referenced, within a budget


def test_member_bomb_with_other_names_is_not_kept(tmp_path):
    """200 members of 8 MiB that start with `{`, named like nothing a manifest refers to, beside a
    good docker save: the image indexes and the members are never held."""
    good = save("registry.example/good/app:v1")
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip_tar(list(good.items()), [(f"junk/{i:04d}", 8 << 20, b" ") for i in range(200)]))
    assert path.stat().st_size < 2_000_000

    run = run_measured(["index", str(path), "--store", str(tmp_path / "store")])

    assert_within_limits(run)
    assert run.code == 0, run.stderr
    assert "indexed 1 images, 0 failed" in run.stdout


def test_member_bomb_with_config_names_stops_at_the_budget(tmp_path):
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(
        gzip_tar(list(save("registry.example/good/app:v1").items()), [(hexname(i), 8 << 20, b" ") for i in range(200)])
    )

    run = run_measured(["index", str(path), "--store", str(tmp_path / "store")])

    assert_within_limits(run)
    [line] = error_lines(run.stderr)
    assert f"more than {MAX_KEPT_BYTES} bytes of members that may be manifests or configs" in line


def test_a_member_written_again_counts_once(tmp_path):
    """A tar may hold a name twice (the later wins): 20 copies of 4 MiB stay within 64 MiB."""
    config = save("registry.example/good/app:v1")
    path = tmp_path / "again.tar.gz"
    path.write_bytes(gzip_tar(list(config.items()), [(hexname(0), 4 << 20, b" ") for _ in range(20)]))
    records, errors, _ = collect(str(path))
    assert len(records) == 1 and not errors


def test_streaming_keeps_json_only_under_names_that_can_be_referenced(tmp_path):
    doc = b'{"a": 1}'
    hex64 = "ab" * 32
    members = [
        ("manifest.json", b"[]"),
        ("index.json", doc),
        (f"{hex64}.json", doc),
        (f"sha256:{hex64}", doc),
        (f"blobs/sha256/{hex64}", doc),
        (f"{hex64}/json", doc),
        ("notes/readme.json", doc),
    ]
    path = tmp_path / "names.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes(dict(members)), mtime=0))
    archive = TarMembers.open(str(path))
    for name in ("manifest.json", "index.json", f"{hex64}.json", f"sha256:{hex64}", f"blobs/sha256/{hex64}"):
        assert archive.read(name, MAX_JSON_BYTES, "config") in (doc, b"[]")
    for name in (f"{hex64}/json", "notes/readme.json"):
        assert archive.size(name) == len(doc)
        with pytest.raises(
            SourceError, match="was not kept: a compressed or piped archive keeps only members named like"
        ):
            archive.read(name, MAX_JSON_BYTES, "config")
    # An uncompressed tar file is read by seeking: any member can be read.
    plain = tmp_path / "names.tar"
    plain.write_bytes(tar_bytes(dict(members)))
    assert TarMembers.open(str(plain)).read("notes/readme.json", MAX_JSON_BYTES, "config") == doc


def test_member_table_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(tarball, "MAX_MEMBERS", 10)
    files = {f"layers/{i}/layer.tar": b"x" for i in range(11)}
    for path in (write_tar(str(tmp_path / "many.tar"), files), str(tmp_path / "many.tar.gz")):
        if path.endswith(".gz"):
            (tmp_path / "many.tar.gz").write_bytes(gzip.compress(tar_bytes(files), mtime=0))
        with pytest.raises(SourceError, match="more than 10 members"):
            TarMembers.open(path)


def test_huge_pax_header_is_refused_unread(tmp_path):
    """tarfile reads a pax header whole: a 2 MiB one (real ones are a few hundred bytes) is refused."""
    files = save("registry.example/good/app:v1")
    big = tarfile.TarInfo("notes.txt")
    big.pax_headers = {"comment": "x" * (2 << 20)}
    path = tmp_path / "pax.tar"
    path.write_bytes(tar_bytes(files, [big]))
    for target in (path, tmp_path / "pax.tar.gz"):
        if target.suffix == ".gz":
            target.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
        with pytest.raises(SourceError, match=r"extended header of \d+ bytes .*over the 1048576-byte limit"):
            TarMembers.open(str(target))


def _members_tar(members: list[tuple[str, bytes]]) -> bytes:
    """ustar members without the end-of-archive blocks, for more to follow."""
    buffer = io.BytesIO()
    tar = tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT)
    for name, body in members:
        info = tarfile.TarInfo(name)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def _plain_and_gzip(tmp_path, name: str, data: bytes) -> list[str]:
    (tmp_path / f"{name}.tar").write_bytes(data)
    (tmp_path / f"{name}.tar.gz").write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
    return [str(tmp_path / f"{name}.tar"), str(tmp_path / f"{name}.tar.gz")]


def _pax_member(name: str, kind: bytes, records: bytes) -> bytes:
    """A pax header of `records` (tarfile.XHDTYPE or XGLTYPE), then an empty directory `name`."""
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = kind
    pax.size = len(records)
    entry = tarfile.TarInfo(name)
    entry.type = tarfile.DIRTYPE
    return pax.tobuf(tarfile.USTAR_FORMAT) + records + b"\0" * (-len(records) % 512) + entry.tobuf(tarfile.USTAR_FORMAT)


def test_pax_headers_have_a_budget_per_archive(tmp_path, monkeypatch):
    """tarfile parses pax records one at a time (~85 ms for a MiB of tiny ones), and applies a
    global header's records to every member after it: small gzips could cost minutes."""
    monkeypatch.setattr(tarball, "MAX_EXTENDED_BYTES", 256 << 10)
    tiny = b"9 a=bbbb\n" * ((64 << 10) // 9)  # 64 KiB, 7,281 records
    extended = b"".join(_pax_member(f"d{i}", tarfile.XHDTYPE, tiny) for i in range(8))
    distinct = b"".join(b"%d k%05d=\n" % (len(b"k%05d" % i) + 5, i) for i in range(1000))  # 10 KiB, 1,000 keys
    global_once = _pax_member("g", tarfile.XGLTYPE, distinct) + b"".join(
        _pax_member(f"d{i}", tarfile.XHDTYPE, b"") for i in range(40)
    )
    for name, body in (("extended", extended), ("global", global_once)):
        for path in _plain_and_gzip(tmp_path, name, body + b"\0" * 1024):
            with pytest.raises(SourceError, match=r"extended headers over the 262144-byte limit for an archive"):
                TarMembers.open(path)
    # pax headers as real archives have them, for long names, stay far within the default bound.
    files = save("registry.example/pax/app:v1")
    named_long = [tarfile.TarInfo(f"{'d' * 120}/{i:05d}") for i in range(200)]
    for info in named_long:
        info.type = tarfile.DIRTYPE
        info.pax_headers = {"comment": "c" * 300}
    for path in _plain_and_gzip(tmp_path, "long-names", tar_bytes(files, named_long)):
        assert len(collect(path)[0]) == 1


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    size = len(body) + 1
    while len(str(size)) + len(body) != size:
        size += 1
    return str(size).encode() + body


@pytest.mark.parametrize(
    "records, kind",
    [
        ([(b"hdrcharset", b"\xff\xfe"), (b"path", b"zz")], tarfile.REGTYPE),  # tarfile: UnicodeDecodeError
        ([(b"size", str(2**63).encode())], b"Q"),  # tarfile: ValueError from seek
        ([(b"size", b"-100000")], tarfile.REGTYPE),  # tarfile: seeks before the start, EINVAL
        (b"99999999999999999999999 size=1\n", tarfile.REGTYPE),  # tarfile: OverflowError slicing the record
    ],
    ids=["hdrcharset", "size-past-int64", "negative-size", "record-length-past-ssize_t"],
)
def test_pax_headers_tarfile_trips_over_are_one_line_and_the_other_archives_land(tmp_path, records, kind, request):
    """Plain tars are scanned by tarfile where ustar.scan cannot: what it raises other than its
    own TarError is the archive's fault, not a reason to lose the run."""
    good = write_tar(str(tmp_path / "good.tar"), save("registry.example/pax/good:v1"))
    pax = records if isinstance(records, bytes) else b"".join(_pax_record(key, value) for key, value in records)
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = len(pax)
    member = tarfile.TarInfo("zz")
    member.type = kind
    head = header.tobuf(tarfile.USTAR_FORMAT) + pax + b"\0" * (-len(pax) % 512) + member.tobuf(tarfile.USTAR_FORMAT)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(_members_tar(list(save("registry.example/pax/bad:v1", b"other").items())) + head + b"\0" * 1024)
    store = str(tmp_path / "store")
    run = run_measured(["index", "--store", store, f"docker-archive:{bad}", good])
    assert run.code == 1, run.stderr
    [line] = one_line_messages(run.stderr)
    # A size past int64 is a pax record Go's reader refuses, said before tarfile trips over it.
    said = "invalid tar header: member 'zz'" if "past-int64" in request.node.name else "not a readable tar archive ("
    assert line.startswith(f"imgdex: {bad}: {said}") and "Traceback" not in run.stderr
    assert "indexed 1 images, 1 failed" in run.stdout
    assert sql_rows(store, "SELECT name FROM images") == [{"name": "pax/good"}]


def test_a_negative_member_size_after_the_metadata_is_named_as_such(tmp_path):
    """A base-256 size field holds negative numbers; tarfile stepped back and ended the archive
    there, which read as an archive without its manifest."""
    files = save("registry.example/neg/app:v1")
    data = bytearray(tar_bytes(files, []))
    found = {info.name: info.offset for info in tarfile.open(fileobj=io.BytesIO(bytes(data)))}
    last = max(found.values())
    data[last + 124 : last + 136] = b"\xff" * 12  # -1 in base-256
    header = data[last : last + 512]
    header[148:156] = b" " * 8
    data[last + 148 : last + 156] = b"%06o\0 " % sum(header)
    for path in _plain_and_gzip(tmp_path, "negative", bytes(data)):
        with pytest.raises(SourceError, match=f"member header at offset {last} gives a negative size"):
            TarMembers.open(path)


def test_a_run_of_extended_headers_is_refused(tmp_path):
    """tarfile reads the headers before a member by recursion: thousands of them in a row would
    end in RecursionError, a traceback."""
    chain = b"".join(_pax_member("d", tarfile.XHDTYPE, b"11 a=bbbbb\n")[:1024] for _ in range(3000))
    body = _members_tar(list(save("registry.example/pax/app:v1").items()))
    end = _pax_member("d", tarfile.XHDTYPE, b"") + b"\0" * 1024
    for path in _plain_and_gzip(tmp_path, "chain", body + chain + end):
        with pytest.raises(SourceError, match="more than 8 extended headers in a row"):
            TarMembers.open(path)


def test_every_header_counts_toward_the_member_limit(tmp_path, monkeypatch):
    """Directories and names written again are read as any member is."""
    monkeypatch.setattr(tarball, "MAX_MEMBERS", 10)
    directories = [tarfile.TarInfo(f"d{i}") for i in range(11)]
    for info in directories:
        info.type = tarfile.DIRTYPE
    for data in (tar_bytes({}, directories), tar_bytes({}, [tarfile.TarInfo("again")] * 11)):
        for path in _plain_and_gzip(tmp_path, "many", data):
            with pytest.raises(SourceError, match="more than 10 members"):
                TarMembers.open(path)


@pytest.mark.parametrize("packing", ["tar.gz", "tar.zst", "stdin", "verify"])
def test_a_member_longer_than_the_stream_ends_it_at_once(tmp_path, packing):
    """A member whose pax header says it holds 2**62 bytes, after a good docker save: in one
    streaming pass tarfile would skip it block by block past the end of the input, forever.
    (10**30, past int64, is a pax record Go refuses, and refused as such.)"""
    lying = tarfile.TarInfo("x")
    lying.size = 5
    lying.pax_headers = {"size": str(2**62)}
    data = tar_bytes(save("registry.example/lying/app:v1"), [lying])
    files, _ = layout_files("registry.example/good/app:v1")
    write_dir(str(tmp_path / "good"), files)
    path = tmp_path / f"lying.{packing}"
    if packing == "tar.zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(gzip.compress(data, mtime=0))
    store = ["--store", str(tmp_path / "store")]
    if packing == "stdin":
        run = run_measured(["index", "-", *store], stdin_data=data, timeout=60)
        where = "<stdin>"
    else:
        verify = ["--verify"] if packing == "verify" else []
        run = run_measured(["index", f"oci:{tmp_path / 'good'}", str(path), *store, *verify], timeout=60)
        where = str(path)
        assert "indexed 1 images, 1 failed" in run.stdout
    assert_within_limits(run)
    assert error_lines(run.stderr) == [f"imgdex: {where}: truncated tar: member 'x' ends past the end of the archive"]


SAMPLE = os.path.join(ROOT, "data", "samples", "docker-save-app.tar")
PACKINGS = ["tar", "tar.gz", "tar.zst", "tar.xz", "tar.bz2"]


def _compressed(data: bytes, packing: str) -> bytes:
    if packing == "tar.gz":
        return gzip.compress(data, mtime=0)
    if packing == "tar.zst":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    if packing == "tar.xz":
        return lzma.compress(data)
    if packing == "tar.bz2":
        return bz2.compress(data)
    return data


def _index_everywhere(tmp_path, data: bytes, packing: str):
    """`imgdex index` of `data` packed as `packing`, named as a file and inside a folder in one run,
    then piped on standard input: (file, file in the folder, named run, piped run), each run
    checked for exit code 1 and one-line messages only."""
    return index_packed_everywhere(tmp_path, _compressed(data, packing), packing)


def index_packed_everywhere(tmp_path, packed: bytes, packing: str):
    """`_index_everywhere` of bytes already packed, `bad.{packing}` once written."""
    file = tmp_path / f"bad.{packing}"
    file.write_bytes(packed)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / file.name).write_bytes(packed)
    named = run_measured(["index", str(file), str(folder), "--store", str(tmp_path / "a")], timeout=60)
    piped = run_measured(["index", "-", "--store", str(tmp_path / "b")], stdin_data=packed, timeout=60)
    for run in (named, piped):
        assert run.code == 1, run.stderr
        one_line_messages(run.stderr)
    return str(file), str(folder / file.name), named, piped


def _sample_with_manifest(manifest: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(SAMPLE) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for info in src:
            data = src.extractfile(info).read() if info.isreg() else None
            if info.name == "manifest.json":
                info, data = copy.copy(info), manifest
                info.size = len(data)
            dst.addfile(info, None if data is None else io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("packing", PACKINGS)
def test_a_manifest_json_of_the_wrong_type_is_named_alike_in_every_packing(tmp_path, packing):
    """A compressed or piped archive kept manifest.json only when it started like an object or an
    array, and said `manifest.json 'manifest.json' is not JSON` of the others."""
    reason = "manifest.json is not a list of objects"
    for number, manifest in enumerate([b"null", b"5", b'"x"', b"{}"]):
        (tmp_path / str(number)).mkdir()
        file, in_folder, named, piped = _index_everywhere(
            tmp_path / str(number), _sample_with_manifest(manifest), packing
        )
        assert error_lines(named.stderr) == [f"imgdex: {file}: {reason}", f"imgdex: {in_folder}: {reason}"], manifest
        assert error_lines(piped.stderr) == [f"imgdex: <stdin>: {reason}"], manifest


@pytest.mark.parametrize("packing", PACKINGS)
def test_a_manifest_blob_of_the_wrong_json_type_is_named_alike_in_every_packing(tmp_path, packing):
    """An OCI archive whose manifest blob is a JSON scalar: a compressed or piped archive kept a
    blob only when it started like an object or an array, and said `blob '…' is not JSON` of `5`."""
    for number, manifest in enumerate([b"5", b"-1", b'"x"', b"null", b"true", b"false"]):
        digest = digest_of(manifest)
        descriptor = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest)}
        index = {"schemaVersion": 2, "manifests": [descriptor]}
        data = tar_bytes(
            {
                "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
                "index.json": dumps(index),
                f"blobs/sha256/{digest.split(':')[1]}": manifest,
            }
        )
        (tmp_path / str(number)).mkdir()
        file, in_folder, named, piped = _index_everywhere(tmp_path / str(number), data, packing)
        reason = f"manifest {digest} is not a JSON object"
        assert error_lines(named.stderr) == [f"imgdex: {file}: {reason}", f"imgdex: {in_folder}: {reason}"], manifest
        assert error_lines(piped.stderr) == [f"imgdex: <stdin>: {reason}"], manifest


@pytest.mark.parametrize("packing", PACKINGS)
def test_a_tar_cut_inside_a_member_header_says_so_in_every_packing(tmp_path, packing):
    """The first 1,636 bytes of a docker save: the second member header is cut after 100 bytes. A
    stream of it, compressed or piped, was read as a tar with no manifest.json."""
    with open(SAMPLE, "rb") as f:
        data = f.read(1636)
    file, in_folder, named, piped = _index_everywhere(tmp_path, data, packing)
    where = "the file" if packing == "tar" else "the uncompressed archive"
    reason = f"truncated tar: {where} ends inside the member header at offset 1536"
    assert error_lines(named.stderr) == [f"imgdex: {file}: {reason}", f"imgdex: {in_folder}: {reason}"]
    where = "the archive" if packing == "tar" else "the uncompressed archive"
    reason = f"truncated tar: {where} ends inside the member header at offset 1536"
    assert error_lines(piped.stderr) == [f"imgdex: <stdin>: {reason}"]


def test_an_empty_tar_holds_no_image_in_every_packing(tmp_path):
    """Ten KiB of zero blocks is a tar with no members (tar(1) lists it); plain, it was `not a tar
    archive`, while compressed it held no image. A folder skips it with
    a note, as any tar holding no image."""
    reason = "not an image archive (no manifest.json or index.json)"
    for packing in PACKINGS:
        (tmp_path / packing).mkdir()
        file, in_folder, named, piped = _index_everywhere(tmp_path / packing, bytes(10240), packing)
        folder = os.path.dirname(in_folder)
        assert error_lines(named.stderr) == [
            f"imgdex: {file}: {reason}",
            f"imgdex: {folder}: directory is not an image layout (no index.json) and holds no image archives",
        ]
        assert f"imgdex: note: {in_folder}: {reason}; skipped" in named.stderr.splitlines()
        assert error_lines(piped.stderr) == [f"imgdex: <stdin>: {reason}"]


def test_index_json_in_a_stream_is_kept_once(tmp_path):
    """index.json may be 256 MiB: a streaming pass holds it once, as read, and lets go of an
    earlier index.json before reading one written again."""
    import tracemalloc

    files, manifest = layout_files("registry.example/index/app:v1")
    index = files.pop("index.json")
    size = 16 << 20
    padded = index[:-1] + b" " * (size - len(index)) + index[-1:]
    data = _members_tar([*files.items(), *[("index.json", padded)] * 3]) + b"\0" * 1024
    path = tmp_path / "index.tar.gz"
    path.write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
    del data, padded
    tracemalloc.start()
    try:
        archive = TarMembers.open(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size * 3 // 2, f"peak {peak >> 20} MiB for an index.json of {size >> 20} MiB"
    assert sum(len(piece) for piece in archive.chunks("index.json", tarball.MAX_INDEX_BYTES, "index.json")()) == size
    records, errors, _ = collect(str(path))
    assert [r.digest for r in records] == [manifest["digest"]] and not errors


# ---------------------------------------------------------------------------------------------
# 2. Only regular files are read


def _layout_with(tmp_path, which: str, make) -> str:
    files, manifest = layout_files("registry.example/special/app:v1")
    root = tmp_path / f"layout-{which}"
    if which == "layer":
        name = blob_name(json.loads(files[blob_name(manifest["digest"])])["layers"][0]["digest"])
    elif which == "config":
        name = blob_name(json.loads(files[blob_name(manifest["digest"])])["config"]["digest"])
    elif which == "manifest":
        name = blob_name(manifest["digest"])
    else:
        name = which
    del files[name]
    write_dir(str(root), files)
    make(str(root / name))
    return str(root)


def _char_device(path: str) -> None:
    try:
        os.mknod(path, 0o600 | 0o020000, os.makedev(1, 5))  # like /dev/zero
    except PermissionError:
        pytest.skip("making a device node needs root")


@pytest.mark.parametrize("which", ["manifest", "config", "layer", "index.json", "oci-layout"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_layout_file_that_is_not_regular_is_refused(tmp_path, which, kind):
    """Refused from a stat before opening: the tests/badinput corpus bounds the same in a process."""
    root = _layout_with(tmp_path, which, os.mkfifo if kind == "fifo" else _char_device)
    try:
        records, errors, _ = collect(root)
    except SourceError as exc:
        errors = [exc]
    label = "blob" if which in ("manifest", "config", "layer") else which
    shown = "named pipe" if kind == "fifo" else "character device"
    assert [e.reason for e in errors] == [f"{label} is not a regular file ({shown})"]


def _link_chain(root, name: str, links: int) -> str:
    """Move `name` (below `root`) aside and put a chain of `links` symlinks, all inside `root`, in
    its place; the path of `name`."""
    path = os.path.join(str(root), name)
    os.rename(path, os.path.join(str(root), "real"))
    chain = os.path.join(str(root), "chain")
    os.mkdir(chain)
    for i in range(links):
        os.symlink(f"l{i + 1}", os.path.join(chain, f"l{i}"))
    os.symlink("../real", os.path.join(chain, f"l{links}"))
    os.symlink(os.path.relpath(os.path.join(chain, "l0"), os.path.dirname(path)), path)
    return path


@pytest.mark.parametrize("which", ["index.json", "manifest", "blobs/sha256"])
@pytest.mark.parametrize("links", [50, 1200])
def test_a_chain_of_links_inside_a_layout_is_one_error(tmp_path, which, links):
    """The kernel follows at most 40 links; os.path.realpath, which tells whether a link stays
    inside the layout, follows each by recursion, and a chain of 1,200 ended the run."""
    files, manifest = layout_files("registry.example/chain/app:v1")
    root = tmp_path / "layout"
    write_dir(str(root), files)
    path = _link_chain(root, blob_name(manifest["digest"]) if which == "manifest" else which, links)
    try:
        records, errors, _ = collect(str(root))
    except SourceError as exc:
        records, errors = [], [exc]
    assert not records
    assert [e.reason for e in errors] == ["Too many levels of symbolic links"]
    assert errors[0].where.startswith(path)  # the folder, or for a chain the kernel refuses, the blob below it


def test_a_chain_of_links_fails_its_layout_and_the_run_goes_on(tmp_path):
    files, _ = layout_files("registry.example/chain/app:v1")
    root = tmp_path / "layout"
    write_dir(str(root), files)
    _link_chain(root, "index.json", 1200)
    good = write_tar(str(tmp_path / "good.tar"), save("registry.example/chain/good:v1"))
    run = run_measured(["index", str(root), good, "--store", str(tmp_path / "store")])
    assert run.code == 1, run.stderr
    assert one_line_messages(run.stderr) == [f"imgdex: {root / 'index.json'}: Too many levels of symbolic links"]
    assert "indexed 1 images, 1 failed" in run.stdout


@pytest.mark.parametrize("prefix", ["", "docker-archive:", "oci-archive:"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_archive_path_that_is_not_regular_is_refused(tmp_path, prefix, kind):
    path = str(tmp_path / "archive.tar")
    (os.mkfifo if kind == "fifo" else _char_device)(path)
    shown = "named pipe" if kind == "fifo" else "character device"
    with pytest.raises(SourceError) as caught:
        collect(prefix + path)
    assert str(caught.value) == f"{path}: not a regular file ({shown})"


@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_an_archive_removed_or_replaced_while_it_is_read_is_read_as_found(tmp_path, change):
    """Members are read from the file their headers were found in. Opened again by its path, a
    file removed meanwhile ended the run with a traceback, and one replaced gave another file's
    bytes at the offsets of this one."""
    path = write_tar(str(tmp_path / "a.tar"), save("registry.example/first/app:v1"))
    source = parse_source(path)
    items = source.records(Context(source.kind, source.location))  # the headers are read here
    if change == "removed":
        os.unlink(path)
    else:
        os.replace(write_tar(str(tmp_path / "b.tar"), save("registry.example/second/app:v1", b"other")), path)
    assert [(type(item).__name__, getattr(item, "name", str(item))) for item in items] == [("ImageRecord", "first/app")]


def test_dev_null_and_directories_as_archives_are_refused(tmp_path):
    with pytest.raises(SourceError, match=r"not a regular file \(character device\)"):
        collect("/dev/null")
    with pytest.raises(SourceError, match=r"not a regular file \(character device\)"):
        collect("docker-archive:/dev/null")
    with pytest.raises(SourceError, match=r"not a regular file \(directory\)"):
        collect(f"oci-archive:{tmp_path}")


# ---------------------------------------------------------------------------------------------
# 3. A top-level index.json over the 8 MiB manifest bound


def big_layout(root: str, count: int) -> list[dict]:
    """A layout whose index.json names `count` images; they share one manifest (as tags may)."""
    blobs = Blobs()
    manifest = blobs.image()
    files = blobs.layout_files([])
    entry = {key: manifest[key] for key in ("mediaType", "digest", "size")}
    parts = []
    for i in range(count):
        annotations = {
            "io.containerd.image.name": f"registry.example/big/app{i}:v1",
            "org.opencontainers.image.ref.name": f"v{i}",
        }
        parts.append(json.dumps(dict(entry, annotations=annotations), separators=(",", ":")))
    files["index.json"] = b'{"schemaVersion":2,"manifests":[' + ",".join(parts).encode() + b"]}"
    write_dir(root, files)
    return files


# VmHWM, not ru_maxrss: the latter starts from the parent's (pytest's) RSS at fork, even across exec.
SOURCE_ONLY = """
import re, sys
from indexer.sources import parse_source
from indexer.sources.parse import Context
source = parse_source(sys.argv[1])
names = set()
for item in source.records(Context(source.kind, source.location)):
    assert not isinstance(item, Exception), item
    names.add(item.name)
with open("/proc/self/status") as f:
    peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) * 1024
print(len(names), peak)
"""


def test_layout_of_100000_images_indexes(tmp_path):
    import subprocess
    import sys

    root = str(tmp_path / "big")
    files = big_layout(root, 100_000)
    assert len(files["index.json"]) > 3 * MAX_JSON_BYTES

    # Every image comes out of the source, in memory that does not follow the index.
    proc = subprocess.run([sys.executable, "-c", SOURCE_ONLY, root], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    count, peak = map(int, proc.stdout.split())
    assert count == 100_000
    assert peak < 200 << 20

    # Through the command, the whole index is read and checked; the image asked for lands.
    run = run_measured(["index", f"oci:{root}:v99999", "--store", str(tmp_path / "store")])
    assert_within_limits(run)
    assert run.code == 0 and "indexed 1 images, 0 failed" in run.stdout, run.stderr


@pytest.mark.parametrize("packing", ["tar", "tar.gz", "stdin"])
def test_large_index_in_an_archive(tmp_path, packing):
    root = str(tmp_path / "big")
    files = big_layout(root, 40_000)
    assert len(files["index.json"]) > MAX_JSON_BYTES
    data = tar_bytes(files)
    path = tmp_path / f"big.{packing}"
    path.write_bytes(gzip.compress(data, compresslevel=1, mtime=0) if packing != "tar" else data)
    spec = "oci-archive:-:v39999" if packing == "stdin" else f"oci-archive:{path}:v39999"
    run = run_measured(
        ["index", spec, "--store", str(tmp_path / "store")],
        stdin_data=path.read_bytes() if packing == "stdin" else None,
    )
    assert_within_limits(run)
    assert run.code == 0 and "indexed 1 images, 0 failed" in run.stdout, run.stderr


def test_large_index_is_checked_whole_before_any_image(tmp_path, monkeypatch):
    """A document that turns bad after its descriptors (schemaVersion last, a cut) lands nothing."""
    monkeypatch.setattr(layout, "MAX_JSON_BYTES", 16)  # stream even a small index
    blobs = Blobs()
    manifest = blobs.image()
    files = blobs.layout_files([named(manifest, containerd="registry.example/a/b:1")])
    good = json.loads(files["index.json"])
    for text, message in [
        (json.dumps({"manifests": good["manifests"], "schemaVersion": 3}), "unsupported schemaVersion 3"),
        (json.dumps(good)[:-3], "index.json is not valid JSON"),
        (json.dumps(good) + " x", r"index.json is not valid JSON \(Extra data"),
        (json.dumps({"manifests": good["manifests"], "manifests": {}}), "manifests is not a list"),  # noqa: F601
    ]:
        files["index.json"] = text.encode()
        write_dir(str(tmp_path), files)
        with pytest.raises(SourceError, match=message):
            collect(str(tmp_path))
    files["index.json"] = json.dumps(good).encode()
    write_dir(str(tmp_path), files)
    records, errors, _ = collect(str(tmp_path))
    assert [r.digest for r in records] == [manifest["digest"]] and not errors


@pytest.mark.parametrize("streamed", [False, True], ids=["parsed-at-once", "streamed"])
def test_an_index_json_without_manifests_is_no_index(tmp_path, monkeypatch, streamed):
    """`{}`, or a manifest copied over index.json, used to index nothing, exit 0 and no word. A
    null list (Go writes a nil slice so) is still an empty layout."""
    if streamed:
        monkeypatch.setattr(layout, "MAX_JSON_BYTES", 16)
    blobs = Blobs()
    manifest = blobs.image()
    files = blobs.layout_files([named(manifest, containerd="registry.example/a/b:1")])
    digest = manifest["digest"].split(":")[1]
    for text in ("{}", '{"schemaVersion": 2}', files[f"blobs/sha256/{digest}"].decode()):
        files["index.json"] = text.encode()
        write_dir(str(tmp_path), files)
        with pytest.raises(SourceError, match=r"^.*: index.json is not an image index \(it has no manifests key\)$"):
            collect(str(tmp_path))
    files["index.json"] = b'{"schemaVersion": 2, "manifests": null}'
    write_dir(str(tmp_path), files)
    records, errors, _ = collect(str(tmp_path))
    assert records == [] and errors == []


def test_an_index_of_many_tiny_values_is_streamed_in_bounded_memory(monkeypatch):
    """Four million `0,` fit in 8 MiB and would take ~250 MB as objects: such an index is read one
    value at a time, as a large one is, and says what parsing it at once would say."""
    import tracemalloc

    data = b'{"schemaVersion":2,"manifests":[' + b"0," * (1 << 19) + b"0]}"  # 1 MiB, 512Ki values
    monkeypatch.setattr(layout, "MAX_PARSED_BYTES", 8 << 20)
    index = IndexJson("index.json", len(data), lambda: iter([data[i : i + 65536] for i in range(0, len(data), 65536)]))
    tracemalloc.start()
    try:
        count = sum(1 for raw, _ in index.descriptors() if raw == 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == (1 << 19) + 1 == index.count()
    assert index._small is None and peak < 8 << 20  # parsed at once: ~30 MB
    # a plain index of real descriptors is still parsed at once
    plain = json.dumps({"schemaVersion": 2, "manifests": [{"digest": "sha256:" + "a" * 64, "size": 1}]}).encode()
    small = IndexJson("index.json", len(plain), lambda: iter([plain]))
    assert small.count() == 1 and small._small is not None


@pytest.mark.parametrize("inside", ["manifests", "other-key"])
def test_one_value_of_a_streamed_index_of_too_many_values_is_refused_before_it_is_parsed(tmp_path, inside):
    """A 12 MiB index.json (so streamed) whose one descriptor, or one other member, is a list of
    four million empty lists: parsed, it would take ~300 MB. It is refused as its text is read,
    with one line; the images of other sources land."""
    bomb = b"[" + b"[]," * (4 << 20) + b"[]]"
    blobs = Blobs()
    good = named(blobs.image(), "registry.example/bomb/app:v1")
    files = blobs.layout_files([good])
    if inside == "manifests":
        files["index.json"] = b'{"schemaVersion":2,"manifests":[' + dumps(good) + b"," + bomb + b"]}"
    else:
        files["index.json"] = b'{"schemaVersion":2,"x":' + bomb + b',"manifests":[' + dumps(good) + b"]}"
    bad = write_dir(str(tmp_path / "bad"), files)
    other = write_tar(str(tmp_path / "other.tar"), save("registry.example/bomb/other:v1"))
    store = str(tmp_path / "store")
    run = run_measured(["index", "--store", store, f"oci:{bad}", other])
    assert run.code == 1, run.stderr
    [line] = one_line_messages(run.stderr)
    assert line == f"imgdex: {bad}: index.json holds a value of more than {jsonstream.MAX_PARSED_VALUES} values"
    assert sql_rows(store, "SELECT name FROM images") == [{"name": "bomb/other"}]
    assert run.peak_rss < 200 << 20, run.peak_rss


def test_a_streamed_value_at_the_bound_is_read_and_one_past_it_refused(monkeypatch):
    """The bound counts the value's own separators and brackets, not its neighbours': a large
    descriptor of exactly the most values allowed, among many plain ones, is read."""
    wide = {"digest": "sha256:" + "a" * 64, "size": 1, "annotations": {f"k{i}": "v" * 3000 for i in range(500)}}
    plain = [{"digest": "sha256:" + "b" * 64, "size": 2}] * 20000
    data = json.dumps({"manifests": [*plain, wide, *plain]}).encode()
    values = sum(json.dumps(wide).count(mark) for mark in ",:[{") + 1
    assert len(json.dumps(wide)) > jsonstream.GROW

    def elements():
        text = jsonstream.JsonText(iter([data[i : i + 4096] for i in range(0, len(data), 4096)]), "w", "index.json")
        assert text.peek() == "{" and next(text.members()) == "manifests" and text.peek() == "["
        return list(text.elements())

    monkeypatch.setattr(jsonstream, "MAX_PARSED_VALUES", values)
    assert elements() == [*plain, wide, *plain]
    monkeypatch.setattr(jsonstream, "MAX_PARSED_VALUES", values - 1)
    with pytest.raises(SourceError, match=f"^w: index.json holds a value of more than {values - 1} values$"):
        elements()


def test_values_behind_no_separator_count(monkeypatch):
    """`[{}]` is two values, one comma apart from the next: counted by separators alone, a value of
    three times the bound would be parsed."""
    bound = 3000
    monkeypatch.setattr(jsonstream, "GROW", 1024)
    data = b"[" + b",".join([b"[{}]"] * bound) + b"]"  # 2 * bound + 1 values, bound - 1 commas
    pieces = iter([data[i : i + 512] for i in range(0, len(data), 512)])
    text = jsonstream.JsonText(pieces, "w", "it", max_values=bound)
    with pytest.raises(SourceError, match=f"^w: it holds a value of more than {bound} values$"):
        text.value()


@pytest.mark.parametrize("packing", ["oci", "oci-archive.tar.gz", "oci --shard 1/2"])
def test_a_manifest_of_millions_of_tiny_values_is_refused_before_it_is_parsed(tmp_path, packing):
    """An 8 MiB manifest of `{}` layers, its digest right, is 2.8 million objects once parsed
    (~300 MB, more with several walks at once): refused by its count, as a config of that kind is,
    by the walk and by the passes that group descriptors for shards. The other image lands."""
    blobs = Blobs()
    good = named(blobs.image(), "registry.example/many/good:v1")
    count = (MAX_JSON_BYTES - 100) // 3
    data = b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","layers":[' + b"{}," * count + b"{}]}"
    bad = blobs.add(data, OCI_MANIFEST)
    files = blobs.layout_files([named(bad, "registry.example/many/bad:v1"), good])
    if packing.startswith("oci-archive"):
        path = tmp_path / "layout.tar.gz"
        path.write_bytes(gzip.compress(tar_bytes(files), compresslevel=1))
        args = [str(path)]
    else:
        args = [f"oci:{write_dir(str(tmp_path / 'layout'), files)}", *packing.split()[1:]]
    store = str(tmp_path / "store")
    shards = [["--shard", "1/2"], ["--shard", "2/2"]] if "--shard" in packing else [[]]
    runs = [run_measured(["index", "--store", store, *args[:1], *shard]) for shard in shards]
    lines = [line for run in runs for line in one_line_messages(run.stderr)]
    assert sorted(run.code for run in runs) == [0] * (len(runs) - 1) + [1] and len(lines) == 1, lines
    assert lines[0].endswith(f": manifest {bad['digest']} holds too many values for its {len(data)} bytes")
    assert sql_rows(store, "SELECT name FROM images") == [{"name": "many/good"}]
    assert max(run.peak_rss for run in runs) < 200 << 20


def test_index_over_its_own_bound_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "MAX_INDEX_BYTES", 1000)
    big_layout(str(tmp_path), 50)
    with pytest.raises(SourceError, match=r"index\.json is \d+ bytes, over the 1000-byte limit"):
        collect(str(tmp_path))


json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
index_docs = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.sampled_from([2, 1, None, "2"]),
        "manifests": st.none() | st.lists(json_values, max_size=5) | json_values,
        "annotations": json_values,
    },
)


def _mangle(text: str, cut: int, insert: str) -> str:
    position = cut % (len(text) + 1)
    return text[:position] + insert + text[position:]


@settings(max_examples=300, deadline=None)
@given(
    index_docs,
    st.sampled_from(
        ["", " ", "\n", ",", "]", "}", "x", '"', "\\", "1", "\ud800", "\\ud800", "\ufeff", "e5", "-", "9" * 5000]
    ),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=1, max_value=7),
    st.booleans(),
)
def test_streamed_index_reads_as_json_loads_does(doc, insert, cut, piece, indent):
    """The descriptor-by-descriptor reader agrees with the one-shot parser on any document, cut
    into tiny pieces so every value and error may straddle a boundary."""
    text = _mangle(json.dumps(doc, indent=1 if indent else None), cut, insert)
    data = text.encode("utf-8", "surrogatepass")
    try:
        expected = top_descriptors(data, "index.json")
    except SourceError:
        expected = SourceError
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    index = IndexJson("index.json", len(data), lambda: iter(pieces))
    saved = layout.MAX_JSON_BYTES, jsonstream.GROW, jsonstream._MARGIN
    layout.MAX_JSON_BYTES, jsonstream.GROW, jsonstream._MARGIN = -1, 1, 10
    try:
        got = list(index.descriptors())
    except SourceError:
        got = SourceError
    finally:
        layout.MAX_JSON_BYTES, jsonstream.GROW, jsonstream._MARGIN = saved
    assert got == expected


BIG = "9" * 5000  # more digits than int() converts


def with_big_numbers(doc) -> bytes:
    """`doc` as JSON, its strings "BIG" and "-BIG" written as integers of 5,000 digits."""
    return dumps(doc).replace(b'"BIG"', BIG.encode()).replace(b'"-BIG"', b"-" + BIG.encode())


@pytest.mark.parametrize("streamed", [False, True], ids=["parsed-at-once", "streamed"])
def test_a_number_int_cannot_convert_is_read_past_where_nothing_reads_it(tmp_path, monkeypatch, streamed):
    """Go skips a field it does not know without converting it, so Docker, containerd and skopeo
    read these documents. index.json refused them ("holds a number of more than 4300 digits" when
    streamed, Python's advice to call sys.set_int_max_str_digits() when not), and so did a manifest
    or config the fast path left to the exact parser (nested 500 deep here), where a shallow one was
    read. A size of such a number is out of range, in one line, as any size past int64."""
    if streamed:
        monkeypatch.setattr(layout, "MAX_JSON_BYTES", 16)
    deep = ["BIG"]
    for _ in range(500):
        deep = [deep]
    blobs = Blobs()
    layer = blobs.add(b"layer", OCI_LAYER_GZ)
    config = blobs.add(with_big_numbers({"os": "linux", "architecture": "amd64", "x": deep, "n": "-BIG"}), OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
    good = blobs.add(with_big_numbers({**manifest, "annotations": {"a": "b"}, "x": deep, "y": "BIG"}), OCI_MANIFEST)
    bad = blobs.add(with_big_numbers({**manifest, "layers": [{**layer, "size": "BIG"}], "x": deep}), OCI_MANIFEST)
    files = blobs.layout_files([named(good, containerd="registry.example/a/b:1"), named(bad, "bad")])
    index = json.loads(files["index.json"])
    index["x"] = "-BIG"
    index["manifests"][0]["y"] = {"z": "BIG"}
    files["index.json"] = with_big_numbers(index)
    write_dir(str(tmp_path), files)
    records, errors, _ = collect(str(tmp_path))
    assert [(r.digest, r.platform) for r in records] == [(good["digest"], Platform("linux", "amd64"))]
    assert [str(e).split(": ", 1)[1] for e in errors] == [
        f"manifest {bad['digest']} layers[0] has an invalid size: 999999999999... (5000 digits) "
        "is out of range (0 to 2**63-1)"
    ]


def test_a_blob_path_the_system_refuses_is_one_error(tmp_path):
    # A digest the grammar takes (an algorithm of its own) but no file name can hold, and a blob
    # folder that is a file: each fails its image with the reason, as a missing blob does.
    blobs = Blobs()
    config = blobs.add(dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}), OCI_CONFIG)
    long_layer = {"mediaType": OCI_LAYER_GZ, "digest": "blake3:" + "a" * 300, "size": 3}
    manifest = blobs.add(
        dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [long_layer]}),
        OCI_MANIFEST,
    )
    write_dir(str(tmp_path / "long"), blobs.layout_files([named(manifest, ref_name="registry.example/long:v1")]))
    records, errors, _ = collect(f"oci:{tmp_path / 'long'}")
    assert not records and len(errors) == 1 and f"layer {long_layer['digest']} is missing" in str(errors[0])

    write_dir(
        str(tmp_path / "file"),
        {
            "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
            "index.json": dumps(
                {"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest_of(b"x"), "size": 1}]}
            ),
            "blobs/sha256": b"not a folder",
        },
    )
    records, errors, _ = collect(f"oci:{tmp_path / 'file'}")
    assert not records and [str(e) for e in errors] == [
        f"{tmp_path / 'file' / 'blobs' / 'sha256' / digest_of(b'x').split(':')[1]}: Not a directory"
    ]


def count_reads(monkeypatch) -> dict:
    """Blob reads of layouts, by digest, from now on."""
    reads: dict[str, int] = {}
    original = layout.DirBlobs.read_blob

    def counted(self, digest, limit):
        reads[digest] = reads.get(digest, 0) + 1
        return original(self, digest, limit)

    monkeypatch.setattr(layout.DirBlobs, "read_blob", counted)
    return reads


def test_indexes_that_list_each_other_many_times_are_walked_once_each(tmp_path, monkeypatch):
    """10,000 paths lead to the one image. A child listed again alike yields the same records, and
    an index's children yield the same records whichever path leads to it under the same names:
    every blob is read once, and the walks (counted for the bounds) stay those of the paths."""
    from indexer.sources import parse

    blobs = Blobs()
    top = dict(blobs.image(layers=(b"leaf",)), platform={"os": "linux", "architecture": "amd64"})
    for _ in range(4):
        top = blobs.index([top] * 10)
    write_dir(str(tmp_path / "fan"), blobs.layout_files([named(top, ref_name="registry.example/fan/app:v1")]))
    reads = count_reads(monkeypatch)
    records, errors, _ = collect(f"oci:{tmp_path / 'fan'}")
    assert not errors and len(records) == len({r.id for r in records}) == 5
    assert set(reads.values()) == {1} and len(reads) == 6  # four indexes, the image and its config
    # each level's ten listings are counted as walked: 1 + 4 * 10 walks
    monkeypatch.setattr(parse, "MAX_WALKED", 41)
    assert not collect(f"oci:{tmp_path / 'fan'}")[1]
    monkeypatch.setattr(parse, "MAX_WALKED", 40)
    records, errors, _ = collect(f"oci:{tmp_path / 'fan'}")
    assert [str(e) for e in errors] == [
        f"{tmp_path / 'fan'}: index {top['digest']} leads to more than 40 manifests, counting repeats"
    ]
    assert len(records) == 5  # depth first: every blob was reached before the last repeats


def test_a_wide_index_is_walked_a_bounded_number_of_times(tmp_path, monkeypatch):
    from indexer.sources import parse

    blobs = Blobs()
    top = blobs.index([blobs.image(layers=(b"%d" % i,)) for i in range(300)])
    write_dir(str(tmp_path / "wide"), blobs.layout_files([named(top, ref_name="registry.example/wide/app:v1")]))
    monkeypatch.setattr(parse, "MAX_WALKED", 200)
    records, errors, _ = collect(f"oci:{tmp_path / 'wide'}")
    assert [str(e) for e in errors] == [
        f"{tmp_path / 'wide'}: index {top['digest']} leads to more than 200 manifests, counting repeats"
    ]
    assert len(records) == 200 and {r.kind for r in records} == {"index", "image"}
    monkeypatch.setattr(parse, "MAX_WALKED", 301)  # the index and every child
    records, errors, _ = collect(f"oci:{tmp_path / 'wide'}")
    assert not errors and len({r.id for r in records}) == 301


def test_tags_naming_one_index_read_it_and_its_children_once(tmp_path, monkeypatch):
    """Fifty tags of one repository on one index of 200 images: the index is read and hashed once,
    each image once; every tag is on the index's record. A 2 MB layout of fifty tags on an index
    that lists one image 20,000 times took 52 s when each tag walked the index again."""
    blobs = Blobs()
    index = blobs.index([blobs.image(layers=(b"%d" % i,)) for i in range(200)])
    top = [named(index, ref_name=f"registry.example/many/app:v{i}") for i in range(50)]
    write_dir(str(tmp_path / "many"), blobs.layout_files(top))
    reads = count_reads(monkeypatch)
    records, errors, _ = collect(f"oci:{tmp_path / 'many'}")
    assert not errors and len({r.id for r in records}) == 201
    assert set(reads.values()) == {1} and len(reads) == 1 + 200 * 2
    tags = {tag for r in records if r.digest == index["digest"] for tag in r.tags}
    assert tags == {f"v{i}" for i in range(50)}
    # the same answer as when each tag is its own source
    alone = set()
    for i in (0, 49):
        write_dir(str(tmp_path / f"one{i}"), blobs.layout_files([top[i]]))
        alone |= {r.id for r in collect(f"oci:{tmp_path / f'one{i}'}")[0]}
    assert alone == {r.id for r in records}


def test_an_index_kept_from_an_earlier_descriptor_is_still_checked_against_each(tmp_path):
    """One listing with the wrong size is that listing's error, though the index was read before."""
    blobs = Blobs()
    index = blobs.index([blobs.image(layers=(b"a",))])
    liar = dict(index, size=index["size"] + 1)
    top = [named(index, ref_name="registry.example/k/app:v1"), named(liar, ref_name="registry.example/k/app:v2")]
    write_dir(str(tmp_path / "kept"), blobs.layout_files(top))
    records, errors, _ = collect(f"oci:{tmp_path / 'kept'}")
    assert len(errors) == 1 and f"manifest {index['digest']}" in str(errors[0]) and "size" in str(errors[0])
    assert {tag for r in records for tag in r.tags} == {"v1"}


def test_a_source_whose_descriptors_lead_too_far_in_all_is_cut_and_its_plain_images_land(tmp_path, monkeypatch):
    """Every repository name walks an index's children again (their records carry it), so N names
    on one large index cost N times it. A source's descriptors together get MAX_WALKED_IN_ALL walks, and
    WALKS_PER_DESCRIPTOR more each; past that, a descriptor is still walked itself (its record,
    its tags) but what it lists is skipped, with one error each."""
    from indexer.sources import parse

    monkeypatch.setattr(parse, "MAX_WALKED_IN_ALL", 100)
    monkeypatch.setattr(parse, "WALKS_PER_DESCRIPTOR", 2)
    blobs = Blobs()
    index = blobs.index([blobs.image(layers=(b"%d" % i,)) for i in range(40)])
    top = [named(index, ref_name=f"registry.example/mirror{i}/app:v1") for i in range(20)]
    top += [named(blobs.image(layers=(b"plain%d" % i,)), ref_name=f"registry.example/plain/app:v{i}") for i in range(5)]
    write_dir(str(tmp_path / "far"), blobs.layout_files(top))
    reads = count_reads(monkeypatch)
    records, errors, _ = collect(f"oci:{tmp_path / 'far'}")
    cut = [str(e) for e in errors]
    assert cut and all(f"what {index['digest']} lists is skipped" in e for e in cut)
    assert all("more than" in e and "manifests in all" in e for e in cut)
    # the first two mirrors are walked whole (41 walks each); from the third, what the
    # allowance has left, and every later mirror's error; its index record stands
    children = collections.Counter(r.name for r in records if r.digest != index["digest"] and "mirror" in r.name)
    assert children["mirror0/app"] == children["mirror1/app"] == 40 and len(cut) == 18
    assert all(children[f"mirror{i}/app"] < 40 for i in range(2, 20))
    assert sum(children.values()) + 25 <= 100 + 2 * 25  # the walks within the final allowance
    assert {r.name for r in records if r.digest == index["digest"]} == {f"mirror{i}/app" for i in range(20)}
    assert {r.tags for r in records if r.name == "plain/app"} == {(f"v{i}",) for i in range(5)}
    assert sum(reads.values()) == 1 + 2 * (sum(children.values()) + 5)  # the index once; each image and config


def test_past_the_allowance_a_large_index_is_skipped_whole_and_a_small_image_still_lands(tmp_path, monkeypatch):
    """Each record carries its manifest's bytes, so an index listed under many names costs its
    size each time even when kept: past the allowance, a top-level descriptor of 4 KiB or more is
    skipped whole, with its error. One below that is always walked."""
    from indexer.sources import parse

    monkeypatch.setattr(parse, "MAX_WALKED_IN_ALL", 100)
    monkeypatch.setattr(parse, "WALKS_PER_DESCRIPTOR", 2)
    blobs = Blobs()
    index = blobs.index([blobs.image(layers=(b"%d" % i,)) for i in range(100)])
    assert index["size"] >= 3 * 4096
    top = [named(index, ref_name=f"registry.example/mirror{i}/app:v1") for i in range(10)]
    top += [named(blobs.image(layers=(b"plain%d" % i,)), ref_name=f"registry.example/plain/app:v{i}") for i in range(5)]
    write_dir(str(tmp_path / "big"), blobs.layout_files(top))
    records, errors, _ = collect(f"oci:{tmp_path / 'big'}")
    whole = [str(e) for e in errors if str(e).startswith(f"{tmp_path / 'big'}: {index['digest']} is skipped: ")]
    indexed = {r.name for r in records if r.digest == index["digest"]}
    assert whole and len(indexed) + len(whole) == 10 and "mirror0/app" in indexed
    assert {r.tags for r in records if r.name == "plain/app"} == {(f"v{i}",) for i in range(5)}


listing = st.tuples(st.integers(0, 30), st.sampled_from([None, "arm64", "s390x"]), st.booleans())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(listing, min_size=1, max_size=5), min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=6),
)
def test_one_walk_of_all_descriptors_yields_what_each_walked_alone_does(tmp_path_factory, indexes, tops):
    """Indexes over three images and each other, listing children again alike, or not (another
    platform, an annotation); top-level descriptors naming any of them under a few names and tags.
    Reading once what several paths reach must not change what is found: the records of one run
    are those of each descriptor walked alone, as a set, and no descriptor errs in either; and each
    listing of a child under each repository that reaches it has its record."""
    root = tmp_path_factory.mktemp("paths")
    blobs = Blobs()
    nodes = [blobs.image(layers=(b"%d" % i,)) for i in range(3)]  # amd64 configs
    lists: dict[str, list[tuple[str, str]]] = {}  # index digest: its children's (digest, architecture)
    for children in indexes:
        listed = []
        for pick, arch, noted in children:
            child = dict(nodes[pick % len(nodes)])
            if arch:
                child["platform"] = {"os": "linux", "architecture": arch}
            if noted:
                child["annotations"] = {"org.example.note": "x"}
            listed.append(child)
        nodes.append(blobs.index(listed))
        images = {node["digest"] for node in nodes[:3]}  # an image without a platform takes its config's
        lists[nodes[-1]["digest"]] = [
            (child["digest"], child.get("platform", {}).get("architecture", "amd64" * (child["digest"] in images)))
            for child in listed
        ]
    descriptors = [
        named(nodes[pick % len(nodes)], ref_name=f"registry.example/repo{repo}/app:t{tag}") for pick, repo, tag in tops
    ]

    def run(top: list[dict]):
        write_dir(str(root), blobs.layout_files(top))
        records, errors, _ = collect(f"oci:{root}")
        assert not errors
        return set(records)

    alone = set().union(*(run([descriptor]) for descriptor in descriptors))
    together = run(descriptors)
    assert together == alone
    expected = set()
    for pick, repo, _ in tops:
        pending = [nodes[pick % len(nodes)]["digest"]]
        while pending:
            parent = pending.pop()
            for digest, arch in lists.get(parent, ()):
                expected.add((f"repo{repo}/app", digest, parent, arch))
                pending.append(digest)
    children = [r for r in together if r.parent_digest]
    found = {(r.name, r.digest, r.parent_digest, (r.platform or Platform()).architecture) for r in children}
    assert found == expected


faults = st.sampled_from(["", "size", "gone", "bad"])
faulty_listing = st.tuples(st.integers(0, 30), st.sampled_from([None, "arm64"]), faults)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(faulty_listing, min_size=1, max_size=4), min_size=1, max_size=5),
    # a top-level descriptor's errors name its position in index.json: no faults that say it
    st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 2), st.sampled_from(["", "size", "gone"])), min_size=1, max_size=6
    ),
)
def test_one_walk_says_what_each_descriptor_walked_alone_says(tmp_path_factory, indexes, tops):
    """As above, with faults in the listings: a wrong size, a manifest the layout lacks, a digest
    that is no digest. What one walk reads once for several descriptors, it also reports once: the
    records, errors and notes of one run are, as sets, those of each descriptor walked alone."""
    root = tmp_path_factory.mktemp("faults")
    blobs = Blobs()
    nodes = [blobs.image(layers=(b"f%d" % i,)) for i in range(3)]

    def listing(pick: int, fault: str) -> dict:
        descriptor = dict(nodes[pick % len(nodes)])
        if fault == "size":
            descriptor["size"] += 1
        elif fault == "gone":
            descriptor["digest"] = digest_of(descriptor["digest"].encode())
        elif fault == "bad":
            descriptor["digest"] = "sha256:nope"
        return descriptor

    for children in indexes:
        listed = []
        for pick, arch, fault in children:
            child = listing(pick, fault)
            if arch:
                child["platform"] = {"os": "linux", "architecture": arch}
            listed.append(child)
        nodes.append(blobs.index(listed))
    descriptors = [
        named(listing(pick, fault), ref_name=f"registry.example/f{repo}/app:v1") for pick, repo, fault in tops
    ]

    def run(top: list[dict]):
        write_dir(str(root), blobs.layout_files(top))
        records, errors, notes = collect(f"oci:{root}")
        return set(records), {str(e) for e in errors}, set(notes)

    alone = [run([descriptor]) for descriptor in descriptors]
    together = run(descriptors)
    for part, whole in zip(zip(*alone), together):
        assert set().union(*part) == whole


@pytest.mark.parametrize("diff_id", ["\x1b[31mred\x1b[0m", "not-a-digest", "sha256:" + "A" * 64, "sha256:abc"])
def test_a_classic_save_whose_diff_ids_are_not_digests_is_refused(tmp_path, diff_id):
    """A classic save has no manifest: its layers' digests are the config's diff_ids, and `get`
    would report them. One that is not a digest refuses the image, as a manifest's would; the
    archive's other image lands."""
    files = classic_save_files(
        [
            {"tags": ["registry.example/diff/bad:v1"], "layers": [b"one", b"two"]},
            {"tags": ["registry.example/diff/good:v1"], "layers": [b"three"]},
        ]
    )
    manifest = json.loads(files["manifest.json"])
    config = json.loads(files[manifest[0]["Config"]])
    config["rootfs"]["diff_ids"][1] = diff_id
    del files[manifest[0]["Config"]]
    raw = dumps(config)
    manifest[0]["Config"] = digest_of(raw).split(":")[1] + ".json"
    files[manifest[0]["Config"]] = raw
    files["manifest.json"] = dumps(manifest)
    archive = write_tar(str(tmp_path / "save.tar"), files)
    store = str(tmp_path / "store")
    run = run_measured(["index", "--store", store, archive])
    [line] = one_line_messages(run.stderr)
    assert run.code == 1 and line == f"imgdex: {archive}: config's rootfs.diff_ids[1] has an invalid digest {diff_id!r}"
    assert sql_rows(store, "SELECT name FROM images") == [{"name": "diff/good"}]


def test_a_repo_tag_that_is_not_a_string_is_noted_and_the_image_lands(tmp_path):
    files = save("registry.example/tags/app:v1")
    entries = json.loads(files["manifest.json"])
    entries[0]["RepoTags"] = [{"x": 1}, ["y"], 7, "registry.example/tags/app:v2"]
    files["manifest.json"] = dumps(entries)
    write_tar(str(tmp_path / "save.tar"), files)
    records, errors, notes = collect(f"docker-archive:{tmp_path / 'save.tar'}")
    assert not errors and [r.tags for r in records] == [("v2",)]
    assert [n.rsplit("(", 1)[1] for n in notes] == ["dict)", "list)", "int)"]


# ---------------------------------------------------------------------------------------------
# 4. Mistyped transports and folders of archives


@pytest.mark.parametrize(
    "spec, prefix",
    [("docker-achive:x.tar", "docker-achive:"), ("oci-layout:x", "oci-layout:"), ("docker:app", "docker:")],
)
def test_mistyped_transport_is_named(spec, prefix, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError) as caught:
        parse_source(spec)
    assert str(caught.value) == f'{spec}: unknown source type "{prefix}"; {TRANSPORTS_TEXT}'


def test_an_existing_path_with_a_colon_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tar("docker-achive:x.tar", save("registry.example/colon/app:v1"))
    records, errors, _ = collect("docker-achive:x.tar")
    assert len(records) == 1 and not errors
    with pytest.raises(SourceError, match="no such file or directory"):
        parse_source("missing/dir:x.tar")


def _folder(root) -> dict[str, str]:
    """A folder of exports: archives of every kind, a layout, a broken archive and other files."""
    os.makedirs(root / "nested" / "deeper")
    write_tar(str(root / "b-save.tar"), save("registry.example/folder/b:v1", b"b"))
    (root / "a-save.tar.gz").write_bytes(gzip.compress(tar_bytes(save("registry.example/folder/a:v1", b"a")), mtime=0))
    files, _ = layout_files("registry.example/folder/oci-archive:v1")
    write_tar(str(root / "nested" / "c.oci.tar"), files)
    files, _ = layout_files("registry.example/folder/layout:v1")
    write_dir(str(root / "nested" / "deeper" / "layout"), files)
    (root / "notes.txt").write_text("not an archive\n")
    write_tar(str(root / "nested" / "text.tar"), {"readme.txt": b"hello\n"})
    os.mkfifo(root / "nested" / "pipe")
    data = tar_bytes(save("registry.example/folder/cut:v1", b"c" * 4096))
    (root / "nested" / "z-cut.tar").write_bytes(data[:2000])
    return {
        "registry.example/folder/a": str(root / "a-save.tar.gz"),
        "registry.example/folder/b": str(root / "b-save.tar"),
        "registry.example/folder/layout": str(root / "nested" / "deeper" / "layout"),
        "registry.example/folder/oci-archive": str(root / "nested" / "c.oci.tar"),
    }


def test_folder_of_archives_indexes_each_in_path_order(tmp_path):
    root = tmp_path / "exports"
    want = _folder(root)
    records, errors, notes = collect(str(root))
    got = [(f"{r.registry}/{r.name}", r.source_path) for r in records]
    assert got == sorted(want.items(), key=lambda item: item[1].split(os.sep))
    assert {r.source_kind for r in records} == {"docker-archive", "oci-archive", "oci"}
    assert [str(e) for e in errors] == [
        f"{root}/nested/z-cut.tar: truncated tar: member " + errors[0].reason.split("member ")[1]
    ]
    assert sorted(notes) == sorted(
        [
            f"{root}/notes.txt: not a tar archive (nor gzip, zstd, xz or bzip2); skipped",
            f"{root}/nested/pipe: not a regular file (named pipe); skipped",
            f"{root}/nested/text.tar: not an image archive (no manifest.json or index.json); skipped",
        ]
    )
    # The same again gives the same order: nothing depends on the directory's listing order.
    assert [r.id for r in collect(str(root))[0]] == [r.id for r in records]


def test_folder_through_the_command(tmp_path):
    root = tmp_path / "exports"
    _folder(root)
    run = run_measured(["index", str(root), "--store", str(tmp_path / "store")])
    assert run.code == 1
    one_line_messages(run.stderr)
    assert len(error_lines(run.stderr)) == 1
    assert "indexed 4 images, 1 failed" in run.stdout


def _nest(root, depth: int) -> str:
    """`root` then `depth` folders `d/d/…`; the deepest one's path. Made relative to each parent
    in turn, as a path this long may be past what one system call takes."""
    here = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=here)
            below = os.open("d", os.O_RDONLY, dir_fd=here)
            os.close(here)
            here = below
    finally:
        os.close(here)
    return os.path.join(str(root), *["d"] * depth)


def _unnest(deepest: str, root) -> None:
    """Remove what _nest made, from the bottom: shutil.rmtree recurses too (before Python 3.12),
    and pytest's cleanup of old temporary folders would fail on it."""
    for name in os.listdir(deepest):
        os.unlink(os.path.join(deepest, name))
    folder = deepest
    while folder != str(root):
        os.rmdir(folder)
        folder = os.path.dirname(folder)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_folder_nested_deeper_than_the_interpreter_recurses_is_walked(tmp_path, jobs):
    """Python before 3.12 walks a folder recursively, a level per frame: 1,500 levels ended the run
    with RecursionError and nothing landed."""
    root = tmp_path / "exports"
    os.makedirs(root)
    write_tar(str(root / "b-save.tar"), save("registry.example/folder/b:v1", b"b"))
    deepest = _nest(root, 1500)
    with open(os.path.join(deepest, "notes.txt"), "w") as f:
        f.write("not an archive\n")
    files, _ = layout_files("registry.example/folder/layout:v1")
    write_dir(str(tmp_path / "layout"), files)
    try:
        run = run_measured(
            ["index", str(root), str(tmp_path / "layout"), "--jobs", jobs, "--store", str(tmp_path / "s")]
        )
    finally:
        _unnest(deepest, root)
    assert run.code == 0, run.stderr
    one_line_messages(run.stderr)
    assert "indexed 2 images, 0 failed" in run.stdout
    notes = [line for line in run.stderr.splitlines() if line.startswith("imgdex: note:")]
    assert len(notes) == 1, notes  # the file at the bottom, not an archive


def test_walk_is_os_walk_without_recursion(tmp_path):
    from indexer.files import walk

    for path in ("a/b/c", "a/b/d", "a/e", "f/g", "h"):
        os.makedirs(tmp_path / path)
    for path in ("a/1.tar", "a/b/c/2.tar", "f/3", "4"):
        (tmp_path / path).write_bytes(b"x")
    os.symlink(tmp_path / "a", tmp_path / "link-to-a")
    os.symlink(tmp_path / "4", tmp_path / "a" / "link-to-4")

    def both(top, prune=()):
        got = []
        for folder, dirs, files in walk(top):
            got.append((folder, sorted(dirs), sorted(files)))
            dirs[:] = [d for d in dirs if d not in prune]
        want = []
        for folder, dirs, files in os.walk(top):
            want.append((folder, sorted(dirs), sorted(files)))
            dirs[:] = [d for d in dirs if d not in prune]
        return got, want

    got, want = both(str(tmp_path))
    assert got == want
    assert ("link-to-a" in got[0][1]) and not any(folder.endswith("link-to-a") for folder, _, _ in got)
    got, want = both(str(tmp_path), prune={"b"})
    assert got == want and not any("/b" in folder for folder, _, _ in got)
    errors = []
    assert list(walk(str(tmp_path / "missing"), onerror=errors.append)) == []
    assert [e.filename for e in errors] == [str(tmp_path / "missing")]


def _entries_naming_one_config(count: int, tags: bool = False) -> dict[str, bytes]:
    """A classic save whose manifest.json lists its one image `count` times (each with a tag of
    its own when `tags`), half of them through a hard link to the config member."""
    files = save("registry.example/many/app:v1")
    manifest = json.loads(files["manifest.json"])
    entry = manifest[0]
    entries = []
    for number in range(count):
        copy = dict(entry, RepoTags=[f"registry.example/many/app:t{number}"] if tags else None)
        if number % 2:
            copy["Config"] = "linked.json"
        entries.append(copy)
    files["manifest.json"] = dumps(entries)
    return files, entry["Config"]


def _with_link(files: dict[str, bytes], config: str) -> list[tarfile.TarInfo]:
    link = tarfile.TarInfo("linked.json")
    link.type, link.linkname = tarfile.LNKTYPE, config
    return [link]


@pytest.mark.parametrize("packing", ["tar", "gzip"])
def test_a_config_many_entries_name_is_read_and_parsed_once(tmp_path, monkeypatch, packing):
    """A manifest.json of thousands of entries naming one 8 MiB config cost a read, a hash and a
    parse each: hours for a file of a few KB."""
    from indexer.sources import docker_archive

    files, config = _entries_naming_one_config(400, tags=True)
    data = tar_bytes(files, _with_link(files, config))
    path = tmp_path / "many.tar"
    path.write_bytes(gzip.compress(data, mtime=0) if packing == "gzip" else data)
    parsed, hashed = [], []
    real_parse, real_hash = docker_archive.parse_config, docker_archive.sha256_digest
    monkeypatch.setattr(docker_archive, "parse_config", lambda raw, where: parsed.append(1) or real_parse(raw, where))
    monkeypatch.setattr(docker_archive, "sha256_digest", lambda raw: hashed.append(1) or real_hash(raw))
    records, errors, _ = collect(str(path))
    assert not errors
    assert len(records) == 400 and len({r.tags for r in records}) == 400
    assert len({r.config.digest for r in records}) == 1
    assert (len(parsed), len(hashed)) == (1, 1)


def test_configs_read_again_past_what_is_kept_have_an_allowance(tmp_path, monkeypatch):
    from indexer.sources import docker_archive

    files = save("registry.example/many/a:v1", b"a")
    other = save("registry.example/many/b:v1", b"b")
    [first], [second] = json.loads(files["manifest.json"]), json.loads(other["manifest.json"])
    files.update({name: data for name, data in other.items() if name != "manifest.json"})
    files["manifest.json"] = dumps([first, second] * 50)
    write_tar(str(tmp_path / "two.tar"), files)
    size = max(len(files[first["Config"]]), len(files[second["Config"]]))
    monkeypatch.setattr(docker_archive, "_KEPT_CONFIG_BYTES", size)  # one of the two is kept
    monkeypatch.setattr(docker_archive, "_REREAD_CONFIG_BYTES", 10 * size)
    records, errors, _ = collect(str(tmp_path / "two.tar"))
    assert len(errors) == 1
    assert "manifest.json names its configs again and again" in str(errors[0])
    assert 10 <= len(records) <= 30  # the entries before the allowance ran out
    monkeypatch.setattr(docker_archive, "_REREAD_CONFIG_BYTES", 1000 * size)
    records, errors, _ = collect(str(tmp_path / "two.tar"))
    assert not errors and len(records) == 100


def test_docker_25_names_of_one_manifest_listed_many_times_are_read_once(tmp_path, monkeypatch):
    from indexer.sources import docker_archive

    blobs = Blobs()
    manifest = blobs.image(layers=(b"layer",))
    files = blobs.layout_files([named(manifest, ref_name="v1")] * 300)
    config = json.loads(blobs.blobs[manifest["digest"]])["config"]["digest"].split(":")[1]
    files["manifest.json"] = dumps(
        [{"Config": f"blobs/sha256/{config}", "RepoTags": ["registry.example/d25/app:v1"], "Layers": []}]
    )
    write_tar(str(tmp_path / "d25.tar"), files)
    loads = []
    real = docker_archive.load_json
    monkeypatch.setattr(docker_archive, "load_json", lambda *a: loads.append(a[2]) or real(*a))
    records, errors, _ = collect(str(tmp_path / "d25.tar"))
    assert not errors
    assert {(r.name, r.tags) for r in records} >= {("d25/app", ("v1",))}
    assert loads.count("manifest") == 1


def test_real_fixtures_folder_equals_its_archives(tmp_path):
    """tests/fixtures/real holds archives, a layout named `oci-layout` and expected.json."""
    records, errors, notes = collect(REAL)
    assert not errors
    assert notes == [f"{REAL}/expected.json: not a tar archive (nor gzip, zstd, xz or bzip2); skipped"]
    one_by_one = set()
    for name in sorted(os.listdir(REAL)):
        if name != "expected.json":
            one_by_one |= {r.id for r in collect(os.path.join(REAL, name))[0]}
    assert {r.id for r in records} == one_by_one


def test_empty_folder_is_one_error(tmp_path):
    with pytest.raises(
        SourceError, match=r"directory is not an image layout \(no index\.json\) and holds no image archives"
    ):
        collect(str(tmp_path))


def test_folder_with_index_json_stays_a_layout(tmp_path):
    files, _ = layout_files("registry.example/layout/app:v1")
    write_dir(str(tmp_path), files)
    write_tar(str(tmp_path / "extra.tar"), save("registry.example/ignored/app:v1"))
    records, errors, _ = collect(str(tmp_path))
    assert [r.name for r in records] == ["layout/app"] and not errors


# ---------------------------------------------------------------------------------------------
# 5. Standard input


def _listing(store: str) -> list[dict]:
    from click.testing import CliRunner

    from queries.cli import cli

    result = CliRunner().invoke(cli, ["list", "--store", store, "--page-size", "1000"])
    assert result.exit_code == 0, result.output
    return sorted(json.loads(result.stdout).get("images", []), key=lambda d: d["id"])


REAL_ARCHIVES = sorted(name for name in REAL_EXPECTED["archives"] if os.path.isfile(os.path.join(REAL, name)))
STDIN_CASES = [("-", name) for name in REAL_ARCHIVES] + [
    ("docker-archive:-", "docker-save-app.tar.gz"),
    ("docker-archive:-", "docker25-save-app.tar"),
    ("oci-archive:-", "oci-archive-base-multiarch.tar"),
    ("/dev/stdin", "docker-save-app.tar"),
    ("/dev/stdin", "docker-save-app.tar.zst"),
]


@pytest.mark.parametrize("spec, name", STDIN_CASES)
def test_archive_piped_on_stdin(spec, name, tmp_path):
    store = str(tmp_path / "store")
    with open(os.path.join(REAL, name), "rb") as f:
        data = f.read()
    if name.endswith(".tar"):
        data += b"\0" * (1 << 20)  # zeros after the end of the archive, more than a pipe buffers
    run = run_measured(["index", spec, "--store", store, "--repository", REPOSITORY, "--quiet"], stdin_data=data)
    assert run.code == 0, run.stderr
    assert not run.stdin_broken, "standard input was not read to its end: the writer of the pipe got EPIPE"
    assert _listing(store) == expected_documents(REAL_EXPECTED["archives"][name])


@pytest.mark.parametrize(
    "name, packing, label",
    [
        ("docker-save-app.tar", "tar", "tar"),
        ("docker-save-app.tar.gz", "tar", "gzip tar"),
        ("docker-save-app.tar", "tar.xz", "xz tar"),
        ("docker-save-app.tar", "tar.bz2", "bzip2 tar"),
    ],
)
def test_an_archive_piped_with_endless_zeros_after_it_ends(tmp_path, name, packing, label):
    """The pipe is read to its end so that its writer gets no EPIPE, but past 64 MiB after the
    archive's end it is given up: a gzip reader takes the zeros as padding and read on for ever."""
    with open(os.path.join(REAL, name), "rb") as f:
        args = ["index", "-", "--store", str(tmp_path / "store"), "--repository", REPOSITORY]
        done = run_fed_without_end(args, _compressed(f.read(), packing), timeout=120)
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        f"imgdex: <stdin>: the input goes on for more than 64 MiB past the {label} archive's end"
    ]
    assert not os.path.exists(tmp_path / "store" / "images")


def test_gzip_padding_under_the_bound_is_read_through(tmp_path):
    with open(os.path.join(REAL, "docker-save-app.tar.gz"), "rb") as f:
        data = f.read() + b"\0" * (4 << 20)  # as a tape's blocks pad it, and more than a pipe buffers
    store = str(tmp_path / "store")
    run = run_measured(["index", "-", "--store", store, "--repository", REPOSITORY, "--quiet"], stdin_data=data)
    assert run.code == 0 and not run.stdin_broken, run.stderr
    assert _listing(store) == expected_documents(REAL_EXPECTED["archives"]["docker-save-app.tar.gz"])


def test_stdin_with_verify_and_bad_streams(tmp_path):
    with open(os.path.join(REAL, "docker-save-app.tar.zst"), "rb") as f:
        data = f.read()
    run = run_measured(["index", "-", "--verify", "--store", str(tmp_path / "a")], stdin_data=data)
    assert run.code == 0, run.stderr
    run = run_measured(["index", "-", "--store", str(tmp_path / "b")], stdin_data=data[: len(data) // 2])
    assert error_lines(run.stderr) == [
        f"imgdex: <stdin>: truncated zstd archive (the archive ends inside a frame, at byte {len(data) // 2})"
    ]
    run = run_measured(["index", "docker-archive:-", "--store", str(tmp_path / "c")], stdin_data=b"")
    assert error_lines(run.stderr) == ["imgdex: <stdin>: empty file"]


def test_stdin_terminal_is_refused(tmp_path):
    leader, follower = pty.openpty()
    try:
        run = run_measured(["index", "-", "--store", str(tmp_path / "s")], stdin=follower, timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    assert error_lines(run.stderr) == ["imgdex: <stdin>: standard input is a terminal, not an archive"]


# ---------------------------------------------------------------------------------------------
# 6. A docker save config whose name is not its digest


def test_config_named_for_another_digest_uses_its_content_digest(tmp_path):
    files = save("registry.example/renamed/app:v1")
    entry = json.loads(files["manifest.json"])[0]
    raw = files.pop(entry["Config"])
    wrong = "0" * 64 + ".json"
    files[wrong] = raw
    entry["Config"] = wrong
    files["manifest.json"] = dumps([entry])
    for path in (tmp_path / "renamed.tar", tmp_path / "renamed.tar.gz"):
        data = tar_bytes(files)
        path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
        records, errors, notes = collect(str(path))
        assert not errors
        [record] = records
        assert record.config.digest == digest_of(raw)
        assert notes == [
            f"{path}: config {wrong!r} is named sha256:{'0' * 64} but its bytes hash to {digest_of(raw)}; "
            f"the image ID is {digest_of(raw)}"
        ]


def test_a_manifest_json_of_many_tiny_values_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    from indexer.sources import docker_archive

    files = save("registry.example/tiny/app:v1")
    real = tmp_path / "real.tar"
    real.write_bytes(tar_bytes(files))
    files["manifest.json"] = b"[" + b"{}," * 5000 + b"{}]"
    tiny = tmp_path / "tiny.tar"
    tiny.write_bytes(tar_bytes(files))
    monkeypatch.setattr(docker_archive, "MAX_PARSED_BYTES", 64 * 1024)
    monkeypatch.setattr(docker_archive, "load_json", lambda *a: pytest.fail("parsed"))
    with pytest.raises(SourceError) as refused:
        collect(str(tiny))
    assert (
        str(refused.value) == f"{tiny}: manifest.json holds too many values for its {len(files['manifest.json'])} bytes"
    )
    monkeypatch.undo()
    monkeypatch.setattr(docker_archive, "MAX_PARSED_BYTES", 64 * 1024)
    records, errors, _ = collect(str(real))  # a real one is far under the bound
    assert len(records) == 1 and not errors


# ---------------------------------------------------------------------------------------------
# 7. One line per message, whatever a name holds


def test_printable_escapes_what_would_split_or_forge_a_line():
    assert printable("/data/app.tar") == "/data/app.tar"
    assert printable("a\nb\rc\td\x1b[31m\x85\u2028") == "a\\nb\\rc\\td\\x1b[31m\\x85\\u2028"
    assert printable("x" + os.fsdecode(b"\xff") + ".tar") == "x\\xff.tar"


def test_names_with_newlines_give_one_line_messages(tmp_path):
    broken = tmp_path / "bad\nimgdex: forged.tar"
    files = save("registry.example/newline/app:v1")
    del files[json.loads(files["manifest.json"])[0]["Layers"][0]]
    write_tar(str(broken), files)
    layout_dir = tmp_path / "layout\nname"
    files, manifest = layout_files("registry.example/newline/layout:v1")
    del files[blob_name(json.loads(files[blob_name(manifest["digest"])])["config"]["digest"])]
    write_dir(str(layout_dir), files)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "note\nme.txt").write_text("x")
    write_tar(str(folder / "ok.tar"), save("registry.example/newline/ok:v1"))

    run = run_measured(
        ["index", str(broken), str(layout_dir), str(folder), "docker-achive:\nx", "--store", str(tmp_path / "store")]
    )

    lines = one_line_messages(run.stderr)
    errors = error_lines(run.stderr)
    assert len(errors) == 3, run.stderr
    assert errors[0].startswith(f"imgdex: {tmp_path}/bad\\nimgdex: forged.tar: layer ")
    assert errors[1].startswith(f"imgdex: {tmp_path}/layout\\nname/blobs/sha256/") and errors[1].endswith(
        ": blob is missing"
    )
    assert errors[2] == f'imgdex: docker-achive:\\nx: unknown source type "docker-achive:"; {TRANSPORTS_TEXT}'
    assert f"imgdex: note: {folder}/note\\nme.txt: not a tar archive (nor gzip, zstd, xz or bzip2); skipped" in lines
    assert "indexed 1 images, 3 failed" in run.stdout


def test_name_that_is_not_utf8_is_escaped_and_stored(tmp_path):
    path = os.path.join(str(tmp_path).encode(), b"app\xfe.tar")
    write_tar(os.fsdecode(path), save("registry.example/bytes/app:v1"))
    records, errors, _ = collect(os.fsdecode(path))
    assert not errors
    assert records[0].source_path == f"{tmp_path}/app\\xfe.tar"
    records[0].source_path.encode("utf-8")


def test_source_argument_that_is_not_utf8_is_indexed_and_recorded_escaped(tmp_path):
    sample = os.path.join(ROOT, "data", "samples", "docker-save-app.tar")
    odd = os.path.join(os.fsencode(tmp_path), b"app\xff\n.tar")
    with open(sample, "rb") as src, open(odd, "wb") as dst:
        dst.write(src.read())
    store = tmp_path / "store"
    result = subprocess.run(
        [sys.executable, "-m", "queries.cli", "index", odd, "--store", str(store), "--repository", "x/app"],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "queries.cli",
            "sql",
            "SELECT sources FROM runs",
            "--store",
            str(store),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert "app\\\\xff\\\\n.tar" in out.stdout


# ---------------------------------------------------------------------------------------------
# 8. Configs of a great many tiny entries


def test_configs_of_many_tiny_entries_fail_their_image_and_the_others_land(tmp_path):
    """Configs just under 8 MiB of `{}` history entries or `""` environment variables (2.8 million,
    ~650 MB of objects each) and one listing a few too many, between good images of one layout:
    each bad one is a line, the good ones land, and memory stays bounded."""
    blobs = Blobs()
    top = [named(blobs.image(layers=(b"good-1",)), "registry.example/good/one:v1")]
    bombs = {
        "history": b'{"os":"linux","history":[' + b",".join([b"{}"] * ((8 << 20) // 3 - 20)) + b"]}",
        "env": b'{"os":"linux","config":{"Env":[' + b",".join([b'""'] * ((8 << 20) // 3 - 20)) + b"]}}",
        "labels": dumps({"os": "linux", "config": {"Labels": {f"k{i}": "" for i in range(20_001)}}}),
    }
    for name, config in bombs.items():
        desc = blobs.add(config, "application/vnd.oci.image.config.v1+json")
        manifest = blobs.add(
            dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": desc, "layers": []}), OCI_MANIFEST
        )
        top.append(named(manifest, f"registry.example/bad/{name}:v1"))
    top.append(named(blobs.image(layers=(b"good-2",)), "registry.example/good/two:v1"))
    root = write_dir(str(tmp_path / "layout"), blobs.layout_files(top))
    store = str(tmp_path / "store")

    run = run_measured(["index", f"oci:{root}", "--store", store])

    assert_within_limits(run)
    assert run.code == 1 and "Traceback" not in run.stderr
    lines = error_lines(run.stderr)
    assert len(lines) == 3 and all(line.startswith(f"imgdex: {root} (config sha256:") for line in lines), lines
    assert f"config holds too many values for its {len(bombs['history'])} bytes" in lines[0]
    assert f"config holds too many values for its {len(bombs['env'])} bytes" in lines[1]
    assert "config Labels has 20001 entries, more than the 20000 a config may list" in lines[2]
    assert "indexed 2 images, 3 failed" in run.stdout
    names = [row["name"] for row in sql_rows(store, "SELECT name FROM images ORDER BY name")]
    assert names == ["good/one", "good/two"]


# ---------------------------------------------------------------------------------------------
# JSON is UTF-8 without a byte order mark, as Go reads it, whatever the source and compression

ENCODINGS = {
    "bom": (lambda text: b"\xef\xbb\xbf" + text, "it starts with a UTF-8 byte order mark"),
    "utf-16": (lambda text: text.decode().encode("utf-16"), "its first bytes are UTF-16 text"),
    "utf-16-le": (lambda text: text.decode().encode("utf-16-le"), "its first bytes are UTF-16LE text"),
    "utf-16-be": (lambda text: text.decode().encode("utf-16-be"), "its first bytes are UTF-16BE text"),
    "utf-32": (lambda text: text.decode().encode("utf-32"), "its first bytes are UTF-32 text"),
    # Not JSON at all, though json.loads reads them: the fast parser refused them, and the exact one
    # it falls back to took them, digest and all.
    "nan": (lambda text: _with_member(text, b"NaN"), "NaN is not a JSON value"),
    "-infinity": (lambda text: _with_member(text, b"-Infinity"), "-Infinity is not a JSON value"),
}


def _with_member(text: bytes, value: bytes) -> bytes:
    """`text` with a member `"x": value` last in its last object."""
    end = text.rindex(b"}")
    return text[:end] + b',"x":' + value + text[end:]


def _encoded_layout(which: str, encode) -> dict[str, bytes]:
    """An OCI layout of one image whose `which` (index.json, manifest or config) is re-encoded."""
    blobs = Blobs()
    config = dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    config_desc = blobs.add(encode(config) if which == "config" else config, OCI_CONFIG)
    manifest = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": []})
    manifest_desc = blobs.add(encode(manifest) if which == "manifest" else manifest, OCI_MANIFEST)
    files = blobs.layout_files([named(manifest_desc, containerd="registry.example/enc/app:v1")])
    if which == "index.json":
        files["index.json"] = encode(files["index.json"])
    return files


def _encoded_save(which: str, encode) -> dict[str, bytes]:
    files = save("registry.example/enc/app:v1")
    name = "manifest.json" if which == "manifest.json" else json.loads(files["manifest.json"])[0]["Config"]
    files[name] = encode(files[name])
    return files


def _packed(tmp_path, files: dict[str, bytes], packing: str) -> str:
    if packing == "dir":
        return write_dir(str(tmp_path / "layout"), files)
    raw = tar_bytes(files)
    if packing == "tar.gz":
        raw = gzip.compress(raw, mtime=0)
    elif packing == "tar.zst":
        import zstandard

        raw = zstandard.ZstdCompressor().compress(raw)
    path = tmp_path / f"archive.{packing}"
    path.write_bytes(raw)
    return str(path)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize(
    "kind, which, packing",
    [
        ("docker-archive", "manifest.json", "tar"),
        ("docker-archive", "manifest.json", "tar.gz"),
        ("docker-archive", "manifest.json", "tar.zst"),
        ("docker-archive", "config", "tar"),
        ("docker-archive", "config", "tar.gz"),
        ("docker-archive", "config", "tar.zst"),
        ("oci", "index.json", "dir"),
        ("oci", "manifest", "dir"),
        ("oci", "config", "dir"),
        ("oci-archive", "index.json", "tar"),
        ("oci-archive", "index.json", "tar.gz"),
        ("oci-archive", "manifest", "tar"),
        ("oci-archive", "manifest", "tar.gz"),
        ("oci-archive", "config", "tar"),
        ("oci-archive", "config", "tar.zst"),
    ],
)
def test_json_that_is_not_plain_utf8_json_is_refused_alike_by_every_source(tmp_path, encoding, kind, which, packing):
    """json.loads reads a byte order mark, UTF-16 and UTF-32; Docker, containerd and skopeo (Go's
    encoding/json) refuse them. A plain tar took a BOM that a gzip one refused as "not JSON"."""
    encode, reason = ENCODINGS[encoding]
    files = _encoded_save(which, encode) if kind == "docker-archive" else _encoded_layout(which, encode)
    path = _packed(tmp_path, files, packing)
    try:
        records, errors, _ = collect(f"{kind}:{path}")
    except SourceError as exc:  # what the whole source stands on: manifest.json, index.json
        records, errors = [], [exc]
    assert records == []
    assert len(errors) == 1
    message = str(errors[0])
    assert message.startswith(path) and "is not valid JSON (" + reason in message, message
    assert "\n" not in message
    # The same text, plain, lands.
    plain = tmp_path / "plain"
    files = _encoded_save(which, lambda t: t) if kind == "docker-archive" else _encoded_layout(which, lambda t: t)
    plain.mkdir()
    records, errors, _ = collect(f"{kind}:{_packed(plain, files, packing)}")
    assert not errors and len(records) == 1


@pytest.mark.parametrize(
    "encoding, streamed, parsed",
    [
        ("bom", r"\(it starts with a UTF-8 byte order mark", r"\(it starts with a UTF-8 byte order mark"),
        ("nan", r"\(NaN is not a JSON value: char \d+\)$", r"\(NaN is not a JSON value\)$"),
    ],
)
def test_a_streamed_index_json_refuses_what_a_parsed_one_does(encoding, streamed, parsed):
    blobs = Blobs()
    data = ENCODINGS[encoding][0](blobs.layout_files([blobs.image()])["index.json"])
    pieces = [data[i : i + 3] for i in range(0, len(data), 3)]
    saved = layout.MAX_JSON_BYTES
    layout.MAX_JSON_BYTES = -1  # read a descriptor at a time, as a large index.json is
    try:
        with pytest.raises(SourceError, match=r"index.json is not valid JSON " + streamed):
            list(IndexJson("index.json", len(data), lambda: iter(pieces)).descriptors())
    finally:
        layout.MAX_JSON_BYTES = saved
    with pytest.raises(SourceError, match=r"index.json is not valid JSON " + parsed):
        top_descriptors(data, "index.json")


def test_many_manifests_naming_one_large_config_are_cut_by_the_allowance(tmp_path, monkeypatch):
    """Each record stores its config's bytes, so a layout of many small manifests naming one large
    config would turn a few MB of input into GB of store (100 manifests on a 4 MiB config: a 4.9 MB
    layout, a 601 MB store). Config bytes count against the source's allowance as manifest bytes
    do: past it, each further image is skipped with its error, and a small image still lands."""
    from indexer.sources import parse

    monkeypatch.setattr(parse, "MAX_WALKED_IN_ALL", 100)
    monkeypatch.setattr(parse, "WALKS_PER_DESCRIPTOR", 2)
    blobs = Blobs()
    big = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"pad": "x" * 64 * 1024}},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(b"diff")]},
    }
    config = blobs.add(dumps(big), OCI_CONFIG)
    assert config["size"] // 4096 == 16
    top = []
    for i in range(30):
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": [blobs.add(b"layer%d" % i, OCI_LAYER_GZ)],
        }
        top.append(named(blobs.add(dumps(manifest), OCI_MANIFEST), ref_name=f"registry.example/shared/app:v{i}"))
    top.append(named(blobs.image(layers=(b"small",)), ref_name="registry.example/plain/app:v1"))
    write_dir(str(tmp_path / "shared"), blobs.layout_files(top))
    records, errors, _ = collect(f"oci:{tmp_path / 'shared'}")
    # an image costs a walk and 16 for its config; the allowance is 100 and 2 per descriptor
    shared = [r for r in records if r.name == "shared/app"]
    assert {r.config_raw for r in shared} == {dumps(big)} and 5 <= len(shared) < 30
    assert len(shared) + len(errors) == 30 and 17 * len(shared) + len(errors) <= 100 + 2 * 31
    assert all(f"config {config['digest']} of manifest sha256:" in str(e) and "is skipped" in str(e) for e in errors)
    assert [r.tags for r in records if r.name == "plain/app"] == [("v1",)]
    monkeypatch.setattr(parse, "MAX_WALKED_IN_ALL", 1000)
    records, errors, _ = collect(f"oci:{tmp_path / 'shared'}")
    assert not errors and len(records) == 31


# ---------------------------------------------------------------------------------------------
# pax records as Go's archive/tar (docker load, skopeo) reads them


def _with_pax_member(records: dict[str, str]) -> bytes:
    """A valid docker save, then a member `junk` of one byte preceded by a pax header of `records`,
    written byte for byte (tarfile's writer would fix what the test breaks)."""
    raw = tar_bytes(save("registry.example/pax/app:v1"))
    while raw.endswith(b"\0" * 512):
        raw = raw[:-512]

    def block(name: str, kind: bytes, data: bytes) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.type, info.mtime = len(data), kind, 0
        return info.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)

    body = b"".join(_pax_record(key.encode(), value.encode()) for key, value in records.items())
    return raw + block("././@PaxHeader", tarfile.XHDTYPE, body) + block("junk", tarfile.REGTYPE, b"x") + b"\0" * 1024


@pytest.mark.parametrize("packing", ["tar", "tar.gz"])
@pytest.mark.parametrize(
    "records",
    [
        {"path": "a\0b"},
        {"size": " 1"},
        {"size": "1_0"},
        {"uid": "9" * 26},
        {"mtime": "nan"},
        {"mtime": "1e400"},
        {"atime": "1.5e3"},
        {"mtime": ".5"},
    ],
)
def test_a_pax_record_go_refuses_fails_the_archive(tmp_path, records, packing):
    # tarfile read int(" 1") and float("nan"); docker load and skopeo fail: invalid tar header.
    path = tmp_path / f"pax.{packing}"
    raw = _with_pax_member(records)
    path.write_bytes(gzip.compress(raw, mtime=0) if packing == "tar.gz" else raw)
    with pytest.raises(SourceError, match=r"invalid tar header: member '.*' has the pax record '"):
        collect(str(path))


@pytest.mark.parametrize("records", [{"mtime": "1.5"}, {"mtime": "-7"}, {"uid": "+5"}, {"uname": ""}, {"size": "1"}])
def test_a_pax_record_go_takes_is_read(tmp_path, records):
    path = tmp_path / "pax.tar"
    path.write_bytes(_with_pax_member(records))
    found, errors, _ = collect(str(path))
    assert not errors and len(found) == 1
