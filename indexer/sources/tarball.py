"""Reading image tarballs by their headers, without extracting and without reading layers.

An uncompressed tar file is scanned header by header with seeks over member data; small JSON
members are then read on demand. A gzip, zstd, xz or bzip2 tar, or any tar on standard input, is
read once, in one streaming pass that keeps only the members that can be a manifest, an index or
a config: JSON, named as docker save, skopeo, go-containerregistry and OCI layouts name them, each
under its size limit and all of them under MAX_KEPT_BYTES. Memory stays bounded whatever the archive
holds, and no member is read twice.

Only regular files are opened: a FIFO would block in open() and a device would be read forever.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import itertools
import lzma
import os
import posixpath
import re
import sys
import tarfile
import weakref
from dataclasses import dataclass

from ..errors import NotAnArchive, SourceError, printable
from ..files import open_readable
from . import ustar
from .jsonstream import MAY_NOT_BE_UTF8, encoding_problem
from .parse import MAX_JSON_BYTES

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"
# What follows "BZh" and the block size digit: the first block's magic, or the end's in an empty
# stream. "BZh" alone starts many a file name, and so many a plain tar.
_BZIP2_NEXT = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")
# Enough of a member's first bytes to tell every compressor's magic (bzip2's is the longest).
MAGIC_BYTES = 10
# The xz format lets a stream ask for a dictionary of up to 4 GiB, which the decoder fills as it
# goes; xz -9 asks for 64 MiB. A stream that needs more than this is refused, not decoded.
XZ_MEMLIMIT = 256 << 20
_STREAM_BUFSIZE = 1 << 20
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
# A stream member is kept when it starts with one of these and is small enough to be JSON we need.
_JSON_STARTS = frozenset(b"{[ \t\r\n")
# A blob that starts like another JSON value (`5`, `"x"`, `null`) is kept too, so that a manifest of
# the wrong JSON type is refused in the words of a plain tar, not as "not JSON". A layer seldom
# starts so: a tar starts with a file name, a compressed one with its magic.
_SCALAR_STARTS = frozenset(b'"-0123456789tfn')
_SCALAR_HEAD = re.compile(rb'"|-?[0-9]|true|false|null')

# The top-level index.json of a layout lists every image: a layout of 100,000 images needs about
# 30 MiB, so it has its own bound (layout.py parses a large one descriptor by descriptor).
MAX_INDEX_BYTES = 256 * 1024 * 1024
# What a streaming pass keeps, index.json aside: configs and manifests of a few thousand images
# take a few MiB, while a crafted archive could hold any number of JSON-looking members.
MAX_KEPT_BYTES = 64 * 1024 * 1024
# Every member's name and size are kept (a layer may have any name), so their number is bounded.
# Every header counts, directories and names written again too: each costs as much to read.
MAX_MEMBERS = 500_000
MAX_NAME_BYTES = 64 * 1024 * 1024
# tarfile reads pax and GNU long-name headers whole; real ones are a few hundred bytes.
MAX_EXTENDED_HEADER = 1 << 20
# tarfile parses pax records one by one: a header of tiny records costs ~85 ms a MiB, and a
# global header's records are applied again to every member after it. docker save, skopeo and
# go-containerregistry write a pax header only for a member whose name or numbers do not fit ustar,
# a few hundred bytes each: a save of 10,000 images with one on every member would need ~12 MiB.
# This budget, with global headers counted once per member they apply to, keeps crafted headers
# to about a second and a half.
MAX_EXTENDED_BYTES = 16 * 1024 * 1024
# tarfile reads each header before a member by recursion; writers put at most two there (GNU
# long name and long link, or a global and an extended pax header).
MAX_EXTENDED_IN_A_ROW = 8

# Members a manifest.json, an index or a layout can name: docker save's `<hex>.json` configs,
# go-containerregistry's `sha256:<hex>`, and OCI blobs.
_KEPT_NAMES = frozenset({"manifest.json", "index.json", "oci-layout", "repositories"})
_KEPT_PATTERN = re.compile(r"(?:[^/]+/)*(?:sha256:)?[0-9a-f]{64}(?:\.json)?|blobs/[a-z0-9]+/[0-9a-f]+")
_UNKEPT = "was not kept: a compressed or piped archive keeps only members named like manifests, configs and blobs"

_BLOB_ALGORITHM = re.compile(r"blobs/(sha384|sha512)/")

STDIN_NAMES = frozenset({"-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"})
STDIN_WHERE = "<stdin>"


@dataclass(slots=True)
class Member:
    size: int
    offset: int = -1  # of the data, in an uncompressed tar
    data: bytes | None = None  # kept from a streaming pass
    pieces: list[bytes] | None = None  # index.json kept from a streaming pass, as read: never joined
    link: str = ""  # resolved target of a symlink or hard link
    digest: str = ""  # "algorithm:hex" of a blob's content, when a streaming pass was asked to hash
    diff_id: str = ""  # hex sha256 of any other member's content as a layer (`measure_layer`), likewise
    # Its size as a layer: its stored size, or decompressed for a compressed one (`measure_layer`),
    # found by a streaming pass or when first asked.
    layer_size: int | None = None
    undecodable: str = ""  # why a streaming pass could not measure it so
    unkept: str = ""  # why a streaming pass did not keep the bytes of a member
    broken: str = ""  # why the member cannot be read at all, said whenever it is asked for


NOT_AN_ARCHIVE = "not a tar archive (nor gzip, zstd, xz or bzip2)"


def _compression(head: bytes, where: str) -> str:
    """'gzip', 'zstd', 'xz', 'bzip2' or 'tar' from the first 512 bytes, or NotAnArchive."""
    if not head:
        raise NotAnArchive(where, "empty file")
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC) or _is_skippable_frame(head):
        return "zstd"
    if head.startswith(XZ_MAGIC) or _is_bzip2(head):
        # A member's name may start so ("BZh91AY&SY…"): a tar header's checksum, which no
        # compressed stream holds by chance, says it is a tar.
        if len(head) == 512 and _looks_like_v7_tar(head):
            return "tar"
        return "xz" if head.startswith(XZ_MAGIC) else "bzip2"
    if len(head) == 512 and (head[257:262] == b"ustar" or _looks_like_v7_tar(head) or head == _ZERO_BLOCK):
        return "tar"  # a zero block first is the end of an empty tar, which tar(1) lists as such
    raise NotAnArchive(where, NOT_AN_ARCHIVE)


def _is_bzip2(head: bytes) -> bool:
    return (
        head.startswith(BZIP2_MAGIC)
        and len(head) >= MAGIC_BYTES
        and head[3] in b"123456789"
        and head[4:10] in _BZIP2_NEXT
    )


def _is_skippable_frame(head: bytes) -> bool:
    """A zstd skippable frame (metadata some tools put before the data)."""
    return len(head) >= 4 and 0x184D2A50 <= int.from_bytes(head[:4], "little") <= 0x184D2A5F


def _looks_like_v7_tar(head: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False


def _safe_name(archive: str, name: str) -> str:
    if name.startswith("/") or name.startswith("\\"):
        raise SourceError(archive, f"member {name!r} has an absolute path")
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../") or "/../" in f"/{name}/":
        raise SourceError(archive, f"member {name!r} has a '..' path component")
    return "" if normal == "." else normal


def _keep_limit(name: str) -> int:
    """The largest member of this name a streaming pass keeps; -1 for names nothing refers to."""
    if name == "index.json":
        return MAX_INDEX_BYTES
    if name in _KEPT_NAMES or _KEPT_PATTERN.fullmatch(name):
        return MAX_JSON_BYTES
    return -1


def _json_by_name(name: str) -> bool:
    """Whether a kept name is JSON whatever it holds: manifest.json, index.json, a docker save
    config. Such a member is kept even when it is empty or does not start like an object or an
    array, so that JSON of the wrong type (`null`, `5`, `"x"`) or no JSON at all is refused for
    what it is, in the words of a plain tar. A blob's name says nothing of its content (it may be
    a layer), so a blob is kept only when it starts like JSON."""
    return name in _KEPT_NAMES or name.endswith(".json")


_EXTENDED_HEADERS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header whole and builds GNU sparse maps from the data:
    bound the first and refuse the second (no image tool writes sparse members)."""

    def _proc_member(self, tar):
        extended = self.type in _EXTENDED_HEADERS
        if extended and self.size > MAX_EXTENDED_HEADER:
            raise tarfile.SubsequentHeaderError(
                f"extended header of {self.size} bytes at offset {self.offset}, "
                f"over the {MAX_EXTENDED_HEADER}-byte limit"
            )
        tar.count_header(self, extended)
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise tarfile.SubsequentHeaderError(f"sparse member at offset {self.offset}")
        if self.size < 0:
            # base-256 holds negative numbers; tarfile would step back and end the archive there
            raise tarfile.SubsequentHeaderError(f"member header at offset {self.offset} gives a negative size")
        try:
            return super()._proc_member(tar)
        except OverflowError:  # a pax record length past what a slice takes
            raise tarfile.SubsequentHeaderError(f"invalid extended header at offset {self.offset}") from None

    @classmethod
    def fromtarfile(cls, tar):
        # tarfile's own, which also keeps the block it read: see _BoundedTarFile.next.
        buf = tar.last_block = tar.fileobj.read(tarfile.BLOCKSIZE)
        obj = cls.frombuf(buf, tar.encoding, tar.errors)
        obj.offset = tar.fileobj.tell() - tarfile.BLOCKSIZE
        return obj._proc_member(tar)

    def _sparse(self, *args):
        raise tarfile.SubsequentHeaderError(f"sparse member at offset {self.offset}")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _sparse


