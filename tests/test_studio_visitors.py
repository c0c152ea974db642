"""Public mode's visitor key: handed out as a cookie, sent back with every request (so it survives a
reload), naming the visitor's folder; a visitor's files are served to that visitor only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from dive.studio.sandbox import StudioError, visitor_id
from dive.studio.service import Studio
from dive.studio.ui import visitor
from dive.studio.visitors import COOKIE, VisitorKeys, key_of, new_key, owns, set_cookie


@pytest.fixture()
def public(tmp_path):
    return Studio(tmp_path / "data", shipped_dir=tmp_path / "none", default_base=tmp_path / "none", device="cpu",
                  public=True)


def _app(studio):
    async def file(request):  # stands for Gradio's file route, which would serve the file
        return PlainTextResponse("served " + request.path_params["path"])

    async def page(request):
        return PlainTextResponse("page")

    app = Starlette(routes=[Route("/gradio_api/file={path:path}", file), Route("/", page)])
    return VisitorKeys(app, studio)


def test_keys_are_handed_out_once_and_kept(public):
    web = TestClient(_app(public), base_url="http://studio.local")
    first = web.get("/")
    key = first.cookies.get(COOKIE)
    assert key and key_of(f"{COOKIE}={key}") == key
    header = first.headers["set-cookie"]
    assert "HttpOnly" in header and "Max-Age=31536000" in header and "SameSite=Lax" in header
    again = web.get("/")  # the client sends the key back: no new one
    assert "set-cookie" not in again.headers and web.cookies.get(COOKIE) == key
    # over https (a Space behind its proxy) the cookie also works inside the Space's frame
    https = TestClient(_app(public), base_url="http://studio.local").get("/", headers={"x-forwarded-proto": "https"})
    assert all(a in https.headers["set-cookie"] for a in ("Secure", "SameSite=None", "Partitioned"))
    # a malformed key is not one of ours: a fresh key is handed out
    bad = TestClient(_app(public), base_url="http://studio.local", cookies={COOKIE: "x"}).get("/")
    assert bad.cookies.get(COOKIE) not in (None, "x")
    assert key_of(None) is None and key_of("a=1; b") is None and key_of(f"{COOKIE}=short") is None
    assert set_cookie(key, https=False).startswith(f"{COOKIE}={key}; Path=/")
    assert new_key() != new_key() and len(new_key()) >= 22


def test_the_key_names_the_visitor_across_reloads(public):
    key = new_key()
    # the same key after a reload (a new Gradio connection) is the same visitor
    before = visitor(public, SimpleNamespace(cookies={COOKIE: key}, session_hash="page-1"))
    after = visitor(public, SimpleNamespace(cookies={COOKIE: key}, session_hash="page-2"))
    assert before == after == visitor_id(key)
    other = visitor(public, SimpleNamespace(cookies={COOKIE: new_key()}, session_hash="page-1"))
    assert other != before
    # no cookie (a client that keeps none): Gradio's connection hash; no key at all: refused
    assert visitor(public, SimpleNamespace(cookies={}, session_hash="s1")) == visitor_id("s1")
    assert visitor(public, SimpleNamespace(cookies={COOKIE: "bad"}, session_hash="s1")) == visitor_id("s1")
    with pytest.raises(StudioError, match="no visitor key"):
        visitor(public, SimpleNamespace(cookies={}, session_hash=None))
    # what a visitor made after the reload is found by the same owner: runs and exports
    out = public.sandbox.new_job_dir("runs", before)
    rec = public.runs.launch("train", ["--no-such-option"], {"preset": "x", "owner": before}, out)
    assert [r.id for r in public.visible_runs(after)] == [rec.id] and public.visible_runs(other) == []
    (public.exports.area(after) / "job" / "export").mkdir(parents=True)
    (public.exports.area(after) / "job" / "export" / "export.json").write_text('{"counts": {"images": 3}}')
    assert [v for _, v in public.exports.folders(before)] == [f"visitors/{before}/exports/job/export"]
    assert public.exports.folders(other) == []


def test_files_are_served_to_their_own_visitor_only(public):
    a, b = new_key(), new_key()
    mine = public.sandbox.new_job_dir("generations", visitor_id(a)) / "000.png"
    mine.write_bytes(b"png")
    theirs = public.sandbox.root / "visitors" / visitor_id(b) / "x.png"
    for key, code in ((a, 200), (b, 403), (None, 403)):
        web = TestClient(_app(public), base_url="http://studio.local", cookies={COOKIE: key} if key else None)
        assert web.get(f"/gradio_api/file={mine}").status_code == code, key
    # a path that climbs out of one's own folder into another's is refused too
    web = TestClient(_app(public), base_url="http://studio.local", cookies={COOKIE: a})
    sneaky = public.sandbox.root / "visitors" / visitor_id(a) / ".." / visitor_id(b) / "x.png"
    assert web.get(f"/gradio_api/file={sneaky}").status_code == 403
    assert web.get(f"/gradio_api/file={public.sandbox.root / 'visitors'}").status_code == 403
    # Gradio's upload cache: a file nobody uploaded is refused (a public studio serves no output from
    # there); other paths are left to the server's own rules
    from dive.studio.visitors import upload_cache

    assert web.get(f"/gradio_api/file={upload_cache() / 'abc' / '0.png'}").status_code == 403
    assert web.get("/gradio_api/file=/srv/elsewhere/0.png").status_code == 200
    # the rule itself, as the service sees it
    assert owns(public, mine, visitor_id(a)) and not owns(public, mine, visitor_id(b)) and not owns(public, mine, None)
    assert not owns(public, theirs, visitor_id(a)) and owns(public, theirs, visitor_id(b))
