"""Tucker-2 / SVD decomposition: exactness, Eckart–Young, caching, no mutation."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from lrviz import FactorCache, LrvizError, RankPlan, analyze, build_layer, compress, factorize, find_layers, make_plan, plan_cost
from lrviz.decompose import LowRankConv2d, LowRankLinear, Tucker2Conv2d, weights_fingerprint

from helpers import planted_kernel

ATOL = 1e-4  # fp32 outputs


def info_of(m):
    return find_layers(nn.Sequential(m))[0][0]


GEOMETRY = [
    dict(kernel_size=3, stride=1, padding=1, dilation=1, bias=True),
    dict(kernel_size=3, stride=2, padding=0, dilation=1, bias=False),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=1, bias=True),
    dict(kernel_size=3, stride=1, padding=2, dilation=2, bias=False),
    dict(kernel_size=5, stride=3, padding=2, dilation=1, bias=True),
    dict(kernel_size=3, stride=1, padding=1, dilation=1, bias=True, padding_mode="reflect"),
    dict(kernel_size=3, stride=1, padding=1, dilation=1, bias=True, padding_mode="circular"),
]


@pytest.mark.parametrize("geo", GEOMETRY)
@pytest.mark.parametrize("ranks", [(4, 3), (12, 3), (4, 10)])
def test_tucker2_exact_on_planted_rank(geo, ranks):
    torch.manual_seed(0)
    conv = nn.Conv2d(10, 12, **geo)
    k = conv.kernel_size
    with torch.no_grad():
        conv.weight.copy_(planted_kernel(12, 10, k, min(ranks[0], 12), min(ranks[1], 10)))
    info = info_of(conv)
    layer = build_layer(factorize(info, conv), ranks)
    assert isinstance(layer, Tucker2Conv2d)
    assert ("reduce" in layer._modules) == (ranks[1] < 10)
    assert ("expand" in layer._modules) == (ranks[0] < 12)
    x = torch.randn(2, 10, 13, 11)
    assert (layer(x) - conv(x)).abs().max().item() <= ATOL


def test_tucker2_lossless_when_rank_exceeds_unfolding_rank():
    # stem 1→16, 3x3: mode-0 unfolding is 16x9, so rank 9 loses nothing
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 16, 3, padding=1)
    layer = build_layer(factorize(info_of(conv), conv), (9, 1))
    x = torch.randn(3, 1, 8, 8)
    assert (layer(x) - conv(x)).abs().max().item() <= ATOL


def test_full_ranks_return_the_dense_layer():
    conv = nn.Conv2d(4, 6, 3)
    layer = build_layer(factorize(info_of(conv), conv), (6, 4))
    assert type(layer) is nn.Conv2d and torch.equal(layer.weight, conv.weight)


def test_hosvd_error_within_discarded_energy_bound():
    torch.manual_seed(2)
    conv = nn.Conv2d(16, 20, 3, bias=False)
    info = info_of(conv)
    f = factorize(info, conv)
    layer = build_layer(f, (8, 6))
    w_hat = torch.einsum("or,rskl,si->oikl", layer.expand.weight[:, :, 0, 0], layer.core.weight, layer.reduce.weight[:, :, 0, 0])
    err = (w_hat - conv.weight).pow(2).sum().item()
    w = conv.weight.detach().double()
    s0 = np.linalg.svd(w.flatten(1).numpy(), compute_uv=False)
    s1 = np.linalg.svd(w.transpose(0, 1).flatten(1).numpy(), compute_uv=False)
    bound = (s0[8:] ** 2).sum() + (s1[6:] ** 2).sum()
    assert err <= bound * (1 + 1e-5)
    assert err >= max((s0[8:] ** 2).sum(), (s1[6:] ** 2).sum()) * (1 - 1e-5)


@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
@pytest.mark.parametrize("r", [1, 7, 20])
def test_svd_linear_eckart_young(shape, r):
    torch.manual_seed(3)
    lin = nn.Linear(shape[1], shape[0])
    layer = build_layer(factorize(info_of(lin), lin), (r,))
    assert isinstance(layer, LowRankLinear)
    w_hat = layer.expand.weight @ layer.reduce.weight
    err = (w_hat.double() - lin.weight.double()).pow(2).sum().item()
    s = np.linalg.svd(lin.weight.detach().double().numpy(), compute_uv=False)
    assert err == pytest.approx((s[r:] ** 2).sum(), rel=1e-4)
    x = torch.randn(4, shape[1])
    ref = x @ w_hat.T + lin.bias
    assert torch.allclose(layer(x), ref, atol=1e-5)


@pytest.mark.parametrize("stride,padding,bias", [(1, 0, True), (2, 1, False), (2, 0, True)])
def test_svd_conv1x1_exact_on_planted_rank(stride, padding, bias):
    torch.manual_seed(4)
    conv = nn.Conv2d(24, 16, 1, stride=stride, padding=padding, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(planted_kernel(16, 24, (1, 1), 5, 5))
    layer = build_layer(factorize(info_of(conv), conv), (5,))
    assert isinstance(layer, LowRankConv2d)
    x = torch.randn(2, 24, 9, 9)
    assert (layer(x) - conv(x)).abs().max().item() <= ATOL


def test_impossible_ranks_are_rejected():
    conv = nn.Conv2d(4, 6, 3)
    f = factorize(info_of(conv), conv)
    with pytest.raises(LrvizError, match=r"rank 0 is impossible; allowed 1..6"):
        build_layer(f, (0, 2))
    with pytest.raises(LrvizError, match=r"rank 7 is above the full rank 6; allowed 1..6"):
        build_layer(f, (7, 2))
    with pytest.raises(LrvizError, match=r"needs integer ranks \[r_out, r_in\]"):
        build_layer(f, (3,))
    with pytest.raises(LrvizError, match=r"needs integer ranks"):
        build_layer(f, (2.5, 2))  # one validator for plans and layers: never truncated to 2
    grouped = nn.Conv2d(8, 12, 3, groups=2)
    with pytest.raises(LrvizError, match=r"rank 7 is above the full rank 6; allowed 1..6 per group \(2 groups\)"):
        build_layer(factorize(info_of(grouped), grouped), (7, 2))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 48, 1)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.c1(x))
        x = torch.relu(self.pw(self.dw(x)))
        return self.fc(x.mean((2, 3)))


def test_compress_never_mutates_and_full_plan_reproduces():
    torch.manual_seed(5)
    model = Net().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = analyze(model, (3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    full = compress(model, make_plan(a, "full"))
    assert (full(x) - model(x)).abs().max().item() <= ATOL
    small = compress(model, make_plan(a, "uniform:0.4", keep_classifier=False))
    assert isinstance(small.c1, Tucker2Conv2d) and isinstance(small.fc, LowRankLinear)
    default = make_plan(a, "uniform:0.4")  # the output Linear is kept dense by default
    assert default["fc"].is_dense and "classifier" in default["fc"].note
    assert small is not model and type(model.c1) is nn.Conv2d
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(s.name == "dw" and "depthwise" in s.reason for s in a.skipped)


def test_factor_cache_computes_once_and_slices(monkeypatch):
    import lrviz.decompose as dec

    calls = []
    real = dec.factorize
    monkeypatch.setattr(dec, "factorize", lambda l, m: calls.append(l.name) or real(l, m))
    torch.manual_seed(6)
    model = Net().eval()
    a = analyze(model, (3, 16, 16))
    cache = FactorCache(model)
    x = torch.randn(2, 3, 16, 16)
    outs = []
    for spec in ["uniform:0.3", "uniform:0.6", "uniform:0.9"]:
        outs.append(compress(model, make_plan(a, spec), cache)(x))
    assert sorted(calls) == sorted(set(calls))  # each layer factorised once
    errs = [(o - model(x)).abs().max().item() for o in outs]
    assert errs[0] >= errs[1] >= errs[2]


def test_plan_for_other_architecture_is_rejected():
    torch.manual_seed(7)
    model = Net().eval()
    a = analyze(model, (3, 16, 16))
    plan = make_plan(a, "uniform:0.5")
    other = nn.Sequential()
    other.add_module("c1", nn.Conv2d(16, 8, 3))
    with pytest.raises(LrvizError, match="not a decomposable layer of this model|another architecture"):
        compress(other, plan)
    with pytest.raises(LrvizError, match="wrong architecture"):
        RankPlan.from_dict(plan.to_dict(), find_layers(nn.Sequential(nn.Conv2d(3, 16, 5)))[0])


# --- grouped convolutions ----------------------------------------------------------------------------

def grouped_planted_kernel(groups, o, i, k, r_out, r_in):
    """A grouped kernel (groups·o, i, kh, kw) whose every group has its own multilinear rank (r_out, r_in)."""
    return torch.cat([planted_kernel(o, i, k, r_out, r_in, seed=10 + g) for g in range(groups)])


GROUPED_GEOMETRY = [
    dict(kernel_size=3, stride=1, padding=1, bias=True),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=1, bias=False),
    dict(kernel_size=3, stride=1, padding=2, dilation=2, bias=True, padding_mode="reflect"),
]


@pytest.mark.parametrize("geo", GROUPED_GEOMETRY)
@pytest.mark.parametrize("ranks", [(3, 2), (6, 2), (3, 5)])
def test_grouped_tucker2_exact_on_planted_per_group_rank(geo, ranks):
    conv = nn.Conv2d(20, 24, groups=4, **geo)  # per group: 6 out, 5 in
    with torch.no_grad():
        conv.weight.copy_(grouped_planted_kernel(4, 6, 5, conv.kernel_size, min(ranks[0], 6), min(ranks[1], 5)))
    info = info_of(conv)
    assert info.groups == 4 and info.full_ranks == (6, 5)
    layer = build_layer(factorize(info, conv), ranks)
    assert isinstance(layer, Tucker2Conv2d)
    assert all(m.groups == 4 for m in layer.children())
    assert ("reduce" in layer._modules) == (ranks[1] < 5) and ("expand" in layer._modules) == (ranks[0] < 6)
    assert layer.core.weight.shape == (4 * ranks[0], ranks[1], *conv.kernel_size)
    x = torch.randn(2, 20, 13, 11)
    assert (layer(x) - conv(x)).abs().max().item() <= 1e-5


def _projector(a: np.ndarray, r: int) -> np.ndarray:
    u = np.linalg.svd(a, full_matrices=False)[0][:, :r]
    return u @ u.T


@pytest.mark.parametrize("ranks", [(2, 3), (5, 1), (6, 3)])
def test_grouped_tucker2_equals_truncated_per_group_reconstruction(ranks):
    # the reference: every group's kernel projected onto the top-R left singular vectors of its own
    # mode unfoldings (numpy SVD), then one grouped conv
    torch.manual_seed(11)
    conv = nn.Conv2d(15, 18, 3, stride=2, padding=1, groups=3)  # per group: 6 out, 5 in
    layer = build_layer(factorize(info_of(conv), conv), ranks)
    w = conv.weight.detach().double().numpy().reshape(3, 6, 5, 3, 3)
    w_hat = []
    for wg in w:
        p_out = _projector(wg.reshape(6, -1), ranks[0])
        p_in = _projector(wg.transpose(1, 0, 2, 3).reshape(5, -1), ranks[1])
        w_hat.append(np.einsum("ao,oikl,ib->abkl", p_out, wg, p_in))
    w_hat = torch.from_numpy(np.concatenate(w_hat)).float()
    x = torch.randn(2, 15, 10, 9)
    ref = nn.functional.conv2d(x, w_hat, conv.bias, stride=2, padding=1, groups=3)
    assert (layer(x) - ref).abs().max().item() <= 1e-5
    if ranks[0] < 6 or ranks[1] < 5:
        assert (layer(x) - conv(x)).abs().max().item() > 1e-3  # truncation did something


@pytest.mark.parametrize("r", [1, 2, 3])
def test_grouped_svd_conv_eckart_young_per_group(r):
    torch.manual_seed(12)
    conv = nn.Conv2d(12, 16, 1, groups=4, stride=2, bias=True)  # per group 4 x 3
    layer = build_layer(factorize(info_of(conv), conv), (r,))
    if r == 3:
        assert type(layer) is nn.Conv2d  # full rank = dense
        return
    assert isinstance(layer, LowRankConv2d) and layer.reduce.groups == layer.expand.groups == 4
    w_hat = torch.einsum("gor,gri->goi", layer.expand.weight.reshape(4, 4, r), layer.reduce.weight.reshape(4, r, 3)).double()
    w = conv.weight.detach().double().reshape(4, 4, 3)
    s = np.linalg.svd(w.numpy(), compute_uv=False)  # (4 groups, 3)
    assert (w_hat - w).pow(2).sum().item() == pytest.approx((s[:, r:] ** 2).sum(), rel=1e-4)
    x = torch.randn(2, 12, 7, 7)
    ref = nn.functional.conv2d(x, w_hat.reshape(16, 3, 1, 1).float(), conv.bias, stride=2, groups=4)
    assert (layer(x) - ref).abs().max().item() <= 1e-5


def test_depthwise_convs():
    # one in, one out channel per group (or a 1x1 kernel): rank 1 already, skipped with the reason
    _, skipped = find_layers(nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1, groups=8)))
    assert [s.name for s in skipped] == ["0", "1"] and all("nothing to truncate" in s.reason for s in skipped)
    # a channel multiplier of 3: the output mode (3 per group) can be truncated, exactly per group
    torch.manual_seed(17)
    conv = nn.Conv2d(4, 12, 3, padding=1, groups=4)
    info = info_of(conv)
    assert info.weight_shape == (4, 3, 1, 3, 3) and info.full_ranks == (3, 1)
    layer = build_layer(factorize(info, conv), (1, 1))
    assert list(layer._modules) == ["core", "expand"] and layer.core.groups == 4
    w = conv.weight.detach().double().numpy().reshape(4, 3, 1, 3, 3)
    w_hat = np.concatenate([np.einsum("ao,oikl->aikl", _projector(wg.reshape(3, -1), 1), wg) for wg in w])
    x = torch.randn(2, 4, 7, 7)
    ref = nn.functional.conv2d(x, torch.from_numpy(w_hat).float(), conv.bias, padding=1, groups=4)
    assert (layer(x) - ref).abs().max().item() <= 1e-5


class GroupedNet(nn.Module):
    """ResNeXt-style block: 1x1 → grouped 3x3 → 1x1, plus a depthwise conv (skipped)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.red = nn.Conv2d(32, 64, 1)
        self.grouped = nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=8)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.exp = nn.Conv2d(64, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.grouped(torch.relu(self.red(x))))
        x = torch.relu(self.exp(self.dw(x)))
        return self.fc(x.mean((2, 3)))