class _BoundedTarFile(tarfile.TarFile):
    """A TarFile that keeps the work its extended headers cost within MAX_EXTENDED_BYTES."""

    tarinfo = _BoundedTarInfo

    def __init__(self, *args, **kwargs):
        self.extended_bytes = 0
        self.global_bytes = 0
        self.extended_in_a_row = 0
        self.last_block = b""  # the last header block read, whole or cut short
        super().__init__(*args, **kwargs)

    def next(self):
        """tarfile ends the members silently at a cut or unreadable header after the first one, as
        at the end of the archive: the block it read there tells them apart, in a file as in a
        stream (where it cannot be read again)."""
        info = super().next()
        if info is None and self.last_block.strip(b"\0"):
            if len(self.last_block) < tarfile.BLOCKSIZE:
                raise _EndsInHeader(self.offset)
            raise tarfile.ReadError(f"invalid member header at offset {self.offset}")
        return info

    def count_header(self, info: tarfile.TarInfo, extended: bool) -> None:
        # tarfile copies and applies the global records to every header that follows them.
        self.extended_bytes += self.global_bytes
        if extended:
            self.extended_bytes += info.size
            self.extended_in_a_row += 1
            if info.type == tarfile.XGLTYPE:
                self.global_bytes += info.size
        else:
            self.extended_in_a_row = 0
        if self.extended_in_a_row > MAX_EXTENDED_IN_A_ROW:
            raise tarfile.SubsequentHeaderError(
                f"more than {MAX_EXTENDED_IN_A_ROW} extended headers in a row at offset {info.offset}"
            )
        if self.extended_bytes > MAX_EXTENDED_BYTES:
            raise tarfile.SubsequentHeaderError(
                f"extended headers over the {MAX_EXTENDED_BYTES}-byte limit for an archive at offset {info.offset}"
            )


