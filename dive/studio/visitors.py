"""Public mode: who a visitor is, and which files they may fetch.

A visitor is a random key the server hands out as a cookie (`dive_visitor`) on the first response
to a browser or to gradio_client, and that comes back with every later request: page loads,
events, file downloads. It survives a page reload, so a visitor still sees their own runs and
exports after one; their files live under `visitors/<visitor_id(key)>/`. A request without the
cookie (a client that keeps no cookies) is known by its Gradio session instead, for that session.

`VisitorKeys` is the ASGI middleware that hands out the key and refuses any file of another
visitor's folder (`/gradio_api/file=...`): a visitor's outputs are served from their own folder
(`launch_options` makes it a static path, so Gradio serves it without copying it to its cache),
and only to the visitor whose key names that folder.
"""

from __future__ import annotations

import os
import re
import secrets
from http.cookies import CookieError, SimpleCookie
from pathlib import Path

from dive.studio.sandbox import visitor_id

COOKIE = "dive_visitor"
KEY = re.compile(r"[A-Za-z0-9_-]{22,64}")
MAX_AGE = 365 * 24 * 3600


def new_key() -> str:
    return secrets.token_urlsafe(24)


def key_of(cookie_header: str | None) -> str | None:
    """The visitor key in a Cookie header (None when absent or not a key this server hands out)."""
    if not cookie_header:
        return None
    try:
        jar = SimpleCookie(cookie_header)
    except CookieError:
        return None
    key = jar[COOKIE].value if COOKIE in jar else None
    return key if key and KEY.fullmatch(key) else None


def set_cookie(key: str, *, https: bool) -> str:
    """The Set-Cookie value: a year long, never read by page scripts; over https also inside a
    Space's frame (a partitioned, cross-site cookie)."""
    base = f"{COOKIE}={key}; Path=/; Max-Age={MAX_AGE}; HttpOnly"
    return base + ("; Secure; SameSite=None; Partitioned" if https else "; SameSite=Lax")


def owns(studio, path: str | os.PathLike, owner: str | None) -> bool:
    """May a visitor (`owner`, a visitor id) fetch `path`? Files inside the visitors' folder only
    from their own; any other path is left to the server's own rules (the data folder's other
    files are not served in public mode)."""
    visitors = (studio.sandbox.root / "visitors").resolve()
    try:
        rel = Path(os.path.abspath(path)).resolve().relative_to(visitors)
    except (ValueError, OSError):
        return True
    return bool(owner) and len(rel.parts) > 1 and rel.parts[0] == owner


class VisitorKeys:
    """ASGI middleware: hands out visitor keys; serves a visitor's files to that visitor only."""

    def __init__(self, app, studio):
        self.app, self.studio = app, studio

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        key = key_of("; ".join(v for k, v in headers if k == "cookie"))
        path = scope.get("path", "")
        if "/file=" in path and not owns(self.studio, path.split("/file=", 1)[1], visitor_id(key) if key else None):
            return await forbidden(send)
        if key is not None:
            return await self.app(scope, receive, send)
        proto = dict(headers).get("x-forwarded-proto", scope.get("scheme", "http"))
        cookie = set_cookie(new_key(), https=proto.split(",")[0].strip() == "https").encode("latin-1")

        async def send_with_key(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        return await self.app(scope, receive, send_with_key)


async def forbidden(send) -> None:
    body = b"File not allowed: it belongs to another visitor of this studio."
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
