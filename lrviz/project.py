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
from collections.abc import Iterable, Mapping, Sequence
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


# ==================================================================================================
# Projection from measured layer sensitivities
# ==================================================================================================

SENS_BASIS = "sensitivities"

#: Relative model error assumed before any measured point has been seen: the band is
#: ±(this × projected drop), combined with the sampling error of the calibration set.
DEFAULT_REL_ERROR = 0.3

Z95 = 1.959963984540054


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


@dataclass(frozen=True)
class Projection:
    """A projected accuracy with its uncertainty band.

    Attributes
    ----------
    top1 : float
        Projected top-1 (fraction) on the evaluation data (see ``base_top1``).
    interval : (float, float)
        ~95 % band: sampling error of the calibration set plus the model error (fitted to measured
        points when there are at least two, else :data:`DEFAULT_REL_ERROR` × drop).
    loss : float or None
        Projected mean cross-entropy on the calibration set (sensitivity basis only).
    base_top1 : float
        Accuracy of the uncompressed model the projection is anchored to.
    basis : str
        ``"sensitivities"`` or ``"energy proxy"``.
    detail : str
        One line saying what the number is based on.
    """

    top1: float
    interval: tuple[float, float]
    base_top1: float
    basis: str
    detail: str = ""
    loss: float | None = None
    calib_top1: float | None = None

    @property
    def drop(self) -> float:
        return self.base_top1 - self.top1

    def to_dict(self) -> dict:
        return {"projected_top1": self.top1, "interval": [self.interval[0], self.interval[1]], "base_top1": self.base_top1,
                "basis": self.basis, "detail": self.detail, "projected_loss": self.loss}


