"""Error type for bad user input, and the two helpers the checks that raise it share.

Every error that a user can cause (wrong file, wrong architecture, impossible rank, unsupported layer)
is raised as :class:`LrvizError`, a ``ValueError``, with a message that says what was given, what is
allowed and how to fix it. The CLI turns it into one line on stderr and exit code 2.

* :func:`short_cause` — an underlying exception in one line, for the "(...)" part of a message;
* :func:`is_int` — what counts as an integer argument (Python and numpy integers, not ``bool``).
"""

from __future__ import annotations

import urllib.error
from typing import Any


__all__ = ["LrvizError", "is_int", "short_cause"]


class LrvizError(ValueError):
    """Bad user input; the message is meant for the user."""


def short_cause(exc: BaseException, limit: int = 200) -> str:
    """``"TypeName: first line of the message"``, at most ``limit`` characters.

    For a failed download (:class:`urllib.error.URLError`) the message is its ``reason`` (the socket
    error), not the ``<urlopen error ...>`` wrapper. An exception without a message gives its type name.
    """
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib.error.URLError) else None
    lines = str(reason or exc).strip().splitlines()
    if not lines or not lines[0].strip():
        return type(exc).__name__[:limit]
    if lines[0].startswith("Weights only load failed"):  # torch's first line is advice; the refused object is further down
        why = next((l.strip() for l in lines if "Unsupported" in l or "GLOBAL" in l), None)
        if why:
            return f"refused by weights_only: {why}"[:limit]
    return f"{type(exc).__name__}: {lines[0]}"[:limit]


def is_int(value: Any) -> bool:
    """True for Python / numpy integers, False for ``bool`` and everything else."""
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
