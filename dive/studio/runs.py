"""Background training runs launched from the studio: separate processes, a real Stop, and records
in SQLite that survive a page reload and an app restart.

A run is `python -m dive train ...` (or `dive base pretrain`) in its own process group, its output
in `<run>/log.txt`. Stop sends SIGTERM to the group, waits, then SIGKILL: the process is gone
within seconds. Checkpoints are written under a temporary name and renamed when complete, so the
last checkpoint of a stopped run is intact. States are read from the processes themselves: a run
whose process ended without its final checkpoint is "failed", never left "running". Resume runs the
same command in the same folder, so the stage continues from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dive.checkpoint import is_checkpoint_dir

STATUSES = ("running", "finished", "failed", "stopped")


class RunStateError(ValueError):
    """An action that the run's state does not allow (resume a running run, ...)."""


@dataclass
class RunRecord:
    id: int
    kind: str
    status: str
    out: str
    pid: int
    started: float
    ended: float | None
    returncode: int | None
    config: dict
    command: list[str]

    @property
    def run_dir(self) -> Path:
        return Path(self.out)


class RunManager:
    def __init__(self, db_path: str | Path, runs_root: str | Path):
        self.db_path = Path(db_path)
        self.runs_root = Path(runs_root)
        self.runs_root.mkdir(parents=True, exist_ok=True)
        self._procs: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, status TEXT, "
                "out TEXT, pid INTEGER, started REAL, ended REAL, returncode INTEGER, config TEXT, command TEXT, "
                "proc_start REAL)"
            )

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    # -- launching ----------------------------------------------------------------------------------
    def launch(self, kind: str, args: list[str], config: dict, out: Path) -> RunRecord:
        """Start `python -m dive <kind...> <args>` in the background; `out` is its run folder."""
        if kind not in ("train", "base pretrain"):
            raise ValueError(f"unknown run kind {kind!r}")
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "dive", *kind.split(), *args]
        proc = self._start(cmd, out)
        with self._lock, self._db() as db:
            cur = db.execute(
                "INSERT INTO runs (kind, status, out, pid, started, config, command, proc_start) VALUES (?,?,?,?,?,?,?,?)",
                (kind, "running", str(out), proc.pid, time.time(), json.dumps(config), json.dumps(cmd), _proc_start(proc.pid)),
            )
            run_id = int(cur.lastrowid)
            self._procs[run_id] = proc
        return self.get(run_id)

    @staticmethod
    def _start(cmd: list[str], out: Path) -> subprocess.Popen:
        log = open(out / "log.txt", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env, cwd=os.getcwd())
        finally:
            log.close()

    def resume(self, run_id: int) -> RunRecord:
        """Run a stopped or failed run's own command again in its own folder: the stage resumes from
        the last complete checkpoint and continues the same loss curve (as rerunning `dive train`
        with the same --out does)."""
        rec = self.get(run_id)
        self.refresh()
        rec = self.get(run_id)
        if rec.status == "running":
            raise RunStateError(f"run {run_id} is still running; stop it first")
        if rec.status == "finished":
            raise RunStateError(f"run {run_id} has finished; there is nothing to resume")
        with open(rec.run_dir / "log.txt", "ab") as log:
            log.write(f"\n--- resumed at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        proc = self._start(rec.command, rec.run_dir)
        with self._lock, self._db() as db:
            db.execute("UPDATE runs SET status='running', pid=?, proc_start=?, ended=NULL, returncode=NULL WHERE id=?",
                       (proc.pid, _proc_start(proc.pid), run_id))
            self._procs[run_id] = proc
        return self.get(run_id)

    # -- status -------------------------------------------------------------------------------------
    def _alive(self, row: sqlite3.Row) -> tuple[bool, int | None]:
        proc = self._procs.get(row["id"])
        if proc is not None:
            rc = proc.poll()
            return rc is None, rc
        # a run started by an earlier app instance: alive if its pid exists with the same start time
        start = _proc_start(row["pid"])
        return (start is not None and row["proc_start"] is not None and abs(start - row["proc_start"]) < 1.0), None

    def refresh(self) -> None:
        with self._lock, self._db() as db:
            for row in db.execute("SELECT * FROM runs WHERE status = 'running'").fetchall():
                alive, rc = self._alive(row)
                if alive:
                    continue
                out = Path(row["out"])
                done = (out / "final").is_dir() or (row["kind"] == "base pretrain" and (out / "model" / "model_index.json").exists())
                status = "finished" if (rc in (0, None) and done) else "failed"
                db.execute("UPDATE runs SET status=?, ended=?, returncode=? WHERE id=?", (status, time.time(), rc, row["id"]))
                self._procs.pop(row["id"], None)

    def get(self, run_id: int) -> RunRecord:
        with self._db() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id}")
        return _record(row)

    def list(self) -> list[RunRecord]:
        self.refresh()
        with self._db() as db:
            return [_record(r) for r in db.execute("SELECT * FROM runs ORDER BY id DESC").fetchall()]

    # -- stopping -----------------------------------------------------------------------------------
    def stop(self, run_id: int, timeout: float = 4.0) -> RunRecord:
        """SIGTERM the run's process group, SIGKILL after `timeout`; returns once it is gone. A run
        whose process had already ended keeps its true state (finished or failed)."""
        self.refresh()
        rec = self.get(run_id)
        if rec.status != "running":
            return rec
        with self._db() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        alive, _ = self._alive(row)
        if alive:
            try:
                os.killpg(rec.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.time() + timeout
            while time.time() < deadline and self._alive(row)[0]:
                time.sleep(0.1)
            if self._alive(row)[0]:
                try:
                    os.killpg(rec.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                while self._alive(row)[0]:
                    time.sleep(0.05)
        proc = self._procs.pop(run_id, None)
        rc = proc.poll() if proc is not None else None
        with self._lock, self._db() as db:
            db.execute("UPDATE runs SET status='stopped', ended=?, returncode=? WHERE id=?", (time.time(), rc, run_id))
        return self.get(run_id)

    # -- what a run has produced ------------------------------------------------------------------------
    @staticmethod
    def loss_curve(rec: RunRecord) -> list[tuple[int, float]]:
        path = rec.run_dir / "loss.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            out.append((int(row["step"]), float(row["loss"])))
        return out

    @staticmethod
    def latest_preview(rec: RunRecord) -> Path | None:
        previews = sorted((rec.run_dir / "previews").glob("*.png"))
        return previews[-1] if previews else None

    @staticmethod
    def checkpoints(rec: RunRecord) -> list[Path]:
        """Complete, loadable DiVE checkpoints of a run (final first)."""
        found = [p for p in sorted(rec.run_dir.glob("checkpoint-*"), key=lambda p: -int(p.name.split("-")[1]))
                 if is_checkpoint_dir(p)]
        final = rec.run_dir / "final"
        return ([final] if is_checkpoint_dir(final) else []) + found

    @staticmethod
    def log_tail(rec: RunRecord, n: int = 30) -> str:
        path = rec.run_dir / "log.txt"
        if not path.exists():
            return ""
        text = path.read_bytes()[-20000:].decode("utf-8", "replace").replace("\r", "\n")
        return "\n".join([x for x in text.splitlines() if x.strip()][-n:])


def _proc_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time() if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else None
    except Exception:
        return None


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(id=row["id"], kind=row["kind"], status=row["status"], out=row["out"], pid=row["pid"],
                     started=row["started"], ended=row["ended"], returncode=row["returncode"],
                     config=json.loads(row["config"] or "{}"), command=json.loads(row["command"] or "[]"))