class SensitivityProjector:
    """Project any rank plan from per-mode sensitivity curves (:class:`lrviz.sensitivity.Sensitivities`).

    Model: every sample's logits are the original's plus the *sum* over truncated modes of the logit
    change that mode caused on its own (linearly interpolated between measured ranks), scaled by a
    gain ``γ``::

        z_i(plan) = z_i⁰ + γ · Σ_{layer l, mode m} Δz_i[l, m, r_{l,m}]

    — first-order additivity of small perturbations, in logit space, per sample, so interactions
    between layers that hurt *different* samples are kept. Accuracy is the fraction of samples whose
    projected logits still rank the true class first; the loss is their cross-entropy. ``γ = 1``
    until measured points exist; :meth:`calibrate` fits ``γ`` (perturbations of many layers compound,
    so γ > 1 is typical at high compression) and the model error of the band.

    When the projection is asked for another evaluation set than the calibration set (a different
    ``base_top1``), the change is carried over in log-odds: ``logit(p) = logit(base) +
    logit(p_cal) − logit(base_cal)``.
    """

    def __init__(self, sens, gain: float = 1.0, rel_error: float | None = None, abs_error: float = 0.0, n_fit: int = 0):
        self.sens = sens
        self.gain = float(gain)
        self.rel_error = rel_error
        self.abs_error = float(abs_error)
        self.n_fit = int(n_fit)
        self._memo: dict[tuple[str, int, int], np.ndarray] = {}

    # --- core ------------------------------------------------------------------------------------
    def _delta(self, name: str, mode: int, rank: int) -> np.ndarray | None:
        c = self.sens.curve(name, mode)
        if c is None or rank >= c.full:
            return None
        key = (name, mode, int(rank))
        d = self._memo.get(key)
        if d is None:
            d = c.delta_at(rank)
            if len(self._memo) > 4096:
                self._memo.clear()
            self._memo[key] = d
        return d

    def total_delta(self, plan: RankPlan) -> np.ndarray:
        """``Σ Δz`` over the plan's truncated modes (N × M)."""
        total = np.zeros_like(self.sens.base_logits)
        for lp in plan.layers:
            for m, (r, full) in enumerate(zip(lp.ranks, lp.full_ranks)):
                if r < full:
                    d = self._delta(lp.name, m, int(r))
                    if d is not None:
                        total += d
        return total

    def missing(self, plan: RankPlan) -> list[str]:
        """Planned (truncated) layers the sensitivities do not cover."""
        out = []
        for lp in plan.layers:
            for m, (r, full) in enumerate(zip(lp.ranks, lp.full_ranks)):
                if r < full and self.sens.curve(lp.name, m) is None and full > 1:
                    out.append(lp.name)
                    break
        return out

    def logits(self, plan: RankPlan, gain: float | None = None) -> np.ndarray:
        g = self.gain if gain is None else float(gain)
        return self.sens.base_logits + g * self.total_delta(plan)

    def calib_top1(self, plan: RankPlan, gain: float | None = None) -> float:
        """Projected accuracy on the calibration set itself."""
        return self.sens.top1_of(self.logits(plan, gain))

    def calib_loss(self, plan: RankPlan, gain: float | None = None) -> float:
        return self.sens.loss_of(self.logits(plan, gain))

    def _transfer(self, p_cal: float, base_top1: float | None) -> float:
        b_cal = self.sens.base_top1
        if base_top1 is None or abs(float(base_top1) - b_cal) < 1e-12:
            return p_cal
        if p_cal >= b_cal:
            return float(base_top1) + (p_cal - b_cal)  # no drop: keep it additive (tiny)
        return _sigmoid(_logit(base_top1) + _logit(p_cal) - _logit(b_cal))

    def project(self, plan: RankPlan, base_top1: float | None = None) -> Projection:
        """Projected top-1 of ``plan`` (anchored to ``base_top1`` when given, else to the calibration set)."""
        missing = self.missing(plan)
        if missing:
            raise LrvizError(f"no sensitivity measured for planned layer(s) {missing[:5]}; measure them first")
        z = self.logits(plan)
        p_cal = self.sens.top1_of(z)
        loss = self.sens.loss_of(z)
        base = self.sens.base_top1 if base_top1 is None else float(base_top1)
        top1 = min(max(self._transfer(p_cal, base_top1), 0.0), 1.0)
        drop = max(base - top1, 0.0)
        n = self.sens.n
        sampling = math.sqrt(max(top1 * (1 - top1), 1.0 / n) / n)
        rel = DEFAULT_REL_ERROR if self.rel_error is None else self.rel_error
        model_err = math.hypot(rel * drop, self.abs_error)
        half = Z95 * math.hypot(sampling, model_err)
        lo, hi = max(top1 - half, 0.0), min(top1 + half, 1.0)
        fit = f"γ = {self.gain:.2f} fitted to {self.n_fit} measured plan(s)" if self.n_fit else "γ = 1 (not yet calibrated by a measurement)"
        detail = (f"additive per-sample logit changes of single-layer truncations, measured on {n} calibration images; {fit}")
        return Projection(top1, (lo, hi), base, SENS_BASIS, detail, loss, p_cal)

    # --- calibration ---------------------------------------------------------------------------
    @classmethod
    def from_sensitivities(cls, sens) -> "SensitivityProjector":
        """A projector whose gain is fitted to the anchor plans measured with the sensitivities (if any)."""
        p = cls(sens)
        pts = p.anchor_points()
        return p.calibrate(pts) if pts else p

    def anchor_points(self) -> list[tuple[RankPlan, float, None]]:
        """The sensitivities' joint anchor truncations as ``(plan, top1, None)`` (calibration-set points)."""
        out = []
        for a in getattr(self.sens, "anchors", None) or []:
            out.append((_ranks_plan(a["ranks"], a["full"]), float(a["top1"]), None))
        return out

    def calibrate(self, measured: Iterable[tuple], base_top1: float | None = None,
                  bounds: tuple[float, float] = (0.05, 4.0)) -> "SensitivityProjector":
        """A new projector with ``γ`` fitted to measured points.

        ``measured``: ``(plan, top1)`` pairs measured on data whose original accuracy is ``base_top1``
        (None = the calibration set itself), or ``(plan, top1, base)`` triples giving it per point.
        ``γ`` minimises the squared error of the projected accuracy (a bounded 1-D search); the band's
        model error becomes the RMS residual (absolute, and as a fraction of the drop) once there are
        at least two points. Plans at full rank carry no information and are ignored. Returns ``self``
        unchanged when nothing is usable.
        """
        pts = []
        for item in measured:
            plan, top1 = item[0], item[1]
            b = item[2] if len(item) > 2 else base_top1
            if self.missing(plan):
                continue
            d = self.total_delta(plan)
            if not np.any(d):
                continue
            pts.append((d, float(top1), b))
        if not pts:
            return self
        base = self.sens.base_logits

        def err(g):
            return sum((self._transfer(self.sens.top1_of(base + g * d), b) - t) ** 2 for d, t, b in pts)

        grid = np.exp(np.linspace(math.log(bounds[0]), math.log(bounds[1]), 41))
        errs = [err(g) for g in grid]
        j = int(np.argmin(errs))
        lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
        for _ in range(12):  # golden-section refinement in the bracket
            a = hi - (hi - lo) / 1.618033988749895
            b = lo + (hi - lo) / 1.618033988749895
            if err(a) < err(b):
                hi = b
            else:
                lo = a
        g = float(0.5 * (lo + hi))
        if err(g) > errs[j]:
            g = float(grid[j])
        new = SensitivityProjector(self.sens, g, self.rel_error, self.abs_error, len(pts))
        if len(pts) >= 2:
            rel, ab = [], []
            for d, t, b in pts:
                p = new._transfer(self.sens.top1_of(base + g * d), b)
                b_eval = self.sens.base_top1 if b is None else float(b)
                drop = max(b_eval - p, 1e-3)
                rel.append(((p - t) / drop) ** 2)
                ab.append((p - t) ** 2)
            new.rel_error = float(math.sqrt(np.mean(rel)))
            new.abs_error = float(min(math.sqrt(np.mean(ab)), 0.05))
        return new


def _ranks_plan(ranks: Mapping[str, Sequence[int]], full: Mapping[str, Sequence[int]]) -> RankPlan:
    """A minimal plan from ranks and full ranks (anchors; the projector reads only names and ranks)."""
    layers = tuple(_FreeLayer(n, tuple(int(v) for v in r), tuple(int(v) for v in full[n])) for n, r in ranks.items())
    return RankPlan(layers, spec="anchor")


@dataclass(frozen=True)
class _FreeLayer:
    """Duck-typed :class:`lrviz.plan.LayerPlan` with explicit full ranks."""

    name: str
    ranks: tuple
    full_ranks: tuple

    @property
    def is_dense(self) -> bool:
        return self.ranks == self.full_ranks
