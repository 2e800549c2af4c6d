"""docs/pictures.py regenerates exactly the pictures that docs/img holds (and the docs use)."""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import flowgraph as fg

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

HAS_BROWSER = bool(shutil.which("chromium") or shutil.which("google-chrome"))
needs_browser = pytest.mark.skipif(
    not HAS_BROWSER and os.environ.get("CI") != "true",
    reason="no chromium/google-chrome on PATH (with CI=true this test runs and fails instead)",
)


SCREENSHOTS = {"dashboard.png"}  # taken in a browser by tests/browser.py, not by pictures.py


def _committed() -> set[str]:
    return {p.name for p in (DOCS / "img").glob("*.png")}


def test_every_picture_the_docs_link_is_committed():
    """Markdown under docs/ and the README link only pictures that docs/img holds."""
    pages = [*DOCS.glob("*.md"), ROOT / "README.md"]
    linked = set()
    for page in pages:
        if page.exists():
            linked |= set(re.findall(r"img/([\w.-]+\.png)", page.read_text(encoding="utf-8")))
    assert linked, "no page links a picture"
    assert linked <= _committed(), f"linked but missing from docs/img: {linked - _committed()}"


def _fenced(page: Path, lang: str) -> list[str]:
    """The bodies of the ```lang blocks of a page (admonition indentation removed)."""
    text = page.read_text(encoding="utf-8")
    blocks = re.findall(rf"^( *)```{lang}\n(.*?)^\1```", text, flags=re.M | re.S)
    return [textwrap.dedent(body) for _, body in blocks]


def _docs_patterns() -> list[fg.Pattern]:
    """Every pattern whose report the pages paste, built the way the pages say."""
    sys.path.insert(0, str(DOCS))
    try:
        import pictures
    finally:
        sys.path.remove(str(DOCS))
    n = 64
    return [
        fg.dense(n),
        fg.local(n, window=8),
        fg.strided(n),
        fg.strided(n, causal=False),
        fg.fixed(n),
        fg.fixed(n, causal=False),
        fg.ltr(n),
        fg.rtl(n),
        fg.star(n),
        fg.ltr(10, stride=4),
        pictures.window_without_self(),
        pictures.block_local_global(),
    ]


def test_pasted_reports_are_real_output():
    """Every full report pasted in index.md and patterns.md is what check prints today."""
    real = {fg.check(p).summary() for p in _docs_patterns()}
    header = re.compile(r"^\S+: n=\d+, (causal|bidirectional), \d+ step")
    pasted = [
        block.rstrip("\n")
        for page in ("index.md", "patterns.md")
        for block in _fenced(DOCS / page, "text")
        if header.match(block)
    ]
    assert len(pasted) >= 12
    for block in pasted:
        assert block in real, f"stale report in the docs:\n{block}"


def test_index_example_prints_what_the_page_says():
    page = DOCS / "index.md"
    code = next(b for b in _fenced(page, "python") if "fg.check(p)" in b)
    expected = next(b for b in _fenced(page, "text") if b.startswith("False (0, 0)"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(page), "exec"), {})
    assert out.getvalue() == expected


def test_api_page_examples_run():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    text = re.sub(r"^```.*$", "", text, flags=re.M)  # a fence would read as expected output
    test = doctest.DocTestParser().get_doctest(text, {"fg": fg}, "api.md", "docs/api.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert test.examples, "api.md lost its examples"


@pytest.mark.browser
@needs_browser
def test_pictures_script_writes_the_committed_set(tmp_path):
    subprocess.run(
        [sys.executable, str(DOCS / "pictures.py"), "--out", str(tmp_path)],
        check=True,
        cwd=ROOT,
        timeout=300,
    )
    written = {p.name for p in tmp_path.iterdir()}
    assert written == _committed() - SCREENSHOTS
    for name in written:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1024, name