class _EndsEarly(tarfile.TarError):
    """The tar stream ends inside the data of the member named."""


class _EndsInHeader(tarfile.TarError):
    """The tar ends inside a member header, at the offset given (in the tar, once decompressed)."""

    def reason(self, what: str) -> str:
        return f"truncated tar: {what} ends inside the member header at offset {self.args[0]}"


class _Table:
    """The members of one archive, by normalised name, with the bounds on what is kept."""

    def __init__(self, where: str):
        self.where = where
        self.members: dict[str, Member] = {}
        self.headers = 0
        self.name_bytes = 0
        self.kept = 0  # bytes of member data kept, index.json aside

    def count(self) -> None:
        """Count one member header, of any type."""
        self.headers += 1
        if self.headers > MAX_MEMBERS:
            self._too_many()

    def _too_many(self) -> None:
        raise SourceError(
            self.where,
            f"more than {MAX_MEMBERS} members or {MAX_NAME_BYTES} bytes of member names: not an image archive",
        )

    def add(self, name: str, info: tarfile.TarInfo | ustar.Header, member: Member) -> None:
        if info.issym() or info.islnk():
            # Classic docker save links layers shared by several images; a link must stay inside.
            base = posixpath.dirname(name) if info.issym() else ""
            target = posixpath.normpath(posixpath.join(base, info.linkname))
            if info.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise SourceError(self.where, f"member {info.name!r} links outside the archive ({info.linkname!r})")
            if info.islnk() and target not in self.members:
                # A hard link names a member already extracted: `docker load` fails on one to a
                # later member (no such file), and skopeo reads it as empty.
                member.broken = f"is a hard link to {info.linkname!r}, which is not an earlier member"
            else:
                member.link = target
        old = self.members.get(name)
        if old is None:
            self.name_bytes += len(name)
            if self.name_bytes > MAX_NAME_BYTES:
                self._too_many()
        elif old.data is not None and name != "index.json":
            self.kept -= len(old.data)
        if member.data is not None and name != "index.json":
            self.kept += len(member.data)
        self.members[name] = member

    def drop_data(self, name: str) -> None:
        """Let go of the bytes of a member about to be written again: the later one wins, and
        holding both could take twice MAX_INDEX_BYTES."""
        old = self.members.get(name)
        if old is not None:
            if old.data is not None and name != "index.json":
                self.kept -= len(old.data)
            old.data = old.pieces = None

    def can_keep(self, name: str, size: int) -> None:
        if name == "index.json":
            return
        old = self.members.get(name)
        freed = len(old.data) if old is not None and old.data is not None else 0
        if self.kept - freed + size > MAX_KEPT_BYTES:
            raise SourceError(
                self.where,
                f"more than {MAX_KEPT_BYTES} bytes of members that may be manifests or configs, the limit for a "
                "compressed or piped archive (an uncompressed tar file is read by seeking and has no such limit)",
            )

    def fix_link_sizes(self) -> None:
        for member in self.members.values():
            if member.link:
                target = self.members.get(member.link)
                if target is not None:
                    member.size = target.size
                    member.digest = target.digest
                    member.diff_id = target.diff_id


