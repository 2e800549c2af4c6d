"""Helpers for the dashboard's browser tests: build tiny runs, serve the dashboard in a
subprocess (the real ``flowgraph dashboard`` command), drive Debian's Chromium with Playwright
(never a downloaded browser) in a context that lets no request leave localhost, and time how long
a figure takes to update after a control changes.

Policy (as tests/test_docs.py): without a Chromium the browser tests skip, unless ``CI=true``
or ``REQUIRE_BROWSER=1``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
START_TIMEOUT_S = 180  # importing torch and dash on a busy 2-core machine
STEP_TIMEOUT_MS = 60_000  # one figure update, generous for a loaded machine


def chromium_path() -> str | None:
    """Debian's chromium (or a chrome) on this machine, or None."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("google-chrome")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def browser_required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("REQUIRE_BROWSER") == "1"


def require_browser() -> str:
    """The browser's path; skips (or, under CI / REQUIRE_BROWSER, fails) without one."""
    path = chromium_path()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        reason = "no chromium (or no playwright) on this machine"
        if browser_required():
            pytest.fail(f"{reason}, and CI=true / REQUIRE_BROWSER=1 requires the browser tests")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tiny_runs(root: Path) -> dict[str, Path]:
    """Two tiny sorters (a dot-product and a metric model, 2 layers × 2 heads) trained for a
    few steps into ``root/NAME``: seconds on a CPU, enough for every page to have real data."""
    import torch

    from flowgraph.models.train import TrainConfig, run_from_args

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {}
        for name, attention in (("tiny-sdpa", "sdpa"), ("tiny-metric", "metric")):
            run_from_args(
                task="sort",
                task_options={"length": 6, "vocab": 3},
                model_options=dict(attention=attention, n_layer=2, n_head=2, d_model=16),
                train_config=TrainConfig(
                    steps=3, batch_size=8, warmup=1, eval_every=3, ckpt_every=3, eval_size=8
                ),
                out=root / name,
                resume=False,
                device="cpu",
                progress=False,
            )
            runs[name] = root / name
        return runs
    finally:
        torch.set_num_threads(threads)


def shared_tiny_runs(tmp_path_factory: Any) -> Path:
    """The tiny runs of this test session, trained once into pytest's base temp folder and
    reused by every test module that asks (a module's fixture calls this)."""
    root = tmp_path_factory.getbasetemp() / "dashboard-tiny-runs"
    done = root / ".complete"
    if not done.exists():
        make_tiny_runs(root)
        done.write_text("ok")
    return root


def make_tiny_vectors(root: Path) -> Path:
    """Saved word vectors (random, 40 words × 8) in ``root/tiny-w2v``: the Embeddings page reads
    the saved format; what the vectors mean does not matter to it."""
    import numpy as np

    from flowgraph.models.word2vec import WordVectors

    words = [f"w{i}" for i in range(40)]
    vectors = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    return WordVectors(words, vectors).save(root / "tiny-w2v")


@contextmanager
def serve_dashboard(*args: str, log_path: Path) -> Iterator[str]:
    """Run ``flowgraph dashboard ARGS --port P`` in a subprocess until the block ends; yields
    the URL it printed, once the page answers. Its output goes to ``log_path``."""
    with serve_dashboard_process(*args, log_path=log_path) as (url, _):
        yield url


