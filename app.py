"""DiVE Studio: pick an identity token and a camera token, generate infrared images, look at the
cross-attention of each token, export an expanded dataset, and run training in the background.

    python app.py            # http://127.0.0.1:7860, the shipped demo checkpoint, no network
    python app.py --public   # a public Space: each visitor sees only their own runs, exports, files
    python app.py --device cuda --dtype bf16   # the generators on a GPU, in bfloat16

Layout and wiring only: every action calls `dive.studio.service.Studio`, which calls the same stage
functions as the `dive` command line. Named API endpoints (for gradio_client): /generate (no
arguments: the form's defaults), /generate_every_camera, /generate_many_identities, /reuse,
/attention, /export, /dataset_images, /train (no arguments: the quick smoke test), /runs, /stop,
/resume.

Runs are server state: the run list is read from the run store (SQLite) on page load and on a
timer, so a run can be watched, stopped and resumed after a reload or from another browser.
Every image served or zipped is a PNG carrying its settings (`dive.studio.pngmeta`).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from dive.generate import DEFAULT_GUIDANCE  # noqa: E402
from dive.utils.device import DEVICE_HELP, DTYPE_HELP, DTYPES  # noqa: E402
from dive.studio.pngmeta import parse_seed  # noqa: E402
from dive.studio.sandbox import StudioError  # noqa: E402
from dive.studio.service import TRAIN_PRESETS, Studio  # noqa: E402
from dive.studio.datasets_ui import DatasetsTab  # noqa: E402
from dive.studio.export_ui import ExportCallbacks  # noqa: E402
from dive.studio.training_ui import DEFAULT_PRESET, TrainingCallbacks  # noqa: E402
from dive.studio.ui import (CSS, KEYBOARD_HEAD, attention_help, err, gpu, neighbours, real_gallery,  # noqa: E402
                            visitor)

PRESET_INFO = ("quick smoke test: 60 steps on a tiny world built in seconds; it checks that training runs end to end "
               "and makes no useful model. full: the demo's recipe (hours on a CPU).")

DEFAULT_DATA = Path(os.environ.get("DIVE_STUDIO_DATA", "studio_data"))


def build_app(studio: Studio, *, queue_size: int = 16) -> gr.Blocks:
    def _err(e: Exception) -> str:
        return err(e, studio)

    def me(request) -> str | None:
        return visitor(studio, request)

    def ck_choices(owner=None):
        return [(c.display, c.label) for c in studio.checkpoints(owner)]

    ck_init = ck_choices()
    default_ck = Studio.default_choice([v for _, v in ck_init])
    # server-side choices of the token pickers start as the default checkpoint's (their first values
    # are the form's defaults, also for /generate called without arguments); the page load event
    # refreshes them per checkpoint. Custom values are allowed: the service checks tokens.
    id_init = Studio.identity_choices(studio.table(default_ck)) if default_ck else []
    cam_init = Studio.camera_choices(studio.table(default_ck)) if default_ck else []
    id_first = id_init[0][1] if id_init else None
    cam_first = next((v for lab, v in cam_init if "(infrared)" in lab), cam_init[0][1] if cam_init else None)
    pick = dict(allow_custom_value=True, filterable=True)

    def token_updates(choice, request: gr.Request = None):
        """New identity / camera choices when the checkpoint changes (or a clear message)."""
        try:
            if not choice:
                raise StudioError("no checkpoint: train one in the Training tab or choose a folder")
            table = studio.table(choice, me(request))
        except (StudioError, KeyError, ValueError, OSError) as e:
            empty = gr.update(choices=[], value=None)
            return (_err(e), empty, empty, empty, empty, *[gr.update(choices=[], value=[])] * 3)
        ids = studio.identity_choices(table)
        cams = studio.camera_choices(table)
        ir = [v for label, v in cams if "(infrared)" in label]
        first_id = ids[0][1] if ids else None
        first_cam = ir[0] if ir else (cams[0][1] if cams else None)
        c = studio.resolve_checkpoint(choice, me(request))
        status = (f"**{c.label}** · {len(table.identities)} identity tokens · {len(table.cameras)} camera tokens "
                  f"({table.camera_mode}) · base `{c.base.name}`")
        return (status, gr.update(choices=ids, value=first_id), gr.update(choices=cams, value=first_cam),
                gr.update(choices=ids, value=first_id), gr.update(choices=cams, value=first_cam),
                gr.update(choices=ids, value=[]), gr.update(choices=cams, value=ir), gr.update(choices=ids, value=[]))

    def reference(choice, token, request: gr.Request = None):
        """Real images of the selected identity, one per camera (or the checkpoint's reference strip)."""
        return real_gallery(studio, choice, token, me(request))

    # -- generate ---------------------------------------------------------------------------------------
    def gallery_of(images, owner):
        _, zpath, paths = studio.save_images(images, owner=owner)  # PNGs that carry their settings
        return [(str(p), im.caption) for p, im in zip(paths, images)], str(zpath), [str(p) for p in paths]

    @gpu
    def do_generate(choice=default_ck, identity=id_first, camera=cam_first, seed="0", random_seed=False, steps=25,
                    guidance=DEFAULT_GUIDANCE, n=4, init_image=None, strength=0.6, request: gr.Request = None):
        try:
            owner = me(request)
            seed = random.randrange(2**31) if random_seed else parse_seed(seed)
            images = studio.generate(choice, [identity], [camera], n=int(n), seed=seed, steps=int(steps),
                                     guidance=float(guidance), init_image=init_image, strength=float(strength),
                                     owner=owner)
        except (StudioError, KeyError, ValueError) as e:
            return [], None, _err(e), str(seed), []
        gallery, zpath, paths = gallery_of(images, owner)
        source = f" · from your image (strength {float(strength):g})" if init_image is not None else ""
        return gallery, zpath, f"{len(images)} images · seed {seed}{source}", str(seed), paths

    @gpu
    def every_camera(choice, identity, seed, steps, guidance, request: gr.Request = None):
        try:
            owner = me(request)
            table = studio.table(choice, owner)
            cams = [c.token for c in sorted(table.cameras, key=lambda c: (c.modality != "infrared", c.dataset, c.camid))]
            images = studio.generate(choice, [identity], cams, n=1, seed=parse_seed(seed), steps=int(steps),
                                     guidance=float(guidance), action="every camera", owner=owner)
        except (StudioError, KeyError, ValueError) as e:
            return [], None, _err(e), []
        gallery, zpath, paths = gallery_of(images, owner)
        who = images[0].caption.split(" · cam")[0] if images else identity
        return gallery, zpath, f"{who} (`{identity}`) under every camera token ({len(cams)})", paths

    @gpu
    def many_identities(choice, identity, camera, chosen, seed, steps, guidance, request: gr.Request = None):
        """The chosen identities, else the selected one and its neighbours in the list (8 in all)."""
        try:
            owner = me(request)
            table = studio.table(choice, owner)
            ids = list(chosen or []) or neighbours([v for _, v in studio.identity_choices(table)], identity, 8)
            images = studio.generate(choice, ids, [camera], n=1, seed=parse_seed(seed), steps=int(steps),
                                     guidance=float(guidance), action="many identities", owner=owner)
        except (StudioError, KeyError, ValueError) as e:
            return [], None, _err(e), []
        gallery, zpath, paths = gallery_of(images, owner)
        where = images[0].caption.split(" · ", 1)[1].split(" · seed")[0] if images else camera
        return gallery, zpath, f"{len(ids)} identities under {where} (`{camera}`)", paths

    def reuse(image_file, request: gr.Request = None):
        """Load a studio PNG's exact settings into the Generate form (checkpoint, tokens, request
        seed, steps, guidance, number of images): Generate then redraws the same pixels."""
        path = image_file if isinstance(image_file, (str, Path)) or image_file is None else getattr(image_file, "name", None)
        try:
            if not path:
                raise StudioError("upload or pick a PNG made by DiVE Studio first")
            s = studio.reuse_settings(path, me(request))
        except StudioError as e:
            return [gr.update()] * 14 + [_err(e)]
        toks = token_updates(s["checkpoint"], request)
        how = {"every camera": "press **Same identity, every camera**",
               "many identities": "press **Same camera, many identities**"}.get(s.get("action"), "press **Generate**")
        msg = (f"settings of image {int(s.get('index', 0)) + 1} of {s.get('n', '?')} loaded (seed {s['seed']}, "
               f"request seed {s.get('request_seed')}); {how} to redraw it"
               + (" (its img2img source picture is not stored; upload it again)" if s.get("strength") else ""))
        return [s["checkpoint"], toks[0], gr.update(choices=toks[1]["choices"], value=s["identity"]),
                gr.update(choices=toks[2]["choices"], value=s["camera"]), *toks[3:],
                s.get("request_seed", s["seed"]), False, int(s["steps"]), float(s["guidance"]), int(s.get("n", 1)), msg]

    def reuse_selected(paths, evt: gr.SelectData):
        idx = evt.index if isinstance(evt.index, int) else (evt.index or [0])[0]
        return paths[idx] if paths and 0 <= idx < len(paths) else None

    # -- attention ----------------------------------------------------------------------------------------
    @gpu
    def do_attention(choice, identity, camera, seed, steps, guidance, layers, step_range, scale="shared",
                     others="folded", request: gr.Request = None):
        from dive.studio.attention_view import table_rows

        try:
            res, fig = studio.attention(choice, identity, camera, seed=parse_seed(seed), steps=int(steps),
                                        guidance=float(guidance), layers=layers, step_range=step_range,
                                        scale=scale, others=others, owner=me(request))
        except (StudioError, KeyError, ValueError) as e:
            return None, None, _err(e)
        rows = table_rows(res, others)
        return str(fig), pd.DataFrame(rows), (f"attention of each token (conditional branch), identity and camera "
                                              f"first; colour scale: {scale}")

    tc = TrainingCallbacks(studio)
    ec = ExportCallbacks(studio)

    def refresh_checkpoints(current, request: gr.Request = None):
        choices = ck_choices(me(request))
        labels = [v for _, v in choices]
        return gr.update(choices=choices, value=current if current in labels or current else (labels[0] if labels else None))

    def dataset_pickers(current_export=None, current_train=None):
        """The dataset lists, read from the data folder now (a world built by a training launch appears)."""
        worlds = studio.worlds()
        return (gr.update(choices=worlds, value=current_export or (worlds[0] if worlds else None)),
                gr.update(choices=worlds, value=current_train or None))

    # -- layout -----------------------------------------------------------------------------------------
    with gr.Blocks(title="DiVE Studio") as demo:
        gr.Markdown("# DiVE Studio\nIdentity-preserving infrared images for visible-infrared person re-identification "
                    "(prompt: *a [camera] photo of [identity] person*).", elem_id="title")
        with gr.Row():
            ckpt = gr.Dropdown(ck_init, value=default_ck, label="Checkpoint", allow_custom_value=True, scale=4,
                               info="the default demo first, then the other shipped ones and your training runs, "
                                    "or a folder inside the studio's data folder")
            refresh_ck = gr.Button("Refresh list", scale=1)
        ck_status = gr.Markdown()
        with gr.Tabs():
            with gr.Tab("Generate"):
                with gr.Row():
                    with gr.Column(scale=2):
                        g_id = gr.Dropdown(id_init, value=id_first, label="Identity token", **pick)
                        g_cam = gr.Dropdown(cam_init, value=cam_first, label="Camera token", **pick)
                        with gr.Row():
                            g_seed = gr.Textbox(value="0", label="Seed", max_lines=1,
                                                info="a whole number; kept as text, so long seeds stay exact")
                            g_random = gr.Checkbox(label="Random seed", show_label=True, elem_id="random-seed",
                                                   info="draw a new seed for each Generate")
                        g_steps = gr.Slider(2, 50, value=25, step=1, label="Steps (DPM-Solver++)")
                        g_guid = gr.Slider(1.0, 10.0, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance (1 = off)")
                        g_n = gr.Slider(1, 16, value=4, step=1, label="Images")
                        with gr.Accordion("Start from a real image (img2img; not the paper's method)", open=False):
                            g_init = gr.Image(type="pil", label="Visible image of this person (optional)",
                                              sources=["upload", "clipboard"], height=170, elem_id="init-image")
                            g_strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength",
                                                   info="how much of the picture is noised away and redrawn "
                                                        "(1: all of it, as plain generation)")
                        g_go = gr.Button("Generate", variant="primary")
                        with gr.Row():
                            g_allcam = gr.Button("Same identity, every camera")
                            g_manyid = gr.Button("Same camera, many identities")
                        g_chosen = gr.Dropdown(id_init, value=[], multiselect=True, label="Identities to compare",
                                               info="for \"many identities\"; empty: the selected identity and its "
                                                    "neighbours in the list", **pick)
                        with gr.Accordion("Reuse settings of an image", open=False, elem_id="reuse"):
                            g_reuse_file = gr.File(label="A PNG made by DiVE Studio", file_types=[".png"],
                                                   type="filepath", elem_id="reuse-file", height=110)
                            g_reuse = gr.Button("Reuse settings of the uploaded or selected image", elem_id="reuse-button")
                    with gr.Column(scale=3):
                        g_ref = gr.Gallery(label="Real images of this identity (one per camera)", columns=8,
                                           height="auto", object_fit="contain", elem_id="real-images",
                                           elem_classes=["dive-gallery", "dive-real"], allow_preview=False)
                        g_ref_msg = gr.Markdown(elem_id="real-images-source")
                        g_msg = gr.Markdown()
                        g_gallery = gr.Gallery(label="Generated (click an image to pick it for reuse)", columns=6,
                                               height="auto", object_fit="contain", elem_id="gallery",
                                               elem_classes=["dive-gallery"])
                        g_zip = gr.File(label="Download images (zip; every PNG carries its settings)")
                        g_paths = gr.State([])
                        g_picked = gr.State(None)
            with gr.Tab("Attention"):
                with gr.Row():
                    with gr.Column(scale=2):
                        a_id = gr.Dropdown(id_init, value=id_first, label="Identity token", **pick)
                        a_cam = gr.Dropdown(cam_init, value=cam_first, label="Camera token", **pick)
                        a_seed = gr.Textbox(value="0", label="Seed", max_lines=1)
                        a_steps = gr.Slider(2, 50, value=25, step=1, label="Steps")
                        a_guid = gr.Slider(1.0, 10.0, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance")
                        a_layers = gr.Dropdown(["all", "down", "mid", "up"], value="all", label="Layers")
                        a_steprange = gr.Dropdown(["all", "first half", "second half"], value="all", label="Steps aggregated")
                        a_scale = gr.Radio(["shared", "per token"], value="shared", label="Colour scale",
                                           info="shared: one scale for all maps, so a flat map looks flat; "
                                                "per token: each map to its own maximum")
                        a_others = gr.Radio(["folded", "each"], value="folded", label="Other words",
                                            info="folded: the words besides the identity and camera tokens in one map")
                        a_go = gr.Button("Show attention maps", variant="primary")
                    with gr.Column(scale=4):
                        a_msg = gr.Markdown()
                        a_fig = gr.Image(label="Cross-attention per token", interactive=False)
                        a_table = gr.Dataframe(label="Where each token attends", interactive=False)
                        gr.Markdown("**The columns**\n\n" + attention_help())
            with gr.Tab("Batch export") as export_tab:
                with gr.Row():
                    with gr.Column(scale=2):
                        e_data = gr.Dropdown([], value=None, allow_custom_value=True,
                                             label="VI dataset folder (inside the data folder)",
                                             info="read when this tab opens; the checkpoint must have been trained on it")
                        e_mode = gr.Radio(["min images", "top-K", "list"], value="top-K", label="Identities")
                        e_min = gr.Number(value=12, precision=0, label="min real images")
                        e_topk = gr.Number(value=4, precision=0, label="K")
                        e_list = gr.Dropdown(id_init, label="identity list", multiselect=True, **pick)
                        e_cams = gr.Dropdown(cam_init, label="Camera tokens", multiselect=True, **pick)
                        e_n = gr.Slider(1, 36, value=2, step=1, label="Images per identity and camera",
                                        info="Stop keeps the images written; Resume export finishes the same folder")
                        e_steps = gr.Slider(2, 50, value=25, step=1, label="Steps")
                        with gr.Row():
                            e_go = gr.Button("Generate + export", variant="primary")
                            e_stop = gr.Button("Stop", variant="stop")
                            e_resume = gr.Button("Resume export")
                    with gr.Column(scale=3):
                        e_msg = gr.Markdown()
                        e_zip = gr.File(label="Expanded dataset (zip)")
                        e_folder = gr.Textbox(label="Folder (inside the data folder)", interactive=False)
            DatasetsTab(studio).build()  # browse an exported dataset by identity, real / synthetic
            with gr.Tab("Training") as train_tab:
                with gr.Row():
                    with gr.Column(scale=2):
                        t_preset = gr.Radio(list(TRAIN_PRESETS), value=DEFAULT_PRESET, label="Preset", info=PRESET_INFO)
                        t_data = gr.Dropdown([], label="SynthVI world (empty: a small one is built)",
                                             allow_custom_value=True)
                        t_steps = gr.Number(value=0, precision=0, label="Steps (0: the preset's)")
                        t_seed = gr.Textbox(value="0", label="Seed", max_lines=1)
                        t_go = gr.Button("Launch training", variant="primary")
                        t_run = gr.Dropdown([], label="Run", value=None, allow_custom_value=True,
                                            info=("your runs in this browser; states are live" if studio.public else
                                                  "every run of this studio, from any browser; states are live"))
                        with gr.Row():
                            t_stop = gr.Button("Stop run", variant="stop")
                            t_resume = gr.Button("Resume run")
                        t_msg = gr.Markdown()
                    with gr.Column(scale=3):
                        t_plot = gr.LinePlot(x="step", y="loss", label="Loss", height=240)
                        t_prev = gr.Image(label="Latest preview (fixed seed)", interactive=False, height=260)
                        t_head = gr.Markdown()
                t_table = gr.Dataframe(label="Runs", interactive=False)
                t_shown = gr.State(None)
                timer = gr.Timer(2.0)

        token_outs = [ck_status, g_id, g_cam, a_id, a_cam, e_list, e_cams, g_chosen]
        private = dict(api_visibility="private")
        # the identity picker's value is set by these handlers, so the reference follows explicitly
        demo.load(token_updates, [ckpt], token_outs, **private).then(
            reference, [ckpt, g_id], [g_ref, g_ref_msg], **private)
        # server state, read on every page load: checkpoints, datasets, runs
        demo.load(refresh_checkpoints, [ckpt], [ckpt], **private)
        demo.load(dataset_pickers, [e_data, t_data], [e_data, t_data], **private)
        demo.load(tc.watch, [t_run, t_shown], [t_plot, t_prev, t_head, t_table, t_run, t_shown], **private)
        # a user's checkpoint choice (not a programmatic one: reuse sets the tokens itself)
        ckpt.input(token_updates, [ckpt], token_outs, **private).then(reference, [ckpt, g_id], [g_ref, g_ref_msg], **private)
        refresh_ck.click(refresh_checkpoints, [ckpt], [ckpt], **private)
        g_id.change(reference, [ckpt, g_id], [g_ref, g_ref_msg], **private)
        g_go.click(do_generate, [ckpt, g_id, g_cam, g_seed, g_random, g_steps, g_guid, g_n, g_init, g_strength],
                   [g_gallery, g_zip, g_msg, g_seed, g_paths], api_name="generate", concurrency_limit=8)
        g_allcam.click(every_camera, [ckpt, g_id, g_seed, g_steps, g_guid], [g_gallery, g_zip, g_msg, g_paths],
                       api_name="generate_every_camera")
        g_manyid.click(many_identities, [ckpt, g_id, g_cam, g_chosen, g_seed, g_steps, g_guid], [g_gallery, g_zip, g_msg, g_paths],
                       api_name="generate_many_identities")
        g_gallery.select(reuse_selected, [g_paths], [g_picked], **private)
        g_reuse_file.upload(lambda f: f, [g_reuse_file], [g_picked], **private)
        reuse_outs = [ckpt, *token_outs, g_seed, g_random, g_steps, g_guid, g_n, g_msg]
        g_reuse.click(reuse, [g_picked], reuse_outs, api_name="reuse_picked", api_visibility="undocumented").then(
            reference, [ckpt, g_id], [g_ref, g_ref_msg], **private)
        # /reuse for scripts: the settings of a PNG, as the form takes them
        reuse_api = gr.Button(visible=False)
        reuse_api.click(reuse, [g_reuse_file], reuse_outs, api_name="reuse")
        a_go.click(do_attention, [ckpt, a_id, a_cam, a_seed, a_steps, a_guid, a_layers, a_steprange, a_scale, a_others],
                   [a_fig, a_table, a_msg], api_name="attention")
        export_tab.select(dataset_pickers, [e_data, t_data], [e_data, t_data], **private)
        train_tab.select(dataset_pickers, [e_data, t_data], [e_data, t_data], **private)
        e_go.click(ec.export, [ckpt, e_data, e_mode, e_min, e_topk, e_list, e_cams, e_n, e_steps],
                   [e_zip, e_folder, e_msg], api_name="export", concurrency_limit=2)
        e_resume.click(ec.resume, None, [e_zip, e_folder, e_msg], api_name="resume_export", concurrency_limit=2)
        e_stop.click(ec.stop_export, None, [e_msg], **private, queue=False)
        t_go.click(tc.launch, [t_preset, t_data, t_steps, t_seed], [t_msg, t_table, t_run], api_name="train")
        runs_api = gr.Button(visible=False)
        runs_api.click(tc.list_runs, None, [t_table], api_name="runs")
        t_stop.click(tc.stop_run, [t_run], [t_msg, t_table], api_name="stop", queue=False)
        t_resume.click(tc.resume_run, [t_run], [t_msg, t_table], api_name="resume")
        t_run.input(tc.watch, [t_run, t_shown], [t_plot, t_prev, t_head, t_table, t_run, t_shown], **private)
        timer.tick(tc.watch, [t_run, t_shown], [t_plot, t_prev, t_head, t_table, t_run, t_shown], **private,
                   queue=False)
        demo.queue(default_concurrency_limit=2, max_size=queue_size)
    return demo


def launch_options(studio: Studio) -> dict:
    """Theme, CSS, the page's keyboard script and what the server may serve: the data folder (public
    mode: only the visitors' folders, each file to its own visitor: `dive.studio.visitors`) and the
    shipped checkpoints (reference images); never the run database, the logs or another folder of
    the data root."""
    root = studio.sandbox.root
    allowed = [str(root / "visitors") if studio.public else str(root), str(Path(__file__).parent / "checkpoints")]
    blocked = [str(root / name) for name in ("runs.sqlite", "runs.sqlite-journal", "runs.sqlite-wal")]
    opts = {"allowed_paths": allowed, "blocked_paths": blocked, "theme": gr.themes.Soft(), "css": CSS,
            "head": KEYBOARD_HEAD}
    if studio.public:
        from starlette.middleware import Middleware

        from dive.studio.visitors import VisitorKeys

        # outputs are served from the visitor's own folder (not copied to Gradio's cache), and the
        # middleware hands out visitor keys and serves those files to their visitor only
        (root / "visitors").mkdir(parents=True, exist_ok=True)
        gr.set_static_paths([root / "visitors"])
        opts["app_kwargs"] = {"middleware": [Middleware(VisitorKeys, studio=studio)]}
    return opts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="DiVE Studio")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the studio's data folder (runs, exports, worlds)")
    p.add_argument("--public", action="store_true",
                   help="a public Space: each visitor sees only their own runs, exports and files; trainings and "
                        "exports are capped; the queue is bounded")
    p.add_argument("--max-trainings", type=int, default=1, help="--public: trainings at a time (default 1)")
    p.add_argument("--max-exports", type=int, default=1, help="--public: exports at a time (default 1)")
    p.add_argument("--queue-size", type=int, default=16, help="requests waiting at most (default 16)")
    p.add_argument("--device", default="auto", help=f"where the generators run: {DEVICE_HELP} (default auto)")
    p.add_argument("--dtype", default="fp32", choices=DTYPES, help=f"generators' {DTYPE_HELP} (default fp32)")
    args = p.parse_args(argv)
    try:
        studio = Studio(args.data, public=args.public, max_trainings=args.max_trainings, max_exports=args.max_exports,
                        device=args.device, dtype=args.dtype)
    except ValueError as e:  # a bad or absent --device, fp16 on cpu: one line
        p.error(str(e))
    # load the default checkpoint and render once at the form's shape (2 steps), so the first
    # Generate runs warm
    labels = [c.label for c in studio.checkpoints()]
    if labels:
        ck = Studio.default_choice(labels)
        table = studio.table(ck)
        ids, cams = Studio.identity_choices(table), Studio.camera_choices(table)
        if ids and cams:
            studio.generate(ck, [ids[0][1]], [cams[0][1]], n=4, seed=0, steps=2, guidance=DEFAULT_GUIDANCE)
    demo = build_app(studio, queue_size=args.queue_size)
    demo.launch(server_name=args.host, server_port=args.port, footer_links=["api"], **launch_options(studio))


if __name__ == "__main__":
    main()