class TarMembers:
    """The regular-file members of one image tarball, by normalised path.

    `path` is the file as given; `where` is the same fit for messages. `file`, for an uncompressed
    tar, is the file the members were found in, kept open (and closed with this object) so that
    their bytes are read from it: opened again by its path, a file removed since ended the run with
    a traceback, and one replaced since gave another archive's bytes at these offsets.
    """

    def __init__(self, path: str, members: dict[str, Member], file=None, where: str | None = None):
        self.path = path
        self.where = printable(path) if where is None else where
        self._members = members
        self._fd = -1
        if file is not None:
            self._fd = file.fileno()
            weakref.finalize(self, file.close)

    @classmethod
    def open(cls, path: str, compression: str | None = None, hash_members: bool = False) -> "TarMembers":
        """`hash_members` hashes every member of a compressed archive during its one pass (for --verify).

        `-`, /dev/stdin, /dev/fd/0 and /proc/self/fd/0 read standard input in one streaming pass,
        plain or compressed.
        """
        if path in STDIN_NAMES:
            return cls._from_stdin(path, hash_members)
        where = printable(path)
        try:
            # Small buffer: headers are 512 bytes and member data is skipped with seeks.
            f = open_readable(path, buffering=4096)
        except OSError as exc:
            raise SourceError(where, exc.strerror or str(exc)) from None
        try:
            kind = compression or _compression(f.read(512), where)
            if kind == "tar":
                members = cls(path, _scan_seekable(f, where), f, where)
                f = None  # the members' now
                return members
            f.seek(0)
            return cls(path, _scan_stream(f, where, kind, hash_members), None, where)
        except OSError as exc:
            raise SourceError(where, exc.strerror or str(exc)) from None
        finally:
            if f is not None:
                f.close()

    @classmethod
    def _from_stdin(cls, path: str, hash_members: bool) -> "TarMembers":
        where = STDIN_WHERE if path == "-" else printable(path)
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise SourceError(where, "standard input is closed")
        try:
            interactive = os.isatty(stdin.fileno())
        except (OSError, ValueError):  # not a real descriptor (stdin replaced in-process)
            interactive = False
        if interactive:
            raise SourceError(where, "standard input is a terminal, not an archive")
        try:
            head = stdin.read(512)
        except OSError as exc:
            raise SourceError(where, exc.strerror or str(exc)) from None
        kind = _compression(head, where)
        return cls(path, _scan_stream(_Prefixed(head, stdin), where, kind, hash_members, piped=True), None, where)

    def _resolve(self, name: str) -> Member | None:
        seen = 0
        member = self._members.get(posixpath.normpath(name))
        while member is not None and member.link:
            seen += 1
            if seen > 16:
                raise SourceError(self.where, f"member {name!r}: too many levels of links")
            member = self._members.get(member.link)
        if member is not None and member.broken:
            raise SourceError(self.where, f"member {name!r} {member.broken}")
        return member

    def same(self, name: str) -> tuple[int, bool] | None:
        """What a name stands for once links are followed: equal for two names of one member,
        and whether its bytes are held in memory (else each read goes to the file again)."""
        member = self._resolve(name)
        return None if member is None else (id(member), member.data is not None or member.pieces is not None)

    def size(self, name: str) -> int | None:
        member = self._resolve(name)
        return None if member is None else member.size

    def layer_size(self, name: str) -> int | None:
        """A docker save layer's size as `docker load` and skopeo read it: the member's size, or
        its size decompressed when it is a gzip, zstd, xz or bzip2 file (go-containerregistry writes
        its layers gzip'ed). Only such a layer is read; of any other, its first bytes. None when the
        member is absent."""
        member = self._resolve(name)
        if member is None:
            return None
        if member.layer_size is None:
            if member.undecodable:
                raise SourceError(self.where, member.undecodable)
            if name.startswith("blobs/") or not is_compressed(self._head(name, member)):
                member.layer_size = member.size
            else:
                member.layer_size, member.diff_id = measure_layer(self._chunks(name, member), self.where, name)
        return member.layer_size

    def diff_id(self, name: str) -> str | None:
        """Hex sha256 of a layer member's content as `docker load` reads it (`measure_layer`); None
        when the member is absent."""
        member = self._resolve(name)
        if member is None:
            return None
        if member.diff_id:
            return member.diff_id
        if member.digest.startswith("sha256:"):
            return member.digest.partition(":")[2]  # a Docker 25+ save's blob: an uncompressed tar
        if member.undecodable:
            raise SourceError(self.where, member.undecodable)
        member.layer_size, member.diff_id = measure_layer(self._chunks(name, member), self.where, name)
        return member.diff_id

    def _chunks(self, name: str, member: Member):
        if member.data is not None:
            return iter([member.data])
        if member.pieces is not None:
            return iter(member.pieces)
        if member.offset < 0:
            raise SourceError(self.where, f"member {name!r} was not hashed during the streaming pass")
        return self._file_chunks(name, member)

    def _head(self, name: str, member: Member) -> bytes:
        if member.offset < 0 or member.data is not None or member.pieces is not None:
            return _head_of(self._chunks(name, member))
        try:
            return os.pread(self._fd, min(MAGIC_BYTES, member.size), member.offset)
        except OSError as exc:
            raise SourceError(self.where, exc.strerror or str(exc)) from None

    def hexdigest(self, name: str, algorithm: str) -> str | None:
        """Hex digest of a member's content by `algorithm` (one of `DIGEST_ALGORITHMS`), read in
        chunks; None when the member is absent."""
        member = self._resolve(name)
        if member is None:
            return None
        if member.digest:
            done, _, hexpart = member.digest.partition(":")
            if done == algorithm:
                return hexpart
        if member.data is None and member.pieces is None and member.offset < 0:
            raise SourceError(self.where, f"member {name!r} was not hashed by {algorithm} during the streaming pass")
        return _digest(self._chunks(name, member), algorithm)

    def _readable(self, name: str, limit: int, what: str) -> Member:
        member = self._resolve(name)
        if member is None:
            raise SourceError(self.where, f"{what} {name!r} is missing from the archive")
        if member.size > limit:
            raise SourceError(self.where, f"{what} {name!r} is {member.size} bytes, over the {limit}-byte limit")
        if member.data is None and member.pieces is None and member.offset < 0:
            raise SourceError(self.where, f"{what} {name!r} {member.unkept or 'is not JSON'}")
        return member

    def read(self, name: str, limit: int, what: str) -> bytes:
        member = self._readable(name, limit, what)
        if member.data is not None:
            return member.data
        if member.pieces is not None:
            return b"".join(member.pieces)
        return b"".join(self._file_chunks(name, member))

    def chunks(self, name: str, limit: int, what: str):
        """A function that returns the member's bytes in pieces, from memory or from the file:
        for an index.json too large to hold as parsed JSON."""
        member = self._readable(name, limit, what)
        if member.data is not None:
            view = memoryview(member.data)
            return lambda: (view[i : i + _STREAM_BUFSIZE] for i in range(0, len(view), _STREAM_BUFSIZE))
        if member.pieces is not None:
            pieces = member.pieces
            return lambda: iter(pieces)
        return lambda: self._file_chunks(name, member)

    def _file_chunks(self, name: str, member: Member):
        offset, end = member.offset, member.offset + member.size
        while offset < end:
            try:
                chunk = os.pread(self._fd, min(end - offset, _STREAM_BUFSIZE), offset)
            except OSError as exc:
                raise SourceError(self.where, exc.strerror or str(exc)) from None
            if not chunk:
                raise SourceError(self.where, f"truncated tar: {name!r} ends early")
            offset += len(chunk)
            yield chunk


