"""Golden files for JSON output, compared as parsed JSON. IMGDEX_UPDATE_GOLDEN=1 rewrites them."""

import json
import os

from conftest import GOLDEN


def assert_golden(name: str, text: str) -> None:
    path = os.path.join(GOLDEN, name)
    if os.environ.get("IMGDEX_UPDATE_GOLDEN") == "1":
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    with open(path) as f:
        expected = json.load(f)
    assert json.loads(text) == expected, f"output differs from golden {name}"
