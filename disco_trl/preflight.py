"""What a run checks before it spends compute, and the lock that keeps one run per output folder.

`FolderLock`: a training run (`DiscoTrainer.train`, the training script) or an evaluation (`disco-trl eval`) holds its
output folder for as long as it runs, through a lock file in it (`.disco-lock`, JSON: host, pid, process start time,
what holds it). A second run into the same folder is refused with one line naming the holder. A lock whose holder is
gone is taken over with a warning: on the same host when the process no longer exists (or is another process with
the same pid), on another host (a shared file system) when the holder has not renewed it for `STALE_AFTER_S`
seconds; the holder renews it every `HEARTBEAT_S` seconds from a daemon thread.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from pathlib import Path


LOCK_FILE = ".disco-lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0


class FolderInUse(RuntimeError):
    """Another live run holds the folder. The message (one line) names it and says what to do."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the holder."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return time.time() - float(holder.get("renewed", 0)) < STALE_AFTER_S
    pid = int(holder.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = holder.get("start")
    return start is None or _process_start(pid) in (None, start)


_HELD: dict[Path, FolderLock] = {}  # the folders this process holds, for re-entry from another FolderLock object


class FolderLock:
    """An exclusive hold on `folder` for `what` (e.g. "a training run"). Re-entrant within a process: the training
    script takes the folder, and the trainer it starts takes it again."""

    def __init__(self, folder: str | os.PathLike, what: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._held = 0
        self._stop = threading.Event()
        self._owner: FolderLock | None = None  # the object that holds the file, when this one re-entered

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
                "what": self.what, "renewed": time.time()}

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or damaged: judged by the file's age below

    def _ours(self, holder: dict | None) -> bool:
        return bool(holder) and holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()

    def acquire(self) -> FolderLock:
        if self._held:
            self._held += 1
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.folder.resolve()
        if key in _HELD and _HELD[key] is not self:
            self._owner, self._held = _HELD[key], 1
            self._owner.acquire()
            return self
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._check_holder()
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(self._record(), handle)
            self._held = 1
            _HELD[key] = self
            self._start_heartbeat()
            return self
        raise FolderInUse(f"{self.folder}: could not take its lock file {self.path}; remove it if no run uses it.")

    def _check_holder(self) -> None:
        """Raise if a live run holds the folder; remove a stale lock so the caller can retry."""
        holder = self._read()
        if holder is None:
            return
        if holder == {} and time.time() - self.path.stat().st_mtime < STALE_AFTER_S:
            holder = {"what": "another run", "host": "?", "pid": "?", "renewed": self.path.stat().st_mtime}
        if holder and (self._ours(holder) or _alive(holder)):
            raise FolderInUse(
                f"{self.folder} is in use by {holder.get('what', 'another run')} (host {holder.get('host')}, pid "
                f"{holder.get('pid')}): two runs writing one folder would overwrite each other's files. Wait for it "
                f"to finish, or use another folder (its lock: {self.path})."
            )
        warnings.warn(f"{self.path}: taking over the lock of {holder.get('what', 'a run')} (host "
                      f"{holder.get('host')}, pid {holder.get('pid')}), which is no longer running.", stacklevel=3)
        self.path.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def renew():
            while not self._stop.wait(HEARTBEAT_S):
                holder = self._read()
                if self._ours(holder):
                    self.path.write_text(json.dumps(dict(holder, renewed=time.time())))

        threading.Thread(target=renew, name="disco-folder-lock", daemon=True).start()

    def release(self) -> None:
        if not self._held:
            return
        self._held -= 1
        if self._owner is not None:
            owner, self._owner = self._owner, None
            owner.release()
            return
        if self._held:
            return
        self._stop.set()
        _HELD.pop(self.folder.resolve(), None)
        if self._ours(self._read()):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
