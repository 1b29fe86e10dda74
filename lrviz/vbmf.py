"""Empirical variational Bayesian matrix factorisation (EVBMF) rank estimation.

Implements the analytic global solution of Nakajima, Sugiyama, Babacan & Tomioka (JMLR 2013), with the
noise variance estimated by minimising the free energy (Nakajima et al., JMLR 2015). Only the singular
values of the observed matrix are needed.

Notation: the matrix is ``L × M`` with ``L ≤ M`` (transposed otherwise), ``α = L/M``, ``γ_h`` its
singular values, ``σ²`` the noise variance.

* A component is kept iff ``γ_h ≥ γ̲ = σ·sqrt(M·(1+τ̄)·(1+α/τ̄))`` with ``τ̄ ≈ 2.5129·sqrt(α)``.
* ``σ²`` minimises ``Σ_h ψ(γ_h² / (M σ²))`` with ``ψ(x) = x − log x`` plus, when ``x > x̄ =
  (1+τ̄)(1+α/τ̄)``, ``log(τ+1) + α·log(τ/α + 1) − τ``, where
  ``τ(x) = ½·(x − (1+α) + sqrt((x − (1+α))² − 4α))``.
* The search interval for ``σ²`` is ``[max(γ_{H̄+1}²/(M x̄), Σ_{h>H̄} γ_h²/(M(L−H̄))), Σ_h γ_h²/(LM)]``
  with ``H̄ = min(ceil(L/(1+α)) − 1, H)``.

The objective is not convex (it jumps in slope where a component crosses ``x̄``), so the minimum is
located on a dense log-spaced grid first and then refined with a bounded scalar minimiser — the
result is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from .errors import LrvizError

__all__ = ["VBMFResult", "evbmf", "weaken_rank", "TAU_BAR_COEF"]

TAU_BAR_COEF = 2.5129  # τ̄ = 2.5129·sqrt(α), Nakajima et al. 2013


@dataclass(frozen=True)
class VBMFResult:
    """EVBMF estimate for one matrix.

    Attributes
    ----------
    rank : int
        Number of singular values above the threshold (0 = no signal detected).
    sigma2 : float
        Estimated noise variance σ².
    threshold : float
        Singular-value threshold ``σ·sqrt(M(1+τ̄)(1+α/τ̄))``.
    shape : tuple of int
        ``(L, M)`` with ``L ≤ M``.
    """

    rank: int
    sigma2: float
    threshold: float
    shape: tuple[int, int]


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    b = x - (1.0 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))


def _free_energy(log_sigma2: float, s2: np.ndarray, log_s2: np.ndarray, M: int, alpha: float, xbar: float) -> float:
    sigma2 = math.exp(log_sigma2)
    x = s2 / (M * sigma2)
    # ψ0(x) = x − log x, with log x = log γ² − log(Mσ²) (γ = 0 only shifts the objective by a constant)
    total = float(np.sum(x - (log_s2 - math.log(M * sigma2))))
    big = x > xbar
    if np.any(big):
        t = _tau(x[big], alpha)
        total += float(np.sum(np.log1p(t) + alpha * np.log1p(t / alpha) - t))
    return total


def _free_energy_grid(log_sigma2: np.ndarray, s2, log_s2, M: int, alpha: float, xbar: float) -> np.ndarray:
    """:func:`_free_energy` at many σ² at once.

    ``s2`` must be sorted in descending order (as :func:`evbmf` passes it). ``Σ_h x_h − log x_h`` only
    needs ``Σ γ_h²`` and ``Σ log γ_h²``, and the τ term is non-zero only for the components with
    ``x_h > x̄`` — a leading run of ``s2`` — so only those columns of the grid × spectrum array are formed.
    """
    log_ms = np.log(M) + np.asarray(log_sigma2, dtype=np.float64)
    scale = np.exp(log_ms)
    total = float(np.sum(s2)) / scale - float(np.sum(log_s2)) + len(s2) * log_ms
    # components above x̄ anywhere on the grid: those above it at the smallest σ²
    k = int(np.count_nonzero(s2 > xbar * float(np.min(scale)))) if len(s2) else 0
    if k == 0:
        return total
    x = s2[None, :k] / scale[:, None]
    big = x > xbar
    t = np.where(big, _tau(x, alpha), 0.0)  # τ is only defined (and only used) above x̄
    extra = np.where(big, np.log1p(t) + alpha * np.log1p(t / alpha) - t, 0.0)
    return total + extra.sum(axis=1)


def evbmf(singular_values, shape: tuple[int, int]) -> VBMFResult:
    """Estimate the rank and noise variance of a matrix from its singular values.

    Parameters
    ----------
    singular_values : array_like
        All ``min(L, M)`` singular values of the matrix (any order).
    shape : tuple of int
        ``(rows, cols)`` of the matrix; transposed internally so that ``L ≤ M``.

    Returns
    -------
    VBMFResult

    References
    ----------
    S. Nakajima, M. Sugiyama, S. D. Babacan, R. Tomioka. Global analytic solution of fully-observed
    variational Bayesian matrix factorization. JMLR 14, 2013.
    """
    L, M = sorted(int(d) for d in shape)
    s = np.sort(np.abs(np.asarray(singular_values, dtype=np.float64)))[::-1]
    H = len(s)
    if H != L:
        raise ValueError(f"evbmf needs all min(L, M) = {L} singular values of a {shape} matrix; got {H}")
    alpha = L / M
    tau_bar = TAU_BAR_COEF * math.sqrt(alpha)
    xbar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)

    s2 = s * s
    upper = float(s2.sum() / (L * M))
    if upper <= 0.0 or not np.isfinite(upper):
        return VBMFResult(rank=0, sigma2=0.0, threshold=0.0, shape=(L, M))

    h_bar = min(math.ceil(L / (1.0 + alpha)) - 1, H)
    tail = s2[h_bar:]
    lower = 0.0
    if len(tail):
        lower = max(tail[0] / (M * xbar), float(tail.sum()) / (M * (L - h_bar)))
    tiny = upper * 1e-12
    lower = min(max(lower, tiny), upper)

    # log γ² with exact zeros replaced: they shift ψ by a σ²-independent constant only
    log_s2 = np.log(np.maximum(s2, upper * 1e-300 + np.finfo(float).tiny))
    args = (s2, log_s2, M, alpha, xbar)
    lo, hi = math.log(lower), math.log(upper)
    if hi - lo < 1e-12:
        log_sig = hi
    else:
        grid = np.linspace(lo, hi, 257)
        vals = _free_energy_grid(grid, *args)
        i = int(np.argmin(vals))
        a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        res = minimize_scalar(_free_energy, bounds=(a, b), args=args, method="bounded", options={"xatol": 1e-10})
        log_sig = float(res.x) if res.fun <= vals[i] else float(grid[i])
    sigma2 = math.exp(log_sig)
    threshold = math.sqrt(sigma2 * M * (1.0 + tau_bar) * (1.0 + alpha / tau_bar))
    rank = int(np.sum(s > threshold))
    return VBMFResult(rank=rank, sigma2=sigma2, threshold=threshold, shape=(L, M))


def weaken_rank(r_vbmf: int, full: int, k: float) -> int:
    """Weakened VBMF rank ``r = R − k·(R − r_vbmf)`` (MUSCO), rounded up; ``k=1`` is plain VBMF.

    ``k=0`` keeps the full rank ``R``. Returns an int in ``[r_vbmf, R]``.
    """
    if not 0.0 <= k <= 1.0:
        raise LrvizError(f"VBMF weakening factor must be in [0, 1]; got {k}")
    r = full - k * (full - r_vbmf)
    return int(min(full, max(r_vbmf, math.ceil(r - 1e-9))))
