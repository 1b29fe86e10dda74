"""Files on disk that must survive hostile neighbours and concurrent writers.

Small tools used by the dashboard's upload store, the sensitivity disk cache
(:mod:`lrviz.sensitivity`) and the command line's output files (:mod:`lrviz.outputs`):

* :func:`cache_root` — lrviz's cache folder (``$LRVIZ_CACHE_DIR`` or ``~/.cache/lrviz``);
* :func:`private_dir` — a folder only the current user can enter (mode ``0700``), refusing a
  symbolic link or a folder owned by someone else;
* :func:`atomic_write` — write a file under a unique temporary name in the same folder, ``fsync`` it
  and rename it over the target (``os.replace``), so a reader sees the old file or the new one,
  never a torn one;
* :class:`FileLock` — an exclusive ``fcntl.flock`` lock on a lock file, for processes *and* threads
  (every :class:`FileLock` opens its own file description, and ``flock`` locks conflict between
  descriptions even within one process). Where ``fcntl`` is missing (Windows) it only serialises
  the threads of one process.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import LrvizError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["CACHE_ENV", "cache_root", "private_dir", "atomic_write", "FileLock"]

log = logging.getLogger(__name__)

#: Environment variable that moves lrviz's cache folder.
CACHE_ENV = "LRVIZ_CACHE_DIR"

#: Prefix and suffix of the temporary files of :func:`atomic_write` (never a cache file's name).
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def cache_root() -> Path:
    """lrviz's cache folder: ``$LRVIZ_CACHE_DIR`` when set, else ``~/.cache/lrviz`` (not created here)."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path("~/.cache/lrviz").expanduser()


def private_dir(path: str | os.PathLike, fix_mode: bool = True) -> Path:
    """Create ``path`` with mode ``0700``, or check an existing one; return it.

    Parents are created as needed (with the default mode). An existing folder is accepted only when
    it is a real folder (not a symbolic link) owned by the current user; if group or others can
    use it, its mode is reset to ``0700`` (with a logged warning) when ``fix_mode``, else it is
    refused (for a folder the caller chose, whose mode lrviz should not change).

    Raises
    ------
    LrvizError
        When ``path`` is a symbolic link, not a folder, owned by another user, open to other users
        (``fix_mode=False``), or cannot be created.
    """
    p = Path(path).expanduser()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(p, 0o700)
            os.chmod(p, 0o700)  # the umask may have dropped bits; make the mode exact
        except FileExistsError:
            pass
        st = os.lstat(p)
    except OSError as exc:
        raise LrvizError(
            f"cannot create the private folder {p} ({exc.strerror or exc}); set {CACHE_ENV} to a folder you can write"
        ) from exc
    if stat.S_ISLNK(st.st_mode):
        raise LrvizError(
            f"{p} is a symbolic link; lrviz keeps uploads and caches only in a real folder of its own. "
            f"Remove the link (rm {p}) or set {CACHE_ENV} to another folder"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise LrvizError(f"{p} exists but is not a folder; remove it or set {CACHE_ENV} to another folder")
    uid = os.getuid() if hasattr(os, "getuid") else None
    if uid is not None and st.st_uid != uid:
        raise LrvizError(
            f"{p} belongs to user id {st.st_uid}, not to you (user id {uid}); someone else could read or replace "
            f"the files in it. Remove it or set {CACHE_ENV} to a folder of your own"
        )
    if st.st_mode & 0o077 and not fix_mode:
        raise LrvizError(
            f"{p} can be used by other users (mode {stat.S_IMODE(st.st_mode):o}), who could read or replace the files "
            f"in it; make it private (chmod 700 {p}) or choose another folder"
        )
    if st.st_mode & 0o077:
        log.warning("%s was accessible to other users (mode %o); setting it to 0700", p, stat.S_IMODE(st.st_mode))
        try:
            os.chmod(p, 0o700)
        except OSError as exc:
            raise LrvizError(f"{p} is accessible to other users and its mode cannot be changed ({exc}); chmod 700 {p}") from exc
    return p


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], mode: int | None = 0o600) -> Path:
    """Write ``path`` atomically: a unique temporary file in the same folder, ``fsync``, ``os.replace``.

    Parameters
    ----------
    path : path
        Target; its folder must exist.
    data : bytes or callable
        The content, or ``writer(file)`` that writes it to a binary file object.
    mode : int or None
        Permission bits of the new file (default ``0600``: the owner only); None: what any new file
        gets (``0666`` less the umask), for outputs the user asked for.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if mode is None:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only for this fallback)
    os.umask(old)
    return old


class FileLock:
    """Exclusive lock on ``path`` (created ``0600`` when missing) with ``fcntl.flock``.

    Use as a context manager (blocking) or call :meth:`acquire` with ``blocking=False`` /
    ``should_stop`` / ``timeout``. The lock is released when the holder closes it or dies (the
    kernel drops ``flock`` locks of closed descriptions), so a crashed process never leaves it held.
    """

    _fallback = threading.Lock()  # no fcntl: serialise this process's threads only

    def __init__(self, path: str | os.PathLike, poll: float = 0.05):
        self.path = Path(path)
        self.poll = float(poll)
        self._fd: int | None = None
        self._fallback_held = False

    @property
    def held(self) -> bool:
        return self._fd is not None or self._fallback_held

    def acquire(self, blocking: bool = True, should_stop: Callable[[], bool] | None = None, timeout: float | None = None) -> bool:
        """Take the lock; returns False when not blocking and it is busy, or when ``should_stop()``
        returned True or ``timeout`` seconds passed while waiting."""
        if self.held:
            raise LrvizError(f"lock {self.path} is already held by this object")
        if fcntl is None:  # pragma: no cover - Windows
            self._fallback_held = self._fallback.acquire(blocking and should_stop is None and timeout is None)
            return self._fallback_held
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._fd = fd
                    return True
                except BlockingIOError:
                    if not blocking or (should_stop is not None and should_stop()):
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    time.sleep(self.poll)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return False

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        elif self._fallback_held:  # pragma: no cover - Windows
            self._fallback_held = False
            self._fallback.release()

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