def test_compress_grouped_net_with_cached_factors():
    torch.manual_seed(13)
    model = GroupedNet().eval()
    a = analyze(model, (3, 16, 16))
    assert [l.name for l in a.layers] == ["stem", "red", "grouped", "exp", "fc"]
    assert any(s.name == "dw" and "depthwise" in s.reason and "1 input channel per group" in s.reason for s in a.skipped)
    assert a.layer("grouped").full_ranks == (8, 8) and a.has_spectra
    cache = FactorCache(model)
    x = torch.randn(3, 3, 16, 16)
    full = compress(model, make_plan(a, "full"), cache)
    assert (full(x) - model(x)).abs().max().item() <= 1e-5
    plan = make_plan(a, "uniform:0.5")
    assert plan["grouped"].ranks == (4, 4)
    small = compress(model, plan, cache)
    assert isinstance(small.grouped, Tucker2Conv2d) and small.grouped.core.groups == 8
    # the cached path gives the same net as a fresh decomposition, and as build_layer on its own
    fresh = compress(model, plan)
    assert torch.equal(small(x), fresh(x))
    alone = build_layer(factorize(a.layer("grouped"), model.grouped), (4, 4))
    h = torch.randn(2, 64, 8, 8)
    assert torch.equal(small.grouped(h), alone(h))
    for spec in ("vbmf", "energy:0.9", "ratio:2"):
        p = make_plan(a, spec)
        assert compress(model, p, cache)(x).shape == (3, 10)


