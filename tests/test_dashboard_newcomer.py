"""What a newcomer saw on the dashboard (issue #19), pinned in the real browser: Debian's
Chromium driven by Playwright against the real ``flowgraph dashboard`` command, offline (the
guard of tests/browser.py). Skips without a Chromium unless ``CI=true``."""

from __future__ import annotations

import pytest
from browser import (
    CHROMIUM_ARGS,
    STEP_TIMEOUT_MS,
    OfflineGuard,
    figure_signature,
    require_browser,
    serve_dashboard,
    shared_tiny_runs,
    timed_change,
    wait_for_figure_change,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    require_browser()
    runs = shared_tiny_runs(tmp_path_factory)
    log = tmp_path_factory.mktemp("server") / "dashboard.log"
    with serve_dashboard("--runs", str(runs), log_path=log) as url:
        yield url
    assert "Traceback" not in log.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=require_browser(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _page(browser, width: int):
    context = browser.new_context(viewport={"width": width, "height": 1000})
    context.set_default_timeout(STEP_TIMEOUT_MS)
    guard = OfflineGuard()
    context.route("**/*", guard)
    return context, context.new_page(), guard


def _type(page, input_id: str, text: str) -> None:
    box = page.locator(f"#{input_id}")
    box.fill(text)
    box.press("Enter")


# Every axis of a graph: its name, the range plotly drew and the tick values it shows.
_AXES_JS = """(graph) => {
    const gd = document.querySelector(`#${graph} .js-plotly-plot`);
    const fl = gd._fullLayout;
    return Object.keys(fl).filter(k => /^[xy]axis\\d*$/.test(k)).sort().map(k =>
        [k, fl[k].range.map(Number), (fl[k]._vals || []).map(v => v.x)]);
}"""


def test_axes_follow_n_and_layers(browser, url):
    """n = 16, then layers = 4: every panel's axes are 0..15. Plotly.react kept the surviving
    axes' scaleanchor state: after n = 16 the axes spanned −1.2..16.2, after layers = 4
    panels 1–2 kept −2..17 (ticks −5 and 20 on a 0..15 axis) while panels 3–4 were right."""
    context, page, guard = _page(browser, 1400)
    try:
        page.goto(url)
        wait_for_figure_change(page, "patterns-masks", None)
        for box, value, panels in (("patterns-n", "16", 2), ("patterns-layers", "4", 4)):
            timed_change(page, "patterns-masks", lambda b=box, v=value: _type(page, b, v))
            page.wait_for_timeout(300)  # plotly's drawing after the figure arrived
            axes = page.evaluate(_AXES_JS, "patterns-masks")
            assert len(axes) == 2 * panels, axes
            for name, drawn, ticks in axes:
                want = [-0.5, 15.5] if name.startswith("x") else [15.5, -0.5]
                assert drawn == pytest.approx(want), (box, name, drawn)
                assert all(0 <= t <= 15 for t in ticks), (box, name, ticks)
        assert guard.blocked == []
    finally:
        context.close()


# Each drawn figure: its card's heading, the svg's width and its right edge, the card's inner
# right edge (its border box less the padding).
_FITS_JS = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(gd => gd.closest('.fg-section').offsetParent !== null)  // shown cards only
    .map(gd => {
    const card = gd.closest('.fg-section');
    const svg = gd.querySelector('svg.main-svg').getBoundingClientRect();
    const box = card.getBoundingClientRect();
    const pad = parseFloat(getComputedStyle(card).paddingRight);
    return [card.querySelector('h3') ? card.querySelector('h3').innerText : gd.parentElement.id,
            svg.width, svg.right, box.right - pad, card.clientWidth];
})"""


@pytest.mark.parametrize("width", [1024, 1920])
def test_figures_fit_their_cards(browser, url, width):
    """No figure is wider than its card (the multi-panel ones were 1520 px in a 1400 px card,
    their colour-bar labels cut; the Heads page was cut at 1024 px), on the Patterns page with
    four panels a row and on the Heads page, and after a 1920 px window narrows to 1024."""
    context, page, _ = _page(browser, width)
    try:

        def check(where: str) -> None:
            page.wait_for_timeout(400)
            fits = page.evaluate(_FITS_JS)
            assert fits, where
            for title, svg_w, svg_right, inner_right, card_w in fits:
                assert svg_w <= card_w and svg_right <= inner_right + 1, (where, title, fits)

        page.goto(url)
        wait_for_figure_change(page, "patterns-reach", None)
        timed_change(page, "patterns-masks", lambda: _type(page, "patterns-n", "16"))
        timed_change(page, "patterns-masks", lambda: _type(page, "patterns-layers", "4"))
        wait_for_figure_change(page, "patterns-reach", None)
        check("patterns")
        page.goto(url + "heads")
        wait_for_figure_change(page, "heads-form", None)
        wait_for_figure_change(page, "heads-attention", None)
        check("heads")
        if width > 1024:  # drawn wide, then the window narrows to the smallest width
            page.set_viewport_size({"width": 1024, "height": 1000})
            check("heads, the window narrowed to 1024")
    finally:
        context.close()


def test_a_pattern_change_restores_the_direction_it_forced(browser, url):
    """fixed → ltr → fixed: ltr forces bidirectional, and fixed gets causal back (it kept
    bidirectional, silently turning fixed's verdict into full information); the page says so."""
    context, page, _ = _page(browser, 1400)
    try:
        page.goto(url)
        wait_for_figure_change(page, "patterns-masks", None)
        verdict = page.locator("#patterns-verdict")
        verdict.get_by_text("NOT full information").wait_for()
        for name, direction, note, expect in (
            ("ltr", "bidirectional", "ltr is bidirectional only", "bidirectional"),
            ("fixed", "causal", "direction back to causal", "causal"),
        ):
            page.click("#patterns-name")
            page.locator(f'.dash-dropdown-option:has(input[value="{name}"])').click()
            page.wait_for_function(
                "([name, kind]) => document.querySelector('#patterns-verdict').innerText"
                ".startsWith(`${name} (n=64, ${kind}`)",
                arg=[name, expect],
            )
            checked = page.locator("#patterns-direction input:checked").get_attribute("value")
            assert checked == direction
            assert note in page.inner_text("#patterns-direction-note")
        assert "NOT full information" in page.inner_text("#patterns-verdict")
        assert page.locator('#patterns-direction input[value="causal"]').is_enabled()
    finally:
        context.close()


def test_a_typo_in_the_input_blanks_only_the_input_figures(browser, url):
    """A word not in the vocabulary: the message says so, the token distances and attention
    show no result, and the form and spectrum (the weights alone) stay drawn; they were
    blanked too."""
    context, page, _ = _page(browser, 1400)
    try:
        page.goto(url + "heads")
        for graph in ("heads-form", "heads-spectrum", "heads-attention"):
            wait_for_figure_change(page, graph, None)
        drawn = {g: figure_signature(page, g) for g in ("heads-form", "heads-spectrum")}
        _type(page, "heads-text", "0 typo")
        page.locator("#heads-message").get_by_text("not in the vocabulary").wait_for()
        for graph in ("heads-distances", "heads-attention"):
            page.wait_for_function(
                "(g) => document.querySelector(`#${g}`).innerText.includes('no result')",
                arg=graph,
            )
        page.wait_for_timeout(500)
        for graph, sig in drawn.items():
            assert figure_signature(page, graph) == sig, graph
            assert "no result" not in page.inner_text(f"#{graph}")
    finally:
        context.close()


def _npz(path, masks) -> str:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, masks=masks)
    path.write_bytes(buffer.getvalue())
    return str(path)


def test_an_upload_says_one_thing_about_the_last_file(browser, url, tmp_path):
    """The upload's status speaks of the last file only: a refused file showed its refusal
    beside the "loaded …" of the file before it, and that refusal stayed beside the next
    file's "loaded …"."""
    import numpy as np

    import flowgraph as fg
    from flowgraph.app.dashboard import limits

    masks = np.stack([fg.fixed(16, stride=4).dense(s) for s in range(2)])
    first = _npz(tmp_path / "first.npz", masks)
    second = _npz(tmp_path / "second.npz", masks[::-1])
    too_big = tmp_path / "too_big.npz"
    too_big.write_bytes(b"\0" * (limits.MAX_UPLOAD_BYTES + 1))
    context, page, _ = _page(browser, 1400)
    status = page.locator("#patterns-upload-status")
    box = "#patterns-upload input[type=file]"
    try:
        page.goto(url)
        wait_for_figure_change(page, "patterns-masks", None)
        page.set_input_files(box, first)
        status.get_by_text("loaded first.npz").wait_for()
        page.set_input_files(box, str(too_big))
        page.get_by_text("too_big.npz is 4,194,305 bytes; the limit is").wait_for()
        page.wait_for_timeout(300)
        assert "loaded first.npz" not in page.inner_text("#patterns-upload-status")
        assert "too_big.npz" in page.inner_text("#patterns-upload-status")
        page.set_input_files(box, second)
        status.get_by_text("loaded second.npz").wait_for()
        page.wait_for_timeout(300)
        assert "too_big" not in page.inner_text("body")
    finally:
        context.close()


def test_the_attention_hover_tells_repeated_tokens_apart(browser, url):
    """The Heads page's attention hover, as plotly draws it, over cell (2, 0) of the input
    "0 1 0": it read "query 2 0 → key 0 0"; now each side's position and token are named."""
    context, page, _ = _page(browser, 1400)
    try:
        page.goto(url + "heads")
        before = wait_for_figure_change(page, "heads-attention", None)
        _type(page, "heads-text", "0 1 0")
        wait_for_figure_change(page, "heads-attention", before)
        page.wait_for_timeout(300)
        # the mouse over the centre of cell (query 2, key 0), as a user points at it
        page.locator("#heads-attention").scroll_into_view_if_needed()
        x, y = page.evaluate(
            """() => {
                const gd = document.querySelector('#heads-attention .js-plotly-plot');
                const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                const box = gd.getBoundingClientRect();
                return [box.left + xa._offset + xa.l2p(0), box.top + ya._offset + ya.l2p(2)];
            }"""
        )
        page.mouse.move(x, y)
        label = page.locator("#heads-attention .hoverlayer .hovertext")
        label.wait_for()
        text = label.text_content()
        assert text is not None
        assert "query: position 2, token “0”" in text and "key: position 0, token “0”" in text
    finally:
        context.close()
