"""`dive caption` and captioned DiVE prompts: the world's caption grammar, the reader, the captions
file, and captions carried from training through tokens.json into generation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dive.caption.run import CAPTIONS_FILE, CaptionConfig, decode_slots, load_captions, run_caption
from dive.checkpoint import TOKENS_FILE, TokenTable
from dive.data.synthvi.world import CAPTION_SLOTS, Identity, caption_slots, describe, parse_caption, sample_identity
from dive.train.data import build_training_set, load_sources


def test_caption_grammar_round_trips():
    rng = np.random.default_rng(3)
    for _ in range(500):
        ident = sample_identity(rng)
        for view in (None, "front", "left"):
            slots = parse_caption(ident.caption(view))
            assert set(slots) == set(CAPTION_SLOTS) and all(slots[k] in CAPTION_SLOTS[k] for k in slots)
            assert describe(slots) == ident.caption().split(", ", 1)[1]
    slots = caption_slots(ident)
    # a two-colour pattern with no second colour is drawn plain, not as text the world never writes
    broken = dict(slots, upper_pattern="checks", upper_color2="-")
    assert parse_caption("a photo of a tall slim person, " + describe(broken))["upper_pattern"] == "plain"
    with pytest.raises(ValueError, match="not a SynthVI caption"):
        parse_caption("a photo of a cat")
    with pytest.raises(ValueError, match="upper_color 'teal'"):
        parse_caption(ident.caption().replace(f"a {ident.upper.color} ", "a teal ", 1))


@pytest.fixture(scope="module")
def reader_run(tiny_world_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("captions") / "reader"
    run_caption(CaptionConfig(data=tiny_world_dir, out=out, steps=4, batch_size=8, width=8, holdout=8), progress=False)
    return out


def test_reader_captions_every_identity_reproducibly(tiny_world_dir, reader_run, tmp_path):
    vi, ext = load_sources(tiny_world_dir)
    captions = load_captions(reader_run / CAPTIONS_FILE)
    assert set(captions) == {f"{r.dataset}/{r.pid}" for r in vi + ext}
    assert all(parse_caption("a photo of a tall slim person, " + c) for c in captions.values())
    report = json.loads((reader_run / "report.json").read_text())
    assert report["source"] == "reader" and set(report["reader_heldout_accuracy"]) == set(CAPTION_SLOTS)
    assert set(report["identity_accuracy"]) == set(CAPTION_SLOTS)
    assert all(0.0 <= a <= 1.0 for a in report["reader_heldout_accuracy"].values())
    assert (reader_run / "reader" / "reader.safetensors").exists() and "| upper_color |" in (reader_run / "report.md").read_text()
    # what is written, read back, keeps every pattern the reader chose (the slots are decoded jointly)
    assert set(report["written_accuracy"]) == set(CAPTION_SLOTS) - {"height", "build"}
    for slot in ("upper_pattern", "lower_pattern", "upper_color", "lower_type"):
        assert report["written_accuracy"][slot] == report["identity_accuracy"][slot]
    # same seed, same reader, same captions
    again = tmp_path / "again"
    run_caption(CaptionConfig(data=tiny_world_dir, out=again, steps=4, batch_size=8, width=8, holdout=8), progress=False)
    assert (again / CAPTIONS_FILE).read_bytes() == (reader_run / CAPTIONS_FILE).read_bytes()
    # a saved reader, reused, writes the same captions without training
    reused = tmp_path / "reused"
    run_caption(CaptionConfig(data=tiny_world_dir, out=reused, reader=reader_run / "reader", steps=0), progress=False)
    assert (reused / CAPTIONS_FILE).read_bytes() == (reader_run / CAPTIONS_FILE).read_bytes()


def test_decoding_gives_a_patterned_garment_a_real_second_colour():
    values = {"upper_color": ["red", "blue", "green"], "upper_color2": ["-", "red", "blue", "green"],
              "upper_pattern": ["plain", "stripes"]}
    # slot by slot: red, "-", stripes -- a striped garment with no second colour, written plain
    scores = {"upper_color": torch.tensor([3.0, 1.0, 0.0]), "upper_color2": torch.tensor([5.0, 4.0, 1.0, 2.0]),
              "upper_pattern": torch.tensor([0.0, 1.0])}
    assert decode_slots(scores, values) == {"upper_color": "red", "upper_color2": "green", "upper_pattern": "stripes"}
    # a plain garment keeps the second colour as read
    plain = dict(scores, upper_pattern=torch.tensor([1.0, 0.0]))
    assert decode_slots(plain, values)["upper_color2"] == "-"


def test_oracle_captions_are_the_worlds_truth(tiny_world_dir, tmp_path):
    run_caption(CaptionConfig(data=tiny_world_dir, out=tmp_path, oracle=True), progress=False)
    captions = load_captions(tmp_path)
    people = json.loads((tiny_world_dir / "identities.json").read_text())
    pid = next(k for k in captions if k.startswith("synthvi_ext/")).split("/")[1]
    truth = Identity.from_dict(people["external"][pid])
    assert captions[f"synthvi_ext/{pid}"] == truth.caption().split(", ", 1)[1]
    assert json.loads((tmp_path / "report.json").read_text())["source"] == "oracle"


def test_a_bad_captions_file_is_refused_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions.json: missing"):
        load_captions(tmp_path)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"synthvi_vi/1": "wearing a red shirt"}))
    with pytest.raises(ValueError, match="c.json: expected"):
        load_captions(path)
    path.write_text(json.dumps({"format": "dive-captions/1", "captions": {"synthvi_vi/1": " "}}))
    with pytest.raises(ValueError, match="c.json: 1 malformed"):
        load_captions(path)


def test_captions_enter_prompts_and_the_token_table(tiny_world_dir, reader_run):
    vi, ext = load_sources(tiny_world_dir)
    captions = load_captions(reader_run)
    ts = build_training_set(vi, ext, min_images=3, captions=captions)
    for r, prompt in zip(ts.records, ts.prompts):
        assert prompt.endswith(" person, " + captions[f"{r.dataset}/{r.pid}"])
    table = TokenTable.from_dict(json.loads(json.dumps(ts.table.to_dict())))
    t, cam = table.identities[0], table.cameras[0]
    assert table.prompt(t.token, cam.token) == table.prompt(t, cam) == ts.table.prompt(t.token, cam.token)
    # caption-free tables keep the old tokens.json form
    plain = build_training_set(vi, ext, min_images=3).table.to_dict()
    assert all("caption" not in t for t in plain["identities"])
    missing = dict(captions)
    missing.pop(f"{ts.table.identities[0].dataset}/{ts.table.identities[0].pid}")
    with pytest.raises(ValueError, match="captions: 1 of"):
        build_training_set(vi, ext, min_images=3, captions=missing)


def test_a_captioned_checkpoint_generates_with_its_captions(micro_base, tiny_world_dir, reader_run, tmp_path):
    from dive.generate.pipeline import GenerationRequest, load_generator
    from dive.train.trainer import DiVETrainConfig, train_dive

    final = train_dive(DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=tmp_path / "run", steps=2, batch_size=4,
                                       min_images=3, save_every=2, preview_every=0, rank=4,
                                       captions=reader_run / CAPTIONS_FILE), progress=False)
    table = TokenTable.load(final / TOKENS_FILE)
    captions = load_captions(reader_run)
    assert all(t.caption == captions[f"{t.dataset}/{t.pid}"] for t in table.identities)
    gen = load_generator(micro_base, final)
    job = GenerationRequest([table.identities[0].token], [table.infrared_cameras()[0].token], n=1).jobs(gen.table)[0]
    assert job.prompt.endswith(", " + table.identities[0].caption)
    # a caption longer than the text encoder reads is refused before any image is loaded
    long = {k: " ".join(["wearing a red shirt"] * 30) for k in captions}
    (tmp_path / "long.json").write_text(json.dumps({"format": "dive-captions/1", "captions": long}))
    with pytest.raises(ValueError, match="tokens; the text encoder reads"):
        train_dive(DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=tmp_path / "long", steps=1, batch_size=4,
                                   min_images=3, preview_every=0, rank=4, captions=tmp_path / "long.json"), progress=False)
