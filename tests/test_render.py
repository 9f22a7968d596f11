"""The text forms of an answer: YAML that every reader reads back as written, tables that line up."""

from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from queries.render import format_table, human_size, to_yaml


def _reader(name: str, resolvers: dict[str, str]) -> type:
    """A PyYAML loader that resolves plain scalars by `resolvers` (tag -> regex of a spec) alone; a
    scalar it resolves reads as (tag, text), which equals no string."""
    loader = type(name, (yaml.SafeLoader,), {"yaml_implicit_resolvers": {}})
    for tag, pattern in resolvers.items():
        loader.add_implicit_resolver(tag, re.compile(f"(?:{pattern})\\Z", re.X), None)
        loader.add_constructor(tag, lambda self, node: (node.tag, node.value))
    return loader


# The YAML 1.2.2 core schema (section 10.3.2), as ruamel.yaml, js-yaml and go-yaml v3 read.
CORE_12 = _reader(
    "Core12",
    {
        "tag:yaml.org,2002:null": r"null | Null | NULL | ~ | ",
        "tag:yaml.org,2002:bool": r"true | True | TRUE | false | False | FALSE",
        "tag:yaml.org,2002:int": r"[-+]? [0-9]+ | 0o [0-7]+ | 0x [0-9a-fA-F]+",
        "tag:yaml.org,2002:float": r"[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?"
        r"| [-+]? ( \.inf | \.Inf | \.INF ) | \.nan | \.NaN | \.NAN",
    },
)
# YAML 1.1's booleans in full (yaml.org/type/bool.html), as go-yaml v2 reads them; PyYAML omits y and n.
BOOL_11 = _reader(
    "Bool11",
    {"tag:yaml.org,2002:bool": r"y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF"},
)
READERS = [yaml.SafeLoader, CORE_12, BOOL_11]

# Tags, names and values a reader would take for a number, boolean, null or date if left plain.
MISREAD = [
    "08", "1e3", "0o17", "0x1F", "y", "n", "Y", "N", "on", "off", "yes", "no", "~", "null", "", ".inf", "-.nan",
    "1_000", "12:30", "2001-12-14", "2001-12-14T21:59:43.10-05:00", "1.", ".5", "+1", "-0", "0777", "1E3",
]  # fmt: skip


def _back(doc, reader):
    return yaml.load(to_yaml(doc), Loader=reader)


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
@pytest.mark.parametrize("text", MISREAD)
def test_yaml_quotes_what_a_reader_would_read_as_another_type(text, reader):
    doc = {"name": text, "tags": [text], "labels": {text: text}}
    assert _back(doc, reader) == doc


def test_yaml_leaves_plain_what_every_reader_reads_as_a_string():
    doc = {"name": "team/app", "tags": ["latest", "1.2.3", "v1", "3.12-slim", "sha256:ab", "9:99"]}
    assert to_yaml(doc) == "name: team/app\ntags:\n- latest\n- 1.2.3\n- v1\n- 3.12-slim\n- sha256:ab\n- 9:99\n"


@pytest.mark.parametrize("text", ["a\x85b", "\x85", "a\u2028b", "a\u2029"])
def test_yaml_escapes_the_line_breaks_yaml_12_does_not_have(text):
    # Raw, a YAML 1.2 reader keeps the indentation written after them; PyYAML folds a NEL to a space
    out = to_yaml({"name": text, "tags": [text]})
    assert not re.search("[\x85\u2028\u2029]", out)
    assert yaml.safe_load(out) == {"name": text, "tags": [text]}


# Strings built from the characters numbers, booleans, dates and times are written with, beside any text.
_SCALARISH = st.one_of(
    st.text(alphabet="0123456789+-._:eExXoObBnNyY~", max_size=4),
    st.text(alphabet="0123456789+-._:eExXoObBnNyYtTfFaAlLsSuU~ ,Z", max_size=12),
)


@given(st.lists(st.one_of(_SCALARISH, st.text()), min_size=1, max_size=4))
@example(["08", "1e3", "y", "0o17"])
def test_yaml_reads_back_as_the_same_strings(texts):
    doc = {"name": texts[0], "tags": texts, "annotations": {t: t for t in texts}}
    for reader in READERS:
        assert _back(doc, reader) == doc, reader.__name__


def _columns(table: str) -> list[list[int]]:
    """Where each line of `table` draws its `|` and `+`, in terminal columns (a wide character takes two)."""
    import unicodedata

    out = []
    for line in table.splitlines():
        column, marks = 0, []
        for char in line:
            if char in "|+":
                marks.append(column)
            if not unicodedata.combining(char):
                column += 2 if unicodedata.east_asian_width(char) in "WF" else 1
        out.append(marks)
    return out


@pytest.mark.parametrize("cell", ["最新", "タグ", "cafe\u0301", "n\u0303o\u0308", "ｗｉｄｅ"])
def test_a_table_lines_up_wide_characters_and_combining_marks(cell):
    table = format_table(["TAG", "SIZE"], [[cell, "1 B"], ["latest", "1.5 KB"]], numeric=(1,))
    assert len({tuple(marks) for marks in _columns(table)}) == 1, table


def test_a_table_of_ascii_is_padded_as_before():
    table = format_table(["ID", "SIZE"], [["abc", "1 B"], ["a", "12.5 KB"]], numeric=(1,))
    assert table.splitlines() == [
        "+-----+---------+",
        "|  ID |   SIZE  |",
        "+-----+---------+",
        "| abc |     1 B |",
        "| a   | 12.5 KB |",
        "+-----+---------+",
    ]


@pytest.mark.parametrize(
    "size, shown",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KB"),
        (1024**4, "1.0 TB"),
        (1024**5 - 1024**4 // 2, "1023.5 TB"),
        (1024**5, "1.0 PB"),
        (1024**6, "1.0 EB"),
        (2**63 - 1, "8.0 EB"),  # the largest size an int64 column holds; it was 8388608.0 TB
    ],
)
def test_sizes_go_up_to_eb(size, shown):
    assert human_size(size) == shown


UNITS = ["B", "KB", "MB", "GB", "TB", "PB", "EB"]


@given(st.integers(min_value=0, max_value=2**63 - 1))
@example(1024**5 - 1)
@example(1024**6 - 1)
def test_a_size_is_shown_in_the_largest_unit_it_reaches(size):
    number, unit = human_size(size).split(" ")
    power = UNITS.index(unit)
    assert 1024**power <= max(size, 1)
    assert power == len(UNITS) - 1 or size < 1024 ** (power + 1)
    # one decimal: within half a tenth of the unit
    assert abs(float(number) * 1024**power - size) <= 0.05 * 1024**power