def _scan_seekable(raw, where: str) -> dict[str, Member]:
    file_size = os.fstat(raw.fileno()).st_size
    table = _Table(where)
    if ustar.scan(raw.fileno(), file_size, lambda header: _take(table, header, file_size)):
        table.fix_link_sizes()
        return table.members
    table = _Table(where)  # not plain ustar: tarfile reads it all again
    try:
        raw.seek(0)
        with _BoundedTarFile.open(fileobj=raw, mode="r:") as tar:
            for info in tar:
                tar.members.clear()  # tarfile keeps every header it reads; a long archive would hold them all
                _take(table, info, file_size)
    except _EndsInHeader as exc:
        raise SourceError(where, exc.reason("the file")) from None
    except tarfile.TarError as exc:
        raise SourceError(where, f"not a readable tar archive ({exc})") from None
    except EOFError:
        raise SourceError(where, "truncated tar") from None
    except (ValueError, OSError) as exc:
        # Headers tarfile trips over rather than refuses: a pax hdrcharset that is not UTF-8, a size
        # past what seek takes, a negative one that seeks before the start.
        text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        raise SourceError(where, f"not a readable tar archive ({printable(text)})") from None
    table.fix_link_sizes()
    return table.members


# Go's archive/tar, which docker load and skopeo read archives with, refuses a pax record these
# values fail (strconv.ParseInt and its parsePAXTime), where tarfile reads `int(" 1")` and `float("nan")`.
_PAX_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_PAX_TIME = re.compile(r"([+-]?[0-9]+)(?:\.[0-9]*)?", re.ASCII)
_PAX_NAMES = frozenset({"path", "linkpath", "uname", "gname"})


def _check_pax(where: str, info: tarfile.TarInfo | ustar.Header) -> None:
    records = getattr(info, "pax_headers", None)
    if not records:
        return
    for key, value in records.items():
        if not key or "=" in key or "\0" in key or (key in _PAX_NAMES and "\0" in value):
            bad = True
        elif not value:
            continue  # the ustar field stands, as Go reads an empty record
        elif key in ("size", "uid", "gid"):
            bad = not _PAX_INTEGER.fullmatch(value) or not -(2**63) <= int(value) < 2**63
        elif key in ("mtime", "atime", "ctime"):
            match = _PAX_TIME.fullmatch(value)
            bad = match is None or not -(2**63) <= int(match[1]) < 2**63
        else:
            continue
        if bad:
            record = f"{key}={value}"[:100]
            raise SourceError(where, f"invalid tar header: member {info.name!r} has the pax record {record!r}")


def _take(table: _Table, info: tarfile.TarInfo | ustar.Header, file_size: int) -> None:
    where = table.where
    table.count()
    _check_pax(where, info)
    if info.isreg():
        if info.offset_data + info.size > file_size:
            raise SourceError(where, f"truncated tar: member {info.name!r} ends past the end of the file")
        table.add(_safe_name(where, info.name), info, Member(size=info.size, offset=info.offset_data))
    elif info.issym() or info.islnk():
        table.add(_safe_name(where, info.name), info, Member(size=0))
    else:
        _safe_name(where, info.name)


class _Prefixed(io.RawIOBase):
    """Standard input with its first bytes, read to tell the format, put back in front."""

    def __init__(self, head: bytes, raw):
        self._head = memoryview(head)
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if len(self._head):
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        return self._raw.readinto(buffer)


class _ZstdFrames(io.RawIOBase):
    """Passes a zstd stream through while following its frame and block headers.

    zstandard's reader returns a short read, not an error, when its input stops inside a frame;
    following the headers tells a cut stream from a whole one without seeking, so pipes work too.
    """

    def __init__(self, raw):
        self._raw = raw
        self.offset = 0  # bytes passed through
        self._skip = 0  # bytes to pass over: header fields, a block's content, a checksum
        self._head = bytearray()
        self._want = 4
        self._state = "magic"  # magic, skippable, descriptor, block; lost once it is not zstd
        self._checksum = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._raw.readinto(buffer)
        if count:
            self._follow(memoryview(buffer)[:count])
            self.offset += count
        return count

    def _follow(self, data) -> None:
        pos, end = 0, len(data)
        while pos < end and self._state != "lost":
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._want - len(self._head), end - pos)
            self._head += data[pos : pos + step]
            pos += step
            if len(self._head) == self._want:
                head = bytes(self._head)
                self._head.clear()
                self._header(head)

    def _header(self, head: bytes) -> None:
        if self._state == "magic":
            if _is_skippable_frame(head):
                self._state, self._want = "skippable", 4
            elif head == ZSTD_MAGIC:
                self._state, self._want = "descriptor", 1
            else:
                self._state = "lost"  # not zstd: the decompressor says so
        elif self._state == "skippable":
            self._skip = int.from_bytes(head, "little")
            self._state, self._want = "magic", 4
        elif self._state == "descriptor":
            flags = head[0]
            single_segment = flags >> 5 & 1
            self._checksum = 4 if flags & 4 else 0
            window = 0 if single_segment else 1
            dictionary = (0, 1, 2, 4)[flags & 3]
            content_size = (single_segment, 2, 4, 8)[flags >> 6]
            self._skip = window + dictionary + content_size
            self._state, self._want = "block", 3
        else:
            value = int.from_bytes(head, "little")
            self._skip = 1 if (value >> 1) & 3 == 1 else value >> 3  # an RLE block stores one byte
            if value & 1:
                self._skip += self._checksum
                self._state, self._want = "magic", 4

    @property
    def lost(self) -> bool:
        return self._state == "lost"

    def cut(self) -> str:
        """'' when what passed through ends between frames, else where it was cut."""
        if self._state == "lost" or (self._state == "magic" and not self._head and not self._skip):
            return ""
        return f"the archive ends inside a frame, at byte {self.offset}"


