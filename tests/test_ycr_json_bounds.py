"""ycr-json: what one image, one line and one response may cost, and repeated response fields."""

import io
import json
import os
import tracemalloc

import pytest

from indexer.errors import SourceError
from indexer.sources import parse_source, ycr_json
from indexer.sources.configbounds import MAX_ENTRIES
from indexer.sources.jsonstream import MAX_PARSED_VALUES
from indexer.sources.parse import Context
from test_badinput import error_lines, run_measured
from test_ycr_json import YCR, expected_records, images_of, listing, many_images, records_of, with_stdin

TOO_MANY_VALUES = f"the document holds a value of more than {MAX_PARSED_VALUES} values"


def write(path, docs, shape: str) -> None:
    """`docs` as one JSON array on one line, as an array of one element a line, or as JSON lines."""
    compact = [json.dumps(doc, separators=(",", ":")) for doc in docs]
    if shape == "one line":
        text = "[" + ",".join(compact) + "]\n"
    elif shape == "lines":
        text = "".join(f"{line}\n" for line in compact)
    else:
        text = "[\n" + ",\n".join(compact) + "\n]\n"
    path.write_text(text, encoding="utf-8")


def place(path, shape: str, position: int) -> str:
    return f"{path} line {position + 1}" if shape == "lines" else f"{path}[{position}]"


@pytest.mark.parametrize("shape", ["one line", "array of lines", "lines"])
@pytest.mark.parametrize("field", ["layers", "tags"])
def test_an_image_listing_more_entries_than_an_image_may_fails_that_image(run_cli, tmp_path, shape, field):
    good, template = images_of("image-array.json")[:2]
    entries = [{}] * (MAX_ENTRIES + 1) if field == "layers" else [f"t{i}" for i in range(MAX_ENTRIES + 1)]
    big = dict(template, id="crpbig0000000000000a", **{field: entries})
    path = tmp_path / "big.json"
    write(path, [big, good], shape)
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 1
    reason = f"image {big['id']}: 20,001 {field}, more than the 20,000 an image may list"
    assert error_lines(result.stderr) == [f"imgdex: {place(path, shape, 0)}: {reason}"]
    assert "indexed 1 images, 1 failed" in result.stdout, result.stdout
    assert [d["id"] for d in listing(run_cli, store)] == [good["id"]]


def test_an_image_of_too_many_layers_is_refused_before_they_are_built():
    template = images_of("image-array.json")[1]
    raw = dict(template, id="crpbig0000000000000a", layers=[{}] * 500_000)
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match="500,000 layers, more than the 20,000"):
            ycr_json.image_record(raw, "cr.yandex", Context("ycr-json", "x"), "x", [])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Built, the layers would take ~100 MB; refused by their count, nothing but the message.
    assert peak < 1 << 20, peak


def empty_values(count: int) -> list:
    """A list of `count` one-element lists of an empty object: a few bytes of text, hundreds of objects."""
    return [[{}]] * count


@pytest.mark.parametrize("shape", ["one line", "lines"])
def test_an_image_of_too_many_values_is_refused_as_on_many_lines_within_limits(tmp_path, shape):
    good, template = images_of("image-array.json")[:2]
    # ~14 MB on one line, under the limit for one line; parsed at once it took over a GB.
    big = dict(template, id="crpbig0000000000000a", layers=empty_values(2_800_000))
    path = tmp_path / "values.json"
    write(path, [good, big], shape)
    other = os.path.join(YCR, "image-get.json")
    run = run_measured(["index", f"ycr-json:{path}", f"ycr-json:{other}", "--store", str(tmp_path / "store")])
    assert run.code == 1, run.stderr
    where = f"{path} line 2" if shape == "lines" else str(path)
    assert error_lines(run.stderr) == [f"imgdex: {where}: {TOO_MANY_VALUES}"]
    assert "Traceback" not in run.stderr
    assert "indexed 1 images, 1 failed" in run.stdout, run.stdout  # the other source's image lands
    assert run.peak_rss < 400 << 20, f"peak RSS {run.peak_rss >> 20} MiB"


