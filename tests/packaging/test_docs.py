"""docs/verification.md names real tests: every `path::test` it cites exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_the_verification_table_names_exists():
    text = (ROOT / "docs" / "verification.md").read_text()
    cited = re.findall(r"`((?:tests|e2e)/[\w/]+\.py)((?:::\w+)?)`", text)
    # "`file::a`, `::b`": a bare ::name refers to the file cited just before it.
    cells = re.findall(r"`((?:tests|e2e)/[\w/]+\.py)?(::\w+)?`", text)
    assert cited, "no tests cited"
    missing = []
    current = None
    for path, name in cells:
        if path:
            current = path
            if not (ROOT / path).is_file():
                missing.append(path)
                continue
        if name and current and f"def {name[2:]}(" not in (ROOT / current).read_text():
            missing.append(f"{current}{name}")
    assert missing == []
