"""Number formatting shared by the CLI, the dashboard and the HTML report (one style everywhere)."""

from __future__ import annotations

__all__ = ["human", "size_mb"]


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