class _CorruptStream(Exception):
    """Bytes an xz or bzip2 decompressor refuses, with its words for them (bz2 says it as OSError,
    which is also what a failing read raises)."""


class _Streams(io.RawIOBase):
    """Decompresses xz or bzip2 streams one after another, as xz(1) and bzip2(1) read them, a
    buffer at a time. Bytes after a whole stream that start no other end the data, as in Python's
    own readers and bzip2(1) (xz(1) takes zeros there, a tape's padding); input that ends inside a
    stream is EOFError.

    Not lzma.LZMAFile: it takes no memory limit, and an xz header may ask for a 4 GiB dictionary."""

    def __init__(self, raw, new):
        self._raw = raw
        self._new = new
        self._decompressor = new()
        self._error = lzma.LZMAError if isinstance(self._decompressor, lzma.LZMADecompressor) else OSError
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not len(buffer):
            return 0  # a decompressor asked for nothing gives nothing, and would be asked for ever
        while not self._done:
            decompressor = self._decompressor
            if decompressor.eof:
                rest = decompressor.unused_data or self._raw.read(_RAW_READ)
                if not rest:
                    self._done = True
                    break
                self._decompressor = decompressor = self._new()
                try:
                    data = decompressor.decompress(rest, len(buffer))
                except self._error:
                    self._done = True  # not another stream: what trails the archive
                    break
            else:
                rest = b""
                if decompressor.needs_input:
                    rest = self._raw.read(_RAW_READ)
                    if not rest:
                        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                try:
                    data = decompressor.decompress(rest, len(buffer))
                except self._error as exc:
                    raise _CorruptStream(_codec_reason(exc)) from None
            if data:
                buffer[: len(data)] = data
                return len(data)
        return 0


_RAW_READ = 1 << 16


def _xz_decompressor() -> lzma.LZMADecompressor:
    return lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)


def _codec_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, lzma.LZMAError) and text == "Memory usage limit exceeded":  # LZMA_MEMLIMIT_ERROR
        return f"the stream needs more than {XZ_MEMLIMIT >> 20} MiB of memory to decompress"
    return text


def _decompressor(source, compression: str):
    if compression == "xz":
        return _Streams(source, _xz_decompressor)
    if compression == "bzip2":
        return _Streams(source, bz2.BZ2Decompressor)
    if compression == "gzip":
        from isal import igzip

        return igzip.IGzipFile(fileobj=source, mode="rb")
    if compression == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(source, read_size=_STREAM_BUFSIZE, closefd=False)
        return io.BufferedReader(reader, _STREAM_BUFSIZE)
    return source


# What a pipe may carry past the archive's end (a tar's record padding, a compressor's trailer:
# KiBs) before it is given up, so that `cat app.tar /dev/zero |` ends.
_MAX_TRAILING = 64 << 20


class _Endless(Exception):
    """A pipe went on past the archive's end for more than _MAX_TRAILING bytes."""


class _GzipPadding(io.RawIOBase):
    """Passes piped gzip through, counting its zero bytes in a row. A gzip reader takes zeros after
    a member as padding and reads on until something else or the end comes, so `cat app.tar.gz
    /dev/zero |` was read for ever; compressed data holds no long runs of zeros."""

    def __init__(self, raw):
        self._raw = raw
        self._zeros = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._raw.readinto(buffer)
        if not count:
            return count
        view = memoryview(buffer)[:count]
        if view[-1]:  # most reads: no copy
            self._zeros = 0
            return count
        kept = len(bytes(view).rstrip(b"\0"))
        self._zeros = self._zeros + count if kept == 0 else count - kept
        if self._zeros > _MAX_TRAILING:
            raise _Endless
        return count


def _drain(source, frames: _ZstdFrames | None, piped: bool) -> None:
    """Read the rest of the input: a zstd tail must be whole, and a pipe's writer must not get EPIPE."""
    buffer = bytearray(_STREAM_BUFSIZE)
    trailing = 0
    while read := source.readinto(buffer):
        if not piped and (frames is None or frames.lost):
            return
        trailing += read
        if piped and trailing > _MAX_TRAILING:
            raise _Endless


def _cut(source, frames: _ZstdFrames | None, piped: bool) -> str:
    """For zstd, '' when the input, read to its end, is whole frames; else where it was cut."""
    if frames is None:
        return ""
    try:
        _drain(source, frames, piped)
    except (OSError, ValueError, _Endless):
        return ""  # the read error is the one to report
    return frames.cut()


