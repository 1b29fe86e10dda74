"""Params and MACs against closed forms and torch.utils.flop_counter.FlopCounterMode."""

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from lrviz import analyze, compress, count_macs, count_params, make_plan, plan_cost, record_io


def flop_counter_macs(model, input_size):
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, *input_size))
    return fc.get_total_flops() // 2


def test_closed_form_tiny_net():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    # conv1: 8x8 out, 8*3*9 per pixel; conv2: 3x3 out, 4*8*9; linear 36*5
    want = 8 * 8 * 8 * 3 * 9 + 3 * 3 * 4 * 8 * 9 + 36 * 5
    assert count_macs(net, (3, 8, 8)) == want
    assert count_params(net) == (8 * 3 * 9 + 8) + (4 * 8 * 9 + 4) + (36 * 5 + 5)


def test_planned_tucker2_cost_closed_form():
    conv = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1))
    a = analyze(conv, (16, 10, 10))
    plan = make_plan(a, "uniform:0.25")  # ranks (8, 4)
    lp = plan.layers[0]
    assert lp.ranks == (8, 4)
    c = plan_cost(a, plan)
    # first 1x1 at input res 10x10, core and last 1x1 at 5x5
    assert c.macs_planned == 100 * 16 * 4 + 25 * (4 * 8 * 9 + 8 * 32)
    assert c.params_planned == 16 * 4 + 4 * 8 * 9 + 8 * 32 + 32
    m = compress(conv, plan)
    assert count_params(m) == c.params_planned
    assert flop_counter_macs(m, (16, 10, 10)) == c.macs_planned


CASES = [
    ("resnet18", (3, 64, 64), "uniform:0.5", ()),
    ("vgg11_bn", (3, 32, 32), "uniform:0.4", ("classifier.*",)),  # 25088x4096 head: slow to factorise on CPU
    ("mobilenet_v2", (3, 64, 64), "ratio:2", ()),
]


@pytest.mark.parametrize("name,input_size,spec,exclude", CASES)
def test_macs_and_params_agree_with_flop_counter(name, input_size, spec, exclude):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    a = analyze(model, input_size, name, spectra=False)  # cost only: uniform/ratio plans need no spectra
    assert a.macs == flop_counter_macs(model, input_size)
    assert a.params == sum(p.numel() for p in model.parameters())
    plan = make_plan(a, spec, exclude=exclude)
    cost = plan_cost(a, plan)
    assert cost.macs_ratio > 1.3
    small = compress(model, plan)
    assert cost.macs_planned == flop_counter_macs(small, input_size)
    assert cost.params_planned == count_params(small)
    # per-layer rows add up to the difference in totals
    t = cost.table
    assert a.params - cost.params_planned == int((t.params - t.params_planned).sum())
    assert a.macs - cost.macs_planned == int((t.macs - t.macs_planned).sum())
    assert cost.to_dict()["macs"] == {"original": a.macs, "compressed": cost.macs_planned}


# --- modules called more than once per forward pass -------------------------------------------------

class SharedConvNet(nn.Module):
    """One 3x3 conv called three times (twice at 16x16, once at 8x8), also registered as an alias, and a
    Linear applied to 16 positions and then to the pooled vector."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.alias = self.shared  # same module under a second name
        self.mix = nn.Linear(16, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.shared(x))
        x = torch.relu(self.alias(x))  # second call, same resolution
        x = torch.relu(self.shared(nn.functional.avg_pool2d(x, 2)))  # third call, half resolution
        tokens = nn.functional.avg_pool2d(x, 2).flatten(2).transpose(1, 2)  # (1, 16 positions, 16)
        v = self.mix(tokens).mean(1) + self.mix(x.mean((2, 3)))  # mix on 16 positions, then on one vector
        return self.head(v)


def test_record_io_keeps_every_call():
    io = record_io(SharedConvNet(), (3, 16, 16))
    shared = io["shared"]
    assert "alias" not in io and shared.n_calls == 3
    assert [(c.in_hw, c.out_hw) for c in shared.calls] == [((16, 16), (16, 16)), ((16, 16), (16, 16)), ((8, 8), (8, 8))]
    assert shared.macs == (256 + 256 + 64) * 16 * 16 * 9
    assert [c.positions for c in io["mix"].calls] == [16, 1]


@pytest.mark.parametrize("spec", ["uniform:0.5", "uniform:0.25"])
def test_shared_module_costed_per_call(spec):
    torch.manual_seed(0)
    net = SharedConvNet().eval()
    size = (3, 16, 16)
    a = analyze(net, size, spectra=False)
    # dense closed form by hand: stem 256 px; shared 256+256+64 px; mix 16+1 vectors; head 1 vector
    want = 256 * 16 * 3 * 9 + (256 + 256 + 64) * 16 * 16 * 9 + (16 + 1) * 16 * 32 + 32 * 5
    assert a.macs == want == flop_counter_macs(net, size)
    plan = make_plan(a, spec, keep_classifier=False)
    assert not plan["shared"].is_dense and not plan["mix"].is_dense
    cost = plan_cost(a, plan)
    small = compress(net, plan)
    assert small.alias is small.shared  # the alias is replaced too, and stays shared
    assert cost.macs_planned == flop_counter_macs(small, size)
    assert cost.params_planned == count_params(small)  # a shared module's params count once
    assert cost.macs_planned < a.macs


class TwoResolutionNet(nn.Module):
    """A strided conv used on the full image and on a 2x downsampled copy (different sizes per call)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, 4)

    def forward(self, x):
        a = self.conv(x).mean((2, 3))
        b = self.conv(nn.functional.interpolate(x, scale_factor=0.5)).mean((2, 3))
        return self.fc(a + b)


