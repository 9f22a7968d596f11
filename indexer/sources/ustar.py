"""The member headers of a plain ustar archive, read without tarfile.

tarfile builds each TarInfo through a dozen calls per header (~15 µs), which was the largest part
of indexing a small `docker save` archive after start-up. `docker save`, skopeo and Go's
archive/tar write plain POSIX ustar headers when nothing needs more. This reader takes only those:
regular files, directories, symbolic and hard links, with octal fields and a valid checksum. It
answers exactly as tarfile would; at anything else (pax or GNU extensions, base-256 numbers, a
header or member cut short, a bad checksum) it gives up, and the archive is read by tarfile from
the start, which also words the error.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, NamedTuple

_BLOCK = 512
_ZEROS = bytes(_BLOCK)
_MAGICS = (b"ustar\x0000", b"ustar  \x00")  # POSIX, and GNU's, whose headers are the same for these types
_REGULAR = (b"0", b"\0")
_TYPES = (*_REGULAR, b"1", b"2", b"5")
# The numeric fields tarfile parses, by (start, end): mode, uid, gid, size, mtime, devmajor, devminor.
_NUMBERS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (329, 337), (337, 345))
# The numeric fields as tar writers fill them: mode, uid, gid (7 octal digits and a NUL or a
# blank), size and mtime (11 and one); devmajor and devminor the same, or all NULs. Read directly;
# any other form goes through _number.
_USUAL = re.compile(rb"(?:[0-7]{7}[\0 ]){3}(?:[0-7]{11}[\0 ]){2}")
_USUAL_DEVICES = re.compile(rb"(?:[0-7]{7}[\0 ]|\0{8}){2}")
# As tarfile decodes names by default.
_ENCODING, _ERRORS = sys.getfilesystemencoding(), "surrogateescape"


class Header(NamedTuple):
    """The parts of a member header the archive reader uses, named as in `tarfile.TarInfo`."""

    name: str
    type: bytes
    linkname: str
    size: int
    offset_data: int

    def isreg(self) -> bool:
        return self.type in _REGULAR

    def issym(self) -> bool:
        return self.type == b"2"

    def islnk(self) -> bool:
        return self.type == b"1"


class GiveUp(Exception):
    """Not a plain ustar header: the archive is for tarfile."""


def scan(fd: int, file_size: int, take: Callable[[Header], None]) -> bool:
    """Hand each member header of the tar file `fd` to `take`, in order, and say True; or say
    False as soon as a header is not plain, and the caller reads the archive again with tarfile
    (`take` may have seen some members by then)."""
    offset = 0
    while True:
        block = os.pread(fd, _BLOCK, offset)
        if len(block) < _BLOCK:
            # No end-of-archive blocks: tarfile stops there too. An empty file or a cut header is
            # for tarfile to word.
            return not block and offset > 0
        if block == _ZEROS:
            return True  # tarfile stops at the first zero block; what follows it is never read
        try:
            header = _header(block, offset)
        except GiveUp:
            return False
        if header.isreg():
            if header.offset_data + header.size > file_size:
                return False
            offset = header.offset_data + -(-header.size // _BLOCK) * _BLOCK
            if offset > file_size:
                return False  # cut inside the padding: tarfile says "unexpected end of data"
        else:
            offset = header.offset_data  # tarfile skips no data after a link or a directory
        take(header)


def _header(block: bytes, offset: int) -> Header:
    if block[257:265] not in _MAGICS:
        raise GiveUp
    kind = block[156:157]
    if kind not in _TYPES:
        raise GiveUp
    checksum = _number(block[148:156])
    if checksum != 256 + sum(block) - sum(block[148:156]):  # the field counted as eight spaces
        raise GiveUp  # tarfile also takes a checksum summed over signed bytes; rare enough to leave to it
    if _USUAL.fullmatch(block, 100, 148) and _USUAL_DEVICES.fullmatch(block, 329, 345):
        size = int(block[124:135], 8)
    else:
        size = [_number(block[start:end]) for start, end in _NUMBERS][3]  # each checked as tarfile would
    name = _text(block[0:100])
    prefix = _text(block[345:500])
    if kind == b"\0" and name.endswith("/"):
        kind = b"5"  # old tar's directory
    if kind == b"5":
        name = name.rstrip("/")
    if prefix:
        name = prefix + "/" + name
        if kind == b"5":
            name = name.rstrip("/")  # tarfile strips a directory's slashes again once joined
    return Header(name, kind, _text(block[157:257]), size, offset + _BLOCK)


def _number(field: bytes) -> int:
    """An octal field as tarfile reads it (up to its first NUL, blanks stripped); GiveUp for what
    it reads otherwise (base-256) or refuses."""
    end = field.find(b"\0")
    text = (field if end < 0 else field[:end]).strip()
    if not text.isdigit() or b"8" in text or b"9" in text:  # no sign, underscore or other digits
        if text:
            raise GiveUp
        return 0
    return int(text, 8)


def _text(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode(_ENCODING, _ERRORS)