@pytest.mark.parametrize("line", [1, 3])
def test_a_json_line_of_too_many_values_is_refused_before_it_is_parsed(tmp_path, line):
    good = many_images(3)
    lines = [json.dumps(image) for image in good]
    lines.insert(line - 1, json.dumps(empty_values(600_000)))
    path = tmp_path / "lines.json"
    path.write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    try:
        with pytest.raises(SourceError) as caught:
            records_of(f"ycr-json:{path}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value) == f"{path} line {line}: {TOO_MANY_VALUES}"
    assert peak < 16 << 20, peak  # the line's text and its copy, not its ~1.2M objects


def test_a_document_on_one_line_is_read_a_value_at_a_time_as_on_many_lines(tmp_path):
    # Past the count for one value read at once, yet each of its values is small: read one at a time,
    # its images land, as they do when it is written on many lines, and it is not parsed whole.
    images = [dict(image, digest=f"sha256:{i:064x}") for i, image in enumerate(many_images(200))]
    path = tmp_path / "values.json"
    write(path, [*images, *[empty_values(100_000)] * 8], "one line")
    run = run_measured(["index", f"ycr-json:{path}", "--store", str(tmp_path / "store")])
    assert run.code == 0, run.stderr
    assert error_lines(run.stderr) == []
    assert "indexed 200 images, 0 failed" in run.stdout, run.stdout
    # Parsed whole, its 1.6M objects take ~100 MB more than one of its values at a time.
    assert run.peak_rss < 170 << 20, f"peak RSS {run.peak_rss >> 20} MiB"


@pytest.mark.parametrize("shape", ["one line", "many lines"])
def test_an_image_is_bounded_in_values_over_all_its_fields(tmp_path, shape):
    # Each field alone is under the size at which the parser counts; together they are not.
    template = images_of("image-array.json")[0]
    field = json.dumps([[]] * 330_000, separators=(",", ":"))
    members = [f"{json.dumps(key)}: {json.dumps(value)}" for key, value in template.items()]
    members += [f'"x{i}": {field}' for i in range(15)]
    path = tmp_path / "image.json"
    joint = ", " if shape == "one line" else ",\n  "
    path.write_text("{" + joint.join(members) + "}\n")
    run = run_measured(["index", f"ycr-json:{path}", "--store", str(tmp_path / "store")])
    assert run.code == 1, run.stderr
    assert error_lines(run.stderr) == [f"imgdex: {path}: {TOO_MANY_VALUES}"]
    # Parsed, its fields take ~700 MB.
    assert run.peak_rss < 300 << 20, f"peak RSS {run.peak_rss >> 20} MiB"


def test_a_json_line_holds_a_full_page_of_real_images_but_not_as_many_empty_values(monkeypatch):
    """An Image.List page holds at most 1000 images: as a JSON line it is read at once, and is within
    the count of values even with 60 layers an image; a line of as many bytes of empty values is not."""
    images = many_images(1000)
    layer = images[0]["layers"][0]
    for position, image in enumerate(images):
        image["layers"] = [dict(layer, id=f"crpl{position:08d}{n:08d}") for n in range(60)]
    page = json.dumps({"images": images, "nextPageToken": ""}).encode()
    empties = json.dumps(empty_values(len(page) // 6)).encode()
    with_stdin(monkeypatch, io.BytesIO(page + b"\n" + empties + b"\n"))
    got = []
    with pytest.raises(SourceError) as caught:
        for record in parse_source("ycr-json:-").records(Context("ycr-json", "-")):
            got.append(record)
    assert got == expected_records(images, "-")
    assert str(caught.value) == f"- line 2: {TOO_MANY_VALUES}"


@pytest.mark.parametrize("shape", ["one line", "pretty"])
@pytest.mark.parametrize(
    "first, second, field",
    [
        ("images", "images", "images"),
        ("nextPageToken", "nextPageToken", "nextPageToken"),
        ("next_page_token", "nextPageToken", "nextPageToken"),
    ],
)
def test_a_response_field_given_twice_fails_the_file_alike_in_each_shape(
    run_cli, tmp_path, shape, first, second, field
):
    """json_format.Parse refuses a field given twice, under either of its names; json.loads keeps the last."""
    a, b = images_of("image-array.json")[:2]
    values = {"images": ([a], [b]), "nextPageToken": ("p1", "p2"), "next_page_token": ("p1", "p2")}
    text = f'{{"images": [{json.dumps(a)}], {json.dumps(first)}: {json.dumps(values[first][0])}, '
    text += f"{json.dumps(second)}: {json.dumps(values[second][1])}}}"
    if first == "images":
        text = f'{{"images": [{json.dumps(a)}], "images": [{json.dumps(b)}]}}'
    if shape == "pretty":
        text = text.replace(", ", ",\n  ").replace("{", "{\n  ", 1)
    path = tmp_path / "twice.json"
    path.write_text(text + "\n", encoding="utf-8")
    store = str(tmp_path / "store")
    result = run_cli("index", f"ycr-json:{path}", "--store", store)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"imgdex: {path}: the response has the field {field!r} twice"]
    assert "indexed 0 images, 1 failed" in result.stdout, result.stdout
