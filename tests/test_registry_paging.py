"""What a registry listing holds while it pages stays bounded whatever the registry sends: Link URLs
of any length, pages that repeat their entries under new URLs, a page of millions of entries."""

import itertools
import json
import tracemalloc

import pytest
import urllib3

from builders import OCI_MANIFEST
from indexer.sources import configbounds, registry
from indexer.sources.parse import Context
from indexer.sources.registry import Crawl, RegistrySource
from indexer.sources.registry_client import CATALOG_LIMIT, RegistryOptions, Reply
from registry_server import Reply as FakeReply
from test_badinput import error_lines, run_measured
from test_registry_bad import crawl, image

JSON = {"Content-Type": "application/json"}
WHAT = "registry.example/big/repo: GET tags/list"
PATH = "/v2/big/repo/tags/list"


def offline(monkeypatch, page):
    """A crawl of registry.example whose GETs `page(url)` answers, without a network."""
    source = RegistrySource("docker://registry.example", RegistryOptions(auth_files=[]))
    listing = Crawl(source, Context("docker", source.location))
    listing.client.base = "https://registry.example"

    def request(method, path, *, scope, what, limit, headers=None):
        url = path if "://" in path else listing.client.base + path
        body, link = page(url)
        headers = urllib3.HTTPHeaderDict(JSON)
        if link:
            headers["Link"] = f'<{link}>; rel="next"'
        return Reply(200, headers, body, url)

    monkeypatch.setattr(listing.client, "request", request)
    return listing


def paged(listing, max_entries=registry._MAX_TAGS):
    return listing._paged(PATH, "tags", "repository:big/repo:pull", WHAT, CATALOG_LIMIT, max_entries)


