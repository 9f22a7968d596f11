"""Reading image tarballs by their headers, without extracting and without reading layers.

An uncompressed tar is scanned header by header with seeks over member data; small JSON
members are then read on demand. A gzip or zstd tar is decompressed once, in one streaming
pass, keeping only members that look like JSON and are small enough to be a manifest or a
config: memory stays bounded and no member is read twice.
"""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tarfile
from dataclasses import dataclass

from ..errors import SourceError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_STREAM_BUFSIZE = 1 << 20
# A stream member is kept when it starts with one of these and is small enough to be JSON we need.
_JSON_STARTS = frozenset(b"{[ \t\r\n")


@dataclass
class Member:
    size: int
    offset: int = -1  # of the data, in an uncompressed tar
    data: bytes | None = None  # kept from a streaming pass
    link: str = ""  # resolved target of a symlink or hard link
    sha256: str = ""  # hex digest of the content, when a streaming pass was asked to hash


def sniff(path: str) -> str:
    """'gzip', 'zstd', 'tar', or raise SourceError for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise SourceError(path, exc.strerror or str(exc)) from None
    if not head:
        raise SourceError(path, "empty file")
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if len(head) == 512 and (head[257:262] == b"ustar" or _looks_like_v7_tar(head)):
        return "tar"
    raise SourceError(path, "not a tar archive (nor gzip or zstd)")


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


class TarMembers:
    """The regular-file members of one image tarball, by normalised path."""

    def __init__(self, path: str, members: dict[str, Member], reopen):
        self.path = path
        self._members = members
        self._reopen = reopen

    @classmethod
    def open(cls, path: str, compression: str | None = None, hash_members: bool = False) -> "TarMembers":
        """`hash_members` hashes every member of a compressed archive during its one pass (for --verify)."""
        compression = compression or sniff(path)
        if compression == "tar":
            return cls(path, _scan_seekable(path), lambda: open(path, "rb"))
        return cls(path, _scan_stream(path, compression, hash_members), None)

    def names(self) -> list[str]:
        return list(self._members)

    def _resolve(self, name: str) -> Member | None:
        seen = 0
        member = self._members.get(posixpath.normpath(name))
        while member is not None and member.link:
            seen += 1
            if seen > 16:
                raise SourceError(self.path, f"member {name!r}: too many levels of links")
            member = self._members.get(member.link)
        return member

    def size(self, name: str) -> int | None:
        member = self._resolve(name)
        return None if member is None else member.size

    def sha256(self, name: str) -> str | None:
        """Hex sha256 of a member's content, read in chunks; None when the member is absent."""
        member = self._resolve(name)
        if member is None:
            return None
        if member.sha256:
            return member.sha256
        if member.data is not None:
            return hashlib.sha256(member.data).hexdigest()
        if member.offset < 0:
            raise SourceError(self.path, f"member {name!r} was not hashed during the streaming pass")
        digest = hashlib.sha256()
        remaining = member.size
        with self._reopen() as f:
            f.seek(member.offset)
            while remaining:
                chunk = f.read(min(remaining, _STREAM_BUFSIZE))
                if not chunk:
                    raise SourceError(self.path, f"truncated tar: {name!r} ends early")
                digest.update(chunk)
                remaining -= len(chunk)
        return digest.hexdigest()

    def read(self, name: str, limit: int, what: str) -> bytes:
        where = self.path
        member = self._resolve(name)
        if member is None:
            raise SourceError(where, f"{what} {name!r} is missing from the archive")
        if member.size > limit:
            raise SourceError(where, f"{what} {name!r} is {member.size} bytes, over the {limit}-byte limit")
        if member.data is not None:
            return member.data
        if member.offset < 0:
            raise SourceError(where, f"{what} {name!r} is not JSON")
        with self._reopen() as f:
            f.seek(member.offset)
            data = f.read(member.size)
        if len(data) != member.size:
            raise SourceError(where, f"truncated tar: {name!r} ends early")
        return data


def _add(archive: str, members: dict[str, Member], info: tarfile.TarInfo, member: Member) -> None:
    name = _safe_name(archive, info.name)
    if info.issym() or info.islnk():
        # Classic docker save links layers shared by several images; a link must stay inside.
        base = posixpath.dirname(name) if info.issym() else ""
        target = posixpath.normpath(posixpath.join(base, info.linkname))
        if info.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise SourceError(archive, f"member {info.name!r} links outside the archive ({info.linkname!r})")
        member.link = target
    members[name] = member


