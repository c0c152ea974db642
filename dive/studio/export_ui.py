"""The Batch export tab's callbacks: export with progress, Stop that keeps the finished files, and
Resume that finishes the same folder (one stop flag per visitor, or per page in local mode)."""

from __future__ import annotations

import threading

import gradio as gr

from dive.generate import DEFAULT_GUIDANCE
from dive.studio.sandbox import StudioError
from dive.studio.ui import err, export_lines, gpu, visitor

USER_ERRORS = (StudioError, KeyError, ValueError, FileExistsError, FileNotFoundError)
STOPPING = "stopping after the current image; what is written is kept (Resume export finishes it)…"


class ExportCallbacks:
    def __init__(self, studio):
        self.studio = studio
        self.flags: dict[str, threading.Event] = {}

    def _key(self, request) -> str:
        return visitor(self.studio, request) or getattr(request, "session_hash", None) or "local"

    def _flag(self, request) -> threading.Event:
        flag = self.flags.setdefault(self._key(request), threading.Event())
        flag.clear()
        return flag

    @staticmethod
    def _progress(progress):
        return lambda d, t, what: progress(d / max(1, t), desc=what)

    def _done(self, out, zpath, summary, head: str = ""):
        return str(zpath), self.studio.sandbox.relative(out), head + export_lines(self.studio, out, summary)

    @gpu
    def export(self, choice, data, mode, min_images, top_k, id_list, cameras, n, steps, request: gr.Request = None,
               progress=gr.Progress()):
        try:
            flag = self._flag(request)
            out, zpath, summary = self.studio.export(
                choice, data, which="external", min_images=int(min_images) if mode == "min images" else 0,
                top_k=int(top_k) if mode == "top-K" else 0, ids=list(id_list or []) if mode == "list" else [],
                cameras=list(cameras or []), n=int(n), seed=0, steps=int(steps), guidance=DEFAULT_GUIDANCE,
                owner=visitor(self.studio, request), progress=self._progress(progress), should_stop=flag.is_set)
        except USER_ERRORS as e:
            return None, "", err(e, self.studio)
        return self._done(out, zpath, summary)

    @gpu
    def resume(self, request: gr.Request = None, progress=gr.Progress()):
        try:
            flag = self._flag(request)
            out, zpath, summary = self.studio.resume_export(visitor(self.studio, request),
                                                            progress=self._progress(progress), should_stop=flag.is_set)
        except USER_ERRORS as e:
            return None, "", err(e, self.studio)
        return self._done(out, zpath, summary, "resumed and finished\n\n")

    def stop_export(self, request: gr.Request = None):
        self.flags.setdefault(self._key(request), threading.Event()).set()
        return STOPPING
