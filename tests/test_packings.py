"""Every packing `docker load` and skopeo read: a tar plain or compressed by gzip, zstd, xz or
bzip2 (`docker save app | xz > app.tar.xz`) gives the plain tar's records, named as a file, inside
a folder of exports or piped on standard input, and each packing is told by its magic bytes."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import json
import lzma
import os
import random
import shutil
import subprocess
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builders import classic_save_files, tar_bytes
from conftest import sample_sources
from indexer.errors import NotAnArchive
from indexer.model import ImageRecord
from indexer.sources import parse_source
from indexer.sources.parse import Context
from indexer.sources.tarball import NOT_AN_ARCHIVE, _compression
from test_badinput import error_lines, run_measured
from test_local_hardening import index_packed_everywhere

# The tools a shell pipeline packs a save with, as they write their streams.
PACKERS = {
    "tar.gz": ["gzip", "-c"],
    "tar.zst": ["zstd", "-q", "-c"],
    "tar.xz": ["xz", "-c"],
    "tar.bz2": ["bzip2", "-c"],
}
SAMPLE_TARS = [path for path in sample_sources() if path.endswith(".tar")]


def _records(spec: str) -> list[ImageRecord]:
    source = parse_source(spec)
    items = list(source.records(Context(source.kind, source.location, note=lambda _: None)))
    assert all(isinstance(item, ImageRecord) for item in items), items
    return sorted((dataclasses.replace(item, source_path="") for item in items), key=repr)


def _pack(sample: str, packing: str, target) -> None:
    with open(sample, "rb") as src, open(target, "wb") as out:
        subprocess.run(PACKERS[packing], stdin=src, stdout=out, check=True, timeout=60)


def _listing(store: str) -> list[dict]:
    run = run_measured(["list", "--store", store, "--page-size", "1000"], timeout=60)
    assert run.code == 0, run.stderr
    return sorted(json.loads(run.stdout)["images"], key=lambda d: d["id"])


@pytest.mark.skipif(not all(shutil.which(tool[0]) for tool in PACKERS.values()), reason="needs gzip, zstd, xz, bzip2")
@pytest.mark.parametrize("sample", SAMPLE_TARS, ids=os.path.basename)
def test_every_packing_of_a_sample_gives_the_plain_tars_records(tmp_path, sample):
    plain = _records(sample)
    assert plain
    for packing in PACKERS:
        folder = tmp_path / packing
        folder.mkdir()
        path = folder / f"{os.path.basename(sample)[: -len('.tar')]}.{packing}"
        _pack(sample, packing, path)
        assert _records(str(path)) == plain, packing
        assert _records(str(folder)) == plain, packing


@pytest.mark.skipif(not shutil.which("xz") or not shutil.which("bzip2"), reason="needs xz and bzip2")
@pytest.mark.parametrize("packing", ["tar.xz", "tar.bz2"])
@pytest.mark.parametrize("sample", SAMPLE_TARS, ids=os.path.basename)
def test_a_sample_piped_xz_or_bzip2_gives_the_plain_tars_images(tmp_path, sample, packing):
    """Read to its end, padding after the stream included, so that the writer gets no EPIPE."""
    with open(sample, "rb") as f:
        data = f.read()
    packed = subprocess.run(PACKERS[packing], input=data, capture_output=True, check=True, timeout=60).stdout
    listings = []
    for number, piped in enumerate([data, packed + b"\0" * (1 << 20)]):
        store = str(tmp_path / f"store{number}")
        run = run_measured(["index", "-", "--store", store, "--quiet"], stdin_data=piped, timeout=60)
        assert run.code == 0 and not run.stdin_broken, run.stderr
        listings.append(_listing(store))
    assert listings[1] == listings[0] and listings[0]


def _damaged(packing: str, damage: str) -> bytes:
    # Fixed bytes: which error the decoder meets in bytes flipped mid-stream depends on them (a
    # flipped bzip2 block may also read as a stream cut short).
    layer = random.Random(4096).randbytes(4096)
    data = tar_bytes(classic_save_files([{"tags": ["app:1"], "layers": [layer]}]))
    packed = bytearray(lzma.compress(data) if packing == "tar.xz" else bz2.compress(data))
    middle = len(packed) // 2
    if damage == "cut":
        return bytes(packed[:middle])
    for i in range(middle, middle + 16):
        packed[i] ^= 0x5A
    return bytes(packed)


@pytest.mark.parametrize(
    "packing, damage, reason",
    [
        ("tar.xz", "cut", "truncated or corrupt xz archive (Compressed file ended before the end-of-stream marker "
         "was reached)"),
        ("tar.bz2", "cut", "truncated or corrupt bzip2 archive (Compressed file ended before the end-of-stream "
         "marker was reached)"),
        ("tar.xz", "flipped", "corrupt xz archive (Corrupt input data)"),
        ("tar.bz2", "flipped", "corrupt bzip2 archive (Invalid data stream)"),
    ],
)  # fmt: skip
def test_a_cut_or_corrupt_xz_or_bzip2_archive_is_one_line_everywhere(tmp_path, packing, damage, reason):
    file, in_folder, named, piped = index_packed_everywhere(tmp_path, _damaged(packing, damage), packing)
    assert named.code == 1 and piped.code == 1
    assert error_lines(named.stderr) == [f"imgdex: {file}: {reason}", f"imgdex: {in_folder}: {reason}"]
    assert error_lines(piped.stderr) == [f"imgdex: <stdin>: {reason}"]


def test_an_xz_stream_asking_for_a_huge_dictionary_is_refused(tmp_path):
    """The xz format lets a stream ask for a dictionary of up to 4 GiB, which the decoder fills as
    it reads: memory stays bounded, whatever the archive asks for."""
    import zlib

    packed = bytearray(lzma.compress(tar_bytes(classic_save_files([{"tags": ["app:1"], "layers": [b"a"]}]))))
    header = 12  # the stream header; the first block's header follows, its size in its first byte
    end = header + (packed[header] + 1) * 4
    lzma2 = packed.index(b"\x21\x01", header, end)  # the LZMA2 filter and the size of its property
    packed[lzma2 + 2] = 36  # a dictionary of 1 GiB
    packed[end - 4 : end] = zlib.crc32(bytes(packed[header : end - 4])).to_bytes(4, "little")
    path = tmp_path / "huge-dictionary.tar.xz"
    path.write_bytes(packed)
    run = run_measured(["index", str(path), "--store", str(tmp_path / "s")], timeout=60)
    assert error_lines(run.stderr) == [
        f"imgdex: {path}: corrupt xz archive (the stream needs more than 256 MiB of memory to decompress)"
    ]


def _tar_head(name: bytes) -> bytes:
    info = tarfile.TarInfo(name.decode("latin-1"))
    info.size = 0
    return info.tobuf(tarfile.USTAR_FORMAT, "latin-1", "surrogateescape")[:512]


SAVE = tar_bytes(classic_save_files([{"tags": ["app:1"], "layers": [b"layer"]}]))


@pytest.mark.parametrize(
    "head, kind",
    [
        (gzip.compress(SAVE)[:512], "gzip"),
        (lzma.compress(SAVE)[:512], "xz"),
        (lzma.compress(b"")[:512], "xz"),
        (bz2.compress(SAVE)[:512], "bzip2"),
        (bz2.compress(b"")[:512], "bzip2"),  # an empty stream: its end's magic follows "BZh9"
        (bz2.compress(SAVE, 1)[:512], "bzip2"),
        (SAVE[:512], "tar"),
        (bytes(512), "tar"),
        (_tar_head(b"BZh91AY&SY.txt"), "tar"),  # a name that starts as a bzip2 stream does
        (_tar_head(b"\xfd7zXZ"), "tar"),  # its NUL ending makes the whole xz magic
        (b"BZh91AY&SY" + bytes(502), "bzip2"),  # no tar header: a stream, even if cut after its magic
        (b"BZh9 notes.txt" + bytes(498), None),
        (b"BZh0" + bz2.compress(SAVE)[4:512], None),
        (b"BZh" + bytes(509), None),
        (b"BZ", None),
        (b"\xfd7zXZ", None),
        (b"hello world\n", None),
    ],
)
def test_each_packing_is_told_by_its_magic_bytes(head, kind):
    if kind is None:
        with pytest.raises(NotAnArchive, match=f"^x: {NOT_AN_ARCHIVE.replace('(', '[(]').replace(')', '[)]')}$"):
            _compression(head, "x")
    else:
        assert _compression(head, "x") == kind


@given(st.sampled_from([b"\xfd7zXZ", b"BZh11AY&SY", b"BZh91AY&SY", b"BZh9\x17rE8P\x90"]), st.binary(max_size=80))
def test_a_tar_whose_first_name_starts_as_a_compressed_stream_is_a_tar(magic, rest):
    """A valid tar header is a tar whatever its member is named: its checksum, which no xz or
    bzip2 stream holds by chance, says so."""
    name = (magic + rest).replace(b"\0", b"_")[:100]
    assert _compression(_tar_head(name), "x") == "tar"


def test_a_save_whose_first_member_is_named_like_bzip2_is_read_as_a_tar(tmp_path):
    files = classic_save_files([{"tags": ["app:1"], "layers": [b"layer"]}])
    path = tmp_path / "save.tar"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in {"BZh91AY&SY notes.txt": b"notes", **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(out.getvalue())
    plain = tmp_path / "plain.tar"
    plain.write_bytes(tar_bytes(files))
    assert _records(str(path)) == _records(str(plain))
    assert len(_records(str(path))) == 1
