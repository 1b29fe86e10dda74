"""The fast paths of the whole-model analysis against float64 numpy references (no timing here; speed is
measured by benchmarks/analysis.py)."""

import threading

import numpy as np
import pytest
import torch

from lrviz import analyze
from lrviz import spectra as S
from lrviz.layers import find_layers, get_module
from lrviz.vbmf import _free_energy, _free_energy_grid, evbmf

FAST_RTOL = 1e-4  # float32 path: every σ_i within this fraction of itself (documented in lrviz.spectra)


def _ref(a: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(a.double().numpy(), compute_uv=False)


def _matrix_with_spectrum(rows, cols, s, seed, dtype=torch.float32):
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((rows, len(s))))[0]
    v = np.linalg.qr(rng.standard_normal((cols, len(s))))[0]
    return torch.from_numpy((u * s) @ v.T).to(dtype)


# --- lower block triangle of the Gram matrix ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 7), (130, 300), (300, 130), (515, 600)])
@pytest.mark.parametrize("exact", [True, False])
def test_lower_gram_is_the_lower_triangle_of_the_gram_matrix(shape, exact):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(shape, generator=g)
    x = a if shape[0] <= shape[1] else a.T
    ours = S.lower_gram(x, exact=exact, block_bytes=8 * 1024)  # small blocks: many column / row blocks
    xn = x.double().numpy()
    ref = xn @ xn.T
    n = ref.shape[0]
    bounds = S._row_bounds(n) if exact else S._row_bounds(n, max_rows=8 * 1024 // (4 * n))
    tol = 1e-13 if exact else 2e-6
    for r0, r1 in zip(bounds, bounds[1:]):  # every block on or below the diagonal is filled, the rest is zero
        np.testing.assert_allclose(ours[r0:r1, :r1].numpy(), ref[r0:r1, :r1], atol=tol * np.abs(ref).max())
        assert not ours[r0:r1, r1:].any()
    np.testing.assert_allclose(torch.linalg.eigvalsh(ours).numpy(), np.linalg.eigvalsh(ref), atol=(1e-12 if exact else 1e-5) * np.abs(ref).max())


# --- float32 path: accuracy where it is used, float64 where it is not -----------------------------------

@pytest.mark.parametrize("shape", [(64, 576), (576, 64), (256, 1024), (1000, 2048)])
def test_fast_path_on_well_conditioned_matrices_is_within_tolerance(shape):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(shape, generator=g) * 0.01  # random init: σ_min / σ_max ≥ 0.17 for these shapes
    ref = _ref(a)
    assert ref[-1] ** 2 >= S.FAST_MIN_EIG_RATIO * ref[0] ** 2  # the float32 path applies
    fast = S.singular_values(a, fast=True)
    np.testing.assert_allclose(fast, ref, rtol=FAST_RTOL)
    assert np.max(np.abs(fast - ref) / ref) < 2e-5  # what the docstring states as measured
    exact = S.singular_values(a)
    np.testing.assert_allclose(exact, ref, rtol=1e-9)


@pytest.mark.parametrize("tail", [1e-2, 1e-4, 1e-6])
def test_ill_conditioned_matrices_fall_back_to_float64(tail):
    s = np.geomspace(1.0, tail, 96)  # a trained layer's decaying spectrum: float32 eigenvalues would lose the tail
    a = _matrix_with_spectrum(96, 400, s, seed=3)
    ref = _ref(a)
    fast = S.singular_values(a, fast=True)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-9 * ref[0])
    np.testing.assert_allclose(fast, S.singular_values(a), rtol=0, atol=1e-12 * ref[0])


def test_pre_test_accepts_every_well_conditioned_and_rejects_ill_conditioned():
    rng = np.random.default_rng(4)
    for seed in range(20):
        n = int(rng.integers(2, 200))
        cond = 10 ** rng.uniform(-1.9, 0)  # λ_min / λ_max ∈ [~0.0126, 1] ≥ FAST_MIN_EIG_RATIO
        lam = np.concatenate([[1.0, cond], rng.uniform(cond, 1.0, n - 2)])
        q = np.linalg.qr(rng.standard_normal((n, n)))[0]
        g = torch.from_numpy((q * lam) @ q.T).float()
        assert S._may_be_well_conditioned(torch.tril(g), S.FAST_MIN_EIG_RATIO), seed
    s = np.geomspace(1.0, 1e-3, 64)
    a = _matrix_with_spectrum(64, 200, s, seed=5)
    assert not S._may_be_well_conditioned(torch.tril(a @ a.T), S.FAST_MIN_EIG_RATIO)


# --- many layers at once ---------------------------------------------------------------------------------

def _net():
    torch.manual_seed(6)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1, groups=4), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 48, 1), torch.nn.ReLU(),
        torch.nn.Conv2d(48, 96, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(96, 10),
    ).eval()