@contextmanager
def serve_dashboard_process(
    *args: str, log_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`serve_dashboard`, yielding the URL and the server's process (its memory, its
    exit status)."""
    port = free_port()
    cmd = [sys.executable, "-m", "flowgraph.app.cli", "dashboard", *args, "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = _wait_for_url(proc, log_path, port)
        yield url, proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate a server started by a test; kill it when it does not exit within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_for_url(proc: subprocess.Popen[bytes], log_path: Path, port: int) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dashboard exited ({proc.returncode}):\n{log_path.read_text()}")
        text = log_path.read_text(encoding="utf-8")
        if url is None:
            for line in text.splitlines():
                if "Dashboard running on http://" in line:
                    url = line.split("running on ", 1)[1].split()[0]
        if url is not None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return url
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
        time.sleep(0.2)
    raise RuntimeError(f"the dashboard did not answer on port {port}:\n{log_path.read_text()}")


class OfflineGuard:
    """A Playwright route handler: requests to localhost pass, any other is aborted and
    recorded, so a test can assert that the app asked for nothing outside."""

    def __init__(self) -> None:
        self.local: list[str] = []
        self.blocked: list[str] = []

    def __call__(self, route: Any) -> None:
        url = route.request.url
        host = urlparse(url).hostname or ""
        if url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            self.local.append(url)
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()


def slow_answers_js(output_fragment: str, delay_ms: int) -> str:
    """An init script for a page: the answers to callback requests whose ``output`` names
    ``output_fragment`` reach Dash ``delay_ms`` later (the request leaves at once), as on a
    busy server. ``window.__slowAnswers`` counts those still held back, so a test can tell that
    its input was made while such an answer was on its way."""
    return f"""(() => {{
        const original = window.fetch.bind(window);
        window.__slowAnswers = 0;
        window.fetch = async (url, init) => {{
            const body = init && typeof init.body === 'string' ? init.body : '';
            const slow = String(url).includes('_dash-update-component')
                && body.includes({output_fragment!r});
            if (slow) window.__slowAnswers += 1;
            try {{
                const response = await original(url, init);
                if (slow) await new Promise(done => setTimeout(done, {int(delay_ms)}));
                return response;
            }} finally {{
                if (slow) window.__slowAnswers -= 1;
            }}
        }};
    }})();"""


def figure_signature_js(graph_id: str) -> str:
    """A JS expression: a short text that changes whenever the graph's figure changes (title,
    trace names and the first trace's data size), or null before plotly drew it."""
    return f"""() => {{
        const gd = document.querySelector('#{graph_id} .js-plotly-plot');
        if (!gd || !gd.data || !gd.layout) return null;
        const t = gd.layout.title;
        const title = t ? (typeof t === 'string' ? t : (t.text || '')) : '';
        const notes = (gd.layout.annotations || []).map(a => a.text).join('|');
        const first = gd.data[0] || {{}};
        const rows = (a) => !a ? 0 : (a.length !== undefined ? a.length
            : (a.shape ? parseInt(String(a.shape).split(',')[0]) : 0));  // plotly's typed arrays
        const size = first.z ? rows(first.z) : rows(first.x);
        return [title, notes, gd.data.map(d => d.name).join(','), size].join('#');
    }}"""


def figure_signature(page: Any, graph_id: str) -> str | None:
    return page.evaluate(figure_signature_js(graph_id))


def wait_for_figure_change(page: Any, graph_id: str, before: str | None) -> str:
    """Wait until the graph's signature differs from ``before`` (and the graph is not a
    'computing' placeholder); returns the new signature."""
    js = figure_signature_js(graph_id)
    page.wait_for_function(
        f"""(before) => {{
            const sig = ({js})();
            return sig !== null && sig !== before && !sig.includes('computing…');
        }}""",
        arg=before,
        timeout=STEP_TIMEOUT_MS,
    )
    return figure_signature(page, graph_id)  # type: ignore[return-value]


def timed_change(page: Any, graph_id: str, action: Any) -> tuple[float, str]:
    """Run ``action()`` (a click, a selection) and wait for the graph to change: (ms, new
    signature). The time runs from just before the action to the figure's update in the page."""
    before = figure_signature(page, graph_id)
    start = time.perf_counter()
    action()
    after = wait_for_figure_change(page, graph_id, before)
    return (time.perf_counter() - start) * 1000.0, after


# The time the page waited for callback answers: first request start to last response end.
_CALLBACK_MS_JS = """() => {
    const calls = performance.getEntriesByType('resource')
        .filter(e => e.name.includes('_dash-update-component'));
    if (!calls.length) return 0;
    return Math.max(...calls.map(e => e.responseEnd)) - Math.min(...calls.map(e => e.startTime));
}"""


