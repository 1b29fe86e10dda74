"""Where the command line writes: output paths checked before any work, files written atomically.

* :func:`check_file_target` / :func:`check_dir_target` — before a command loads anything: the path is
  not a folder (or a file) in the way, its folder exists or can be created, and a file can be created
  there (a probe file is made and removed, so permissions, read-only and pseudo file systems show).
* :func:`write_file` — one file, through :func:`lrviz.storage.atomic_write` (temporary file, ``fsync``,
  rename); missing parent folders are created, and removed again when the write fails.
* :func:`write_dir` — several files into a folder as one step: a new folder is filled under a
  temporary name and renamed; into an existing one the files are moved in one by one.

A failure leaves nothing half-written and an existing file as it was; an ``OSError`` becomes one
:class:`~lrviz.errors.LrvizError` line naming the option, the path and the cause.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import LrvizError
from .storage import atomic_write

__all__ = ["check_dir_target", "check_file_target", "write_dir", "write_file"]


def _existing_ancestor(path: Path, flag: str) -> Path:
    """The nearest folder above ``path`` that exists; an error when a file is in the way."""
    anc = path.parent
    while not (anc.exists() or anc.is_symlink()):
        if anc == anc.parent:
            break
        anc = anc.parent
    if not anc.is_dir():
        raise LrvizError(f"cannot write {flag} {path}: {anc} is a file, not a folder; give a path in a folder")
    return anc


def _probe(folder: Path, flag: str, path: Path) -> None:
    """Check that files can be created in ``folder`` (by creating and removing one: permissions,
    read-only file systems and pseudo file systems like /proc all show)."""
    probe = folder / f".lrviz-probe-{uuid.uuid4().hex[:12]}"
    try:
        probe.open("x").close()
        probe.unlink()
    except OSError as e:
        raise LrvizError(f"cannot write {flag} {path}: folder {folder} is not writable ({e.strerror or e}); "
                         "choose another path") from None


def check_file_target(path, flag: str) -> Path:
    """``path`` can be written as a file (an existing file is replaced at the end, atomically)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise LrvizError(f"{flag} {path} is a folder; give a file path such as {p / 'out.json'}")
    if p.exists() and not p.is_file():
        raise LrvizError(f"{flag} {path} exists and is not a regular file; give another path")
    _probe(p.parent if p.parent.is_dir() else _existing_ancestor(p, flag), flag, p)
    return p


def check_dir_target(path, flag: str, force: bool | None, owned: tuple[str, ...] = ()) -> Path:
    """``path`` can be made the output folder. ``force=None``: an existing folder is fine (train);
    ``False``: it must be empty; ``True``: lrviz's files in it (``owned``, named in the message) are
    replaced."""
    p = Path(path).expanduser()
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise LrvizError(f"{flag} {path} exists and is not a folder; give a new or empty folder "
                             "(it is created), or remove the file")
        if force is False:
            held = sorted(x.name for x in p.iterdir())
            if held:
                shown = ", ".join(held[:5]) + (f", ... ({len(held)} entries)" if len(held) > 5 else "")
                raise LrvizError(f"{flag} {path} already exists and is not empty ({shown}); give a new folder, or "
                                 f"pass --force to replace lrviz's files in it ({', '.join(owned)}; "
                                 "nothing else is touched)")
        _probe(p, flag, p)
    else:
        _probe(_existing_ancestor(p, flag), flag, p)
    return p


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the ones created (outermost first)."""
    missing = []
    f = folder
    while not f.exists():
        missing.append(f)
        if f == f.parent:
            break
        f = f.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _remove_created(created: list[Path]) -> None:
    for f in reversed(created):
        try:
            f.rmdir()
        except OSError:
            break


def write_file(path, data: bytes | Callable[[BinaryIO], None], flag: str = "--json") -> None:
    """Write ``path`` atomically: ``data`` (bytes, or ``writer(file)``) goes into a temporary file next
    to it, which then replaces ``path`` (with the umask's permissions, like any new file). On failure
    nothing is left behind (an existing ``path`` is untouched)."""
    p = Path(path).expanduser()
    created: list[Path] = []
    try:
        created = _make_parents(p.parent)
        atomic_write(p, data, mode=None)
    except BaseException as e:
        _remove_created(created)
        if isinstance(e, OSError):
            raise LrvizError(f"cannot write {flag} {path}: {e.strerror or e}; nothing was written") from e
        raise


def write_dir(out: Path, files: dict, flag: str = "--out") -> None:
    """Write ``files`` (name -> ``write(path)``) into the folder ``out`` atomically.

    A new folder is filled under a temporary name next to ``out`` and renamed; into an existing
    (empty, or with ``--force``) folder the files are written in a temporary sub-folder and moved in
    one by one (each rename is atomic; other files in ``out`` are not touched). On failure the
    temporary folder is removed: nothing half-written remains.
    """
    created: list[Path] = []
    exists = out.is_dir()
    tmp = (out / f".lrviz-{uuid.uuid4().hex[:12]}.tmp") if exists else out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        if not exists:
            created = _make_parents(out.parent)
        tmp.mkdir()
        for name, write in files.items():
            write(tmp / name)
        if exists:
            for name in files:
                os.replace(tmp / name, out / name)
            tmp.rmdir()
        else:
            os.rename(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        if isinstance(e, OSError):
            raise LrvizError(f"cannot write {flag} {out}: {e.strerror or e}; nothing was written") from e
        raise