def peak_while(fn):
    """What `fn()` returns, and the peak of the Python memory it allocated."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def same_tag_under_new_urls(url_bytes):
    """Pages that each list the same tag and link to a new URL of about `url_bytes`, for ever."""
    numbers = itertools.count()

    def page(url):
        number = next(numbers)
        return b'{"name": "big/repo", "tags": ["v1"]}', f"{PATH}?n=1&last={number:010d}" + "x" * url_bytes

    return page


# ---------------------------------------------------------------- Link URLs


def test_a_link_url_over_the_bound_fails_the_repository_in_one_line(fake, monkeypatch):
    """Each ~64 KB URL used to be followed and kept, for up to 100,000 pages."""
    monkeypatch.setattr(registry, "_MAX_PAGES", 20)  # an end for the crawl should the bound fail
    manifest, configs, _ = image()
    fake.add_image("a/one", {"v1": manifest}, configs, OCI_MANIFEST)
    numbers = itertools.count()

    def tags(method, headers):
        link = f"/v2/b/two/tags/list?n=1&last={next(numbers):010d}" + "x" * 9000
        return FakeReply(200, b'{"name": "b/two", "tags": ["v1"]}', {**JSON, "Link": f'<{link}>; rel="next"'})

    fake.routes["/v2/b/two/tags/list"] = tags
    fake.catalog(["a/one", "b/two"])

    records, errors, _ = crawl(f"docker://{fake.host}")

    assert [r.name for r in records] == ["a/one"]
    assert len(errors) == 1 and errors[0].startswith(f"{fake.host}/b/two: GET tags/list: "), errors
    assert "over the 8,192-byte limit" in errors[0] and "xxxx" not in errors[0], errors
    assert next(numbers) == 1  # the first page only


def new_tag_under_new_urls(url_bytes):
    """Pages that each list one new tag and link to a new URL of about `url_bytes`, for ever."""
    numbers = itertools.count()

    def page(url):
        number = next(numbers)
        return b'{"name": "big/repo", "tags": ["v%d"]}' % number, f"{PATH}?n=1&last={number:010d}" + "x" * url_bytes

    return page


def test_the_urls_of_the_pages_are_not_held(monkeypatch):
    """The loop check kept every URL asked for: 6 GB of 64 KB URLs at the page bound."""
    monkeypatch.setattr(registry, "_MAX_PAGES", 2000)
    listing = offline(monkeypatch, new_tag_under_new_urls(8000))

    (tags, error), peak = peak_while(lambda: paged(listing))

    assert len(tags) == 2000 and "more than 2000 pages" in str(error), error
    # They are 16 MB; what is held is urllib.parse's cache of the last 128 URLs split (~2 MB).
    assert peak < 6 << 20, f"{peak >> 20} MiB held for 2,000 URLs of 8 KB"


def test_pages_repeating_their_entries_under_new_urls_end_at_the_byte_bound(monkeypatch):
    monkeypatch.setattr(registry, "_MAX_PAGES", 1000)  # an end should the bound fail
    listing = offline(monkeypatch, same_tag_under_new_urls(4000))

    tags, error = paged(listing, max_entries=100)  # pages of at most 25,600 bytes in all

    assert tags == ["v1"]
    assert str(error) == f"{WHAT}: the pages add up to more than 25,600 bytes (after 8 pages)"


@pytest.mark.parametrize("entries", [b"[]", b'["v1"]'])
def test_pages_that_list_nothing_new_end_the_listing_long_before_the_page_bound(monkeypatch, entries):
    """Empty pages (or the same tag again) under ever new short URLs used to be followed to the
    100,000-page bound: as many requests, each with its own deadline."""
    numbers = itertools.count()

    def page(url):
        number = next(numbers)
        tags = b'["v1"]' if number == 0 else entries
        return b'{"name": "big/repo", "tags": %s}' % tags, f"{PATH}?n=1&last={number:010d}"

    listing = offline(monkeypatch, page)

    tags, error = paged(listing)

    assert tags == ["v1"]
    assert str(error) == f"{WHAT}: the Link pagination goes on with no new tags in 100 pages in a row (after 101 pages)"
    assert next(numbers) == 101


def test_a_few_empty_pages_between_full_ones_are_followed(monkeypatch):
    pages = [["a"], [], [], ["b"], [], ["c"]]

    def page(url):
        number = int(url.rpartition("last=")[2]) if "last=" in url else 0
        link = f"{PATH}?n=1&last={number + 1}" if number + 1 < len(pages) else None
        return json.dumps({"tags": pages[number]}).encode(), link

    tags, error = paged(offline(monkeypatch, page))

    assert tags == ["a", "b", "c"] and error is None


def test_a_loop_back_to_a_page_already_read_is_still_found(monkeypatch):
    base = "https://registry.example"
    pages = {
        f"{base}{PATH}": (["p1", "same"], f"{PATH}?last=a&n=1"),
        f"{base}{PATH}?last=a&n=1": (["p2", "same"], f"{base}{PATH}?last=b&n=1"),  # absolute or not, alike
        f"{base}{PATH}?last=b&n=1": (["p3", "same"], f"{PATH}?last=a&n=1"),
    }
    listing = offline(monkeypatch, lambda url: (json.dumps({"tags": pages[url][0]}).encode(), pages[url][1]))

    tags, error = paged(listing)

    assert tags == ["p1", "same", "p2", "p3"]
    assert str(error) == f"{WHAT}: the Link pagination loops back to {base}{PATH}?last=a&n=1 after 3 pages"


# ---------------------------------------------------------------- entries of a page


def tags_page(count):
    """`{"tags": [...]}` of `count` distinct short tags, ~9 bytes each."""
    return json.dumps({"name": "big/repo", "tags": [f"{n:x}" for n in range(count)]}, separators=(",", ":")).encode()


def test_a_page_of_millions_of_tags_is_refused_before_it_is_parsed(monkeypatch):
    """A 63 MiB page of 7.5 million tags was parsed whole, ~900 MB, before the bound was checked."""
    body = tags_page(1_000_000)
    listing = offline(monkeypatch, lambda url: (body, ""))

    (tags, error), peak = peak_while(lambda: paged(listing))

    assert tags == []
    assert str(error) == (
        f"{WHAT}: page 1 may list more than the 300,000 tags a listing may hold: it holds more than 562,144 values"
    )
    assert peak < 16 << 20, f"{peak >> 20} MiB held for a page of {len(body) >> 20} MiB"


def test_the_bound_counts_what_earlier_pages_took(monkeypatch):
    pages = {
        f"https://registry.example{PATH}": (tags_page(40), f"{PATH}?n=40&last=27"),
        f"https://registry.example{PATH}?n=40&last=27": (json.dumps({"tags": ["x"] * 200}).encode(), ""),
    }
    monkeypatch.setattr(registry, "_PAGE_EXTRA_VALUES", 100)
    listing = offline(monkeypatch, pages.get)

    tags, error = paged(listing, max_entries=50)

    assert len(tags) == 40  # the first page's, kept
    assert "page 2 may list more than the 50 tags a listing may hold: it holds more than 110 values" in str(error)


def values(doc):
    """How many values `doc` holds, keys included."""
    if isinstance(doc, dict):
        return 1 + sum(1 + values(value) for value in doc.values())
    if isinstance(doc, list):
        return 1 + sum(values(value) for value in doc)
    return 1


def test_a_page_within_the_bound_is_taken_whole(monkeypatch):
    """Commas, colons and brackets inside names are text, not values; what a registry lists beside
    the entries (gcr.io's manifests) is within the extra allowed."""
    tags = [f"t{n}" for n in range(50)] + ["a,b:c[d{e" * 1000, 'with \\" and , inside']
    manifests = {f"sha256:{n:064x}": {"tag": ["t1"], "mediaType": "x", "timeCreatedMs": "0"} for n in range(500)}
    doc = {"name": "big/repo", "tags": tags, "manifest": manifests}
    body = json.dumps(doc).encode()
    listing = offline(monkeypatch, lambda url: (body, ""))

    assert paged(listing, max_entries=1000) == (tags, None)
    count = values(doc)
    assert configbounds.too_many_values(body, count - 1) and not configbounds.too_many_values(body, count)


def test_a_page_nested_too_deep_for_the_parser_is_one_line(monkeypatch):
    listing = offline(monkeypatch, lambda url: (b'{"tags": ' + b"[" * 100_000, ""))

    tags, error = paged(listing)

    assert tags == [] and str(error).startswith(f"{WHAT}: the answer is not valid JSON (maximum recursion depth")


def test_a_listing_holds_each_entry_once_and_stops_at_its_bound(monkeypatch):
    pages = {
        f"https://registry.example{PATH}": (json.dumps({"tags": ["b", "a", "b"]}).encode(), f"{PATH}?n=3&last=b"),
        f"https://registry.example{PATH}?n=3&last=b": (json.dumps({"tags": ["a", "c", "d", "e"]}).encode(), ""),
    }
    listing = offline(monkeypatch, pages.get)

    assert paged(listing, max_entries=5) == (["b", "a", "c", "d", "e"], None)
    tags, error = paged(listing, max_entries=3)
    assert tags == ["b", "a", "c"] and str(error) == f"{WHAT}: more than 3 tags listed (after 2 pages)"


def test_a_crawl_of_repositories_listing_millions_of_tags_stays_small(fake, tmp_path):
    """Measured in a child process: each listing of a 27 MB page of 3 million tags took ~450 MB."""
    manifest, configs, _ = image()
    fake.add_image("a/one", {"v1": manifest}, configs, OCI_MANIFEST)
    huge = FakeReply(200, tags_page(3_000_000), JSON)
    for name in ("big/one", "big/two"):
        fake.routes[f"/v2/{name}/tags/list"] = huge
    fake.catalog(["a/one", "big/one", "big/two"])

    run = run_measured(
        ["index", f"docker://{fake.host}", "--store", str(tmp_path / "store"), "--jobs", "1"], timeout=120
    )

    errors = error_lines(run.stderr)
    assert run.code == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.peak_rss < 300 << 20, f"peak RSS {run.peak_rss >> 20} MiB"
    assert len(errors) == 2, errors
    for name, line in zip(("big/one", "big/two"), sorted(errors)):
        assert line.startswith(f"imgdex: {fake.host}/{name}: GET tags/list: page 1 may list more than the 300,000 tags")
    assert "indexed 1 images" in run.stdout, run.stdout
