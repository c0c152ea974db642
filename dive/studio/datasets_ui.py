"""The Datasets tab: browse an exported dataset by identity, real / synthetic / both, in a gallery
captioned in words (`dive.studio.datasets.ExportBrowser`). Built inside the app's Blocks."""

from __future__ import annotations

import gradio as gr

from dive.studio.sandbox import StudioError
from dive.studio.ui import err, visitor

ERRORS = (StudioError, ValueError, KeyError, OSError)


class DatasetsTab:
    def __init__(self, studio):
        self.studio = studio

    def folders(self, current=None, request: gr.Request = None):
        """The visitor's complete exports, read now (an export just finished appears)."""
        try:
            choices = self.studio.exports.folders(visitor(self.studio, request))
        except ERRORS:
            choices = []
        values = [v for _, v in choices]
        return gr.update(choices=choices, value=current if current in values else (values[0] if values else None))

    def identities(self, folder, request: gr.Request = None):
        if not folder:
            return gr.update(choices=[], value=None), "no exported dataset yet: run a batch export first"
        try:
            ids = self.studio.exports.identities(folder, visitor(self.studio, request))
        except ERRORS as e:
            return gr.update(choices=[], value=None), err(e, self.studio)
        choices = [(i.label, str(i.pid)) for i in ids]
        return (gr.update(choices=choices, value=choices[0][1] if choices else None),
                f"{len(ids)} identities · {sum(1 for i in ids if i.synthetic)} with synthetic images (listed first)")

    def images(self, folder, identity, show="both", request: gr.Request = None):
        if not folder or not identity:
            return [], ""
        try:
            items, line = self.studio.exports.images(folder, identity, show or "both", visitor(self.studio, request))
        except ERRORS as e:
            return [], err(e, self.studio)
        return [(str(p), c) for p, c in items], line

    def build(self) -> gr.Tab:
        """The tab and its events (inside `gr.Tabs()` of the app's Blocks)."""
        with gr.Tab("Datasets", elem_id="datasets-tab") as tab:
            with gr.Row():
                with gr.Column(scale=2):
                    folder = gr.Dropdown([], value=None, label="Exported dataset", allow_custom_value=True,
                                         info="your batch exports (read when this tab opens); a folder inside "
                                              "your exports area can be typed")
                    ident = gr.Dropdown([], value=None, label="Identity", filterable=True, allow_custom_value=True,
                                        info="export id · where it came from · split · real and synthetic images")
                    show = gr.Radio(["both", "real", "synthetic"], value="both", label="Images to show")
                    refresh = gr.Button("Refresh list")
                    ids_msg = gr.Markdown()
                with gr.Column(scale=3):
                    msg = gr.Markdown(elem_id="dataset-message")
                    gallery = gr.Gallery(label="Images of this identity in the export", columns=8, height="auto",
                                         object_fit="contain", elem_id="dataset-gallery", elem_classes=["dive-gallery"])
        private = dict(api_visibility="private")
        tab.select(self.folders, [folder], [folder], **private)
        refresh.click(self.folders, [folder], [folder], **private)
        folder.change(self.identities, [folder], [ident, ids_msg], **private)
        ident.change(self.images, [folder, ident, show], [gallery, msg], api_name="dataset_images")
        show.change(self.images, [folder, ident, show], [gallery, msg], **private)
        return tab
