"""The dashboard's upload store: uploaded files kept in a private folder, content-addressed, capped.

A file is stored as ``<folder>/<sha256><suffix>`` (folder ``0700``, file ``0600``, written
atomically), reused only when its content still hashes to its name, and the least recently used
files are deleted above a byte cap (``$LRVIZ_UPLOAD_CAP_BYTES``, default 4 GiB). Nothing here loads
a file: :func:`lrviz.sources.load_source` does that, without unpickling anything.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import LrvizError
from .keys import digest
from .storage import TEMP_PREFIX, TEMP_SUFFIX, FileLock, atomic_write, cache_root, private_dir

__all__ = ["MAX_UPLOAD_BYTES", "UPLOAD_CAP_ENV", "prune_uploads", "store_upload", "upload_cap", "upload_dir"]

log = logging.getLogger(__name__)

#: Largest upload accepted (bytes).
MAX_UPLOAD_BYTES = 1 << 30
#: Uploads live in ``<cache>/uploads`` (see :func:`upload_dir`).
UPLOAD_SUBDIR = "uploads"
#: Environment variable with the byte cap of the upload folder (least recently used files go first).
UPLOAD_CAP_ENV = "LRVIZ_UPLOAD_CAP_BYTES"
DEFAULT_UPLOAD_CAP_BYTES = 4 << 30
#: Temporary files of interrupted writes older than this are removed by :func:`prune_uploads`.
STALE_TEMP_SECONDS = 3600.0
UPLOAD_LOCK = ".lock"
_STORED_NAME = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]{1,8}$")


def upload_dir() -> Path:
    """This user's private upload folder: ``<cache>/uploads`` (see :func:`lrviz.storage.cache_root`).

    Created with mode ``0700``; an existing folder that is a symbolic link or belongs to another user
    is refused, one that others can read has its mode reset (:func:`lrviz.storage.private_dir`).

    Raises
    ------
    LrvizError
        When the folder cannot be used safely (the message says how to fix it).
    """
    return private_dir(cache_root() / UPLOAD_SUBDIR)


def upload_cap() -> int:
    """Most bytes the upload folder keeps (``$LRVIZ_UPLOAD_CAP_BYTES``, default 4 GiB)."""
    text = os.environ.get(UPLOAD_CAP_ENV, "").strip()
    if not text:
        return DEFAULT_UPLOAD_CAP_BYTES
    try:
        cap = int(text)
    except ValueError:
        cap = -1
    if cap < 1:
        raise LrvizError(
            f"{UPLOAD_CAP_ENV}={text!r} is not a positive number of bytes; set it to e.g. {DEFAULT_UPLOAD_CAP_BYTES} "
            f"({DEFAULT_UPLOAD_CAP_BYTES / 2**30:.0f} GiB) or unset it"
        )
    return cap


def _file_sha256(path: Path) -> str | None:
    """SHA-256 of a regular file (not following a symbolic link), or None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stored_copy_is_intact(path: Path, sha: str, size: int) -> bool:
    """Whether ``path`` is a regular file with exactly the content of hash ``sha`` (``size`` bytes).

    A symbolic link or other non-file at ``path`` is removed (it is replaced by a real file).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISLNK(st.st_mode):
            os.unlink(path)
        return False
    if st.st_size != size or _file_sha256(path) != sha:
        log.warning("stored upload %s does not match its content hash; rewriting it", path.name)
        return False
    if stat.S_IMODE(st.st_mode) != 0o600:
        os.chmod(path, 0o600)
    return True


def _stored_uploads(folder: Path) -> list[tuple[float, str, int, Path]]:
    """``(mtime, name, size, path)`` of the stored uploads in ``folder`` (regular files named
    ``<sha256><suffix>``); stale temporary files of interrupted writes are removed on the way."""
    out = []
    now = time.time()
    with os.scandir(folder) as it:
        for e in it:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if _STORED_NAME.match(e.name):
                out.append((st.st_mtime, e.name, st.st_size, Path(e.path)))
            elif e.name.startswith(TEMP_PREFIX) and e.name.endswith(TEMP_SUFFIX) and now - st.st_mtime > STALE_TEMP_SECONDS:
                _unlink_quietly(Path(e.path))
    return out


def _unlink_quietly(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def prune_uploads(folder: str | Path | None = None, cap: int | None = None, keep: Sequence[str | Path] = ()) -> list[Path]:
    """Delete the least recently used stored uploads until they take at most ``cap`` bytes.

    Parameters
    ----------
    folder : path, optional
        Default :func:`upload_dir`. Only files named ``<sha256><suffix>`` are counted or removed.
    cap : int, optional
        Default :func:`upload_cap`.
    keep : paths
        Never removed (the file just stored).

    Returns
    -------
    list of Path
        The removed files, oldest (smallest modification time) first.
    """
    folder = private_dir(folder, fix_mode=False) if folder is not None else upload_dir()
    cap = upload_cap() if cap is None else int(cap)
    kept = {Path(k).name for k in keep}
    files = sorted(_stored_uploads(folder))
    total = sum(size for _, _, size, _ in files)
    removed = []
    for _, name, size, path in files:
        if total <= cap:
            break
        if name in kept:
            continue
        if _unlink_quietly(path):
            removed.append(path)
        total -= size
    if removed:
        log.info("upload folder over %d bytes: removed %d least recently used file(s)", cap, len(removed))
    return removed


def store_upload(data: bytes, filename: str, suffixes: Sequence[str], directory: str | Path | None = None,
                 cap: int | None = None) -> tuple[Path, str]:
    """Keep uploaded bytes as ``<directory>/<sha256><suffix>`` and return ``(path, sha256)``.

    The folder is private (:func:`upload_dir`, or ``directory`` checked the same way); the file is
    written with mode ``0600`` atomically (temporary file + ``os.replace``). A stored copy is reused
    only when its content still hashes to ``sha256`` (its modification time is then refreshed);
    anything else at that name (a truncated or tampered file, a link) is replaced. Afterwards the
    least recently used uploads are deleted until the folder holds at most ``cap`` bytes
    (:func:`prune_uploads`). Store and clean-up run under a lock on the folder (threads and
    processes).

    The file is never loaded here; that is :func:`lrviz.sources.load_source`'s job (``torch.load(weights_only=True)``
    or the checked ``.pt2`` loader — nothing is unpickled).

    Parameters
    ----------
    data : bytes
    filename : str
        The user's file name (only its suffix is used, checked against ``suffixes``).
    suffixes : sequence of str
        Allowed suffixes, lower case with the dot (``(".pt", ".pth")``).
    directory : path, optional
        Default :func:`upload_dir`. A folder given here is created ``0700`` when missing and must be
        private when it exists (it is refused, not changed, when other users can enter it).
    cap : int, optional
        Byte cap of the folder (default :func:`upload_cap`).

    Raises
    ------
    LrvizError
        For an empty or too large upload, a file name with another suffix, or a folder that is not
        safe to use.
    """
    name = str(filename or "upload")
    suffix = Path(name).suffix.lower()
    if suffix not in suffixes:
        raise LrvizError(f"{name!r} has the wrong file type: expected {' / '.join(suffixes)}")
    if not data:
        raise LrvizError(f"{name!r} is empty (0 bytes)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise LrvizError(f"{name!r} is {len(data) / 2**20:.0f} MiB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MiB")
    cap = upload_cap() if cap is None else int(cap)
    if len(data) > cap:
        raise LrvizError(
            f"{name!r} is {len(data) / 2**20:.1f} MiB but the upload folder keeps at most {cap / 2**20:.1f} MiB; "
            f"raise {UPLOAD_CAP_ENV} (bytes) to store it"
        )
    sha = digest(data)
    folder = private_dir(directory, fix_mode=False) if directory is not None else upload_dir()
    path = folder / f"{sha}{suffix}"
    with FileLock(folder / UPLOAD_LOCK):
        if _stored_copy_is_intact(path, sha, len(data)):
            os.utime(path)  # most recently used: pruned last
        else:
            atomic_write(path, data, mode=0o600)
        prune_uploads(folder, cap, keep=[path])
    return path, sha

