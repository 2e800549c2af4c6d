"""``create_app``: the Dash app over a set of roots — four pages, a nav, local assets only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dash
from dash import Dash, dcc, html

from flowgraph.app.dashboard.plotlyjs import gzipped_plotlyjs, serve_plotlyjs
from flowgraph.app.dashboard.state import STATE_KEY, DashboardState
from flowgraph.app.dashboard.wire import install_request_checks
from flowgraph.app.pages import embeddings, flow, heads, patterns

__all__ = ["PAGES", "create_app", "warm"]

PAGES = (patterns, heads, embeddings, flow)
ASSETS = Path(__file__).resolve().parent / "assets"
# an upload (≤ 4 MiB: 5.6 MB as base64) plus its file name; every other request is a few kB.
# A cap near the largest real request also caps the memory one request's JSON can take.
MAX_REQUEST_BYTES = 8 * 2**20
# The browser may load nothing from another origin: a second guard, beside serve_locally, that
# keeps the app offline. Dash's renderer and plotly need inline scripts, eval and data: URLs.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'"
)


def create_app(runs: Path | None, checkpoints: Sequence[Path], vectors: Path | None) -> Dash:
    """The dashboard over the given roots (each must exist; ValueError naming the flag if not).

    Parameters
    ----------
    runs : a folder of training runs (``flowgraph train`` outputs), or None.
    checkpoints : more checkpoints, each a run folder, Hugging Face folder or nanoGPT file.
    vectors : a folder of saved word2vec vectors, or None.

    Returns
    -------
    dash.Dash
        Serve it with ``app.run(host="127.0.0.1", port=8050)``; ``app.server`` is the Flask app.
    """
    state = DashboardState(runs, list(checkpoints), vectors)
    app = Dash(
        __name__,
        use_pages=True,
        pages_folder="",  # pages are registered below, per app, not imported from a folder
        assets_folder=str(ASSETS),
        serve_locally=True,
        external_scripts=[],
        external_stylesheets=[],
        suppress_callback_exceptions=True,  # page layouts arrive after the app's own layout
        title="flowgraph dashboard",
        update_title=None,
    )
    serve_plotlyjs(app)
    app.server.config[STATE_KEY] = state
    app.server.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES

    @app.server.after_request
    def _headers(response):  # type: ignore[no-untyped-def]
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    for page in PAGES:
        dash.register_page(
            page.__name__,
            path=page.PATH,
            name=page.NAME,
            order=page.ORDER,
            title=f"flowgraph · {page.NAME}",
            layout=page.layout,
        )
        page.register_callbacks(app, state)
    install_request_checks(app)  # a malformed callback request: 400 with a message, not a 500
    app.layout = html.Div(
        [
            html.Header(
                [
                    html.Span("flowgraph", className="fg-brand"),
                    html.Nav(
                        [
                            dcc.Link(page.NAME, href=page.PATH, id=f"nav-{page.NAME.lower()}")
                            for page in PAGES
                        ],
                        className="fg-nav",
                    ),
                ],
                className="fg-header",
            ),
            html.Main(dash.page_container, className="fg-main"),
        ]
    )
    return app


def warm(app: Dash) -> list[str]:
    """Fill the caches before serving: gzip plotly.js, load the first checkpoints and compute
    what each page shows on arrival (its ``warm(state)``), so the first visit does not wait for
    torch's import, file reads or the first figures. Returns the labels of the loaded
    checkpoints."""
    state: DashboardState = app.server.config[STATE_KEY]
    gzipped_plotlyjs()
    loaded = state.warm()
    for page in PAGES:
        page.warm(state)
    return loaded
