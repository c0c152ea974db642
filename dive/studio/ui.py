"""What `app.py` needs besides layout: messages, the visitor of a request, the GPU decorator of
Hugging Face Spaces, the page CSS, and table rows. No Gradio components are built here."""

from __future__ import annotations

import html
import time

from dive.studio.sandbox import StudioError, visitor_id
from dive.studio.visitors import COOKIE, key_of

# galleries: as many ~110 px columns as fit (1400 px and 800 px alike); captions under the image;
# the real images of an identity: one compact row of thumbnails at their own shape
CSS = """
#title {margin-bottom: 0}
.dive-error {color: #b91c1c; font-weight: 600}
.dive-gallery .grid-container {grid-template-columns: repeat(auto-fill, minmax(110px, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important}
.dive-gallery .thumbnail-item {aspect-ratio: auto !important; height: auto !important; display: flex;
  flex-direction: column; overflow: visible !important}
.dive-gallery .thumbnail-item img {aspect-ratio: 1 / 2; height: auto !important; object-fit: contain}
.dive-gallery .caption-label {position: static !important; max-width: 100% !important; white-space: normal !important;
  opacity: 1 !important; border: 0 !important; border-radius: 0 !important; font-size: 12px; padding: 2px 4px !important}
.dive-real.block, .dive-real .gallery-container, .dive-real .grid-wrap {height: auto !important; min-height: 0 !important;
  max-height: none !important}
.dive-real .grid-container {display: flex !important; flex-wrap: wrap; gap: 6px; padding-top: 34px !important}
.dive-real .gallery-item, .dive-real .thumbnail-item {width: auto !important; flex: 0 0 auto}
.dive-real .thumbnail-item img {aspect-ratio: auto !important; height: 110px !important; width: auto !important}
.dive-real .caption-label {max-width: 160px !important}
"""

# Keyboard: Gradio's dropdowns reopen their option list on any key that is not a navigation key,
# Tab included, after the blur that closed it, so Tab left lists open over the page; and a long
# list scrolls, so Chromium puts it in the focus order, where the focus was lost when it closed.
# Tab in a dropdown is kept from the dropdown's own key handler and its list is taken out of the
# focus order: the browser moves the focus to the next field, and the blur closes the list (and
# commits a typed value).
KEYBOARD_HEAD = """<script>
window.addEventListener("keydown", function (e) {
  var t = e.target;
  if (e.key !== "Tab" || !t || !t.getAttribute || t.getAttribute("role") !== "combobox") return;
  e.stopPropagation();
  var list = document.getElementById(t.getAttribute("aria-controls") || "");
  for (var n = list; n && n !== t.parentElement && n !== document.body; n = n.parentElement) n.tabIndex = -1;
}, true);
</script>"""


def err(e: Exception, studio=None) -> str:
    """A one-line error for the page; paths read relative to the data folder."""
    text = str(e).strip("'\"")
    if studio is not None:
        text = studio.sandbox.scrub(text)
    return f"<span class='dive-error'>⚠ {html.escape(text, quote=False)}</span>"


def visitor(studio, request) -> str | None:
    """The owner id of this request's visitor in public mode: from the visitor key the browser (or
    gradio_client) sends back as a cookie, so it survives a reload; else from Gradio's connection hash.
    None in local mode (one user who sees everything)."""
    if not studio.public:
        return None
    key = None
    if request is not None:
        cookies = getattr(request, "cookies", None) or {}
        key = key_of(f"{COOKIE}={cookies[COOKIE]}") if COOKIE in cookies else None
        key = key or getattr(request, "session_hash", None)
    if not key:
        raise StudioError("no visitor key: use the page or gradio_client")
    return visitor_id(str(key))


def gpu(fn):
    """`spaces.GPU(fn)` when the `spaces` package of Hugging Face is importable, else `fn`."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def neighbours(ids: list[str], selected: str | None, k: int = 8) -> list[str]:
    """The selected identity and the ones next to it in the list (k in all)."""
    if not ids:
        return []
    i = ids.index(selected) if selected in ids else 0
    start = max(0, min(i - k // 2 + 1, len(ids) - k))
    return ids[start : start + k]


def real_gallery(studio, choice, token, owner) -> tuple[list, str]:
    """The Generate tab's real images of the selected identity: (image, caption) pairs and one line
    saying where they come from. Locally as pixels, so that no dataset folder needs serving; in
    public mode as copies in the visitor's own folder (`real/`), the only files a public studio serves."""
    import numpy as np

    from dive.utils.io import load_rgb

    if not choice or not token:
        return [], ""
    try:
        got = studio.real_images(choice, token, owner)
        if owner is None:
            return [(np.asarray(load_rgb(p)), cap) for p, cap in got.items], got.message()
        return [(str(visitor_copy(studio, p, owner)), cap) for p, cap in got.items], got.message()
    except (StudioError, ValueError, KeyError, OSError) as e:
        return [], err(e, studio)


def visitor_copy(studio, path, owner: str):
    """A copy of a real image in the visitor's `real/` folder, named by its source (made once)."""
    import hashlib
    import shutil
    from pathlib import Path

    src = Path(path).resolve()
    dst = studio.sandbox.owner_root(owner) / "real" / (hashlib.sha1(str(src).encode()).hexdigest()[:16] + src.suffix)
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".part")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    return dst


def attention_help() -> str:
    from dive.studio.attention_view import COLUMNS

    return "\n".join(f"- **{k}**: {v}" for k, v in COLUMNS.items())


def runs_rows(studio, runs) -> list[dict]:
    return [{"id": r.id, "kind": r.kind, "status": r.status, "preset": r.config.get("preset", ""),
             "steps": r.config.get("steps", ""), "started": time.strftime("%H:%M:%S", time.localtime(r.started)),
             "folder": studio.sandbox.relative(r.run_dir)} for r in runs]


def export_lines(studio, out, summary: dict) -> str:
    c = summary.get("counts", {})
    return "\n".join([
        f"**exported** `{studio.sandbox.relative(out)}` (SYSU-MM01 layout)",
        f"- images: {c.get('images', '?')} ({', '.join(f'{k}: {v}' for k, v in c.get('per_origin', {}).items())})",
        f"- ids per split: {c.get('ids_per_split', '?')}; new ids: {c.get('new_ids', '?')}",
        "- manifest: `manifest.csv` / `manifest.jsonl` (prompt, seed, steps, checkpoint hash per image)"])