def _pairs(model):
    layers, _ = find_layers(model)
    return [(l, get_module(model, l.name).weight) for l in layers]


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("fast", [False, True])
def test_layer_spectra_equal_one_layer_at_a_time(workers, fast):
    pairs = _pairs(_net())
    out = list(S.layer_spectra(pairs, workers=workers, then=evbmf, fast=fast))
    assert [sp.layer.name for sp, _ in out] == [l.name for l, _ in pairs]  # in order
    for (l, w), (sp, est) in zip(pairs, out):
        one = S.layer_spectrum(l, w, fast=fast)
        assert sp.shapes == one.shapes and sp.modes == one.modes
        for m in sp.modes:
            np.testing.assert_allclose(sp.values[m], one.values[m], rtol=0, atol=1e-13 * one.values[m][0])
            assert est[m] == evbmf(sp.values[m], sp.shapes[m])
            # against numpy: float64 exact, or the float32 tolerance
            mats = S.unfoldings(w, l.kind, l.groups)
            ref = _ref(mats[m]) if l.groups == 1 else np.sqrt((np.stack([_ref(g) for g in mats[m]]) ** 2).mean(0))
            np.testing.assert_allclose(sp.values[m], ref, rtol=FAST_RTOL if fast else 1e-8)


def test_workers_stay_within_the_memory_of_the_largest_unfolding(monkeypatch):
    pairs = _pairs(_net())
    tasks = [(i, m) for i, (l, _) in enumerate(pairs) for m in S._modes(l.kind)]
    real = S._eigenvalues
    seen = {"now": 0, "max": 0, "overlap": 0, "inflight": 0}
    lock = threading.Condition()

    def spy(a, block_bytes=S.GRAM_BLOCK_BYTES, fast=False):
        need = S._task_bytes(a, False, block_bytes)
        with lock:
            seen["now"] += need
            seen["inflight"] += 1
            seen["overlap"] = max(seen["overlap"], seen["inflight"])
            seen["max"] = max(seen["max"], seen["now"])
            lock.notify_all()
            lock.wait_for(lambda: seen["inflight"] >= 2, timeout=1.0)  # let a second task start if the budget allows
        try:
            return real(a, block_bytes=block_bytes, fast=fast)
        finally:
            with lock:
                seen["now"] -= need
                seen["inflight"] -= 1

    monkeypatch.setattr(S, "_eigenvalues", spy)
    budget = 0
    for t in tasks:
        l, w = pairs[t[0]]
        mat = S.unfolding(w, l.kind, l.groups, t[1])
        budget = max(budget, S._task_bytes(mat, t[1] == "in", S.GRAM_BLOCK_BYTES))
    list(S.layer_spectra(pairs, workers=2))
    assert seen["overlap"] == 2  # small unfoldings do run together
    assert seen["max"] <= budget


def test_an_error_on_a_worker_is_raised_in_the_caller(monkeypatch):
    real = S._eigenvalues

    def boom(a, **kw):
        if a.shape[-2:] == (48, 64):
            raise RuntimeError("worker failed")
        return real(a, **kw)

    monkeypatch.setattr(S, "_eigenvalues", boom)
    with pytest.raises(RuntimeError, match="worker failed"):
        list(S.layer_spectra(_pairs(_net()), workers=2))


def test_analyze_uses_the_concurrent_spectra_and_reports_progress_in_order():
    model = _net()
    calls = []
    a = analyze(model, (3, 16, 16), progress=lambda done, total, name: calls.append((done, total, name)))
    names = [l.name for l, _ in _pairs(model)]
    assert calls == [(i + 1, len(names), n) for i, n in enumerate(names)]
    for l, w in _pairs(model):
        one = S.layer_spectrum(l, w, fast=True)
        for m in one.modes:
            np.testing.assert_allclose(a.spectra[l.name].values[m], one.values[m], rtol=0, atol=1e-13 * one.values[m][0])
            assert a.vbmf[l.name][m] == evbmf(one.values[m], one.shapes[m])


# --- EVBMF's grid of free energies ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_free_energy_grid_equals_the_scalar_free_energy(seed):
    rng = np.random.default_rng(seed)
    L, M = int(rng.integers(3, 300)), int(rng.integers(300, 3000))
    s = np.sort(np.abs(rng.standard_normal(L)) * rng.uniform(0.1, 10.0) + rng.uniform(0, 3) * (np.arange(L) < 5))[::-1]
    s2 = s * s
    alpha = L / M
    tau = 2.5129 * np.sqrt(alpha)
    xbar = (1 + tau) * (1 + alpha / tau)
    log_s2 = np.log(np.maximum(s2, 1e-300))
    grid = np.linspace(np.log(s2.min() / M / 10), np.log(s2.max() / M * 2), 41)
    ours = _free_energy_grid(grid, s2, log_s2, M, alpha, xbar)
    ref = np.array([_free_energy(g, s2, log_s2, M, alpha, xbar) for g in grid])
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-9 * np.abs(ref).max())


def test_closing_the_iterator_cancels_the_rest():
    pairs = _pairs(_net())
    it = S.layer_spectra(pairs, workers=2)
    first, _ = next(it)
    assert first.layer.name == pairs[0][0].name
    it.close()
    assert list(it) == [] or all(sp.layer.name in {l.name for l, _ in pairs} for sp, _ in it)
    for th in threading.enumerate():
        if th.name.startswith("lrviz-spectra-"):
            th.join(timeout=60)
    assert not any(th.name.startswith("lrviz-spectra-") and th.is_alive() for th in threading.enumerate())


def test_a_failed_forward_pass_still_raises_and_stops_the_workers():
    with pytest.raises(Exception):
        analyze(_net(), (5, 16, 16))  # wrong number of input channels: the forward pass fails
    for th in threading.enumerate():
        if th.name.startswith("lrviz-spectra-"):
            th.join(timeout=60)
    assert not any(th.name.startswith("lrviz-spectra-") and th.is_alive() for th in threading.enumerate())
