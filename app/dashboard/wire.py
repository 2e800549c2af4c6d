"""What a callback request must look like before Dash reads it.

Dash's ``/_dash-update-component`` trusts its body: a JSON list instead of an object, a missing
``output``, one input too few, ``changedPropIds`` as a number or arrays nested 100,000 deep each
ended in a 500 page and an ERROR traceback in the server log. :func:`check_callback_body` holds a
body against the callback it names (the JSON the page itself sends), and
:func:`install_request_checks` answers a body that fails with a 400 whose message names the
field and what was expected. The values inside ``inputs`` and ``state`` are the callbacks' to
check (each page refuses bad values with a message in the page).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import flask
from dash import Dash

__all__ = ["UPDATE_PATH", "check_callback_body", "install_request_checks"]

UPDATE_PATH = "/_dash-update-component"
# The inputs of Dash's own page router, which checks nothing: a list for the pathname was a
# 500 (AttributeError in dash.strip_relative_path), and so was a path without its leading "/"
# (UnsupportedRelativePath). The pages' callbacks check their own inputs.
DASH_INPUTS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "_pages_location.pathname": (
        'None or a path that starts with "/"',
        lambda v: v is None or (isinstance(v, str) and v.startswith("/")),
    ),
    "_pages_location.search": ("None or text", lambda v: v is None or isinstance(v, str)),
}
log = logging.getLogger("flowgraph.dashboard")


def _props(key: str) -> list[tuple[str, str]]:
    """The (id, property) pairs of a callback_map key (``..a.x...b.y..`` or ``a.x``)."""
    parts = key.strip(".").split("...") if key.startswith("..") else [key]
    return [tuple(part.rsplit(".", 1)) for part in parts]  # type: ignore[misc]


def _check_props(field: str, given: object, expected: list[tuple[str, str]]) -> None:
    """``given`` must be the list of ``{"id", "property", ...}`` the page sends for ``expected``."""
    if not isinstance(given, list):
        raise ValueError(f"{field} must be a list of {{id, property}} objects, got {given!r:.60}")
    if len(given) != len(expected):
        raise ValueError(f"{field} must hold {len(expected)} entries, got {len(given)}")
    for i, (item, (id_, prop)) in enumerate(zip(given, expected, strict=True)):
        if not isinstance(item, dict) or (item.get("id"), item.get("property")) != (id_, prop):
            raise ValueError(f"{field}[{i}] must be {{id: {id_!r}, property: {prop!r}}}")


def check_callback_body(body: object, callback_map: dict[str, Any]) -> None:
    """Raise ValueError, naming the field, unless ``body`` is a callback request for one of
    ``callback_map``'s callbacks: an object with its ``output`` key, ``outputs``, ``inputs``
    and ``state`` in its order, and ``changedPropIds`` a list of its input names."""
    if not isinstance(body, dict):
        raise ValueError(f"the body must be a JSON object, got {type(body).__name__}")
    output = body.get("output")
    if not isinstance(output, str) or output not in callback_map:
        raise ValueError(f"output must name one of the app's callbacks, got {output!r:.80}")
    spec = callback_map[output]
    if "callback" not in spec:
        raise ValueError(f"output {output!r:.80} names a callback that runs in the browser")
    given = body.get("outputs")  # a list for a multi-output callback, else one object
    _check_props("outputs", given if output.startswith("..") else [given], _props(output))
    _check_props("inputs", body.get("inputs"), [(i["id"], i["property"]) for i in spec["inputs"]])
    _check_props("state", body.get("state", []), [(s["id"], s["property"]) for s in spec["state"]])
    for item in body["inputs"] + body.get("state", []):
        name = f"{item['id']}.{item['property']}"
        expected, ok = DASH_INPUTS.get(name, ("", lambda _: True))
        if not ok(item.get("value")):
            raise ValueError(f"{name} must be {expected}, got {item.get('value')!r:.60}")
    changed = body.get("changedPropIds", [])
    names = {f"{i['id']}.{i['property']}" for i in spec["inputs"]}
    if not isinstance(changed, list) or not all(c in names for c in changed):
        raise ValueError(f"changedPropIds must list some of the inputs, got {changed!r:.80}")


def _refuse(status: int, text: str) -> flask.Response:
    log.warning("refused a callback request (%s): %s", status, text)
    response = flask.jsonify(error=text)
    response.status_code = status
    return response


def install_request_checks(app: Dash) -> None:
    """Check every callback request's body before Dash reads it (400 with a message when it is
    not what the page sends). Bodies that are not JSON at all are left to Flask (415)."""
    server = app.server

    @server.before_request
    def _check_callback_request() -> flask.Response | None:
        request = flask.request
        if request.method != "POST" or not request.path.endswith(UPDATE_PATH):
            return None
        if not request.is_json:
            return None  # Flask answers 415 Unsupported Media Type
        try:  # RecursionError: arrays nested deeper than the parser goes
            body = json.loads(request.get_data(cache=True))
        except (ValueError, RecursionError) as exc:
            return _refuse(400, f"the body is not valid JSON ({type(exc).__name__})")
        try:
            check_callback_body(body, app.callback_map)
        except ValueError as exc:
            return _refuse(400, str(exc))
        return None
