"""`dive package` never deletes what it did not write."""

from __future__ import annotations

import pytest

from dive.checkpoint import is_checkpoint_dir
from dive.cli import main


def _package(src, dst, *extra):
    return main(["package", str(src), str(dst), *extra])


def test_refuses_a_folder_that_is_not_a_package(micro_dive_run, tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("months of work")
    for extra in ([], ["--overwrite"]):
        assert _package(micro_dive_run / "final", thesis, *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(thesis) in err and "not a DiVE checkpoint" in err
        assert sorted(p.name for p in thesis.iterdir()) == ["chapter1.tex"]
    assert (thesis / "chapter1.tex").read_text() == "months of work"


def test_refuses_the_source_and_its_parents(micro_dive_run, tmp_path, capsys):
    import shutil

    parent = tmp_path / "parent"
    ck = parent / "ck"
    shutil.copytree(micro_dive_run / "final", ck)
    before = sorted(str(p.relative_to(parent)) for p in parent.rglob("*"))
    for dst in (ck, parent, ck / "inner"):
        for extra in ([], ["--overwrite"]):
            assert _package(ck, dst, *extra) == 2, dst
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and str(dst) in err
    assert sorted(str(p.relative_to(parent)) for p in parent.rglob("*")) == before
    assert is_checkpoint_dir(ck)


def test_overwrite_replaces_a_package_and_nothing_else(micro_dive_run, tmp_path, capsys):
    dst = tmp_path / "pkg"
    assert _package(micro_dive_run / "checkpoint-3", dst) == 0
    capsys.readouterr()
    first = {p.name: p.read_bytes() for p in dst.iterdir() if p.is_file()}
    assert _package(micro_dive_run / "final", dst) == 2  # a package is replaced only when asked
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in dst.iterdir() if p.is_file()} == first
    (dst / "stale.txt").write_text("written by an older package")
    assert _package(micro_dive_run / "final", dst, "--overwrite") == 0
    assert is_checkpoint_dir(dst) and not (dst / "stale.txt").exists()
    assert first["dive.json"] != (dst / "dive.json").read_bytes()  # step 3 -> step 6
    # nothing left beside it: the new folder was renamed into place, the old one removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _package(micro_dive_run / "final", empty) == 0 and is_checkpoint_dir(empty)


def test_a_failed_package_leaves_the_old_one(micro_dive_run, tmp_path, monkeypatch):
    from dive.train import trainer

    dst = tmp_path / "pkg"
    trainer.package_checkpoint(micro_dive_run / "final", dst)
    before = {p.name: p.read_bytes() for p in dst.rglob("*") if p.is_file()}

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(trainer, "write_references", broken)
    with pytest.raises(OSError):
        trainer.package_checkpoint(micro_dive_run / "final", dst, overwrite=True)
    assert {p.name: p.read_bytes() for p in dst.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]
