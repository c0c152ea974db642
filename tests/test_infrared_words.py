"""`dive infrared-words`: caption colours renamed by their infrared grey in infrared prompts.

The lookup is fitted on the VI set's paired images (visible captions, infrared pixels), so on a
SynthVI world it must recover the world's hidden dye -> near-infrared order, not visible luminance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from dive.caption.infrared import (InfraredWordsConfig, fit_colour_greys, garment_colours, grey_words_for,
                                   load_infrared_words, run_infrared_words)
from dive.checkpoint import CameraToken, IdentityToken, TokenTable
from dive.data.synthvi.world import COLOR_NIR, COLORS, visible_luminance


def test_fit_recovers_colour_greys_and_bins_them():
    truth = {"red": 0.8, "blue": 0.3, "gray": 0.5, "pink": 0.2}
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(200):
        cols = list(rng.choice(sorted(truth), size=int(rng.integers(1, 3)), replace=False))
        for part, offset in (("upper", 0.05), ("lower", -0.05)):
            rows.append((part, cols, float(np.mean([truth[c] for c in cols]) + offset)))
    greys, counts = fit_colour_greys(rows, min_count=5)
    assert set(greys) == set(truth) and all(n >= 5 for n in counts.values())
    for c, g in truth.items():
        assert greys[c] == pytest.approx(g, abs=1e-6)
    assert grey_words_for(greys, ("black", "gray", "white")) == {"pink": "black", "blue": "black", "gray": "gray",
                                                                "red": "white"}
    with pytest.raises(ValueError, match="need 2"):
        fit_colour_greys([("upper", ["red"], 0.5)] * 9, min_count=5)


def test_garment_colours_read_the_caption_grammar():
    caption = "wearing a red and white hstripes sweater and navy pants and gray shoes, with short black hair"
    assert garment_colours(caption) == {"upper": ["red", "white"], "lower": ["navy"]}
    with pytest.raises(ValueError, match="not a SynthVI caption"):
        garment_colours("a person in red")


def test_prompt_renames_colours_for_infrared_cameras_only():
    ident = IdentityToken("<a-0001>", "a", 1, 12, caption="wearing a red and pinkish red shirt")
    vis, ir = CameraToken("vcam", "vi", 1, "visible", True), CameraToken("icam", "vi", 3, "infrared", True)
    table = TokenTable([ident], [vis, ir], infrared_words={"red": "white", "pink": "black"})
    assert table.prompt("<a-0001>", "vcam").endswith("wearing a red and pinkish red shirt")
    # whole words only, all at once ("red" -> "white" is not then renamed again)
    assert table.prompt("<a-0001>", "icam").endswith("wearing a white and pinkish white shirt")
    assert table.prompt(ident, ir) == table.prompt("<a-0001>", "icam")
    again = TokenTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again.infrared_words == table.infrared_words and again.describes_same_tokens(table)
    plain = TokenTable([ident], [vis, ir])
    assert "infrared_words" not in plain.to_dict()  # tables without words are written as before
    assert not plain.describes_same_tokens(table)  # other prompts: a run cannot resume across the change
    assert plain.prompt("<a-0001>", "icam").endswith("red and pinkish red shirt")


def test_infrared_words_recover_the_worlds_infrared_order(tmp_path):
    """On a world of 120 VI ids with the true captions, the fitted greys follow the dyes'
    near-infrared reflectance (hidden from visible light), not their luminance; training prompts
    of infrared images then carry the grey words and visible prompts the colours."""
    from dive.caption.run import CaptionConfig, run_caption
    from dive.data.synthvi.build import SynthConfig, build_world
    from dive.train.data import build_training_set, load_sources

    world = tmp_path / "world"
    build_world(SynthConfig(out=world, seed=3, workers=1, vi_train_ids=120, vi_val_ids=1, vi_test_ids=1,
                            vi_images_per_camera=(1, 1), ext_ids=2, ext_test_ids=1, web_images=8), progress=False)
    run_caption(CaptionConfig(data=world, out=tmp_path / "cap", oracle=True), progress=False)
    path = run_infrared_words(InfraredWordsConfig(data=world, captions=tmp_path / "cap" / "captions.json",
                                                  out=tmp_path / "iw.json"), progress=False)
    saved = json.loads(path.read_text())
    greys = saved["greys"]
    assert saved["ids"] == 121 and len(greys) == len(COLORS)
    names = sorted(greys)
    assert spearmanr([greys[c] for c in names], [COLOR_NIR[c] for c in names]).statistic > 0.7
    assert abs(spearmanr([greys[c] for c in names], [visible_luminance(COLORS[c]) for c in names]).statistic) < 0.4
    words = load_infrared_words(path)
    assert set(words.values()) <= {"black", "gray", "white"} and words == saved["words"]

    from dive.caption.run import load_captions

    vi, ext = load_sources(world)
    ts = build_training_set(vi, ext, min_images=1, captions=load_captions(tmp_path / "cap"), infrared_words=words)
    for r, prompt in zip(ts.records, ts.prompts):
        caption = ts.table.identity(r.dataset, r.pid).caption
        want = ts.table.infrared_caption(caption) if r.is_infrared else caption
        assert prompt.endswith(", " + want)
    assert any(p != ts.table.infrared_caption(p) for r, p in zip(ts.records, ts.prompts) if not r.is_infrared)
    with pytest.raises(ValueError, match="need captions"):
        build_training_set(vi, ext, min_images=1, infrared_words=words)


def test_load_infrared_words_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dive infrared-words"):
        load_infrared_words(tmp_path / "none.json")
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(ValueError, match=str(listed)):
        load_infrared_words(listed)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "dive-infrared-words/1", "words": {"red": "very white"}}))
    with pytest.raises(ValueError, match=str(bad)):
        load_infrared_words(bad)
