import pytest

from indexer.sources.jsonshape import list_at, object_at, string_at


@pytest.mark.parametrize(
    "read, good, empty",
    [(string_at, "text", ""), (object_at, {"a": 1}, {}), (list_at, [1], [])],
)
def test_a_field_of_another_type_reads_as_empty(read, good, empty):
    assert read({"k": good}, "k") == good
    for wrong in (None, 1, True, "text", {"a": 1}, [1]):
        if type(wrong) is not type(good):
            assert read({"k": wrong}, "k") == empty
    assert read({}, "k") == empty
