"""RFC 3339 timestamps with nanosecond precision.

`datetime` stops at microseconds, so the fraction is carried as an integer beside it.
The text form follows the proto3 JSON mapping of google.protobuf.Timestamp: UTC, 'Z', and
0, 3, 6 or 9 fractional digits.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timedelta, timezone

# ASCII digits only, and fullmatch(): `\d` takes any Unicode digit and `$` a trailing newline.
# Any number of fractional digits, of which the first nine count: Go's time parser (docker,
# containerd, go-containerregistry) reads a longer fraction and truncates it, so an image those
# tools run has that time. An offset is RFC 3339's time-numoffset, hours 00-23 and minutes 00-59:
# `+00:99` is no offset that any writer means, and read as 99 minutes it moved the time. The "T"
# and "Z" are capitals: RFC 3339 lets a reader take "t", "z" and a space, but Go's parser does not,
# and docker and skopeo fail on a config that holds them; the time was none those tools can show.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:(Z)|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NS_MIN = -(2**63)
_NS_MAX = 2**63 - 1


def parse(text: str) -> tuple[datetime, int] | None:
    """Return (UTC datetime truncated to seconds, nanoseconds), or None if not RFC 3339."""
    m = _RFC3339.fullmatch(text)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    nanos = int((m.group(7) or "")[:9].ljust(9, "0"))
    try:
        if m.group(8):
            offset = timedelta(0)
        else:
            offset = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
            if m.group(9) == "-":
                offset = -offset
        # Second 60 is refused, as Go's time parser refuses it (docker and skopeo cannot read
        # such a config) and protobuf's Timestamp cannot hold it: folded into the next second,
        # it made up a time the config did not state.
        local = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
        utc = local.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None
    return utc, nanos


def format_utc(utc: datetime, nanos: int) -> str:
    base = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if len(base) != 19:  # strftime drops leading zeros of years before 1000 on some platforms
        base = f"{utc.year:04d}" + base[base.index("-") :]
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{base}.{nanos // 1_000:06d}Z"
    return f"{base}.{nanos:09d}Z"


@functools.lru_cache(maxsize=4096)
def normalise(text: str) -> str | None:
    """RFC 3339 text in any offset -> the canonical UTC text, or None when it is not valid."""
    parsed = parse(text)
    if parsed is None:
        return None
    return format_utc(*parsed)


def epoch_nanos(canonical: str) -> int | None:
    """Nanoseconds since the epoch, or None outside the int64 range (years before 1678 or after 2261)."""
    parsed = parse(canonical)
    if parsed is None:
        return None
    utc, nanos = parsed
    delta = utc - _EPOCH
    total = (delta.days * 86400 + delta.seconds) * 1_000_000_000 + nanos
    if total < _NS_MIN or total > _NS_MAX:
        return None
    return total
