"""What DiVE trains on, and the token table it implies.

Training data (paper): every image of the VI dataset's training ids, both modalities, so an
identity token is shared across modalities and learns what is modality-invariant; plus the
external visible dataset's ids with at least `min_images` images, so new identities get tokens.
Each image's prompt is "a [camera] photo of [identity] person".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from dive.checkpoint import CameraToken, IdentityToken, TokenTable, identity_token_name, random_camera_strings
from dive.data.records import Modality, Record
from dive.data.sources import load_sources  # noqa: F401  (the trainer, tests and scripts import it from here)

GRANULARITIES = ("camera", "modality")


@dataclass
class TrainingSet:
    records: list[Record]
    table: TokenTable
    prompts: list[str]  # one per record


def build_training_set(vi_records: list[Record], ext_records: list[Record], *, min_images: int = 12,
                       granularity: str = "camera", camera_mode: str = "embedding", vi_modalities: str = "both",
                       seed: int = 0, captions: dict[str, str] | None = None,
                       infrared_words: dict[str, str] | None = None) -> TrainingSet:
    """Select the records, make one identity token per person and one camera token per camera
    (or per modality with `granularity="modality"`), and write each record's prompt.

    `captions` ({"<dataset>/<pid>": words}, `dive.caption.run.load_captions`): every identity's
    prompt also names what it looks like; each training identity needs one. `infrared_words`
    (`dive.caption.infrared`): in infrared prompts the caption names each colour by its infrared grey."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if camera_mode not in ("string", "embedding"):
        raise ValueError(f"camera_mode must be 'string' or 'embedding', got {camera_mode!r}")
    if vi_modalities == "infrared":
        vi_records = [r for r in vi_records if r.modality is Modality.INFRARED]
    elif vi_modalities != "both":
        raise ValueError(f"vi_modalities must be 'both' or 'infrared', got {vi_modalities!r}")
    counts = Counter((r.dataset, r.pid) for r in ext_records)
    ext_keep = [r for r in ext_records if counts[(r.dataset, r.pid)] >= min_images]
    records = sorted(vi_records + ext_keep, key=lambda r: (r.dataset, r.pid, r.camid, r.path))
    if not records:
        raise ValueError("no training images: the VI set is empty and no external id has enough images")

    per_id = Counter((r.dataset, r.pid) for r in records)
    split_of = {(r.dataset, r.pid): r.split for r in records}
    if captions is not None:
        missing = [f"{ds}/{pid}" for ds, pid in sorted(per_id) if f"{ds}/{pid}" not in captions]
        if missing:
            raise ValueError(f"captions: {len(missing)} of {len(per_id)} training identities have none, e.g. "
                             f"{missing[:3]}; write them with `dive caption` on the same data")
    identities = [IdentityToken(identity_token_name(ds, pid), ds, pid, n, split_of[(ds, pid)],
                                caption=captions[f"{ds}/{pid}"] if captions is not None else "")
                  for (ds, pid), n in sorted(per_id.items())]

    # cameras: every (dataset, camera) seen, or one per (dataset-group, modality)
    if granularity == "camera":
        keys = sorted({(r.dataset, r.camid, r.modality.value) for r in records})
    else:
        keys = sorted({("all", 0 if r.modality is Modality.VISIBLE else 1, r.modality.value) for r in records})
    strings = random_camera_strings(len(keys), seed)
    cameras = [CameraToken(s, ds, cam, mod, learned=camera_mode == "embedding") for s, (ds, cam, mod) in zip(strings, keys)]
    infrared = sorted({r.dataset for r in records if r.modality is Modality.INFRARED})
    if infrared_words and captions is None:
        raise ValueError("infrared_words rename caption words in infrared prompts; they need captions")
    table = TokenTable(identities, cameras, camera_mode=camera_mode, infrared_datasets=infrared,
                       infrared_words=dict(infrared_words or {}))

    def cam_token(r: Record) -> str:
        if granularity == "camera":
            return table.camera(r.dataset, r.camid).token
        return table.camera("all", 0 if r.modality is Modality.VISIBLE else 1).token

    id_tok = {(t.dataset, t.pid): t.token for t in identities}
    prompts = [table.prompt(id_tok[(r.dataset, r.pid)], cam_token(r)) for r in records]
    return TrainingSet(records, table, prompts)
