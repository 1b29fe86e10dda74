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
    assert u["out"].shape == (2, 12) and u["in"].shape == (3, 8)
    # mode-1 row i holds every weight with input channel i
    assert torch.equal(u["in"][1], w[:, 1].flatten())
    assert set(unfoldings(w[:, :, :1, :1], "svd_conv")) == {"matrix"}


def test_layer_spectrum_conv_vs_numpy():
    torch.manual_seed(0)
    w = torch.randn(8, 5, 3, 3)
    info = LayerInfo("c", "tucker2", tuple(w.shape))
    sp = layer_spectrum(info, w)
    for mode, mat in [("out", w.flatten(1)), ("in", w.transpose(0, 1).flatten(1))]:
        ref = np.linalg.svd(mat.double().numpy(), compute_uv=False)
        np.testing.assert_allclose(sp.values[mode], ref, atol=1e-6 * ref[0])
    assert sp.shapes == {"out": (8, 45), "in": (5, 72)}


def test_energy_curve_and_rank_closed_form():
    s = np.array([3.0, 2.0, 1.0, 0.0])
    e = energy_curve(s)
    np.testing.assert_allclose(e, [9 / 14, 13 / 14, 1.0, 1.0])
    assert energy_rank(s, 0.5) == 1
    assert energy_rank(s, 13 / 14) == 2
    assert energy_rank(s, 0.95) == 3
    assert energy_rank(s, 1.0) == 3


# --- grouped convolutions: one spectrum per mode, the groups' root-mean-square spectrum ----------------

def test_grouped_spectrum_is_rms_of_per_group_spectra():
    torch.manual_seed(1)
    w = torch.randn(4 * 6, 5, 3, 3)  # 4 groups of (6 out, 5 in)
    info = LayerInfo("g", "tucker2", (4, 6, 5, 3, 3))
    sp = layer_spectrum(info, w)
    assert sp.shapes == {"out": (6, 45), "in": (5, 54)}
    wg = w.double().numpy().reshape(4, 6, 5, 3, 3)
    s0 = np.stack([np.linalg.svd(x.reshape(6, -1), compute_uv=False) for x in wg])
    s1 = np.stack([np.linalg.svd(x.transpose(1, 0, 2, 3).reshape(5, -1), compute_uv=False) for x in wg])
    np.testing.assert_allclose(sp.values["out"], np.sqrt((s0**2).mean(0)), rtol=1e-6)
    np.testing.assert_allclose(sp.values["in"], np.sqrt((s1**2).mean(0)), rtol=1e-6)
    # one group is the ordinary spectrum
    one = layer_spectrum(LayerInfo("c", "tucker2", (6, 5, 3, 3)), w[:6])
    np.testing.assert_allclose(one.values["out"], s0[0], rtol=1e-6)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_grouped_energy_is_the_energy_kept_by_a_shared_rank(r):
    from lrviz import build_layer, factorize

    torch.manual_seed(2)
    conv = torch.nn.Conv2d(12, 16, 1, groups=4, bias=False)  # per group 4 x 3
    info = LayerInfo("0", "svd_conv", (4, 4, 3, 1, 1))
    sp = layer_spectrum(info, conv.weight)
    layer = build_layer(factorize(info, conv), (r,))
    if r == 3:
        kept = conv.weight.double()
    else:
        kept = torch.einsum("gor,gri->goi", layer.expand.weight.reshape(4, 4, r), layer.reduce.weight.reshape(4, r, 3)).double()
    frac = kept.pow(2).sum().item() / conv.weight.double().pow(2).sum().item()
    assert energy_curve(sp.values["matrix"])[r - 1] == pytest.approx(frac, rel=1e-6)


def test_evbmf_finds_planted_per_group_ranks():
    from helpers import planted_kernel

    from lrviz.vbmf import evbmf

    g = torch.Generator().manual_seed(3)
    w = torch.cat([planted_kernel(32, 24, (3, 3), 4, 3, seed=20 + i) for i in range(8)])  # 8 groups, each its own bases
    noisy = w + 0.05 * torch.randn(w.shape, generator=g)
    sp = layer_spectrum(LayerInfo("g", "tucker2", (8, 32, 24, 3, 3)), noisy)
    assert [evbmf(sp.values[m], sp.shapes[m]).rank for m in sp.modes] == [4, 3]
    noise = layer_spectrum(LayerInfo("g", "tucker2", (8, 32, 24, 3, 3)), 0.05 * torch.randn(w.shape, generator=g))
    assert [evbmf(noise.values[m], noise.shapes[m]).rank for m in noise.modes] == [0, 0]


# --- layers not called in the forward pass have no spectra -------------------------------------------

class AuxHeadNet(torch.nn.Module):
    """Like GoogLeNet / Inception-v3: an auxiliary head that only runs in training mode."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.aux = torch.nn.Sequential(torch.nn.Conv2d(16, 8, 1), torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10))
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        out = self.fc(x.mean((2, 3)))
        return (out, self.aux(x)) if self.training else out


def test_unused_layers_have_no_spectra_and_vbmf_plans_work():
    from lrviz import analyze, make_plan

    torch.manual_seed(4)
    a = analyze(AuxHeadNet().eval(), (3, 8, 8))
    assert [l.name for l in a.layers] == ["conv", "fc"]
    assert set(a.spectra) == set(a.vbmf) == {"conv", "fc"} and a.has_spectra
    assert {s.name: s.type for s in a.skipped} == {"aux.0": "unused", "aux.2": "unused"}
    for spec in ("vbmf", "vbmf:0.5", "energy:0.9"):
        assert {lp.name for lp in make_plan(a, spec).layers} == {"conv", "fc"}
