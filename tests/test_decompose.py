"""Tucker-2 / SVD decomposition: exactness, Eckart–Young, caching, no mutation."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from lrviz import FactorCache, LrvizError, RankPlan, analyze, build_layer, compress, factorize, find_layers, make_plan
from lrviz.decompose import LowRankConv2d, LowRankLinear, Tucker2Conv2d

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
    with pytest.raises(LrvizError, match=r"rank 7 is impossible; allowed 1..6"):
        build_layer(f, (7, 2))
    with pytest.raises(LrvizError, match=r"needs ranks \(r_out, r_in\)"):
        build_layer(f, (3,))


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
