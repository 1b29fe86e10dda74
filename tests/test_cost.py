"""Params and MACs against closed forms and torch.utils.flop_counter.FlopCounterMode."""

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from lrviz import analyze, compress, count_macs, count_params, make_plan, plan_cost


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
