"""The studio as people and scripts use it: gradio_client on the named endpoints, and a real
browser (Playwright driving Debian's Chromium)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(studio_dirs, tiny_world_dir, micro_base):
    from dive.studio.service import Studio

    data, shipped = studio_dirs
    if not (data / "worlds" / "tiny").exists():
        shutil.copytree(tiny_world_dir, data / "worlds" / "tiny")
    studio = Studio(data, shipped_dir=shipped, default_base=data / "bases" / "micro")
    yield from _serve(studio, shipped)


def _serve(studio, shipped, **kw):
    from app import build_app, launch_options

    demo = build_app(studio, **kw)
    port = free_port()
    opts = launch_options(studio)
    opts["allowed_paths"].append(str(shipped))  # the tests' shipped folder (reference images)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **opts)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def public_url(studio_dirs, tiny_world_dir, tmp_path_factory):
    from dive.studio.service import Studio

    data, shipped = studio_dirs
    pub = tmp_path_factory.mktemp("public") / "data"
    shutil.copytree(data / "bases" / "micro", pub / "bases" / "micro")
    studio = Studio(pub, shipped_dir=shipped, default_base=pub / "bases" / "micro", public=True)
    for url in _serve(studio, shipped, queue_size=4):
        yield url, pub


def _get(url: str, cookies: dict | None = None) -> int:
    import urllib.error
    import urllib.request

    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _image_path(item) -> Path:
    img = item["image"]
    return Path(img if isinstance(img, str) else img["path"])


def test_named_endpoints_and_concurrency(app_url, studio_dirs):
    from gradio_client import Client

    from dive.checkpoint import TokenTable
    from dive.studio.service import DEMO_NAME

    _, shipped = studio_dirs
    table = TokenTable.load(shipped / DEMO_NAME / "tokens.json")
    idt, cam = table.identities[0].token, table.infrared_cameras()[0].token
    client = Client(app_url, verbose=False)
    ck = f"shipped: {DEMO_NAME}"
    named = set(client.view_api(return_format="dict")["named_endpoints"])
    assert {"/generate", "/attention", "/export", "/train", "/runs", "/stop", "/resume", "/reuse"} <= named

    gallery, _, msg, _ = client.predict(ck, None, None, 0, False, 3, 1.0, 2, None, 0.6, api_name="/generate")
    assert gallery == [] and "pick an identity" in msg  # a clear message, not a crash

    def gen(seed):
        return client.predict(ck, idt, cam, seed, False, 3, 1.0, 2, None, 0.6, api_name="/generate")

    with cf.ThreadPoolExecutor(8) as pool:  # 8 users at once: each gets its own, correct result
        results = list(pool.map(gen, range(8)))
    digests = set()
    for seed, (gallery, zpath, msg, seed_back) in enumerate(results):
        assert seed_back == str(seed) and len(gallery) == 2 and Path(zpath).exists()
        words = f"{table.get(idt).dataset} #{table.get(idt).pid:04d} · cam{table.get(cam).camid} · infrared"
        assert all(g["caption"].startswith(words) for g in gallery)
        digests.add(tuple(_image_path(g).read_bytes() for g in gallery))
    assert len(digests) == 8

    # img2img from an uploaded picture: a different image than from noise, with the same seed
    from gradio_client import handle_file
    from PIL import Image

    pic = Image.new("RGB", (40, 90), (200, 30, 30))
    pic.paste((20, 20, 220), (0, 45, 40, 90))
    pic.save(Path(zpath).parent / "upload.png")
    gallery, _, msg, _ = client.predict(ck, idt, cam, 0, False, 3, 1.0, 2, handle_file(str(Path(zpath).parent / "upload.png")),
                                        0.5, api_name="/generate")
    assert len(gallery) == 2 and "from your image" in msg and "strength 0.5" in gallery[0]["caption"], msg
    assert _image_path(gallery[0]).read_bytes() != _image_path(results[0][0][0]).read_bytes()

    fig, _, msg = client.predict(ck, idt, cam, 0, 3, 1.0, "all", "all", api_name="/attention")
    assert fig and Path(fig).exists(), msg

    zpath, folder, msg = client.predict(ck, "worlds/tiny", "top-K", 12, 1, [], [cam], 1, 3, api_name="/export")
    assert zpath and Path(zpath).exists() and "exported" in msg, msg
    # the exported dataset, browsed by identity: its synthetic images, captioned in words
    data, _ = studio_dirs
    import csv

    with (data / folder / "manifest.csv").open(newline="") as f:
        pid = next(r["pid"] for r in csv.DictReader(f) if r["origin"] == "synthetic")
    gallery, line = client.predict(folder, pid, "synthetic", api_name="/dataset_images")
    assert gallery and all(" · synthetic · seed " in g["caption"] for g in gallery), line
    # path traversal through any input is refused
    _, _, msg = client.predict(ck, "../../etc", "top-K", 12, 1, [], [], 1, 3, api_name="/export")
    assert "outside" in msg
    gallery, _, msg, _ = client.predict("../../../etc", idt, cam, 0, False, 3, 1.0, 1, None, 0.6, api_name="/generate")
    assert gallery == [] and "outside" in msg


@pytest.mark.slow
def test_generate_defaults_settings_and_runs_across_clients(app_url):
    """/generate with no arguments uses the form's defaults and serves PNGs carrying their settings;
    /reuse reads them back; one client starts a run (/train), another lists, stops and resumes it."""
    import time

    from gradio_client import Client, handle_file
    from PIL import Image

    from dive.studio.service import DEMO_NAME

    a, b = Client(app_url, verbose=False), Client(app_url, verbose=False)
    gallery, zpath, msg, seed = a.predict(api_name="/generate")
    assert len(gallery) == 4 and seed == "0", msg
    first = _image_path(gallery[0])
    with Image.open(first) as im:
        assert im.format == "PNG" and "Sampler: DPM++ 2M" in im.text["parameters"]
        assert f'Model: "shipped: {DEMO_NAME}"' in im.text["parameters"]
    import zipfile

    names = zipfile.ZipFile(zpath).namelist()
    assert sum(n.endswith(".png") for n in names) == 4
    out = b.predict(handle_file(str(first)), api_name="/reuse")
    assert out[0] == f"shipped: {DEMO_NAME}" and out[-6] == "0" and out[-1].startswith("settings of image 1 of 4"), out

    msg = a.predict(api_name="/train")[0]
    assert msg.startswith("started run"), msg
    run_id = int(msg.split()[2])
    table = b.predict(api_name="/runs")
    row = next(r for r in table["data"] if int(r[0]) == run_id)
    assert row[2] == "running" and row[3] == "quick smoke test"
    msg, _ = b.predict(run_id, api_name="/stop")
    assert f"run {run_id} stopped in" in msg, msg
    table = a.predict(api_name="/runs")
    assert next(r for r in table["data"] if int(r[0]) == run_id)[2] == "stopped"
    msg, _ = b.predict(run_id, api_name="/resume")
    assert f"run {run_id} resumed" in msg, msg
    assert next(r for r in a.predict(api_name="/runs")["data"] if int(r[0]) == run_id)[2] == "running"
    msg, _ = a.predict(run_id, api_name="/resume")
    assert "still running" in msg
    t0 = time.time()
    msg, _ = a.predict(run_id, api_name="/stop")
    assert "stopped" in msg and time.time() - t0 < 10


def test_run_database_is_never_served(app_url, studio_dirs):
    data, _ = studio_dirs
    assert (data / "runs.sqlite").exists()
    assert _get(f"{app_url}gradio_api/file={data / 'worlds' / 'tiny' / 'synthvi.json'}") == 200  # the data folder is
    assert _get(f"{app_url}gradio_api/file={data / 'runs.sqlite'}") in (403, 404)  # but not the run database


@pytest.mark.slow
def test_public_mode_a_visitor_cannot_see_or_stop_another_s_run(public_url):
    from gradio_client import Client

    from dive.studio.sandbox import visitor_id
    from dive.studio.visitors import COOKIE

    url, pub = public_url
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    # each client got its own visitor key, as a cookie it sends back with every request
    assert a.cookies.get(COOKIE) and b.cookies.get(COOKIE) and a.cookies[COOKIE] != b.cookies[COOKIE]
    gallery, _, msg, _ = a.predict(api_name="/generate")  # a downloads its own images
    assert len(gallery) == 4, msg
    msg = a.predict(api_name="/train")[0]
    assert msg.startswith("started run"), msg
    run_id = int(msg.split()[2])
    assert [int(r[0]) for r in a.predict(api_name="/runs")["data"]] == [run_id]
    assert b.predict(api_name="/runs")["data"] == []  # b sees none of a's runs
    for api in ("/stop", "/resume"):
        msg, _ = b.predict(run_id, api_name=api)
        assert f"no run {run_id}" in msg, msg
    msg = b.predict(api_name="/train")[0]
    assert "1 training(s) at a time" in msg and str(pub) not in msg, msg  # capped, one clear line
    # a reload: a new connection with the same key sees a's run and stops it
    again = Client(url, verbose=False, download_files=False, httpx_kwargs={"cookies": {COOKIE: a.cookies[COOKIE]}})
    assert again.cookies[COOKIE] == a.cookies[COOKIE]
    assert again.predict(api_name="/runs")["data"][0][2] == "running"
    msg, _ = again.predict(run_id, api_name="/stop")
    assert f"run {run_id} stopped in" in msg, msg
    # a's files live under a's own visitor folder and are served from there (not from a copy in a
    # shared cache), to a only
    owners = [p.name for p in (pub / "visitors").iterdir()]
    assert owners == [visitor_id(a.cookies[COOKIE])] and (pub / "visitors" / owners[0] / "generations").is_dir()
    item = again.predict(api_name="/generate")[0][0]["image"]
    image = Path(item["path"] if isinstance(item, dict) else item.path)
    assert image.is_relative_to(pub / "visitors" / owners[0] / "generations"), image
    assert _get(f"{url}gradio_api/file={image}", {COOKIE: a.cookies[COOKIE]}) == 200
    assert _get(f"{url}gradio_api/file={image}", {COOKIE: b.cookies[COOKIE]}) == 403
    assert _get(f"{url}gradio_api/file={image}") == 403
    # the run database and the data folder's other folders are never served
    assert _get(f"{url}gradio_api/file={pub / 'runs.sqlite'}") in (403, 404)
    assert _get(f"{url}gradio_api/file={pub / 'worlds' / 'quick' / 'synthvi.json'}") in (403, 404)


def test_public_mode_uploads_are_served_to_their_uploader_only(public_url):
    """An uploaded file lands in Gradio's shared upload cache: only the visitor who uploaded it may
    fetch it; a cache file nobody uploaded is refused to everyone."""
    import io

    import httpx
    from gradio_client import Client
    from PIL import Image

    from dive.studio.visitors import COOKIE, upload_cache

    url, _ = public_url
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    ka, kb = a.cookies[COOKIE], b.cookies[COOKIE]
    buf = io.BytesIO()
    Image.new("RGB", (8, 16), (200, 30, 30)).save(buf, format="PNG")
    r = httpx.post(f"{url}gradio_api/upload", files={"files": ("mine.png", buf.getvalue(), "image/png")},
                   cookies={COOKIE: ka}, timeout=30)
    assert r.status_code == 200, r.text
    path = r.json()[0]
    assert Path(path).is_relative_to(upload_cache())
    assert _get(f"{url}gradio_api/file={path}", {COOKIE: ka}) == 200
    assert _get(f"{url}gradio_api/file={path}", {COOKIE: kb}) == 403
    assert _get(f"{url}gradio_api/file={path}") == 403
    stray = upload_cache() / "not-uploaded-by-anyone" / "x.png"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(buf.getvalue())
    assert _get(f"{url}gradio_api/file={stray}", {COOKIE: ka}) == 403


UNNAMED = """() => Array.from(document.querySelectorAll(
    'input, textarea, select, [role=combobox], [role=checkbox], [role=slider], [role=radio]'))
  .filter(e => e.type !== 'hidden' && e.type !== 'file' && e.offsetParent !== null)
  .filter(e => {
    const by = (e.getAttribute('aria-labelledby') || '').split(' ').filter(Boolean)
      .map(i => (document.getElementById(i) || {}).textContent || '').join(' ');
    const labels = e.labels ? Array.from(e.labels).map(l => l.textContent).join(' ') : '';
    return !((e.getAttribute('aria-label') || '') + by + labels + (e.getAttribute('title') || '')).trim();
  })
  .map(e => e.outerHTML.slice(0, 160))"""
DROPDOWN = """(c) => { const list = document.getElementById(c.getAttribute('aria-controls'));
  const a = document.activeElement;
  return {open: c.getAttribute('aria-expanded') === 'true' || !!(list && list.offsetParent !== null),
          body: a === document.body, same: a === c} }"""
ACTIVE = """() => { const a = document.activeElement;
  return ((a.getAttribute('aria-label') || (a.labels && a.labels[0] && a.labels[0].innerText) || a.tagName)
          .split('\\n')[0].trim()) }"""
TABS = ("Generate", "Attention", "Batch export", "Datasets", "Training")


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (.ci/run installs it)")
def test_browser_labels_and_readable_gallery(app_url):
    """Every visible input has a label; gallery captions in words sit
    under the thumbnails, whose columns fit the window at 1400 and 800 px."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app_url)
        expect(page.get_by_text("identity tokens", exact=False)).to_be_visible(timeout=60_000)
        expect(page.get_by_label("Random seed")).to_be_visible()
        # keyboard: Tab out of an open dropdown closes it and moves on to the next field
        combos = page.locator("input[role=combobox]:visible")
        assert combos.count() >= 4
        for i in range(combos.count()):
            combo = combos.nth(i)
            combo.click()
            expect(combo).to_have_attribute("aria-expanded", "true")
            page.keyboard.press("Tab")
            page.wait_for_timeout(300)
            state = combo.evaluate(DROPDOWN)
            assert state == {"open": False, "body": False, "same": False}, (combo.get_attribute("aria-label"), state)
        # the focus follows the form
        page.get_by_role("combobox", name="Identity token").click()
        order = []
        for _ in range(3):
            page.keyboard.press("Tab")
            page.wait_for_timeout(300)
            order.append(page.evaluate(ACTIVE))
        assert order == ["Camera token", "Seed", "Random seed"], order
        # every input, select, checkbox, slider and radio of every tab has an accessible name
        for tab in TABS:
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(500)
            assert page.evaluate(UNNAMED) == [], tab
        page.get_by_role("tab", name="Generate").click()
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.get_by_text("images · seed", exact=False)).to_be_visible(timeout=120_000)
        for width in (1400, 800):
            page.set_viewport_size({"width": width, "height": 1000})
            page.wait_for_timeout(500)
            grid = page.locator("#gallery .grid-container").bounding_box()
            thumbs = page.locator("#gallery .thumbnail-item")
            for i in range(thumbs.count()):
                b = thumbs.nth(i).bounding_box()
                assert b["x"] + b["width"] <= grid["x"] + grid["width"] + 1, (width, i)  # no clipped column
                img = thumbs.nth(i).locator("img").bounding_box()
                cap = thumbs.nth(i).locator(".caption-label").bounding_box()
                assert cap["y"] >= img["y"] + img["height"] - 1, (width, i)  # the caption is under the image
            text = thumbs.first.locator(".caption-label").inner_text()
            assert " · cam" in text and " · seed " in text, text
        browser.close()


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (.ci/run installs it)")
def test_browser_walkthrough(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("DIVE_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(app_url)
        expect(page.get_by_text("identity tokens", exact=False)).to_be_visible(timeout=60_000)
        # the chosen identity's real images, one per camera, captioned in words
        expect(page.locator("#real-images img").first).to_be_visible(timeout=30_000)
        assert page.locator("#real-images .caption-label").first.inner_text().endswith(" · real")
        # generate for the default identity / camera
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.get_by_text("images · seed", exact=False)).to_be_visible(timeout=120_000)
        assert page.locator("img").count() >= 4
        page.screenshot(path=str(shots / "01-generate.png"))
        # start from an uploaded visible picture (img2img)
        from PIL import Image

        pic = tmp_path / "person.png"
        Image.new("RGB", (32, 64), (180, 40, 40)).save(pic)
        page.get_by_text("Start from a real image", exact=False).click()
        page.locator("#init-image input[type=file]").set_input_files(str(pic))
        expect(page.locator("#init-image img").first).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.get_by_text("from your image (strength 0.6)", exact=False)).to_be_visible(timeout=120_000)
        # attention panel
        page.get_by_role("tab", name="Attention").click()
        page.get_by_role("button", name="Show attention maps").click()
        expect(page.get_by_text("attention of each token", exact=False)).to_be_visible(timeout=120_000)
        page.screenshot(path=str(shots / "02-attention.png"))
        # training: start a short run, then stop it
        page.get_by_role("tab", name="Training").click()
        page.get_by_role("button", name="Launch training").click()
        expect(page.get_by_text("started run", exact=False)).to_be_visible(timeout=120_000)
        import re

        # the live view (refreshed by gr.Timer) shows logged steps before we stop
        expect(page.get_by_text(re.compile(r"[1-9]\d* steps logged"))).to_be_visible(timeout=240_000)
        page.get_by_role("button", name="Stop run").click()
        expect(page.get_by_text("stopped in", exact=False)).to_be_visible(timeout=30_000)
        page.screenshot(path=str(shots / "03-training.png"))
        # batch export, then download the zip
        page.get_by_role("tab", name="Batch export").click()
        # the training launch above built worlds/quick; export on the world the checkpoint was trained on
        page.get_by_role("combobox", name="VI dataset folder (inside the data folder)").click()
        page.get_by_role("option", name="worlds/tiny").click()
        page.get_by_role("button", name="Generate + export").click()
        expect(page.get_by_text("exported", exact=False)).to_be_visible(timeout=240_000)
        page.screenshot(path=str(shots / "04-export.png"))
        with page.expect_download(timeout=60_000) as dl:
            page.locator("a[download]:visible").filter(has_text="MB").last.click()
        target = tmp_path / "export.zip"
        dl.value.save_as(target)
        assert dl.value.suggested_filename == "export.zip" and target.stat().st_size > 1000
        import zipfile

        assert any(n.endswith("export/manifest.csv") for n in zipfile.ZipFile(target).namelist())
        # the export, browsed: its newest folder and first identity (one with synthetic images) are
        # picked; then only its real images, then only its synthetic ones
        page.get_by_role("tab", name="Datasets").click()
        expect(page.locator("#dataset-gallery img").first).to_be_visible(timeout=60_000)
        caps = page.locator("#dataset-gallery .caption-label")
        expect(caps.first).to_have_text(re.compile(r"^cam\d · infrared · synthetic · seed \d+$"))
        page.get_by_label("real", exact=True).check()
        expect(caps.first).to_have_text(re.compile(r"^cam\d · visible · real$"), timeout=30_000)
        assert all(c.endswith(" · real") for c in caps.all_inner_texts())
        page.get_by_label("synthetic", exact=True).check()
        expect(caps.first).to_have_text(re.compile(r"^cam\d · infrared · synthetic · seed \d+$"), timeout=30_000)
        assert all(" · synthetic · seed " in c for c in caps.all_inner_texts())
        page.screenshot(path=str(shots / "05-datasets.png"))
        browser.close()
    assert len(list(shots.glob("*.png"))) == 5


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (.ci/run installs it)")
def test_readme_screenshots_come_from_a_browser_walkthrough_of_the_shipped_demo(tmp_path):
    """The README's screenshots are made by scripts/studio_screenshots.py: the real app on the shipped
    demo, driven through its tabs in Chromium; run here as CI runs it, the same shots at the same size."""
    from PIL import Image

    repo = Path(__file__).resolve().parents[1]
    shots = tmp_path / "shots"
    r = subprocess.run([sys.executable, "scripts/studio_screenshots.py", "--out", str(shots), "--data",
                        str(tmp_path / "data"), "--only", "generate,attention,export"],
                       cwd=repo, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("studio-generate.png", "studio-attention.png", "studio-export.png"):
        made, shown = shots / name, repo / "assets" / name
        assert made.is_file() and 20_000 < made.stat().st_size <= 400_000, name
        assert Image.open(made).size == Image.open(shown).size, name
