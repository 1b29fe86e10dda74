"""Numbers to text and back, shared by the CLI, the dashboard and the HTML report (one style everywhere).

Formatting: :func:`human`, :func:`count`, :func:`percent`, :func:`percent_range`, :func:`points`,
:func:`seconds`, :func:`size_mb`. The house style: accuracies as percentages with one decimal
(``"84.8%"``, never ``0.848`` or ``"84.81%"`` beside it); differences of accuracies in percentage points
(``"-0.4 pts"`` in a metric's delta, ``"-0.4 points"`` in text); counts with thousands separators
(``"2,000"``); durations with a precision that fits their size (``"26 s"``, never ``"25.9855 s"``).
Parsing: :func:`number_parts` splits ``"3,224,224"``, ``"3x32x32"`` or ``"(0.5, 0.4)"`` into its numbers' texts.
"""

from __future__ import annotations

import re

__all__ = ["count", "human", "number_parts", "percent", "percent_range", "points", "seconds", "size_mb"]


def human(n: float, unit: str = "") -> str:
    """Three significant digits with an SI prefix: ``1234567`` → ``"1.23 M"`` (k, M, G, T).

    Parameters
    ----------
    n : float
    unit : str, optional
        Appended after the prefix (``human(2e9, "FLOPs")`` → ``"2 GFLOPs"``).
    """
    n = float(n)
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g} {prefix}{unit}".rstrip()
    return f"{n:.0f} {unit}".rstrip() if n.is_integer() else f"{n:.3g} {unit}".rstrip()


def size_mb(params: int, bytes_per_param: int = 4) -> float:
    """Model size in MB (10⁶ bytes) at ``bytes_per_param`` bytes a parameter (float32 by default)."""
    return params * bytes_per_param / 1e6


def percent(x: float | None, digits: int = 1, signed: bool = False) -> str:
    """A fraction as a percentage: ``0.9123`` → ``"91.2%"`` (``signed``: ``"+91.2%"``); ``None`` → ``"–"``."""
    if x is None:
        return "–"
    return f"{float(x):{'+' if signed else ''}.{digits}%}"


def percent_range(lo: float, hi: float, digits: int = 1) -> str:
    """An interval of fractions with the unit once: ``(0.8, 0.9)`` → ``"80.0–90.0%"``."""
    return f"{100 * float(lo):.{digits}f}–{percent(hi, digits)}"


def points(delta: float, digits: int = 1, signed: bool = True, unit: str = "points") -> str:
    """A difference of two fractions in percentage points: ``-0.004`` → ``"-0.4 points"`` (``signed``:
    ``+`` on gains too; without it for magnitudes such as an RMS error; ``unit="pts"`` for the short
    form of a metric's delta)."""
    return f"{100 * float(delta):{'+' if signed else ''}.{digits}f} {unit}"


def count(n: int | float) -> str:
    """A count with thousands separators: ``2000`` → ``"2,000"``."""
    return f"{int(round(float(n))):,}"


def seconds(s: float) -> str:
    """A duration with a precision that fits it: ``0.0123`` → ``"12 ms"``, ``3.456`` → ``"3.5 s"``,
    ``25.9855`` → ``"26 s"``, ``754`` → ``"12 min 34 s"``."""
    s = float(s)
    if s < 0.1:
        return f"{1000 * s:.0f} ms"
    if s < 9.95:
        return f"{s:.1f} s"
    if s < 119.5:
        return f"{s:.0f} s"
    m, rest = divmod(int(round(s)), 60)
    return f"{m} min {rest:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


#: What separates the numbers of a size or list typed by a user: commas, ``x``, ``×`` or white space.
_SEPARATORS = re.compile(r"[,x×\s]+")


def number_parts(text: str) -> list[str]:
    """Split a typed list of numbers into the numbers' texts (not converted).

    ``"3,224,224"``, ``"3x224x224"``, ``"3 224 224"`` and ``"(3, 224, 224)"`` all give
    ``["3", "224", "224"]``; empty parts are dropped. The caller converts (``int`` / ``float``) and
    says what it expected.
    """
    return [p for p in _SEPARATORS.split(str(text).strip().strip("()[]")) if p]
