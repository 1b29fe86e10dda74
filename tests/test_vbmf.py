"""EVBMF against planted low-rank + Gaussian noise (closed-form ground truth)."""

import math

import numpy as np
import pytest

from lrviz.errors import LrvizError
from lrviz.vbmf import TAU_BAR_COEF, evbmf, weaken_rank

SIGMA2_RTOL = 0.05


def planted(L, M, r, sigma2, seed=0, strength=1.5):
    rng = np.random.default_rng(seed)
    sig = math.sqrt(sigma2)
    U = np.linalg.qr(rng.standard_normal((L, r)))[0]
    V = np.linalg.qr(rng.standard_normal((M, r)))[0]
    d = np.linspace(3, 6, r) * sig * math.sqrt(M) * strength
    return U @ np.diag(d) @ V.T + sig * rng.standard_normal((L, M))


@pytest.mark.parametrize("L,M,r,sigma2", [(64, 576, 10, 0.01), (128, 1152, 20, 0.25), (512, 4608, 40, 1.0)])
def test_planted_rank_and_noise_recovered(L, M, r, sigma2):
    Y = planted(L, M, r, sigma2)
    res = evbmf(np.linalg.svd(Y, compute_uv=False), Y.shape)
    assert res.rank == r
    assert res.sigma2 == pytest.approx(sigma2, rel=SIGMA2_RTOL)
    # threshold follows the closed form from the estimated sigma2
    alpha = L / M
    tau = TAU_BAR_COEF * math.sqrt(alpha)
    assert res.threshold == pytest.approx(math.sqrt(res.sigma2 * M * (1 + tau) * (1 + alpha / tau)))


def test_transposed_matrix_gives_same_result():
    Y = planted(64, 576, 10, 0.01)
    s = np.linalg.svd(Y, compute_uv=False)
    a, b = evbmf(s, Y.shape), evbmf(s, Y.T.shape)
    assert a == b and a.shape == (64, 576)


def test_pure_noise_gives_rank_zero():
    rng = np.random.default_rng(1)
    Y = 0.3 * rng.standard_normal((96, 800))
    res = evbmf(np.linalg.svd(Y, compute_uv=False), Y.shape)
    assert res.rank == 0
    assert res.sigma2 == pytest.approx(0.09, rel=SIGMA2_RTOL)


def test_scale_invariance_and_determinism():
    Y = planted(64, 300, 7, 0.04, seed=3)
    s = np.linalg.svd(Y, compute_uv=False)
    a = evbmf(s, Y.shape)
    b = evbmf(s * 1e-3, Y.shape)  # conv weights are small: the estimate must not depend on scale
    assert a.rank == b.rank == 7
    assert b.sigma2 == pytest.approx(a.sigma2 * 1e-6, rel=1e-6)
    assert evbmf(s, Y.shape) == a


def test_all_zero_matrix():
    assert evbmf(np.zeros(5), (5, 9)).rank == 0


def test_wrong_number_of_values():
    with pytest.raises(ValueError, match="needs all min"):
        evbmf(np.ones(3), (5, 9))


@pytest.mark.parametrize("r,R,k,want", [(10, 64, 1.0, 10), (10, 64, 0.0, 64), (10, 64, 0.5, 37), (3, 4, 0.5, 4), (64, 64, 0.3, 64)])
def test_weaken_rank(r, R, k, want):
    assert weaken_rank(r, R, k) == want


def test_weaken_rank_rejects_bad_factor():
    with pytest.raises(LrvizError, match=r"must be in \[0, 1\]; got 1.5"):
        weaken_rank(3, 10, 1.5)
