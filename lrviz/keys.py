"""Short, stable identities for cache and session keys (hashes of text and of a plan's ranks)."""

from __future__ import annotations

import hashlib

from .plan import RankPlan

__all__ = ["digest", "plan_key", "short_id"]


def digest(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def short_id(text: str, n: int = 10) -> str:
    """A short, stable hash of ``text`` (for widget and session-state keys)."""
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def _method(lp) -> str:
    """``"cp:"`` / ``"spatial:"`` before the ranks of a layer another decomposition (none for the layer's own,
    so keys of plans without methods are unchanged)."""
    m = getattr(lp, "method", "")
    return f"{m}:" if m else ""


def plan_key(plan: RankPlan) -> str:
    """Identity of a plan's ranks (not its spec or label): two plans with the same ranks share it."""
    text = ";".join(f"{lp.name}={_method(lp)}{','.join(map(str, lp.ranks))}" for lp in plan.layers)
    return short_id(text, 16)
