"""One writer per output folder: `OUT/.dive-lock` names the process writing there.

`output_lock(out)` is held by `dive generate`, `translate`, `export`, `train` and `bench` on their
`--out` for the whole run. The file holds the writer's PID, host and command (JSON); the lock
itself is an exclusive `flock` on it, which the kernel drops when the process dies however it
dies, so a lock file left by a killed run (a dead PID) is simply taken over by the next writer.
A second writer while the first lives is refused with one line naming the first (its PID and
command). A lock file written on another host cannot be checked from here and is refused too,
with a line saying which file to remove once that run is gone. With several processes
(accelerate), only rank 0 takes the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".dive-lock"


class FolderLocked(FileExistsError):
    """Another process is writing into the folder (a user error: one line at the command line)."""


def _rank() -> int:
    for var in ("RANK", "ACCELERATE_PROCESS_INDEX"):  # torchrun / accelerate launch
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('command', '?')})"


def _refuse(out: Path, holder: dict, hint: str = "") -> FolderLocked:
    return FolderLocked(f"{out}: another run is writing here: {_describe(holder)}; wait for it or use another "
                        f"--out{hint}")


def acquire(out: str | os.PathLike, command: str | None = None) -> int:
    """Take the lock of `out` (created if missing); returns the open file descriptor that holds it.
    Raises `FolderLocked` naming the holder when another live process has it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; expected an output folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    host = socket.gethostname()
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_holder(path)
            if not holder:  # the holder is between taking the lock and writing its line
                time.sleep(0.05)
                holder = _read_holder(path)
            raise _refuse(out, holder) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file as we opened it: start again
            os.close(fd)
            continue
        holder = _read_holder(path)
        pid = holder.get("pid")
        if holder.get("host") not in (None, host) and isinstance(pid, int):
            os.close(fd)
            raise _refuse(out, holder, f" (a lock written on another host cannot be checked from here: remove {path} "
                                       "once that run is gone)")
        if holder.get("host") == host and isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid) \
                and holder.get("flock") is not True:
            os.close(fd)  # written by a writer that did not hold the file lock: trust its live PID
            raise _refuse(out, holder)
        info = {"pid": os.getpid(), "host": host, "flock": True, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        return fd
    raise FolderLocked(f"{path}: could not take the lock (it kept changing); is another run starting here?")


def release(out: str | os.PathLike, fd: int) -> None:
    """Remove the lock file (while still holding it, so no one takes a file about to vanish) and drop it."""
    with contextlib.suppress(FileNotFoundError):
        if os.fstat(fd).st_ino == os.stat(Path(out) / LOCK_FILE).st_ino:
            os.unlink(Path(out) / LOCK_FILE)
    os.close(fd)


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, command: str | None = None, *, enabled: bool | None = None) -> Iterator[None]:
    """Hold the lock of the output folder `out` for the block. `enabled`: whether this process
    takes it (default: rank 0 only, so the processes of one distributed run do not refuse each other)."""
    if enabled is None:
        enabled = _rank() == 0
    if not enabled:
        yield
        return
    created = not Path(out).exists()
    fd = acquire(out, command)
    try:
        yield
    finally:
        release(out, fd)
        if created:  # a run refused before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                Path(out).rmdir()
