"""`dive studio-latency`: how long the first Generate takes once the studio is up (default
settings: 4 images, 25 steps, the default guidance), measured as a user's client sees it, beside
the same work as one bare library call (`first_request_over_bare`: the studio's overhead, cold
first request against the warm median bare call)."""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path


def first_image_latency(data: Path | None = None, repeats: int = 3) -> dict:
    import sys

    from gradio_client import Client

    from dive.generate import DEFAULT_GUIDANCE
    from dive.generate.pipeline import GenerationRequest
    from dive.studio.service import REPO_ROOT, Studio

    if str(REPO_ROOT) not in sys.path:  # app.py lives at the repository root
        sys.path.insert(0, str(REPO_ROOT))
    from app import build_app

    studio = Studio(data or Path(tempfile.mkdtemp(prefix="dive-studio-")))
    labels = [c.label for c in studio.checkpoints()]
    if not labels:
        raise ValueError("no shipped checkpoint to time")
    ck = studio.default_choice(labels)
    t0 = time.perf_counter()
    table = studio.generator(ck)[0].table  # what `python app.py` does before serving
    load_s = time.perf_counter() - t0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app(studio)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        idt = studio.identity_choices(table)[0][1]
        cam = studio.camera_choices(table)[0][1]
        times = []
        for k in range(repeats):
            t = time.perf_counter()
            gallery, _, msg, _ = client.predict(ck, idt, cam, k, False, 25, DEFAULT_GUIDANCE, 4, api_name="/generate")
            times.append(time.perf_counter() - t)
            if len(gallery) != 4:
                raise RuntimeError(f"generate returned {len(gallery)} images: {msg}")
    finally:
        demo.close()
    # the same work as one bare library call (no server, no PNG settings, no gallery files), warm
    gen = studio.generator(ck)[0]
    bare = []
    for k in range(repeats):
        jobs = GenerationRequest([idt], [cam], n=4, seed=k, steps=25, guidance=DEFAULT_GUIDANCE).jobs(table)
        t = time.perf_counter()
        gen.render(jobs, steps=25, guidance=DEFAULT_GUIDANCE)
        bare.append(time.perf_counter() - t)
    bare_s = sorted(bare)[len(bare) // 2]
    return {"checkpoint": ck, "load_seconds": round(load_s, 2), "first_request_s": round(times[0], 2),
            "all_requests_s": [round(t, 2) for t in times], "bare_render_s": round(bare_s, 2),
            "first_request_over_bare": round(times[0] / bare_s, 2), "images": 4, "steps": 25,
            "guidance": DEFAULT_GUIDANCE}
