"""A data-free projection of the accuracy of a rank plan (the "energy proxy").

This is a deliberately simple placeholder until a real, data-driven projection lands. It needs only
the spectra that :func:`lrviz.analyze` already computed, costs microseconds, and is what the
dashboard shows live while ranks are moved.

Model
-----
For every decomposable layer ``l`` planned at ranks ``r`` the *retained energy* of a mode is
``e_m = Σ_{i≤r_m} s_i² / Σ_i s_i²`` (the squared singular values kept; 1 at full rank). A layer keeps
``q_l = min_m e_m`` — its worst mode. The projection is

    projected_top1 = chance + (base_top1 − chance) · Π_l q_l ** exponent

with ``chance = 1 / num_classes`` and ``exponent`` = :data:`DEFAULT_EXPONENT` (1). Properties:

* equals ``base_top1`` when every layer is at full rank (all ``q_l = 1``);
* never increases when any rank decreases (every ``e_m`` is non-decreasing in its rank);
* tends to ``chance`` as the ranks go to 1 in many layers.

What it ignores: which layers matter more to the output (depth, residual paths, BatchNorm), the data
distribution, and fine-tuning, which typically recovers much of the drop. Treat it as an ordering
device and a rough scale, and check it against measured evaluations — :func:`fit_exponent` calibrates
the one free parameter from measured points when some exist.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .analysis import ModelAnalysis
from .errors import LrvizError
from .plan import RankPlan
from .spectra import energy_curve

__all__ = ["DEFAULT_EXPONENT", "ProjectionResult", "layer_retention", "project_accuracy", "fit_exponent"]

#: Exponent applied to the product of per-layer retained energies.
DEFAULT_EXPONENT = 1.0

BASIS = "energy proxy"
DESCRIPTION = (
    "data-free energy proxy: chance + (base − chance) · Π_layers q^α, where q is a layer's retained "
    "spectral energy (worst mode) at the planned ranks"
)


@dataclass(frozen=True)
class ProjectionResult:
    """A projected accuracy.

    Attributes
    ----------
    top1 : float
        Projected top-1 accuracy (fraction).
    base_top1 : float
        Accuracy of the uncompressed model the projection starts from.
    chance : float
        ``1 / num_classes``.
    retained : float
        ``Π_l q_l`` (before the exponent), in ``[0, 1]``.
    exponent : float
    per_layer : dict[str, float]
        ``q_l`` of every planned layer.
    basis : str
        What the projection is based on (``"energy proxy"``).
    """

    top1: float
    base_top1: float
    chance: float
    retained: float
    exponent: float
    per_layer: dict[str, float] = field(default_factory=dict, compare=False)
    basis: str = BASIS

    @property
    def drop(self) -> float:
        """Projected loss of accuracy (``base_top1 − top1``)."""
        return self.base_top1 - self.top1

    @property
    def description(self) -> str:
        return DESCRIPTION.replace("α", f"α (α = {self.exponent:.3g})")


def _retained(values: np.ndarray, rank: int) -> float:
    if rank <= 0:
        return 0.0
    e = energy_curve(values)
    return float(e[min(rank, len(e)) - 1])


def layer_retention(analysis: ModelAnalysis, plan: RankPlan) -> dict[str, float]:
    """``q_l`` = the smallest retained energy over a layer's modes, for every planned layer.

    Layers of the plan that have no spectrum (cost-only analyses) count as fully retained.
    """
    out: dict[str, float] = {}
    for lp in plan.layers:
        sp = analysis.spectra.get(lp.name)
        if sp is None:
            out[lp.name] = 1.0
            continue
        modes = sp.modes
        if len(modes) != len(lp.ranks):
            raise LrvizError(f"plan layer {lp.name!r} has {len(lp.ranks)} ranks but its spectrum has modes {modes}")
        q = 1.0
        for mode, r, full in zip(modes, lp.ranks, lp.full_ranks):
            if r >= full:
                continue  # mode not factored: nothing is lost
            q = min(q, _retained(sp.values[mode], int(r)))
        out[lp.name] = q
    return out


def project_accuracy(
    analysis: ModelAnalysis,
    plan: RankPlan,
    base_top1: float,
    num_classes: int,
    exponent: float = DEFAULT_EXPONENT,
) -> ProjectionResult:
    """Project the top-1 accuracy of ``plan`` from the baseline accuracy (see module docstring).

    Parameters
    ----------
    analysis : ModelAnalysis
        With spectra (layers without a spectrum count as fully retained).
    plan : RankPlan
    base_top1 : float
        Measured (or assumed) accuracy of the original model, a fraction in ``[0, 1]``.
    num_classes : int
        For the chance level ``1 / num_classes``.
    exponent : float
        ``α ≥ 0``; larger = more pessimistic.

    Returns
    -------
    ProjectionResult
    """
    if not 0.0 <= float(base_top1) <= 1.0:
        raise LrvizError(f"base_top1 must be a fraction in [0, 1]; got {base_top1}")
    if int(num_classes) < 1:
        raise LrvizError(f"num_classes must be positive; got {num_classes}")
    if not (exponent >= 0 and math.isfinite(exponent)):
        raise LrvizError(f"exponent must be a finite number ≥ 0; got {exponent}")
    chance = 1.0 / int(num_classes)
    per_layer = layer_retention(analysis, plan)
    retained = float(np.prod(list(per_layer.values()))) if per_layer else 1.0
    base = float(base_top1)
    top1 = chance + (base - chance) * retained ** float(exponent)
    if base < chance:  # a model below chance: the proxy cannot say anything useful, keep the base
        top1 = base
    return ProjectionResult(
        top1=float(top1),
        base_top1=base,
        chance=chance,
        retained=retained,
        exponent=float(exponent),
        per_layer=per_layer,
    )


def fit_exponent(
    points: Iterable[tuple[float, float]],
    base_top1: float,
    num_classes: int,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float | None:
    """Least-squares exponent α from measured points ``(retained, measured_top1)``.

    Fits ``log((top1 − chance)/(base − chance)) = α · log(retained)`` through the origin, using only
    points where both logs are defined (retained in (0, 1), measured accuracy above chance and below
    the base). Returns None when no point is usable; the result is clipped to ``bounds``.
    """
    chance = 1.0 / int(num_classes)
    span = float(base_top1) - chance
    if span <= 0:
        return None
    xs, ys = [], []
    for retained, top1 in points:
        if not (0.0 < retained < 1.0):
            continue
        rel = (float(top1) - chance) / span
        if not (0.0 < rel < 1.0):
            continue
        xs.append(math.log(retained))
        ys.append(math.log(rel))
    if not xs:
        return None
    x, y = np.asarray(xs), np.asarray(ys)
    alpha = float((x * y).sum() / (x * x).sum())
    return float(min(max(alpha, bounds[0]), bounds[1]))


def measured_pairs(measured: Iterable[Mapping]) -> list[tuple[float, float]]:
    """``(retained, top1)`` pairs from dicts with those keys (helper for :func:`fit_exponent`)."""
    return [(float(m["retained"]), float(m["top1"])) for m in measured if "retained" in m and "top1" in m]


def retention_curve(analysis: ModelAnalysis, fractions: Iterable[float] | None = None):
    """Params ratio and retained product ``Π q_l`` of the ``energy:F`` plans for a range of F.

    Data-free and independent of the baseline accuracy, so it can be cached per model; turn it into
    accuracies with :func:`curve_top1`. Returns a DataFrame ``fraction, params_ratio, retained``.
    """
    import pandas as pd

    from .plan import make_plan, plan_cost

    if not analysis.has_spectra or not analysis.layers:
        return pd.DataFrame(columns=["fraction", "params_ratio", "retained"])
    if fractions is None:
        fractions = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0]
    rows = []
    for f in fractions:
        plan = make_plan(analysis, f"energy:{f:g}")
        q = layer_retention(analysis, plan)
        rows.append({"fraction": f, "params_ratio": plan_cost(analysis, plan).params_ratio, "retained": float(np.prod(list(q.values())))})
    return pd.DataFrame(rows).sort_values("params_ratio")


def curve_top1(curve, base_top1: float, num_classes: int, exponent: float = DEFAULT_EXPONENT):
    """Add a ``top1`` column (the projection) to a :func:`retention_curve` frame (returns a copy)."""
    chance = 1.0 / int(num_classes)
    out = curve.copy()
    out["top1"] = chance + (float(base_top1) - chance) * out["retained"].astype(float) ** float(exponent)
    return out
