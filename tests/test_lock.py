"""One writer per output folder: `OUT/.dive-lock`, tested with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from dive.cli import main
from dive.utils.lock import LOCK_FILE, FolderLocked, output_lock

HOLD = """
import sys, time
from dive.utils.lock import output_lock
with output_lock(sys.argv[1], "dive generate --out " + sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(out):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_writer_is_refused_then_a_dead_holder_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    first = _holder(out)
    try:
        # a second process is refused with one line naming the first's pid and command
        r = subprocess.run([sys.executable, "-m", "dive", "export", "--data", str(tmp_path / "data"), "--out", str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert f"pid {first.pid}" in r.stderr and f"dive generate --out {out}" in r.stderr and str(out) in r.stderr
        # and so is this process, through the command line and through the library
        assert main(["export", "--data", str(tmp_path / "data"), "--out", str(out)]) == 2
        assert f"pid {first.pid}" in capsys.readouterr().err
        with pytest.raises(FolderLocked):
            with output_lock(out):
                pass
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == first.pid  # the refused left it alone
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # killed: its lock file stays behind, naming a dead pid; the next writer takes it over
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == first.pid
    with output_lock(out, "dive export --out x"):
        held = json.loads((out / LOCK_FILE).read_text())
        assert held["pid"] == os.getpid() and held["command"] == "dive export --out x"
    assert not (out / LOCK_FILE).exists()  # released: removed


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "dive train"}))
    with output_lock(out):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert list(out.iterdir()) == []


def test_lock_of_another_host_is_refused_naming_the_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere.invalid", "command": "dive bench"}))
    with pytest.raises(FolderLocked, match="elsewhere.invalid.*dive bench.*remove"):
        with output_lock(out):
            pass


def test_only_rank_zero_takes_the_lock(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with output_lock(out):
        monkeypatch.setenv("RANK", "1")
        with output_lock(out):  # another process of the same distributed run: not refused
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(FolderLocked):
            with output_lock(out):
                pass


def test_refused_before_writing_leaves_no_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        with output_lock(tmp_path / "file"):
            pass
    with pytest.raises(RuntimeError):
        with output_lock(tmp_path / "new"):
            raise RuntimeError("failed before writing")
    assert not (tmp_path / "new").exists()


def test_bench_refuses_a_folder_another_writer_holds(tmp_path, capsys):
    out = tmp_path / "bench"
    with output_lock(out, "dive generate --out elsewhere"):
        assert main(["bench", "--out", str(out), "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pid {os.getpid()}" in err and "dive generate --out elsewhere" in err
