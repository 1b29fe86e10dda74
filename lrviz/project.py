"""Accuracy projection of a rank plan, without building or evaluating the planned model.

Two bases, one result type (:class:`Projection`):

* **Layer sensitivities** (:class:`SensitivityProjector`, basis ``"sensitivities"``): the measured
  per-sample logit changes of single-layer, single-mode truncations (:mod:`lrviz.sensitivity`) are
  added up, ``z = z₀ + γ·Σ Δz[layer, mode, rank]``, and the projected top-1 is the share of samples
  whose true class still ranks first. ``γ`` is fitted to the anchor plans measured with the
  sensitivities and to every quick evaluation (:meth:`SensitivityProjector.calibrate`); the ~95 %
  band combines the calibration set's sampling error with the fit's residual. This is what the
  budget solver (:mod:`lrviz.budget`) optimises and what the CLI and dashboard show once
  sensitivities are measured.
* **Energy proxy** (:func:`project_accuracy`, basis ``"energy proxy"``): data-free, from the spectra
  alone, shown until sensitivities exist. A layer planned at ranks ``r`` keeps ``q_l = min_m e_m``,
  the worst of its modes' retained energies ``e_m = Σ_{i≤r_m} s_i² / Σ_i s_i²``, and

      projected_top1 = chance + (base_top1 − chance) · Π_l q_l ** α

  with ``chance = 1 / num_classes`` and ``α`` = :data:`DEFAULT_EXPONENT` until :func:`fit_exponent`
  fits it to measured points. It equals ``base_top1`` at full rank, never rises when a rank falls,
  and ignores which layers matter more, the data and fine-tuning: an ordering device and a rough
  scale. :func:`retention_curve` is the proxy along the ``energy:F`` plans (the dashboard's curve).

Both cost well under a millisecond per plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .analysis import ModelAnalysis
from .errors import LrvizError
from .evaluate import Z95
from .plan import RankPlan
from .spectra import retained_energy

__all__ = ["Projection", "SensitivityProjector", "SENS_BASIS", "BASIS", "DESCRIPTION", "DEFAULT_EXPONENT", "DEFAULT_REL_ERROR", "DEFAULT_ABS_ERROR", "PRIOR_POINTS", "GAIN_GRID",
           "CURVE_FRACTIONS", "layer_retention", "project_accuracy", "fit_exponent", "measured_pairs", "retention_curve",
           "curve_top1"]

SENS_BASIS = "sensitivities"
BASIS = "energy proxy"

#: Model error assumed before three measured points exist: ``√(a² + (b·drop)²)`` with ``a`` this
#: (accuracy fraction) ...
DEFAULT_ABS_ERROR = 0.01
#: ... and ``b`` this (relative to the projected drop); combined with the calibration set's sampling error.
DEFAULT_REL_ERROR = 0.35
#: Measured points below which the model error is never taken narrower than the prior above.
PRIOR_POINTS = 8

#: Exponent applied to the product of per-layer retained energies (energy proxy).
DEFAULT_EXPONENT = 1.0

DESCRIPTION = (
    "data-free energy proxy: chance + (base − chance) · Π_layers q^α, where q is a layer's retained "
    "spectral energy (worst mode) at the planned ranks"
)

#: Energy fractions of the plans :func:`retention_curve` runs along.
CURVE_FRACTIONS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0)


@dataclass(frozen=True)
class Projection:
    """A projected accuracy with its band, on either basis.

    Attributes
    ----------
    top1 : float
        Projected top-1 (fraction) on the evaluation data (see ``base_top1``).
    interval : (float, float)
        ~95 % band. Sensitivities: sampling error of the calibration set plus the model error (fitted
        to measured points when there are at least two, else :data:`DEFAULT_REL_ERROR` × drop).
        Energy proxy, whose error is unknown: ``[top1 − drop/2, base_top1]``.
    base_top1 : float
        Accuracy of the uncompressed model the projection is anchored to.
    basis : str
        ``"sensitivities"`` (:data:`SENS_BASIS`) or ``"energy proxy"`` (:data:`BASIS`).
    detail : str
        One line saying what the number is based on.
    loss, calib_top1 : float or None
        Sensitivities: projected mean cross-entropy and top-1 on the calibration set itself.
    retained, exponent, chance : float or None
        Energy proxy: ``Π_l q_l`` (before the exponent), ``α`` and ``1 / num_classes``.
    per_layer : dict[str, float]
        Energy proxy: ``q_l`` of every planned layer.
    """

    top1: float
    interval: tuple[float, float]
    base_top1: float
    basis: str
    detail: str = ""
    loss: float | None = None
    calib_top1: float | None = None
    retained: float | None = None
    exponent: float | None = None
    chance: float | None = None
    per_layer: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def drop(self) -> float:
        """Projected loss of accuracy (``base_top1 − top1``)."""
        return self.base_top1 - self.top1

    @property
    def description(self) -> str:
        """:attr:`detail` (the name the dashboard's energy-proxy caption reads)."""
        return self.detail

    def to_dict(self) -> dict:
        return {"projected_top1": self.top1, "interval": [self.interval[0], self.interval[1]], "base_top1": self.base_top1,
                "basis": self.basis, "detail": self.detail, "projected_loss": self.loss}


# ==================================================================================================
# Projection from measured layer sensitivities
# ==================================================================================================


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


class SensitivityProjector:
    """Project any rank plan from per-mode sensitivity curves (:class:`lrviz.sensitivity.Sensitivities`).

    Model: every sample's logits are the original's plus the *sum* over truncated modes of the logit
    change that mode caused on its own (linearly interpolated between measured ranks), scaled by a
    gain ``γ``::

        z_i(plan) = z_i⁰ + γ · Σ_{layer l, mode m} Δz_i[l, m, r_{l,m}]

    — first-order additivity of small perturbations, in logit space, per sample, so interactions
    between layers that hurt *different* samples are kept. Accuracy is the fraction of samples whose
    projected logits still rank the true class first; the loss is their cross-entropy. ``γ = 1``
    until measured points exist; :meth:`calibrate` fits ``γ`` and the model error of the band. On the
    demo model the truncation errors of many layers add up *sub*-linearly: the fitted γ is 0.59–0.61
    (from the anchors, on test or on training images), i.e. the sum over-predicts a joint change.

    When the projection is asked for another evaluation set than the calibration set (a different
    ``base_top1``), the change is carried over in log-odds: ``logit(p) = logit(base) +
    logit(p_cal) − logit(base_cal)``.
    """

    def __init__(self, sens, gain: float = 1.0, rel_error: float | None = None, abs_error: float | None = None, n_fit: int = 0):
        self.sens = sens
        self.gain = float(gain)
        self.rel_error = rel_error
        self.abs_error = abs_error
        self.n_fit = int(n_fit)
        #: Leave-one-out residuals (projected − measured) of the points :meth:`calibrate` fitted to (three or more).
        self.loo_residuals: tuple[float, ...] = ()
        self._memo: dict[tuple[str, int, int], np.ndarray] = {}

    # --- core ------------------------------------------------------------------------------------
    def _delta(self, name: str, index: int, rank: int) -> np.ndarray | None:
        """``Δz`` of the mode at position ``index`` of layer ``name`` truncated to ``rank`` (None: not measured or full)."""
        c = self.sens.curve(name, index)
        if c is None or rank >= c.full:
            return None
        key = (name, index, int(rank))
        d = self._memo.get(key)
        if d is None:
            d = c.delta_at(rank)
            if len(self._memo) > 4096:
                self._memo.clear()
            self._memo[key] = d
        return d

    def total_delta(self, plan: RankPlan) -> np.ndarray:
        """``Σ Δz`` over the plan's truncated modes, plus the two-mode interaction of every Tucker-2 layer
        with both modes truncated (:class:`lrviz.sensitivity.PairTerm`, when measured) (N × M)."""
        total = np.zeros_like(self.sens.base_logits)
        pairs = getattr(self.sens, "pairs", None) or {}
        for lp in plan.layers:
            if getattr(lp, "method", ""):
                continue  # CP / spatial SVD: no curve (missing() names them)
            for m, (r, full) in enumerate(zip(lp.ranks, lp.full_ranks)):
                if r < full:
                    d = self._delta(lp.name, m, int(r))
                    if d is not None:
                        total += d
            pair = pairs.get(lp.name)
            if pair is not None and len(lp.ranks) == 2:
                key = (lp.name, "pair", int(lp.ranks[0]), int(lp.ranks[1]))
                if key not in self._memo:
                    self._memo[key] = pair.at(*key[2:])  # None when a mode is whole
                if self._memo[key] is not None:
                    total += self._memo[key]
        return total

    def missing(self, plan: RankPlan) -> list[str]:
        """Planned (truncated) layers the sensitivities do not cover."""
        out = []
        for lp in plan.layers:
            if getattr(lp, "method", "") and not lp.is_dense:
                out.append(lp.name)  # sensitivities are curves of the Tucker-2 / SVD modes
                continue
            for m, (r, full) in enumerate(zip(lp.ranks, lp.full_ranks)):
                if r < full and self.sens.curve(lp.name, m) is None and full > 1:
                    out.append(lp.name)
                    break
        return out

    def logits(self, plan: RankPlan, gain: float | None = None) -> np.ndarray:
        """Projected kept logits of the calibration samples, ``z⁰ + γ·Σ Δz`` (N × M); score them with
        :meth:`lrviz.sensitivity.Sensitivities.top1_of` / ``loss_of``."""
        g = self.gain if gain is None else float(gain)
        return self.sens.base_logits + g * self.total_delta(plan)

    def _transfer(self, p_cal: float, base_top1: float | None) -> float:
        b_cal = self.sens.base_top1
        if base_top1 is None or abs(float(base_top1) - b_cal) < 1e-12:
            return p_cal
        if p_cal >= b_cal:
            return float(base_top1) + (p_cal - b_cal)  # no drop: keep it additive (tiny)
        return _sigmoid(_logit(base_top1) + _logit(p_cal) - _logit(b_cal))

    def project(self, plan: RankPlan, base_top1: float | None = None) -> Projection:
        """Projected top-1 of ``plan`` (anchored to ``base_top1`` when given, else to the calibration set).

        The ~95 % band is ``top1 ± Z95·√(sampling² + model²)``: ``sampling`` is the standard error of
        the projected change on the ``n`` calibration images (from the per-sample flips), ``model`` is
        ``√(a² + (b·drop)²)`` with ``a, b`` fitted to the leave-one-out residuals of the measured
        points (:meth:`calibrate`; :data:`DEFAULT_ABS_ERROR`, :data:`DEFAULT_REL_ERROR` before three
        points). It is then clipped to ``[chance, base + Z95·√(base(1 − base)/n)]``: a truncated model
        is not expected to beat the original by more than the original's own sampling error, nor to
        fall below chance.
        """
        missing = self.missing(plan)
        other = [n for n, m in getattr(plan, "methods", {}).items() if n in missing]
        if other:
            raise LrvizError(f"layer(s) {other[:5]} use CP / spatial SVD, which the projection does not cover (it "
                             "projects Tucker-2 / SVD ranks): measure the plan instead")
        if missing:
            raise LrvizError(f"no sensitivity measured for planned layer(s) {missing[:5]}; measure them first")
        delta = self.total_delta(plan)
        z = self.sens.base_logits + self.gain * delta
        p_cal = self.sens.top1_of(z)
        loss = self.sens.loss_of(z)
        base = self.sens.base_top1 if base_top1 is None else float(base_top1)
        n = self.sens.n
        chance = 1.0 / max(int(self.sens.num_classes), 1)
        ceiling = min(base + Z95 * math.sqrt(max(base * (1 - base), 1.0 / n) / n), 1.0)
        top1 = min(max(self._transfer(p_cal, base_top1), chance), ceiling)
        drop = max(base - top1, 0.0)
        # nothing truncated (or nothing measured changes): the original itself, no model error
        half = Z95 * math.hypot(self._sampling(z, base_top1), self.model_error(drop)) if np.any(delta) else 0.0
        lo, hi = max(top1 - half, chance), min(top1 + half, ceiling)
        fit = (f"γ = {self.gain:.2f} fitted to {self.n_fit} measured plan(s)" if self.n_fit
               else "γ = 1 (not yet calibrated by a measurement)")
        detail = (f"additive per-sample logit changes of single-layer truncations, measured on {n} calibration images; {fit}")
        return Projection(top1, (min(lo, top1), max(hi, top1)), base, SENS_BASIS, detail, loss=loss, calib_top1=p_cal,
                          chance=chance)

    def _sampling(self, z: np.ndarray, base_top1: float | None) -> float:
        """Standard error of the projected accuracy change on the calibration images: the per-sample
        change of correctness (−1, 0, 1) has variance ``flips − drop²``; doubled in variance when the
        projection is carried to other images (their own draw adds as much again)."""
        n = self.sens.n
        change = self.sens.base_correct - (z.argmax(axis=-1) == self.sens.label_pos)
        var = max(float(change.var()), 1.0 / n)
        other = base_top1 is not None and abs(float(base_top1) - self.sens.base_top1) > 1e-12
        return math.sqrt((2.0 if other else 1.0) * var / n)

    def model_error(self, drop: float) -> float:
        """The model error (one standard deviation, accuracy fraction) at a projected drop: the fitted
        one, but never below the prior (:data:`DEFAULT_ABS_ERROR`, :data:`DEFAULT_REL_ERROR`) until
        :data:`PRIOR_POINTS` points were measured — a few anchors that agree with each other say little
        about plans unlike them."""
        a = DEFAULT_ABS_ERROR if self.abs_error is None else self.abs_error
        b = DEFAULT_REL_ERROR if self.rel_error is None else self.rel_error
        if self.n_fit < PRIOR_POINTS:
            a, b = max(a, DEFAULT_ABS_ERROR), max(b, DEFAULT_REL_ERROR)
        return math.hypot(a, b * max(float(drop), 0.0))

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

    def _gain_curves(self, pts) -> np.ndarray:
        """Projected accuracy of every point at every gain of :data:`GAIN_GRID` (n × G)."""
        base = self.sens.base_logits
        out = np.empty((len(pts), len(GAIN_GRID)))
        for i, (d, _, b) in enumerate(pts):
            for j, g in enumerate(GAIN_GRID):
                out[i, j] = self._transfer(self.sens.top1_of(base + g * d), b)
        return out

    def calibrate(self, measured: Iterable[tuple], base_top1: float | None = None) -> "SensitivityProjector":
        """A new projector with ``γ`` fitted to measured points.

        ``measured``: ``(plan, top1)`` pairs measured on data whose original accuracy is ``base_top1``
        (None = the calibration set itself), or ``(plan, top1, base)`` triples giving it per point.
        ``γ`` minimises the squared error of the projected accuracy over :data:`GAIN_GRID` (refined
        by a parabola through the best three). With three points or more the band's model error is
        fitted out of sample: every point is projected with ``γ`` fitted to the *others*, and
        ``a² + b²·drop²`` is fitted (non-negative least squares) to those leave-one-out squared
        residuals — no division by a drop, so points with no or a negative drop are harmless. Plans
        at full rank carry no information and are ignored. Returns ``self`` unchanged when nothing is
        usable.
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
        curves = self._gain_curves(pts)
        truth = np.array([t for _, t, _ in pts])
        g = _best_gain(curves, truth)
        new = SensitivityProjector(self.sens, g, self.rel_error, self.abs_error, len(pts))
        if len(pts) >= 3:
            res, drops = [], []
            for i in range(len(pts)):
                keep = np.arange(len(pts)) != i
                gi = _best_gain(curves[keep], truth[keep])
                p = float(np.interp(math.log(gi), _LOG_GAINS, curves[i]))
                b_eval = self.sens.base_top1 if pts[i][2] is None else float(pts[i][2])
                res.append(p - truth[i])
                drops.append(max(b_eval - p, 0.0))
            new.abs_error, new.rel_error = _fit_error(np.array(res), np.array(drops))
            new.loo_residuals = tuple(float(r) for r in res)
        return new


#: Gains :meth:`SensitivityProjector.calibrate` searches (log-spaced).
GAIN_GRID = np.exp(np.linspace(math.log(0.05), math.log(4.0), 89))
_LOG_GAINS = np.log(GAIN_GRID)


def _best_gain(curves: np.ndarray, truth: np.ndarray) -> float:
    """The gain minimising the squared error of ``curves`` (n × G) against ``truth`` (parabola-refined)."""
    err = ((curves - truth[:, None]) ** 2).sum(axis=0)
    j = int(np.argmin(err))
    if 0 < j < len(err) - 1:
        y0, y1, y2 = err[j - 1], err[j], err[j + 1]
        den = y0 - 2 * y1 + y2
        if den > 1e-15:
            step = 0.5 * (y0 - y2) / den
            x = _LOG_GAINS[j] + step * (_LOG_GAINS[1] - _LOG_GAINS[0])
            return float(math.exp(x))
    return float(GAIN_GRID[j])


def _fit_error(res: np.ndarray, drops: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` ≥ 0 with ``a² + b²·drop²`` ≈ ``res²`` (least squares on the squares, non-negative)."""
    y = res ** 2
    x = drops ** 2
    best = None
    for use_a, use_b in ((True, True), (True, False), (False, True)):
        cols = [np.ones_like(x)] * use_a + [x] * use_b
        coef, *_ = np.linalg.lstsq(np.stack(cols, axis=1), y, rcond=None)
        if np.any(coef < 0):
            continue
        a2 = float(coef[0]) if use_a else 0.0
        b2 = float(coef[-1]) if use_b else 0.0
        sse = float(((a2 + b2 * x - y) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, a2, b2)
    if best is None:
        return float(math.sqrt(y.mean())), 0.0
    return float(math.sqrt(best[1])), float(min(math.sqrt(best[2]), 2.0))


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


# ==================================================================================================
# Data-free energy proxy
# ==================================================================================================


def layer_retention(analysis: ModelAnalysis, plan: RankPlan) -> dict[str, float]:
    """``q_l`` = the smallest retained energy over a layer's modes, for every planned layer.

    Layers of the plan that have no spectrum (cost-only analyses) count as fully retained.
    """
    out: dict[str, float] = {}
    other = [lp.name for lp in plan.layers if getattr(lp, "method", "") and not lp.is_dense]
    if other:
        raise LrvizError(f"layer(s) {other[:5]} use CP / spatial SVD, which the spectral projection does not cover: "
                         "measure the plan instead")
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
            q = min(q, retained_energy(sp.values[mode], int(r)))
        out[lp.name] = q
    return out


def project_accuracy(
    analysis: ModelAnalysis,
    plan: RankPlan,
    base_top1: float,
    num_classes: int,
    exponent: float = DEFAULT_EXPONENT,
) -> Projection:
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
    Projection
        Basis ``"energy proxy"``, with ``retained``, ``exponent``, ``chance`` and ``per_layer``.
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
    top1 = float(top1)
    drop = base - top1
    return Projection(top1, (max(top1 - 0.5 * drop, 0.0), max(base, top1)), base, BASIS,
                      DESCRIPTION.replace("α", f"α (α = {float(exponent):.3g})"), retained=retained, exponent=float(exponent),
                      chance=chance, per_layer=per_layer)


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


def retention_curve(analysis: ModelAnalysis, fractions: Iterable[float] = CURVE_FRACTIONS):
    """The ``energy:F`` plans for a range of F, with their cost and retained product ``Π q_l``.

    Data-free and independent of the baseline accuracy, so it can be cached per model. Returns a
    DataFrame ``fraction, params_ratio, macs_ratio, retained, plan`` (``plan`` the
    :class:`~lrviz.plan.RankPlan`), sorted by params ratio, empty without spectra. Turn it into the
    energy proxy's accuracies with :func:`curve_top1`; for the sensitivity projection along the same
    curve, project each ``plan`` with a :class:`SensitivityProjector`.
    """
    import pandas as pd

    from .plan import make_plan, plan_cost

    columns = ["fraction", "params_ratio", "macs_ratio", "retained", "plan"]
    if not analysis.has_spectra or not analysis.layers:
        return pd.DataFrame(columns=columns)
    rows = []
    for f in fractions:
        plan = make_plan(analysis, f"energy:{f:g}")
        cost = plan_cost(analysis, plan)
        q = layer_retention(analysis, plan)
        rows.append({"fraction": f, "params_ratio": cost.params_ratio, "macs_ratio": cost.macs_ratio,
                     "retained": float(np.prod(list(q.values()))), "plan": plan})
    return pd.DataFrame(rows, columns=columns).sort_values("params_ratio")


def curve_top1(curve, base_top1: float, num_classes: int, exponent: float = DEFAULT_EXPONENT):
    """Add a ``top1`` column (the projection) to a :func:`retention_curve` frame (returns a copy)."""
    chance = 1.0 / int(num_classes)
    out = curve.copy()
    out["top1"] = chance + (float(base_top1) - chance) * out["retained"].astype(float) ** float(exponent)
    return out
