"""Files a run folder or a feature store shares with other processes: one writer lock, atomic writes.

``FolderLock`` is an advisory lock (``fcntl.flock``) on ``FOLDER/.dde-bench.lock``. The lock file holds who took
it (pid, host, start time, command), so a second writer is told who holds the folder. The kernel drops a flock
when its process dies, however it dies (kill -9 included): a lock file left behind by a killed process is
therefore not locked, and the next writer takes it over, with a warning naming the process that left it.
Releasing unlinks the file while still holding the lock; a taker checks that the file it locked is still the
one at the path, so two processes never both believe they hold the folder.

Temporary files get names of their own (``NAME.<pid>-<random>.tmp``) and are renamed into place with
``os.replace``, so two processes never write the same temporary file and a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import secrets
import shutil
import socket
import sys
import time
import warnings
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dde_bench.errors import UserError

__all__ = [
    "LOCK_FILE",
    "FolderLock",
    "LockHolder",
    "atomic_folder",
    "atomic_write_text",
    "read_json",
    "temp_path",
]

LOCK_FILE = ".dde-bench.lock"
_BUSY_RETRIES = 3  # a concurrent probe holds the lock for microseconds: look again before calling it busy


def temp_path(path: Path) -> Path:
    """A temporary name beside ``path`` that no other process or call uses: ``NAME.<pid>-<random>.tmp``."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file of its own, fsync it, then rename it over ``path``."""
    tmp = temp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_folder(final: Path, build, done: str) -> Path:
    """``final``, built by ``build(tmp)`` in a temporary folder of its own beside it and renamed into place, unless
    ``final/done`` already exists. An interrupted build never looks finished; when two processes race, the first
    rename wins and the other's work is dropped."""
    final = Path(final)
    if (final / done).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    tmp.mkdir()
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first
            if not (final / done).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_json(path: Path, what: str = "JSON file", object_only: bool = True) -> Any:
    """The JSON value of ``path``; unreadable, not UTF-8, malformed or (with ``object_only``) not a JSON
    object is a UserError naming the file (and the line of a syntax error)."""
    try:
        data = path.read_bytes()
        value = json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: malformed {what} (JSON: {e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text ({e.reason}, byte 0x{data[e.start]:02x}): a malformed {what}"
        ) from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what}: {e.strerror}") from None
    if object_only and not isinstance(value, dict):
        raise UserError(f"{path}: malformed {what} (expected a JSON object, got a {type(value).__name__})")
    return value


@dataclass(frozen=True)
class LockHolder:
    """Who took a folder lock, as written in the lock file."""

    pid: int | None
    host: str
    started: str
    command: str

    def describe(self) -> str:
        pid = self.pid if self.pid is not None else "?"
        return f"pid {pid} on {self.host or '?'}, since {self.started or '?'}: {self.command or '?'}"

    @classmethod
    def parse(cls, data: bytes) -> LockHolder | None:
        """The holder recorded in a lock file's bytes; None for an empty file, '?' fields for garbage."""
        if not data.strip():
            return None
        try:
            d = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            d = {}
        if not isinstance(d, dict):
            d = {}
        pid = d.get("pid")
        return cls(
            pid=pid if isinstance(pid, int) else None,
            host=str(d.get("host", "")),
            started=str(d.get("started", "")),
            command=str(d.get("command", "")),
        )


def _me() -> LockHolder:
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    return LockHolder(
        pid=os.getpid(),
        host=socket.gethostname(),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        command=command[:300],
    )


def _read_fd(fd: int) -> bytes:
    return os.pread(fd, 1 << 16, 0)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _release(fd: int, path: Path) -> None:
    """Unlink the lock file while holding it, then close (which drops the flock)."""
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            path.unlink()
    except OSError:
        pass
    _close_quietly(fd)


class FolderLock:
    """An exclusive lock on ``folder`` for one writer (a run folder, a feature store being built).

    ``acquire()`` raises ``UserError`` naming the folder and the holder when another live process holds it,
    and warns when it takes over a lock file left by a process that died. ``release()`` (also run when the
    object is collected and at interpreter exit) removes the lock file.
    """

    def __init__(self, folder: str | Path, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._fd: int | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _busy(self, holder: LockHolder | None) -> UserError:
        who = holder.describe() if holder else "a process that has not written its name yet"
        return UserError(
            f"{self.folder}: this {self.what} is in use by another dde-bench process ({who}); "
            "wait for it to finish, or write to another folder"
        )

    def acquire(self) -> LockHolder | None:
        """Take the lock; returns the holder of a stale lock file taken over (None if there was none)."""
        if self._fd is not None:
            return None
        me = _me()
        for attempt in range(10 * _BUSY_RETRIES):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise UserError(f"{self.path}: cannot create the lock file: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = LockHolder.parse(_read_fd(fd))
                _close_quietly(fd)
                if attempt + 1 >= _BUSY_RETRIES:
                    raise self._busy(holder) from None
                if holder is not None and holder.pid == os.getpid() and attempt == 0:
                    gc.collect()  # held by this process: maybe by an unreachable writer not yet collected
                else:
                    time.sleep(0.05)
                continue
            try:  # the holder may have released (unlinked) it between our open and our flock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                _close_quietly(fd)
                continue
            stale = LockHolder.parse(_read_fd(fd))
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me.__dict__) + "\n").encode(), 0)
            os.fsync(fd)
            self._fd = fd
            self._finalizer = weakref.finalize(self, _release, fd, self.path)
            if stale is not None:
                warnings.warn(
                    f"{self.folder}: took over the lock left by {stale.describe()} (that process no longer "
                    "holds it: it was killed or crashed)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return stale
        raise UserError(f"{self.path}: could not take the lock (the file keeps being replaced)")

    def release(self) -> None:
        """Remove the lock file and drop the lock (nothing if not held)."""
        if self._finalizer is not None:
            self._finalizer()  # runs _release once
        self._fd = None
        self._finalizer = None

    def check_free(self) -> None:
        """Raise ``UserError`` if another live process holds the lock; takes nothing and writes nothing."""
        if self._fd is not None or not self.path.is_file():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # released meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = LockHolder.parse(_read_fd(fd))
            _close_quietly(fd)
            raise self._busy(holder) from None
        _close_quietly(fd)  # closing drops the shared lock

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
