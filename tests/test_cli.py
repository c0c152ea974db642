from __future__ import annotations

import numpy as np

from dive.cli import main


def test_cli_synth_and_inspect(tmp_path, capsys):
    out = tmp_path / "w"
    rc = main(["data", "synth", "--out", str(out), "--seed", "1", "--vi-train-ids", "4", "--vi-val-ids", "1",
               "--vi-test-ids", "3", "--vi-images-per-camera", "1", "1", "--ext-ids", "4", "--ext-test-ids", "1",
               "--web-images", "4", "--workers", "1"])
    assert rc == 0
    assert "SynthVI world written" in capsys.readouterr().out
    rc = main(["data", "inspect", str(out), "--out", str(tmp_path / "ins")])
    printed = capsys.readouterr().out
    assert rc == 0 and "modality gap on raw pixels" in printed and "infrared->visible" in printed


def test_cli_wrong_layout_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["data", "inspect", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert rc == 2 and str(tmp_path / "empty") in err and "Traceback" not in err


def test_cli_reid_eval_features(tmp_path, capsys):
    rng = np.random.default_rng(0)
    gp = np.repeat(np.arange(5), 4)
    gc = np.tile([1, 2, 4, 5], 5)
    centres = rng.normal(size=(5, 8))
    np.savez(tmp_path / "f.npz", query_pid=np.arange(5), query_cam=np.full(5, 3), gallery_pid=gp, gallery_cam=gc,
             query_feat=centres + 0.01 * rng.normal(size=(5, 8)), gallery_feat=centres[gp])
    rc = main(["reid", "eval", "--features", str(tmp_path / "f.npz"), "--protocol", "sysu-all", "--trials", "3",
               "--json", str(tmp_path / "r.json")])
    assert rc == 0
    import json

    res = json.loads((tmp_path / "r.json").read_text())
    assert res["rank1"] == 100.0 and len(res["per_trial"]) == 3


def test_every_command_help_renders(capsys):
    """Help texts with '%' once crashed argparse; every command's --help must render."""
    import pytest

    from dive.cli import build_parser

    parser = build_parser()
    groups = parser._subparsers._group_actions[0].choices
    commands = []
    for name, sub in groups.items():
        nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        commands += [[name, c] for c in nested[0].choices] if nested else [[name]]
    assert len(commands) > 15
    for cmd in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*cmd, "--help"])
        assert exit_info.value.code == 0, cmd
    assert "10%" in capsys.readouterr().out  # e.g. dive train's warm-up help, unescaped for the reader
