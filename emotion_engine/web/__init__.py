"""The agent-assist page: static, framework-free HTML/JS/CSS served by ``serve`` at ``/``.

The page (``index.html``, ``app.js``, ``app.css``; no build step) subscribes to
``/v1/events`` on the same origin and draws every call it hears about: a calls list
for supervisors, and per call and party a live meter, the spike cue, routing hints
and the summary at hang-up. Query parameters: ``token`` (passed on to
``/v1/events``; kept in sessionStorage and removed from the address bar),
``call_id`` (follow one call only, e.g. embedded in an agent desktop).

:func:`asset` maps a request path to ``(text, content type)``; the server adds
:data:`HEADERS`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Final

WEB_DIR: Final = Path(__file__).resolve().parent

_ASSETS: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}

HEADERS: Final = {
    "Cache-Control": "no-cache",
    # the page URL may carry ?token=: never send it on as a Referer
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # only our own files run; the websocket goes back to the same origin
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; object-src 'none'"
    ),
}


@functools.cache
def _read(name: str) -> str:
    return (WEB_DIR / name).read_text(encoding="utf-8")


def asset(path: str) -> tuple[str, str] | None:
    """``(text, content type)`` for a page path, or None when ``path`` is not one."""
    entry = _ASSETS.get(path)
    if entry is None:
        return None
    name, content_type = entry
    return _read(name), content_type
