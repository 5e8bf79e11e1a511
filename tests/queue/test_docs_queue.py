"""The runnable examples of docs/queue.md run as written (each in a fresh namespace)."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "queue.md"
BLOCKS = [
    b
    for b in re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    if "import ringcast" in b and "async def" not in b and not b.lstrip().startswith(">>>")
]


def test_the_page_has_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_example_runs(n):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(BLOCKS[n], f"{PAGE.name}[{n}]", "exec"), {"__name__": "__doc_example__"})
    # A comment "# → text" on a print line is the exact line that print writes.
    printed = out.getvalue().splitlines()
    for expected in re.findall(r"print\(.*\)\s+# → (.+)", BLOCKS[n]):
        assert expected.strip() in printed, (expected, printed)
