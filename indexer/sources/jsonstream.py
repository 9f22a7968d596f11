"""JSON text read one value at a time from byte pieces, through a sliding window: a top-level
document of any size (a layout's index.json, a registry export) in memory that follows its largest
value, not the whole text."""

from __future__ import annotations

import codecs
import json
import re
from typing import Iterable, Iterator

from ..errors import SourceError

# How much the window grows, at least, when a value goes on past it.
GROW = 1 << 20
_NOT_BLANK = re.compile(r"[^ \t\n\r]")
_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")


class NotJson(ValueError):
    """`NaN`, `Infinity` or `-Infinity`: json.loads reads them, JSON has none, and Go's decoder
    (Docker, containerd, skopeo) refuses a document holding one; a digest over it names nothing
    they would index."""


def refuse_constant(name: str):
    raise NotJson(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=refuse_constant)
# A value that ends this close to the end of the decoded window may go on in the next piece
# (`12` of `123`), and an error this close to it may be the piece boundary: read more first.
_MARGIN = 64
STARTS_A_VALUE = frozenset('[{"-0123456789tfnNI')
# The values one value read at once may hold, as parse.MAX_PARSED_BYTES bounds a document parsed
# at once: `[[],[],...]` takes ~70 bytes of objects for each 3 bytes of text, so a 40 MiB
# descriptor would take over a GB where its text takes 40 MiB.
MAX_PARSED_VALUES = 1 << 20
# First bytes of text that json.loads would decode as something else than UTF-8: a byte order mark,
# or the NUL bytes of UTF-16 and UTF-32.
MAY_NOT_BE_UTF8 = frozenset(b"\x00\xef\xfe\xff")


class LongInteger:
    """An integer of more digits than int() converts (4,300 unless Python is told otherwise), kept
    as its first digits and their count. Go's encoding/json, which Docker, containerd and skopeo read image JSON
    with, skips a field it does not know without converting it, so such a number where imgdex reads
    nothing is no reason to refuse a document; msgspec, the fast path, skips it too. Where imgdex
    does read a number (a size), it is no int: refused as out of range, by its digits alone."""

    __slots__ = ("head", "digits")

    def __init__(self, text: str):
        self.head = text[:12]  # enough to say which number, in a message of one line
        self.digits = len(text) - text.startswith("-")

    def __str__(self) -> str:
        return f"{self.head}... ({self.digits} digits)"

    __repr__ = __str__


def _integer(text: str) -> int | LongInteger:
    try:
        return int(text)
    except ValueError:  # past the digits int() converts; checked by length before any work
        return LongInteger(text)


def _long_decoder(decoder: json.JSONDecoder) -> json.JSONDecoder:
    """`decoder` but for integers of any length. Not the first choice: a parse_int of its own
    costs the C scanner a Python call for every integer, where int() is its own fast path."""
    return json.JSONDecoder(
        object_hook=decoder.object_hook,
        parse_float=decoder.parse_float,
        parse_int=_integer,
        parse_constant=decoder.parse_constant,
        strict=decoder.strict,
        object_pairs_hook=decoder.object_pairs_hook,
    )


_LONG_DECODER = _long_decoder(_DECODER)


def loads(text: str | bytes) -> object:
    """json.loads, but `NaN` and `Infinity` refused (NotJson) and integers of more digits than
    int() converts read as LongInteger. Read again only when the first parse met one: no cost to
    other documents. Time stays linear in the
    text (int() refuses by length before converting)."""
    if not isinstance(text, str):
        text = text.decode(json.detect_encoding(text), "surrogatepass")  # as json.loads decodes bytes
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _DECODER.decode(text)
    except ValueError as exc:
        if type(exc) is not ValueError:  # a JSONDecodeError, NotJson or UnicodeDecodeError stands
            raise
    return _LONG_DECODER.decode(text)


def dumped(value: object) -> str:
    """json.dumps(value, ensure_ascii=False) of a parsed value, a LongInteger as `null`: for checks
    of its strings alone."""
    return json.dumps(value, ensure_ascii=False, default=_nothing)


