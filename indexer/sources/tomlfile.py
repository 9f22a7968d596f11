"""The TOML configuration files of the containers tools (registries.conf, storage.conf), parsed
in bounded time with one-line reasons.

Real files are a few KiB with lines under 100 characters. The parser's time grows with the square
of the parts of one dotted key (a 600 KB table header took two minutes) and a key cannot span
lines, so a line is bounded; arrays and inline tables nest on the parser's stack, so depth is
turned into a reason rather than a traceback."""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

MAX_LINE_BYTES = 4096
# What a file may hold, read whole or refused: the worst case measured within both bounds is 1.5 s.
MAX_FILE_BYTES = 256 * 1024
_QUOTED = 200  # characters of the parser's message, which may quote a whole key


class TomlRefused(ValueError):
    """Why a file is not TOML that can be used, in one line."""


def loads(data: bytes, what: str) -> dict:
    """The document of `data`, the whole of one `what` file."""
    for number, line in enumerate(data.split(b"\n"), 1):
        if len(line) > MAX_LINE_BYTES:
            raise TomlRefused(f"line {number} is longer than {MAX_LINE_BYTES} bytes, which no {what} needs")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise TomlRefused("not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        text = str(exc)
        raise TomlRefused(f"not valid TOML: {text if len(text) <= _QUOTED else text[:_QUOTED] + '…'}") from None
    except RecursionError:
        raise TomlRefused(f"not valid TOML for {what}: arrays or tables nested too deeply") from None
