"""`dive studio-latency`: how long the first Generate takes once the studio is up (default
settings: 4 images, 25 steps, the default guidance), measured as a user's client sees it, beside
the same work as one bare library call (`first_request_over_bare`: the studio's overhead, cold
first request against the warm median bare call).

The studio runs as `python app.py` in its own process, as it does for a user: a client in the
server's interpreter would share its GIL and slow the render it is timing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300.0):
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the studio exited with code {proc.returncode} before serving; its log: {log}")
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet
            time.sleep(0.5)
    raise TimeoutError(f"the studio did not serve {url} within {timeout:.0f} s; its log: {log}")


def first_image_latency(data: Path | None = None, repeats: int = 3) -> dict:
    from dive.generate import DEFAULT_GUIDANCE
    from dive.generate.pipeline import GenerationRequest
    from dive.studio.service import REPO_ROOT, Studio

    data = Path(data or tempfile.mkdtemp(prefix="dive-studio-"))
    studio = Studio(data)
    labels = [c.label for c in studio.checkpoints()]
    if not labels:
        raise ValueError("no shipped checkpoint to time")
    ck = studio.default_choice(labels)
    # the same work as one bare library call (no server, no PNG settings, no gallery files), warm;
    # timed first, while this process runs nothing else (a client's threads would share its GIL)
    gen = studio.generator(ck)[0]
    table = gen.table
    idt = studio.identity_choices(table)[0][1]
    cam = studio.camera_choices(table)[0][1]
    gen.render(GenerationRequest([idt], [cam], n=4, seed=99, steps=2, guidance=DEFAULT_GUIDANCE).jobs(table),
               steps=2, guidance=DEFAULT_GUIDANCE)  # warm-up, as the studio does before serving
    bare = []
    for k in range(repeats):
        jobs = GenerationRequest([idt], [cam], n=4, seed=k, steps=25, guidance=DEFAULT_GUIDANCE).jobs(table)
        t = time.perf_counter()
        gen.render(jobs, steps=25, guidance=DEFAULT_GUIDANCE)
        bare.append(time.perf_counter() - t)
    bare_s = sorted(bare)[len(bare) // 2]
    del gen  # the server loads its own
    port = _free_port()
    log = data / "studio-latency-server.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py"), "--port", str(port), "--data", str(data)],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    try:
        client = _wait_for_server(f"http://127.0.0.1:{port}/", proc, log)
        start_s = time.perf_counter() - t0  # process start, checkpoint load and warm-up, server up
        client.predict(api_name="/runs")  # the page is open (a browser's page load has run its events)
        times = []
        for k in range(repeats):
            t = time.perf_counter()
            gallery, _, msg, _ = client.predict(ck, idt, cam, k, False, 25, DEFAULT_GUIDANCE, 4, api_name="/generate")
            times.append(time.perf_counter() - t)
            if len(gallery) != 4:
                raise RuntimeError(f"generate returned {len(gallery)} images: {msg}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"checkpoint": ck, "server_start_s": round(start_s, 2), "first_request_s": round(times[0], 2),
            "all_requests_s": [round(t, 2) for t in times], "bare_render_s": round(bare_s, 2),
            "first_request_over_bare": round(times[0] / bare_s, 2), "images": 4, "steps": 25,
            "guidance": DEFAULT_GUIDANCE}
