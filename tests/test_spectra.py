import numpy as np
import pytest
import torch

from lrviz.layers import LayerInfo
from lrviz.spectra import energy_curve, energy_rank, layer_spectrum, singular_values, unfoldings

TOL = 1e-9  # relative to sigma_max (float64 Gram eigenvalues)


@pytest.mark.parametrize("shape", [(16, 9), (9, 16), (64, 576), (200, 30)])
def test_singular_values_match_numpy(shape):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    ours = singular_values(a)
    ref = np.linalg.svd(a.numpy(), compute_uv=False)
    assert ours.shape == (min(shape),)
    assert np.all(np.diff(ours) <= 0)
    np.testing.assert_allclose(ours, ref, atol=TOL * ref[0])


def test_unfoldings_are_the_tucker2_modes():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    u = unfoldings(w, "tucker2")
    assert u["mode0"].shape == (2, 12) and u["mode1"].shape == (3, 8)
    # mode-1 row i holds every weight with input channel i
    assert torch.equal(u["mode1"][1], w[:, 1].flatten())
    assert set(unfoldings(w[:, :, :1, :1], "svd_conv")) == {"matrix"}


def test_layer_spectrum_conv_vs_numpy():
    torch.manual_seed(0)
    w = torch.randn(8, 5, 3, 3)
    info = LayerInfo("c", "tucker2", tuple(w.shape))
    sp = layer_spectrum(info, w)
    for mode, mat in [("mode0", w.flatten(1)), ("mode1", w.transpose(0, 1).flatten(1))]:
        ref = np.linalg.svd(mat.double().numpy(), compute_uv=False)
        np.testing.assert_allclose(sp.values[mode], ref, atol=1e-6 * ref[0])
    assert sp.shapes == {"mode0": (8, 45), "mode1": (5, 72)}


def test_energy_curve_and_rank_closed_form():
    s = np.array([3.0, 2.0, 1.0, 0.0])
    e = energy_curve(s)
    np.testing.assert_allclose(e, [9 / 14, 13 / 14, 1.0, 1.0])
    assert energy_rank(s, 0.5) == 1
    assert energy_rank(s, 13 / 14) == 2
    assert energy_rank(s, 0.95) == 3
    assert energy_rank(s, 1.0) == 3