# --- layers that must not be decomposed, and padding strings -----------------------------------------

class StdConv2d(nn.Conv2d):
    """Weight-standardised conv (as in BiT / NFNets): its forward is not nn.Conv2d's."""

    def forward(self, x):
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


class CastLinear(nn.Linear):
    def forward(self, x):
        return nn.functional.linear(x, self.weight.to(x.dtype), self.bias)


def test_subclasses_with_their_own_forward_are_skipped():
    net = nn.Sequential(StdConv2d(3, 8, 3), nn.Conv2d(8, 8, 3, padding="same"), nn.Flatten(), CastLinear(8 * 36, 4))
    layers, skipped = find_layers(net)
    assert [l.name for l in layers] == ["1"]
    reasons = {s.name: s.reason for s in skipped}
    assert set(reasons) == {"0", "3"} and "overrides nn.Conv2d's forward" in reasons["0"]
    assert "overrides nn.Linear's forward" in reasons["3"]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("k,d", [(3, 1), (4, 1), (3, 2)])
def test_padding_same_is_decomposed(k, d):
    conv = nn.Conv2d(6, 10, k, padding="same", dilation=d)
    with torch.no_grad():
        conv.weight.copy_(planted_kernel(10, 6, (k, k), 4, 3))
    info = info_of(conv)
    assert info.padding == (d * (k - 1) // 2,) * 2
    layer = build_layer(factorize(info, conv), (4, 3))
    assert layer.core.padding == "same"
    x = torch.randn(1, 6, 9, 8)
    assert (layer(x) - conv(x)).abs().max().item() <= ATOL  # PyTorch's asymmetric 'same' padding kept


# --- a FactorCache belongs to one model --------------------------------------------------------------

def test_factor_cache_of_another_model_is_refused():
    torch.manual_seed(15)
    a_model, b_model = Net().eval(), Net().eval()  # same architecture, different weights
    a = analyze(a_model, (3, 16, 16))
    plan = make_plan(a, "uniform:0.5")
    cache = FactorCache(a_model)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(LrvizError, match="made for another model.*FactorCache\\(model\\)"):
        compress(b_model, plan, cache)
    # a copy with the same weights is the same model for the cache
    twin = copy.deepcopy(a_model)
    assert torch.equal(compress(twin, plan, cache)(x), compress(a_model, plan)(x))
    assert cache.fingerprint == weights_fingerprint(twin) != weights_fingerprint(b_model)
    # weights changed in place after the cache was made: stale
    with torch.no_grad():
        a_model.c1.weight.mul_(2.0)
    with pytest.raises(LrvizError, match="changed since this FactorCache was made"):
        compress(a_model, plan, cache)
    fresh = FactorCache(a_model)
    with torch.no_grad():
        a_model.fc.bias.add_(1.0)
    with pytest.raises(LrvizError, match="layer 'fc' changed"):
        fresh.get("fc")


def test_fingerprint_ignores_non_decomposable_parameters():
    torch.manual_seed(16)
    model = Net().eval()
    fp = weights_fingerprint(model)
    with torch.no_grad():
        model.bn.weight.add_(1.0)  # BatchNorm: factors do not depend on it
        model.dw.weight.add_(1.0)  # depthwise conv: skipped, never factorised
    assert weights_fingerprint(model) == fp


def test_meta_model_decomposes_structurally():
    # no values: spectra are refused with the fix, costs and structure work
    with torch.device("meta"):
        model = GroupedNet().eval()
    with pytest.raises(LrvizError, match="meta device.*spectra=False"):
        analyze(model, (3, 16, 16))
    a = analyze(model, (3, 16, 16), spectra=False)
    plan = make_plan(a, "uniform:0.5")
    small = compress(model, plan)
    assert small.grouped.core.weight.is_meta and small.grouped.core.weight.shape == (8 * 4, 4, 3, 3)
    with FlopCounterMode(display=False) as fc:
        small(torch.zeros(1, 3, 16, 16, device="meta"))
    assert fc.get_total_flops() // 2 == plan_cost(a, plan).macs_planned