def _scan_seekable(path: str) -> dict[str, Member]:
    members: dict[str, Member] = {}
    try:
        file_size = os.path.getsize(path)
        # Small buffer: headers are 512 bytes and member data is skipped with seeks.
        with open(path, "rb", buffering=4096) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            for info in tar:
                if info.isreg():
                    if info.offset_data + info.size > file_size:
                        raise SourceError(path, f"truncated tar: member {info.name!r} ends past the end of the file")
                    _add(path, members, info, Member(size=info.size, offset=info.offset_data))
                elif info.issym() or info.islnk():
                    _add(path, members, info, Member(size=0))
                else:
                    _safe_name(path, info.name)
            # tarfile ends the iteration silently at a cut or unreadable header after the first one.
            raw.seek(tar.offset)
            tail = raw.read(512)
            if tail.strip(b"\0"):
                if len(tail) < 512:
                    raise SourceError(path, f"truncated tar: the file ends inside the member header at offset {tar.offset}")
                raise SourceError(path, f"not a readable tar archive (invalid member header at offset {tar.offset})")
    except tarfile.TarError as exc:
        raise SourceError(path, f"not a readable tar archive ({exc})") from None
    except EOFError:
        raise SourceError(path, "truncated tar") from None
    except OSError as exc:
        raise SourceError(path, exc.strerror or str(exc)) from None
    _fix_link_sizes(members)
    return members


def _open_decompressed(path: str, compression: str):
    raw = open(path, "rb")
    if compression == "gzip":
        from isal import igzip

        return igzip.IGzipFile(fileobj=raw, mode="rb")
    if compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_size=_STREAM_BUFSIZE, closefd=True), _STREAM_BUFSIZE)
    raise SourceError(path, f"unsupported compression {compression}")


def _check_zstd_whole(path: str, compression: str) -> None:
    """Decompression ended without an error: make sure the zstd input did not stop inside a frame."""
    if compression == "zstd":
        cut = _zstd_truncation(path)
        if cut:
            raise SourceError(path, f"truncated zstd archive ({cut})")


def _zstd_truncation(path: str) -> str:
    """'' when the file is whole zstd frames, else where it ends early. Reads frame and block headers only.

    zstandard's stream_reader returns a short read, not an error, when the input stops inside a frame.
    """
    import zstandard

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos < size:
            f.seek(pos)
            head = f.read(18)
            magic = int.from_bytes(head[:4], "little")
            if 0x184D2A50 <= magic <= 0x184D2A5F:  # skippable frame
                pos += 8 + int.from_bytes(head[4:8], "little")
                continue
            try:
                params = zstandard.get_frame_parameters(head)
                pos += zstandard.frame_header_size(head)
            except zstandard.ZstdError:
                return "the file ends inside a frame header" if pos + len(head) == size and len(head) < 18 else ""
            while True:
                f.seek(pos)
                block = f.read(3)
                if len(block) < 3:
                    return f"the file ends inside a frame, at byte {size}"
                value = int.from_bytes(block, "little")
                kind, block_size = (value >> 1) & 3, value >> 3
                pos += 3 + (1 if kind == 1 else block_size)  # an RLE block stores one byte
                if value & 1:
                    break
            pos += 4 if params.has_checksum else 0
        return f"the file ends inside a frame, at byte {size}" if pos > size else ""


def _scan_stream(path: str, compression: str, hash_members: bool = False) -> dict[str, Member]:
    from .parse import MAX_JSON_BYTES

    members: dict[str, Member] = {}
    try:
        with _open_decompressed(path, compression) as stream, tarfile.open(
            fileobj=stream, mode="r|", bufsize=_STREAM_BUFSIZE
        ) as tar:
            for info in tar:
                if info.isreg():
                    member = Member(size=info.size)
                    small = info.size <= MAX_JSON_BYTES
                    handle = tar.extractfile(info) if small or hash_members else None
                    first = handle.read(1) if small else b""
                    if first and first[0] in _JSON_STARTS:
                        member.data = first + handle.read()
                        if len(member.data) != info.size:
                            raise SourceError(path, f"truncated archive: member {info.name!r} ends early")
                    if hash_members:
                        member.sha256 = _hash_rest(handle, first, member.data)
                    _add(path, members, info, member)
                elif info.issym() or info.islnk():
                    _add(path, members, info, Member(size=0))
                else:
                    _safe_name(path, info.name)
    except tarfile.TarError as exc:
        _check_zstd_whole(path, compression)
        raise SourceError(path, f"not a readable {compression} tar archive ({exc})") from None
    except (EOFError, OSError, ValueError) as exc:
        text = str(exc) or type(exc).__name__
        raise SourceError(path, f"truncated or corrupt {compression} archive ({text})") from None
    except Exception as exc:  # zstandard raises its own ZstdError
        if type(exc).__name__ == "ZstdError":
            raise SourceError(path, f"corrupt zstd archive ({exc})") from None
        raise
    _check_zstd_whole(path, compression)
    _fix_link_sizes(members)
    return members


def _hash_rest(handle, first: bytes, data: bytes | None) -> str:
    """sha256 of a member whose first bytes (or all of it, `data`) were already read from `handle`."""
    if data is not None:
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256(first)
    while chunk := handle.read(_STREAM_BUFSIZE):
        digest.update(chunk)
    return digest.hexdigest()


def _fix_link_sizes(members: dict[str, Member]) -> None:
    for member in members.values():
        if member.link:
            target = members.get(member.link)
            if target is not None:
                member.size = target.size
                member.sha256 = target.sha256