def _scan_stream(
    raw, where: str, compression: str, hash_members: bool = False, piped: bool = False
) -> dict[str, Member]:
    """One pass over a compressed or piped tar, keeping what `_keep_limit` allows."""
    frames = _ZstdFrames(raw) if compression == "zstd" else None
    source = frames if frames is not None else raw
    label = "tar" if compression == "tar" else f"{compression} tar"
    table = _Table(where)
    opened = False
    try:
        stream = _decompressor(_GzipPadding(source) if piped and compression == "gzip" else source, compression)
        try:
            with _BoundedTarFile.open(fileobj=stream, mode="r|", bufsize=_STREAM_BUFSIZE) as tar:
                opened = True
                for info in tar:
                    tar.members.clear()  # tarfile keeps every header it reads; a long archive would hold them all
                    table.count()
                    _check_pax(where, info)
                    if info.isreg():
                        name = _safe_name(where, info.name)
                        table.drop_data(name)
                        try:
                            table.add(name, info, _stream_member(tar, info, name, table, hash_members))
                        except tarfile.ReadError:  # tarfile's word for data cut short
                            raise _EndsEarly(info.name) from None
                    elif info.issym() or info.islnk():
                        table.add(_safe_name(where, info.name), info, Member(size=0))
                    else:
                        _safe_name(where, info.name)
                    _skip_data(tar, info)
            if piped:
                _drain(source, frames, piped)
        finally:
            if stream is not source:
                stream.close()
    except _Endless:
        reason = f"the input goes on for more than {_MAX_TRAILING >> 20} MiB past the {label} archive's end"
        raise SourceError(where, reason) from None
    except tarfile.TarError as exc:
        cut = _cut(source, frames, piped)
        if cut:
            raise SourceError(where, f"truncated zstd archive ({cut})") from None
        if isinstance(exc, _EndsEarly):
            reason = f"truncated tar: member {exc.args[0]!r} ends past the end of the archive"
            raise SourceError(where, reason) from None
        if isinstance(exc, _EndsInHeader):
            raise SourceError(
                where, exc.reason("the archive" if compression == "tar" else "the uncompressed archive")
            ) from None
        error = SourceError if opened else NotAnArchive
        raise error(where, f"not a readable {label} archive ({exc})") from None
    except _CorruptStream as exc:
        raise SourceError(where, f"corrupt {compression} archive ({exc})") from None
    except (EOFError, OSError, ValueError) as exc:
        text = str(exc) or type(exc).__name__
        raise SourceError(where, f"truncated or corrupt {compression} archive ({text})") from None
    except Exception as exc:  # the codecs raise their own: zstandard's ZstdError, isal's IsalError
        if compression == "zstd" and type(exc).__name__ == "ZstdError":
            raise SourceError(where, f"corrupt zstd archive ({exc})") from None
        # OverflowError: a gzip header (its name or comment field) longer than isal reads ahead
        if compression == "gzip" and (type(exc).__name__ == "IsalError" or isinstance(exc, OverflowError)):
            raise SourceError(where, f"corrupt gzip archive ({exc})") from None
        raise
    cut = _cut(source, frames, piped)
    if cut:
        raise SourceError(where, f"truncated zstd archive ({cut})")
    table.fix_link_sizes()
    return table.members


def _stream_member(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str, table: _Table, hash_members: bool) -> Member:
    """The member the stream is at, its bytes kept when `_keep_limit` allows and they are JSON by
    name or look like JSON."""
    member = Member(size=info.size)
    limit = _keep_limit(name)
    wanted = info.size <= limit
    handle = tar.extractfile(info) if wanted or hash_members else None
    first = handle.read(1) if wanted else b""
    pieces = None
    if wanted and first and first[0] in _SCALAR_STARTS:
        first += handle.read(4)
    if (
        (wanted and _json_by_name(name))
        or (first and first[0] in _JSON_STARTS)
        or (first and first[0] in _SCALAR_STARTS and _SCALAR_HEAD.match(first))
    ):
        # Kept whatever it holds, so that it is parsed, and refused, as the same member of a plain tar.
        table.can_keep(name, info.size)
        pieces = _read_pieces(handle, first, info)
        if name == "index.json":
            member.pieces = pieces  # up to MAX_INDEX_BYTES: joining would hold it twice
        else:
            member.data = b"".join(pieces)
    elif first and first[0] in MAY_NOT_BE_UTF8:
        # Not kept, but refused for what it is, as the same member of a plain tar is when parsed.
        first += handle.read(3)
        problem = encoding_problem(first)
        if problem:
            member.unkept = f"is not valid JSON ({problem})"
    elif limit < 0:
        member.unkept = _UNKEPT
    if not name.startswith("blobs/") and (hash_members or limit < 0):
        # Any member outside blobs/ may be a docker save layer, which manifest.json may name after
        # the stream has passed it: one that is compressed is measured now (as `layer_size` would
        # have it read), an uncompressed one needs its first bytes, or all of them to be hashed.
        handle = handle or tar.extractfile(info)
        if pieces is None and len(first) < MAGIC_BYTES:
            first += handle.read(MAGIC_BYTES - len(first))
        chunks = _rest(handle, first, pieces)
        if hash_members or is_compressed(first if pieces is None else _head_of(pieces)):
            try:
                member.layer_size, member.diff_id = measure_layer(chunks, table.where, name)
            except _Undecodable as exc:
                # said when an image asks for this layer: an archive's other images do not fail for it
                member.undecodable = exc.reason
                for _ in chunks:
                    pass
        else:
            member.layer_size = info.size
    elif hash_members:
        algorithm = _algorithm_of(name)
        member.digest = f"{algorithm}:{_digest(_rest(handle, first, pieces), algorithm)}"
    return member