def _nothing(value: object) -> None:
    if type(value) is LongInteger:
        return None
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encoding_problem(head: bytes) -> str:
    """Why JSON text that starts with `head` (4 bytes tell) is not text Docker, containerd and
    skopeo would read, '' when it may be: Go's encoding/json reads UTF-8 alone, without a byte order
    mark, where json.loads takes UTF-16 and UTF-32 too. A digest over bytes they would refuse names
    nothing they could index."""
    encoding = json.detect_encoding(head[:4])
    if encoding == "utf-8":
        return ""
    if encoding == "utf-8-sig":
        return "it starts with a UTF-8 byte order mark, which Go's JSON decoder (Docker, containerd, skopeo) refuses"
    name = encoding.upper().replace("-BE", "BE").replace("-LE", "LE")
    return f"its first bytes are {name} text: JSON is read as UTF-8 alone, as Go reads it"


class JsonText:
    """JSON text decoded from byte pieces, read one value at a time through a sliding window."""

    def __init__(
        self,
        pieces: Iterable[bytes],
        where: str,
        what: str,
        max_value: int | None = None,
        decoder=_DECODER,
        max_values: int | None = None,
        byte_order_mark: bool = False,
    ):
        self._pieces = iter(pieces)
        self._byte_order_mark = byte_order_mark  # whether a UTF-8 one may start the text, and is skipped
        self._decoder = decoder
        self._long: json.JSONDecoder | None = None  # `decoder` for integers int() will not convert
        self.max_value = max_value  # the longest value read, in characters; None: no limit
        # The most values in one value read: each is the first in its array or object, or follows a
        # comma or a colon, so those (plus one) bound them.
        self.max_values = MAX_PARSED_VALUES if max_values is None else max_values
        self._utf8 = codecs.getincrementaldecoder("utf-8")("surrogatepass")  # as json.loads decodes bytes
        self.where = where
        self.what = what
        self.text = ""
        self.pos = 0
        self._dropped = 0  # characters before `text`, for error positions
        self._started = False
        self._surrogates = False  # whether any text read so far may hold a lone surrogate
        self.eof = False

    def fail(self, reason: str, pos: int | None = None):
        at = self._dropped + (self.pos if pos is None else pos)
        raise SourceError(self.where, f"{self.what} is not valid JSON ({reason}: char {at})")

    def offset(self) -> int:
        """Characters read before the current position, from the start of the text."""
        return self._dropped + self.pos

    def _more(self, at_least: int = 1) -> None:
        # Called with `pos` at the start of the value being read: what lies beyond is that value.
        if self.max_value is not None and len(self.text) - self.pos > self.max_value:
            raise SourceError(self.where, f"a JSON value is longer than the {self.max_value}-byte limit")
        # Counted before the value is parsed, once per window (which doubles), so that parsing never
        # takes more than twice the bound; `value` counts the whole value once it is read.
        if len(self.text) - self.pos > GROW:
            self._count_values(len(self.text))
        self._dropped += self.pos
        parts, size = [self.text[self.pos :]], len(self.text) - self.pos
        self.pos = 0
        goal = size + at_least
        while size < goal and not self.eof:
            piece = next(self._pieces, None)
            try:
                decoded = self._utf8.decode(b"" if piece is None else piece, final=piece is None)
            except UnicodeDecodeError as exc:
                raise SourceError(self.where, f"{self.what} is not valid JSON ({exc})") from None
            if not self._started and decoded:
                self._started = True
                if decoded.startswith("\ufeff"):
                    if not self._byte_order_mark:
                        reason = encoding_problem(codecs.BOM_UTF8)
                        raise SourceError(self.where, f"{self.what} is not valid JSON ({reason})")
                    decoded = decoded[1:]
            parts.append(decoded)
            size += len(decoded)
            self.eof = piece is None
        tail = len(parts[0])
        self.text = "".join(parts)
        # Once per window, not per value; 5 characters back for an escape split between pieces. The
        # pattern costs ~10 ms a MiB; plain ASCII without an escape, most text, needs no search.
        start = max(tail - 5, 0)
        if not self._surrogates and (self.text.find("\\u", start) >= 0 or not self.text.isascii()):
            self._surrogates = _MAYBE_SURROGATE.search(self.text, start) is not None

    def marks(self, start: int, end: int) -> int:
        """Separators and opening brackets of the window from `start` to `end` (a C count, ~1 ms a
        MiB): a value holds at most one more values than these. Brackets too: `[{}]` is two values
        behind no separator, so that separators alone would let a value of three times a bound be
        parsed."""
        text = self.text
        return sum(text.count(mark, start, end) for mark in ",:[{")

    def _count_values(self, end: int) -> None:
        """Refuse the value from `pos` to `end` when it holds too many values."""
        if self.marks(self.pos, end) >= self.max_values:
            raise SourceError(self.where, f"{self.what} holds a value of more than {self.max_values} values")

    def peek(self) -> str:
        """The next character that is not blank; '' at the end of the text."""
        if self.pos < len(self.text) and self.text[self.pos] not in " \t\n\r":
            return self.text[self.pos]  # compact JSON: no blanks to skip
        while True:
            match = _NOT_BLANK.search(self.text, self.pos)
            if match:
                self.pos = match.start()
                return self.text[self.pos]
            self.pos = len(self.text)
            if self.eof:
                return ""
            self._more()

    def elements(self) -> Iterator[object]:
        """The elements of the array whose `[` is next, one value at a time; after the last, the
        position is past its `]`. The caller has seen the `[` (`peek`)."""
        self.pos += 1
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            if self._past_separator("]"):
                return

    def members(self) -> Iterator[str]:
        """The keys of the object whose `{` is next, one at a time: after each, the caller reads its
        value (`value`, `elements`, ...) before asking for the next. The caller has seen the `{`."""
        self.pos += 1
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            if self.peek() != '"':
                self.fail("Expecting property name enclosed in double quotes")
            key = self.value()
            self.take(":", "':' delimiter")
            yield key
            if self._past_separator("}"):
                return

    def _past_separator(self, end: str) -> bool:
        """Past the `,` before the next member (False), or past the `end` of the container (True)."""
        after = self.peek()
        if after not in (",", end):
            self.fail("Expecting ',' delimiter")
        self.pos += 1
        return after == end

    def take(self, char: str, expecting: str) -> None:
        if self.peek() != char:
            self.fail(f"Expecting {expecting}")
        self.pos += 1

    def value(self) -> object:
        self.peek()
        decoder = self._decoder
        while True:
            try:
                value, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                if not self.eof and (exc.pos >= len(self.text) - _MARGIN or exc.msg.startswith("Unterminated")):
                    self._more(max(len(self.text) - self.pos, GROW))  # at least double the window
                    continue
                self.fail(exc.msg, exc.pos)
            except RecursionError:
                raise SourceError(self.where, f"{self.what} is not valid JSON (nested too deeply)") from None
            except NotJson as exc:
                self.fail(str(exc))  # at the value that holds it
            except ValueError:
                # An integer of more digits than int() converts: rare, so this value alone is parsed
                # again, with such integers kept as LongInteger, as `loads` does.
                if decoder is self._long:
                    raise
                if self._long is None:
                    self._long = _long_decoder(self._decoder)
                decoder = self._long
                continue
            if not self.eof and end > len(self.text) - _MARGIN:
                self._more(max(len(self.text) - self.pos, GROW))
                continue
            if end - self.pos > GROW:
                self._count_values(end)
            if self._surrogates and _MAYBE_SURROGATE.search(self.text, self.pos, end):
                try:
                    dumped(value).encode("utf-8")
                except UnicodeEncodeError:
                    reason = "a string holds a lone UTF-16 surrogate"
                    raise SourceError(self.where, f"{self.what} is not valid JSON ({reason})") from None
            self.pos = end
            return value
