"""plotly.js (4.8 MB, most of a first page load) from a versioned URL, fetched with the page.

Dash loads plotly.js only when the first graph mounts — after the page's scripts, its layout
and its callbacks' list have arrived — from an unversioned URL that the browser must
revalidate on every page view. :func:`serve_plotlyjs` serves the same file (plotly's own copy,
gzipped once per process when the browser takes gzip: a quarter of the bytes) under a URL that
names plotly's version, cached for a year (a new version is a new URL), and
puts it in the page beside Dash's scripts, so the browser fetches and compiles it in parallel
with them; dcc.Graph then finds ``window.Plotly`` and loads nothing more. The page also
preloads the dcc chunks its controls and graphs need."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import flask
import plotly
from dash import Dash
from plotly.offline import get_plotlyjs_version

__all__ = ["PLOTLY_JS", "gzipped_plotlyjs", "plotlyjs_route", "serve_plotlyjs"]

PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
ONE_YEAR_S = 365 * 24 * 3600

INDEX = """<!DOCTYPE html>
<html>
    <head>
        {%metas%}
        <title>{%title%}</title>
        {%favicon%}
        {%css%}
        PRELOADS
    </head>
    <body>
        {%app_entry%}
        <footer>
            {%config%}
            <script src="PLOTLY_SRC"></script>
            {%scripts%}
            {%renderer%}
        </footer>
    </body>
</html>"""


# dcc's code for graphs, dropdowns and uploads comes in chunks that load only once the page's
# layout has arrived and rendered, a round trip later; preloaded, they are there by then.
DCC_CHUNKS = ("async-graph.js", "async-dropdown.js", "async-upload.js")


@functools.cache
def gzipped_plotlyjs() -> bytes:
    """plotly.js gzipped once per process (4.8 MB → about 1.4 MB on the wire)."""
    return gzip.compress(PLOTLY_JS.read_bytes(), compresslevel=6, mtime=0)


def plotlyjs_route() -> str:
    """The URL path of plotly.js, naming its version."""
    return f"/_flowgraph/plotly-{get_plotlyjs_version()}.min.js"


def serve_plotlyjs(app: Dash) -> None:
    """Serve plotly.js at :func:`plotlyjs_route` (cached a year) and load it with the page."""
    route = plotlyjs_route()

    def plotly_js() -> flask.Response:
        if "gzip" not in flask.request.accept_encodings:
            return flask.send_file(PLOTLY_JS, mimetype="text/javascript", max_age=ONE_YEAR_S)
        response = flask.Response(gzipped_plotlyjs(), mimetype="text/javascript")
        response.headers["Content-Encoding"] = "gzip"
        response.headers["Vary"] = "Accept-Encoding"
        response.cache_control.public = True
        response.cache_control.max_age = ONE_YEAR_S
        return response

    app.server.add_url_rule(route, "flowgraph_plotlyjs", plotly_js)
    prefix = app.config.requests_pathname_prefix.rstrip("/")
    preloads = "\n        ".join(
        f'<link rel="preload" as="script" href="{prefix}/_dash-component-suites/dash/dcc/{c}">'
        for c in DCC_CHUNKS
    )
    app.index_string = INDEX.replace("PLOTLY_SRC", prefix + route).replace("PRELOADS", preloads)
