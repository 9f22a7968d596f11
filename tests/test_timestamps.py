from datetime import datetime

import pytest
from hypothesis import given, strategies as st

from indexer import timestamps


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-29T10:54:27.000347894Z", "2026-11-29T10:54:27.000347894Z"),
        ("2026-11-29T12:54:27.000347894+02:00", "2026-11-29T10:54:27.000347894Z"),
        ("2026-11-29T00:30:00-01:30", "2026-11-29T02:00:00Z"),
        ("2026-11-29T10:54:27.5Z", "2026-11-29T10:54:27.500Z"),
        ("2026-11-29T10:54:27.1234Z", "2026-11-29T10:54:27.123400Z"),
        ("2026-11-29T10:54:27.000000000Z", "2026-11-29T10:54:27Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        ("2026-11-29T23:59:00-23:59", "2026-11-30T23:58:00Z"),
        # Go (docker, containerd) reads any number of fractional digits and keeps the first nine.
        ("2020-01-02T03:04:05.1234567891Z", "2020-01-02T03:04:05.123456789Z"),
        ("2020-01-02T03:04:05.999999999999999+01:00", "2020-01-02T02:04:05.999999999Z"),
        ("2020-01-02T03:04:05.0000000009Z", "2020-01-02T03:04:05Z"),
    ],
)
def test_normalise_to_utc_with_proto_fraction_digits(text, expected):
    assert timestamps.normalise(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-11-29",
        "2026-13-01T00:00:00Z",
        "2026-11-29T10:54:27",
        "yesterday",
        "2026-11-29T10:54:27.Z",
        # An offset is hours 00-23 and minutes 00-59 (RFC 3339 time-numoffset).
        "2020-01-02T03:04:05+00:99",
        "2020-01-02T03:04:05+00:60",
        "2020-01-02T03:04:05-01:75",
        "2020-01-02T03:04:05+24:00",
        "2020-01-02T03:04:05-99:00",
        # Second 60, as Go's parser (docker, skopeo) and protobuf's Timestamp refuse it, even at
        # a real leap second: read as the next second, it was a time no config stated.
        "2026-11-29T11:42:60Z",
        "2016-12-31T23:59:60Z",
        "2016-12-31T23:59:60.5Z",
        "2017-01-01T02:59:60+03:00",
        # A lowercase "t" or "z", or a space for the "T": RFC 3339 lets a reader take them, Go's
        # parser does not, so docker and skopeo fail on such a config.
        "2026-11-29t10:54:27z",
        "2026-11-29t10:54:27Z",
        "2026-11-29T10:54:27z",
        "2026-11-29 10:54:27Z",
        "2026-11-29T10:54:27.5z",
    ],
)
def test_normalise_rejects_non_rfc3339(text):
    assert timestamps.normalise(text) is None


def test_epoch_nanos_keeps_every_nanosecond():
    assert timestamps.epoch_nanos("1970-01-01T00:00:01.000000001Z") == 1_000_000_001
    assert timestamps.epoch_nanos("0001-01-01T00:00:00Z") is None


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(0, 999_999_999),
    st.integers(-14 * 60, 14 * 60),
)
def test_matches_protobuf_timestamp_json(moment, nanos, offset_minutes):
    from google.protobuf.timestamp_pb2 import Timestamp

    sign = "+" if offset_minutes >= 0 else "-"
    text = (
        moment.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0")
        + f".{nanos:09d}{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    )
    if moment.year < 1000:
        text = f"{moment.year:04d}" + text[text.index("-") :]
    ours = timestamps.normalise(text)
    judge = Timestamp()
    try:
        judge.FromJsonString(text)
        expected = judge.ToJsonString()
    except ValueError:
        return  # out of the Timestamp range once moved to UTC
    assert ours == expected