def measure_demo(
    runs: Path, screenshot: Path | None, switches: int = 16, loads: int = 1
) -> dict[str, list[float]]:
    """Serve the dashboard on ``runs`` (the demo sorters), time the first page loads (``loads``
    times, each in a fresh browser context: an empty cache), a repeated view of the Heads page
    (the cache warm) and ``switches`` layer/head switches on the Heads page, and (optionally)
    save the Heads page, a metric model beside a dot-product model, as ``screenshot``."""
    import tempfile

    from playwright.sync_api import sync_playwright

    found: dict[str, list[float]] = {}
    chromium = chromium_path()
    if chromium is None:
        raise SystemExit("no chromium on this machine")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "dashboard.log"
        with serve_dashboard("--runs", str(runs), log_path=log) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            guard = OfflineGuard()
            for _ in range(max(1, loads)):
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                context.route("**/*", guard)
                page = context.new_page()
                for name, path, graph in (
                    ("first page load (Patterns)", "", "patterns-masks"),
                    ("first page load (Heads)", "heads", "heads-form"),
                    ("first page load (Embeddings)", "embeddings", "embeddings-pca"),
                    ("repeat page view (Heads)", "heads", "heads-form"),
                ):
                    start = time.perf_counter()
                    page.goto(url + path)
                    wait_for_figure_change(page, graph, None)
                    found.setdefault(name, []).append((time.perf_counter() - start) * 1000.0)
            page.goto(url + "heads")
            wait_for_figure_change(page, "heads-form", None)
            layers = page.locator("#heads-layer input").count()
            heads = page.locator("#heads-head input").count()
            for i in range(switches):
                radio, count = ("heads-head", heads) if i % 2 == 0 else ("heads-layer", layers)
                current = page.locator(f"#{radio} input:checked").get_attribute("value")
                value = str((int(current) + 1) % count)
                page.evaluate("() => performance.clearResourceTimings()")
                last = figure_signature(page, "heads-attention")  # the lowest of the four
                start = time.perf_counter()
                ms, _ = timed_change(
                    page,
                    "heads-form",
                    lambda r=radio, v=value: page.locator(
                        f'#{r} label:has(input[value="{v}"])'
                    ).click(),
                )
                wait_for_figure_change(page, "heads-attention", last)
                found.setdefault("layer/head switch (Heads)", []).append(ms)
                found.setdefault("  all four figures redrawn", []).append(
                    (time.perf_counter() - start) * 1000.0
                )
                found.setdefault("  of which the server's answer", []).append(
                    page.evaluate(_CALLBACK_MS_JS)
                )
            if screenshot is not None:  # layer 0, head 0, as docs/dashboard.md says
                for radio in ("heads-layer", "heads-head"):
                    page.locator(f'#{radio} label:has(input[value="0"])').click()
                    page.wait_for_function(
                        f"() => document.querySelector('#{radio} input:checked').value === '0'"
                    )
                page.locator('#heads-parts label:has(input[value="matrix"])').click()
                before = wait_for_figure_change(
                    page, "heads-form", figure_signature(page, "heads-form")
                )
                page.locator("#heads-ckpt2").click()
                page.locator(".dash-dropdown-option").filter(has_text="sdpa").first.click()
                wait_for_figure_change(page, "heads-form", before)
                page.set_viewport_size({"width": 1860, "height": 1240})  # both models fit
                page.wait_for_timeout(800)  # let plotly finish drawing
                page.screenshot(path=str(screenshot))
            if guard.blocked:
                raise SystemExit(f"requests left localhost: {guard.blocked}")
            browser.close()
    return found


def main() -> None:
    """``python tests/browser.py --runs runs [--screenshot docs/img/dashboard.png]``: timings
    of the dashboard on trained runs (the demo sorters), as a table, and the README picture."""
    import argparse
    import json
    import statistics

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--switches", type=int, default=16)
    parser.add_argument("--loads", type=int, default=1, help="first page loads per page")
    parser.add_argument("--json", type=Path, help="write the samples here")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    found = measure_demo(args.runs.resolve(), args.screenshot, args.switches, args.loads)
    print(f"{'what':<32} {'n':>3} {'median ms':>10} {'max ms':>8}")
    for what, samples in found.items():
        print(
            f"{what:<32} {len(samples):>3} {statistics.median(samples):>10.0f} {max(samples):>8.0f}"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(found, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
