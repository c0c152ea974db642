"""Screenshots of DiVE Studio for the README: the real app on the shipped demo checkpoint, driven by
Playwright with Debian's Chromium at 1400 px, one PNG per tab.

    .venv/bin/python scripts/studio_screenshots.py            # writes assets/studio-*.png
    .venv/bin/python scripts/studio_screenshots.py --out /tmp/shots --data /tmp/studio-data
    .venv/bin/python scripts/studio_screenshots.py --world data/synthvi --only generate,datasets

It generates at the defaults (beside the identity's real images), shows the attention maps, opens
the export tab, browses an export in the Datasets tab, and launches the quick smoke-test training
run (stopped once its loss curve has points). Each PNG is kept under 400 KB.

--world links a SynthVI world into the data folder as `data/synthvi`, the path the demo checkpoint
was trained on (hard links, no copy): the real images then come one per camera from the world, not
from the checkpoint's reference strip, and the Datasets shot browses a small export of it (made
first when the data folder holds none). Without it the Datasets shot is skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDTH, HEIGHT = 1400, 1000
MAX_BYTES = 400_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHOTS = ("generate", "attention", "export", "datasets", "train")


def link_world(world: Path, data: Path) -> Path:
    """`world` as `data/data/synthvi` (where the demo checkpoint's dive.json says it was trained),
    as hard links (a copy where links are not possible)."""
    import shutil

    dest = data / "data" / "synthvi"
    if not (dest / "synthvi.json").exists():
        def link(src, dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        shutil.copytree(world, dest, copy_function=link, dirs_exist_ok=True)
    return dest


def ensure_export(studio) -> bool:
    """A small export of the linked world for the Datasets shot (made once); False without a world."""
    if studio.exports.folders():
        return True
    if not (studio.sandbox.root / "data" / "synthvi" / "synthvi.json").exists():
        return False
    from dive.generate import DEFAULT_GUIDANCE
    from dive.studio.service import Studio

    choice = Studio.default_choice([c.label for c in studio.checkpoints()])
    studio.export(choice, "data/synthvi", which="external", min_images=0, top_k=2, ids=[], cameras=[], n=3, seed=0,
                  steps=25, guidance=DEFAULT_GUIDANCE)
    return True


def start_app(data: Path):
    """The app as `python app.py` serves it (theme, CSS, warmed demo); returns (demo, url, studio)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    from app import build_app, launch_options
    from dive.studio.service import Studio

    studio = Studio(data)
    labels = [c.label for c in studio.checkpoints()]
    studio.generator(Studio.default_choice(labels))
    demo = build_app(studio)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(studio))
    return demo, f"http://127.0.0.1:{port}/", studio


def shoot(page, path: Path) -> Path:
    """A viewport screenshot from the top of the page as PNG, under MAX_BYTES (fewer colours if needed)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))
    if path.stat().st_size > MAX_BYTES:
        from PIL import Image

        with Image.open(path) as im:
            im.convert("RGB").quantize(colors=128, dither=Image.Dither.NONE).save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        raise RuntimeError(f"{path}: {path.stat().st_size} bytes; expected under {MAX_BYTES}")
    return path


def walkthrough(url: str, out: Path, *, train_wait_s: float = 300.0, only=SHOTS) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(url)
        expect(page.get_by_text("identity tokens", exact=False)).to_be_visible(timeout=120_000)
        if "generate" in only:
            expect(page.locator("#real-images img").first).to_be_visible(timeout=60_000)
            page.get_by_role("button", name="Generate", exact=True).click()
            expect(page.get_by_text("images · seed", exact=False)).to_be_visible(timeout=300_000)
            page.wait_for_timeout(1500)  # thumbnails load
            saved.append(shoot(page, out / "studio-generate.png"))

        if "attention" in only:
            page.get_by_role("tab", name="Attention").click()
            page.get_by_role("button", name="Show attention maps").click()
            expect(page.get_by_text("attention of each token", exact=False)).to_be_visible(timeout=300_000)
            page.wait_for_timeout(1000)
            saved.append(shoot(page, out / "studio-attention.png"))

        if "export" in only:
            page.get_by_role("tab", name="Batch export").click()
            page.wait_for_timeout(1500)
            saved.append(shoot(page, out / "studio-export.png"))

        if "datasets" in only:
            page.get_by_role("tab", name="Datasets").click()
            expect(page.locator("#dataset-gallery img").first).to_be_visible(timeout=60_000)
            page.wait_for_timeout(1500)
            saved.append(shoot(page, out / "studio-datasets.png"))

        if "train" in only:
            page.get_by_role("tab", name="Training").click()
            page.get_by_role("button", name="Launch training").click()
            expect(page.get_by_text("started run", exact=False)).to_be_visible(timeout=300_000)
            try:
                expect(page.get_by_text(re.compile(r"[1-9]\d* steps logged"))).to_be_visible(timeout=train_wait_s * 1000)
                page.wait_for_timeout(6000)  # a few more points on the curve
            finally:
                saved.append(shoot(page, out / "studio-train.png"))
                page.get_by_role("button", name="Stop run").click()
                expect(page.get_by_text("stopped in", exact=False)).to_be_visible(timeout=60_000)
        browser.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "assets", help="folder for the PNGs")
    p.add_argument("--data", type=Path, default=None, help="the studio's data folder (default: a fresh temporary one)")
    p.add_argument("--train-wait", type=float, default=300.0, help="seconds to wait for the first logged step")
    p.add_argument("--world", type=Path, default=None,
                   help="a SynthVI world to link into the data folder as the demo's training data (data/synthvi)")
    p.add_argument("--only", default=",".join(SHOTS), help=f"the shots to take, of {','.join(SHOTS)}")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if not only or not set(only) <= set(SHOTS):
        p.error(f"--only {args.only!r}: expected names from {','.join(SHOTS)}")
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM}: not found; install Debian's chromium (apt-get install chromium)", file=sys.stderr)
        return 1
    data = args.data or Path(tempfile.mkdtemp(prefix="dive-studio-shots-"))
    if args.world is not None:
        link_world(args.world, data)
    demo, url, studio = start_app(data)
    if "datasets" in only and not ensure_export(studio):
        print("no export to browse and no --world to make one: the Datasets shot is skipped", file=sys.stderr)
        only.remove("datasets")
    try:
        for path in walkthrough(url, args.out, train_wait_s=args.train_wait, only=only):
            print(f"{path} ({path.stat().st_size // 1000} KB)")
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