def test_layer_called_at_two_resolutions():
    torch.manual_seed(1)
    net = TwoResolutionNet().eval()
    size = (8, 20, 20)
    a = analyze(net, size, spectra=False)
    io = a.io["conv"]
    assert [(c.in_hw, c.out_hw) for c in io.calls] == [((20, 20), (10, 10)), ((10, 10), (5, 5))]
    assert a.macs == flop_counter_macs(net, size)
    plan = make_plan(a, "uniform:0.25")  # (6, 2)
    assert plan["conv"].ranks == (6, 2)
    c = plan_cost(a, plan)
    # per call: reduce at input res, core and expand at output res
    per_call = [p_in * 8 * 2 + p * (2 * 6 * 9 + 6 * 24) for p_in, p in [(400, 100), (100, 25)]]
    assert c.macs_planned == sum(per_call) + 24 * 4
    assert c.macs_planned == flop_counter_macs(compress(net, plan), size)


# --- grouped convolutions ----------------------------------------------------------------------------

@pytest.mark.parametrize("ranks", [(3, 2), (6, 2), (3, 4), (6, 4)])
@pytest.mark.parametrize("geo", [dict(kernel_size=3, padding=1), dict(kernel_size=(3, 5), stride=2, padding=(0, 2), bias=False)])
def test_grouped_tucker2_cost_matches_flop_counter(ranks, geo):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(16, 24, groups=4, **geo))  # per group 6 out, 4 in
    size = (16, 11, 9)
    a = analyze(net, size, spectra=False)
    (l,) = a.layers
    assert l.groups == 4 and l.weight_shape == (4, 6, 4, *net[0].kernel_size) and l.full_ranks == (6, 4)
    assert a.macs == flop_counter_macs(net, size)
    plan = make_plan(a, "full").with_ranks({l.name: ranks})
    c = plan_cost(a, plan)
    small = compress(net, plan)
    assert c.macs_planned == flop_counter_macs(small, size)
    assert c.params_planned == count_params(small)
    if ranks == (6, 4):
        assert type(small[0]) is nn.Conv2d  # full rank = dense


@pytest.mark.parametrize("r", [1, 2, 3])
def test_grouped_svd_conv_cost_matches_flop_counter(r):
    net = nn.Sequential(nn.Conv2d(12, 9, 1, groups=3, stride=2, padding=1))  # per group 3 out, 4 in
    size = (12, 7, 7)
    a = analyze(net, size, spectra=False)
    (l,) = a.layers
    assert l.kind == "svd_conv" and l.full_ranks == (3,)
    plan = make_plan(a, "full").with_ranks({l.name: (r,)})
    c = plan_cost(a, plan)
    small = compress(net, plan)
    assert c.macs_planned == flop_counter_macs(small, size)
    assert c.params_planned == count_params(small)
    assert c.macs_planned == (25 * r * (12 + 9) if r < 3 else 25 * 9 * 4)  # 5x5 output positions


class PatchFoldNet(nn.Module):
    """Folds 2x2 patches of the image into the batch dim (as MobileViT does), then a conv and a Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 12, 3, padding=1)
        self.fc = nn.Linear(12, 6)

    def forward(self, x):
        b, c, h, w = x.shape
        p = x.reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(b * 4, c, h // 2, w // 2)
        y = self.conv(p).flatten(2).transpose(1, 2)  # (4·b, positions, 12)
        return self.fc(y).mean((0, 1))


def test_batch_folded_calls_are_costed_per_sample():
    torch.manual_seed(3)
    net = PatchFoldNet().eval()
    size = (4, 8, 8)
    a = analyze(net, size, spectra=False)
    call = a.io["conv"].calls[0]
    assert (call.batch, call.in_hw) == (4, (4, 4)) and a.io["fc"].calls[0].positions == 4 * 16
    assert a.macs == 4 * 16 * 12 * 4 * 9 + 64 * 12 * 6 == flop_counter_macs(net, size)
    plan = make_plan(a, "uniform:0.5", keep_classifier=False)
    assert not plan["conv"].is_dense and not plan["fc"].is_dense
    assert plan_cost(a, plan).macs_planned == flop_counter_macs(compress(net, plan), size)
