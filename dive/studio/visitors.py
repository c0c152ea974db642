"""Public mode: who a visitor is, and which files they may fetch.

A visitor is a random key the server hands out as a cookie (`dive_visitor`) on the first response
to a browser or to gradio_client, and that comes back with every later request: page loads,
events, file downloads. It survives a page reload, so a visitor still sees their own runs and
exports after one; their files live under `visitors/<visitor_id(key)>/`. A request without the
cookie (a client that keeps no cookies) is known by Gradio's connection hash instead, while connected.

`VisitorKeys` is the ASGI middleware that hands out the key and decides which files
(`/gradio_api/file=...`) a visitor may fetch:
- a visitor's outputs (generations, attention maps, exports, runs, the real images shown beside
  generated ones) are written to their own folder, which `launch_options` makes a static path so
  Gradio serves it without copying it to its cache; each file only to the visitor it belongs to;
- files a visitor uploads land in Gradio's shared upload cache: the middleware notes who uploaded
  each one (from `/gradio_api/upload`'s answer) and serves it to that visitor only; any other file
  in that cache is refused, since no output of a public studio is served from there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections import OrderedDict
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


def upload_cache() -> Path:
    """Gradio's upload cache (where it stores uploaded files), as Gradio itself names it."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


class Uploads:
    """Who uploaded which file of the upload cache (the newest `limit` files are remembered)."""

    def __init__(self, cache: Path, limit: int = 20_000):
        self.cache, self.limit = Path(cache).resolve(), limit
        self._owner: OrderedDict[str, str] = OrderedDict()

    def inside(self, path: str | os.PathLike) -> bool:
        try:
            Path(os.path.abspath(path)).resolve().relative_to(self.cache)
            return True
        except (ValueError, OSError):
            return False

    def note(self, body: bytes, owner: str) -> None:
        """Record the paths of an upload's answer (a JSON list of cache paths) as `owner`'s."""
        try:
            paths = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return
        for p in paths if isinstance(paths, list) else []:
            if isinstance(p, str) and self.inside(p):
                key = str(Path(p).resolve())
                self._owner[key] = owner
                self._owner.move_to_end(key)
        while len(self._owner) > self.limit:
            self._owner.popitem(last=False)

    def owner_of(self, path: str | os.PathLike) -> str | None:
        return self._owner.get(str(Path(os.path.abspath(path)).resolve()))


class VisitorKeys:
    """ASGI middleware: hands out visitor keys; serves a visitor's files (outputs and uploads) to
    that visitor only."""

    def __init__(self, app, studio, cache: Path | None = None):
        self.app, self.studio = app, studio
        self.uploads = Uploads(cache or upload_cache())

    def may_fetch(self, path: str, owner: str | None) -> bool:
        if self.uploads.inside(path):
            return owner is not None and self.uploads.owner_of(path) == owner
        return owns(self.studio, path, owner)

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        key = key_of("; ".join(v for k, v in headers if k == "cookie"))
        path = scope.get("path", "")
        if "/file=" in path and not self.may_fetch(path.split("/file=", 1)[1], visitor_id(key) if key else None):
            return await forbidden(send)
        cookie = None
        if key is None:
            key = new_key()
            proto = dict(headers).get("x-forwarded-proto", scope.get("scheme", "http"))
            cookie = set_cookie(key, https=proto.split(",")[0].strip() == "https").encode("latin-1")
        is_upload = scope.get("method") == "POST" and path.rstrip("/").endswith("/upload")
        if cookie is None and not is_upload:
            return await self.app(scope, receive, send)
        status, body = [0], []

        async def send_through(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if cookie is not None:
                    message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            elif message["type"] == "http.response.body" and is_upload and status[0] == 200:
                body.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.uploads.note(b"".join(body), visitor_id(key))
            await send(message)

        return await self.app(scope, receive, send_through)


async def forbidden(send) -> None:
    body = b"File not allowed: it belongs to another visitor of this studio."
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
