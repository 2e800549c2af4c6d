"""Errors become a message in the page, never a stack trace.

:func:`guard` wraps a callback: a ValueError/TypeError/OSError (bad input, a missing or
corrupt file — the library's messages name the argument and the fix) or a lookup's KeyError is
shown as it is; any other exception is logged on the server with its traceback and shown as a
one-line "internal error" message. The other outputs keep what they showed (``no_update``)
unless the callback names what to show instead (``failed``): a result of the previous settings
beside an error message about the new ones would read as the new result.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from dash import html, no_update

__all__ = ["guard", "message"]

log = logging.getLogger("flowgraph.dashboard")
MAX_MESSAGE_CHARS = 600  # a message, not a dump
USER_ERRORS = (ValueError, TypeError, OSError, MemoryError)


def message(text: str, kind: str = "error") -> html.Div:
    """A message box (``kind``: error or note) for the page's message area."""
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return html.Div(text, className=f"fg-message fg-{kind}", role="alert")


def guard(
    outputs: int,
    message_at: int | None,
    failed: Callable[[], dict[int, Any]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a callback returning ``outputs`` values, the one at ``message_at`` being the
    page's message area: exceptions turn into a message there and ``no_update`` elsewhere, or,
    for the indices ``failed()`` returns, the values it gives (e.g. emptied results).
    ``message_at`` None: a callback whose failures another callback's message already shows
    (same inputs, same checks) sets only those outputs."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def guarded(*args: Any) -> Any:
            try:
                return fn(*args)
            except KeyError as exc:  # a lookup's message is its argument, not repr-quoted
                text = str(exc.args[0]) if exc.args else "KeyError"
            except USER_ERRORS as exc:
                text = str(exc) or type(exc).__name__
            except Exception as exc:
                log.exception("dashboard callback %s failed", fn.__name__)
                text = f"internal error ({type(exc).__name__}); the server log has the details"
            result: list[Any] = [no_update] * outputs
            for index, value in (failed() if failed else {}).items():
                result[index] = value
            if message_at is not None:
                result[message_at] = message(text)
            return result[0] if outputs == 1 else tuple(result)

        return guarded

    return wrap
