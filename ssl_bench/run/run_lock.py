"""One process at a time in a run folder.

Two runs writing into one folder at once would both finish: metrics.csv with every row twice, two W&B runs, a second
best checkpoint (``best-<step>-v1.ckpt``). ``run_folder_lock`` holds an exclusive ``flock`` on ``<folder>/.lock`` for
as long as the run lives; the kernel releases it when the process ends, however it ends (a crash, SIGKILL), so a
lock is never stale. The holder writes its pid, host, start time and command line into the file (JSON), and a run
refused (RunFolderBusy) names it. A shared stage (contrastive pretraining) waits for the lock instead and then reuses what
the holder made.

A folder the lock itself created and that holds nothing else when it is released (the run failed before writing
anything: bad data, a config error) is removed again, with the parent folders it created, so that a refused or
failed command leaves no trace.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, List

from ssl_bench.utils.errors import ExplainedError

LOCK_FILE = ".lock"
# How long a refused run waits for the holder's name to appear in the lock file (it writes it right after locking).
_HOLDER_WAIT_S = 1.0


class RunFolderBusy(ExplainedError):
    """Another live process holds the run folder."""


@contextlib.contextmanager
def run_folder_lock(folder: Path, wait: bool = False) -> Iterator[Path]:
    """Holds ``folder``'s lock (making the folder if needed) while the block runs. Held by another process: raises
    RunFolderBusy naming it, or with ``wait``, says whom it waits for (stderr) and waits."""
    folder = Path(folder)
    created = _missing_folders(folder)
    fd = _acquire(folder, wait)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield folder / LOCK_FILE
    finally:
        _release(fd, folder, created)


def clear_run_folder(folder: Path) -> None:
    """Removes everything in ``folder`` but its lock file (``--force``: the run starts over; call it holding the
    lock)."""
    for entry in Path(folder).iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def describe_holder(text: str) -> str:
    """The lock file's content as words: who holds the folder."""
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on host {h['host']}, started {h['started']}"
    except (ValueError, TypeError, KeyError):
        return "another process (it has not written its name into the lock file)"


def _holder() -> dict:
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else ""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "command": command[:300]}


def _missing_folders(folder: Path) -> List[Path]:
    """``folder`` and its parents that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _acquire(folder: Path, wait: bool) -> int:
    path = folder / LOCK_FILE
    announced = False
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the folder was removed by a holder releasing it empty: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunFolderBusy(
                    f"{folder} is in use by another run: {holder}. This one is refused, that one's files left as "
                    "they are (two runs in one folder would both write it: every metrics.csv row twice, two W&B "
                    "runs, a second best checkpoint). Wait for it to end (the same command then reports its result, "
                    "or resumes it if it stopped), or give this run a folder of its own (run.tag=<name>)") from None
            if not announced:
                print(f"{folder}: waiting for {_read_holder(fd)} to finish with it", file=sys.stderr, flush=True)
                announced = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        # A holder that released the folder empty removed this file: the lock must be on the file the path names now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _read_holder(fd: int) -> str:
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        if text or time.monotonic() > deadline:
            return describe_holder(text)
        time.sleep(0.05)


def _release(fd: int, folder: Path, created: List[Path]) -> None:
    try:
        if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink()  # still locked: a process that opened it meanwhile sees the change
            for path in created:
                try:
                    path.rmdir()
                except OSError:  # not empty (another run's folder beside it) or gone
                    break
    finally:
        os.close(fd)
