"""The Python examples in docs/*.md run, and print what the page says they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"
BLOCK = re.compile(r"```python\n(.*?)```\n(?:\nprints\n\n((?:    [^\n]*\n)+))?", re.S)


def examples():
    for page in sorted(DOCS.glob("*.md")):
        for k, match in enumerate(BLOCK.finditer(page.read_text())):
            yield pytest.param(match.group(1), match.group(2), id=f"{page.stem}-{k}")


@pytest.mark.parametrize("code, printed", list(examples()))
def test_doc_example_runs_and_prints_what_it_says(code, printed):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<doc>", "exec"), {"__name__": "__doc_example__"})
    if printed:
        expected = "".join(line[4:] + "\n" for line in printed.splitlines())
        assert out.getvalue() == expected