def _read_pieces(handle, first: bytes, info: tarfile.TarInfo) -> list[bytes]:
    pieces = [first]
    left = info.size - len(first)
    while left:
        piece = handle.read(min(left, _STREAM_BUFSIZE))
        if not piece:
            raise _EndsEarly(info.name)
        pieces.append(piece)
        left -= len(piece)
    return pieces


def _skip_data(tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
    """Read up to the next header. tarfile's own skip in a stream reads on past the end of the
    input for as many blocks as the member says it has: 10**30 bytes would never end."""
    stream = tar.fileobj
    while (left := tar.offset - stream.tell()) > 0:
        if not stream.read(min(left, _STREAM_BUFSIZE)):
            raise _EndsEarly(info.name)


def _rest(handle, first: bytes, pieces: list[bytes] | None):
    """The chunks of a member of which `first` was read from `handle`, or all of it as `pieces`."""
    if pieces is not None:
        yield from pieces
        return
    yield first
    while chunk := handle.read(_STREAM_BUFSIZE):
        yield chunk


class _Undecodable(SourceError):
    """A layer whose compressed bytes do not decompress."""


class _Chunks(io.RawIOBase):
    def __init__(self, chunks):
        self._chunks = chunks
        self._left = memoryview(b"")
        self.failure: BaseException | None = None
        self.passed = 0  # bytes taken from `chunks`

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not len(self._left):
            try:
                chunk = next(self._chunks, None)
            except BaseException as exc:
                self.failure = exc
                raise
            if chunk is None:
                return 0
            self._left = memoryview(chunk)
            self.passed += len(chunk)
        count = min(len(buffer), len(self._left))
        buffer[:count] = self._left[:count]
        self._left = self._left[count:]
        return count


def _head_of(chunks, taken: list[bytes] | None = None) -> bytes:
    """The first MAGIC_BYTES of what `chunks` hold, the chunks read for it appended to `taken`."""
    head = b""
    for chunk in chunks:
        if taken is not None:
            taken.append(chunk)
        head += chunk[: MAGIC_BYTES - len(head)]
        if len(head) == MAGIC_BYTES:
            break
    return head


def is_compressed(head: bytes) -> bool:
    """Whether a file's first MAGIC_BYTES are those of a compressor `docker load` reads a layer of."""
    return head.startswith((GZIP_MAGIC, ZSTD_MAGIC, XZ_MAGIC)) or _is_skippable_frame(head) or _is_bzip2(head)


# No gzip stream expands more than 1,032-fold; a zstd, xz or bzip2 one can far more (zstd 30 times
# more), so that counting a small layer's size would take hours. A layer past this is refused
# rather than counted.
MAX_LAYER_EXPANSION = 1032
_EXPANSION_SLACK = 1 << 20


def measure_layer(chunks, where: str, name: str) -> tuple[int, str]:
    """(size, hex sha256) of a docker save layer's tar. go-containerregistry (crane) writes its
    layers gzip-compressed, and `docker load` decompresses a gzip, zstd, xz or bzip2 layer before
    it checks the diff_id (skopeo counts its size so too), so such a layer is read decompressed, a
    piece at a time."""
    chunks = iter(chunks)
    taken: list[bytes] = []
    head = _head_of(chunks, taken)  # a first chunk may be a byte, as a stream read it to tell JSON
    source = _Chunks(itertools.chain(taken, chunks))
    reader = io.BufferedReader(source, _STREAM_BUFSIZE)
    if head.startswith(XZ_MAGIC):
        stream = io.BufferedReader(_Streams(reader, _xz_decompressor), _STREAM_BUFSIZE)
    elif _is_bzip2(head):
        stream = io.BufferedReader(_Streams(reader, bz2.BZ2Decompressor), _STREAM_BUFSIZE)
    elif head.startswith(GZIP_MAGIC):
        from isal import igzip

        stream = igzip.IGzipFile(fileobj=reader, mode="rb")
    elif head.startswith(ZSTD_MAGIC) or _is_skippable_frame(head):
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(reader, read_size=_STREAM_BUFSIZE, read_across_frames=True)
    else:
        stream = reader
    digest = hashlib.sha256()
    size = 0
    try:
        while chunk := stream.read(_STREAM_BUFSIZE):
            digest.update(chunk)
            size += len(chunk)
            if size > MAX_LAYER_EXPANSION * source.passed + _EXPANSION_SLACK:
                reason = f"layer {name!r} expands more than {MAX_LAYER_EXPANSION}-fold, as no gzip layer can"
                raise _Undecodable(where, reason)
    except _Undecodable:
        raise
    except Exception as exc:  # the codecs raise their own: zstandard's ZstdError, isal's IsalError
        if exc is source.failure:
            raise  # reading the archive failed, not decompressing the layer
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _Undecodable(where, f"layer {name!r} cannot be decompressed ({reason})") from None
    return size, digest.hexdigest()


def _algorithm_of(name: str) -> str:
    """The algorithm a member's digest will be asked in: a layout's blob is named by it, anything
    else (docker save's layer.tar, checked against a diff_id) is sha256."""
    match = _BLOB_ALGORITHM.match(name)
    return match.group(1) if match else "sha256"


def _digest(chunks, algorithm: str) -> str:
    """Hex digest by `algorithm` of what `chunks` hold."""
    digest = hashlib.new(algorithm)
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()
