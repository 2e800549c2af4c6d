"""Every runnable example in the docs runs as written: each ```python and ```pycon block of every
page (and the README), in page order with one namespace per page, in a folder holding the demo
runs the pages name. A block whose fence carries a title (```python title="…") is an excerpt
that says what it needs, and is not run."""

from __future__ import annotations

import doctest
import re
import textwrap
from pathlib import Path

import pytest
from test_docs_heads import _save_run

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"])
FENCE = re.compile(r"^( *)```(python|pycon)([^\n]*)\n(.*?)^\1```", re.M | re.S)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(language, fence title, code) of each python/pycon block of ``page``."""
    return [
        (lang, rest.strip(), textwrap.dedent(body))
        for _, lang, rest, body in FENCE.findall(page.read_text(encoding="utf-8"))
    ]


def test_the_docs_have_examples_and_every_excerpt_says_why():
    found = [(p.name, *b) for p in PAGES for b in blocks(p)]
    assert sum(1 for *_, title, _ in found if not title) >= 25
    for name, _, title, _ in found:
        assert not title or title.startswith('title="'), f"{name}: unknown fence {title!r}"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.name)
def test_every_example_of_the_page_runs(page, tmp_path, monkeypatch):
    _save_run(tmp_path / "runs" / "sort-metric", "metric", 0)
    _save_run(tmp_path / "runs" / "sort-sdpa", "sdpa", 1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, (lang, title, code) in enumerate(blocks(page)):
        if title:
            continue
        where = f"{page.name}, block {i + 1}"
        if lang == "python":
            exec(compile(code, where, "exec"), namespace)
            continue
        test = doctest.DocTestParser().get_doctest(code, namespace, where, str(page), 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        report: list[str] = []
        runner.run(test, out=report.append, clear_globs=False)
        assert runner.failures == 0, f"{where}:\n" + "".join(report)
        namespace.update(test.globs)
