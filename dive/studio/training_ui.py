"""The Training tab's callbacks: every view reads the run store, so a run can be watched, stopped
and resumed after a reload or from another browser (in public mode: only by its own visitor)."""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from dive.studio.pngmeta import parse_seed
from dive.studio.sandbox import StudioError
from dive.studio.ui import err, runs_rows, visitor

DEFAULT_PRESET = "quick smoke test"


class TrainingCallbacks:
    def __init__(self, studio):
        self.studio = studio

    def me(self, request):
        return visitor(self.studio, request)

    def _err(self, e: Exception) -> str:
        return err(e, self.studio)

    def runs_table(self, owner=None):
        return pd.DataFrame(runs_rows(self.studio, self.studio.visible_runs(owner)),
                            columns=["id", "kind", "status", "preset", "steps", "started", "folder"])

    def run_choices(self, owner=None):
        return [(f"run {r.id} · {r.status} · {r.config.get('preset', r.kind)}", r.id) for r in self.studio.visible_runs(owner)]

    def run_picker(self, current=None, owner=None):
        """The Run picker as the run store has it now (keeps the selection; else the newest run)."""
        choices = self.run_choices(owner)
        ids = [v for _, v in choices]
        value = current if current in ids else (ids[0] if ids else None)
        return gr.update(choices=choices, value=value)

    def launch(self, preset=DEFAULT_PRESET, data=None, steps=0, seed="0", request: gr.Request = None):
        owner = None
        try:
            owner = self.me(request)
            rec = self.studio.launch_training(preset=preset, data=data or None, base=None, steps=int(steps) if steps else None,
                                              seed=parse_seed(seed), owner=owner)
        except (StudioError, ValueError, FileNotFoundError) as e:
            return self._err(e), self.runs_table(owner), self.run_picker(owner=owner)
        return f"started run {rec.id} (pid {rec.pid})", self.runs_table(owner), self.run_picker(rec.id, owner)

    def list_runs(self, request: gr.Request = None):
        return self.runs_table(self.me(request))

    def watch(self, run_id, shown=None, request: gr.Request = None):
        """Loss curve, latest preview, status + log tail of a run; the run table; the picker (only
        sent when the runs or their states changed, so an open dropdown is left alone)."""
        owner = self.me(request)
        choices = self.run_choices(owner)
        picker = gr.update() if choices == shown else self.run_picker(run_id, owner)
        empty = pd.DataFrame({"step": [], "loss": []})
        try:
            rec = self.studio.run_of(run_id, owner) if run_id is not None else None
        except StudioError:
            rec = None
        if rec is None:
            return empty, None, "no run selected", self.runs_table(owner), picker, choices
        curve = self.studio.runs.loss_curve(rec)
        plot = pd.DataFrame(curve, columns=["step", "loss"]) if curve else empty
        prev = self.studio.runs.latest_preview(rec)
        ck = self.studio.runs.checkpoints(rec)
        head = (f"run {rec.id} · **{rec.status}** · {len(curve)} steps logged · checkpoints: "
                f"{', '.join(p.name for p in ck) or 'none yet'}\n\n```\n{self.studio.runs.log_tail(rec, 12)}\n```")
        return plot, str(prev) if prev else None, head, self.runs_table(owner), picker, choices

    def stop_run(self, run_id=None, request: gr.Request = None):
        owner = self.me(request)
        if run_id is None:
            return "no run selected", self.runs_table(owner)
        t0 = time.time()
        try:
            rec = self.studio.stop_run(run_id, owner)
        except StudioError as e:
            return self._err(e), self.runs_table(owner)
        ck = self.studio.runs.checkpoints(rec)
        return (f"run {rec.id} {rec.status} in {time.time() - t0:.1f} s; last checkpoint: "
                f"{ck[0].name if ck else 'none'}"), self.runs_table(owner)

    def resume_run(self, run_id=None, request: gr.Request = None):
        owner = self.me(request)
        if run_id is None:
            return "no run selected", self.runs_table(owner)
        try:
            rec = self.studio.resume_run(run_id, owner)
        except (StudioError, ValueError) as e:
            return self._err(e), self.runs_table(owner)
        ck = self.studio.runs.checkpoints(rec)
        return (f"run {rec.id} resumed (pid {rec.pid}) from {ck[0].name if ck else 'its start'}", self.runs_table(owner))
