"""Every torchvision classification model and a set of timm CNNs, end to end.

For each model (random init, eval mode): analyse it, resolve the plans ``full``, ``uniform:0.5``,
``vbmf`` and ``ratio:3``, compress with each, and check against ``torch.utils.flop_counter``:

* the output shape is unchanged;
* the closed-form MACs of the original and of every planned model equal ``FlopCounterMode`` (FLOPs / 2)
  on the original and on the compressed net, **restricted to what lrviz counts**: the ops run inside
  ``nn.Conv1d/2d/3d`` and ``nn.Linear`` modules (FlopCounterMode's per-module counts). Attention
  products (``bmm``, ``scaled_dot_product_attention``, the functional in-projection of
  ``nn.MultiheadAttention``) are not conv/linear modules, so lrviz does not count them and neither
  does the reference; for the CNNs the restriction removes nothing, which is checked too;
* the planned params equal the compressed net's parameters;
* every conv / linear-like module is either a decomposable layer or listed in ``skipped`` with a reason.

Costs depend only on shapes, so the compressed nets are counted on the ``meta`` device: the model is
moved to ``meta`` after its spectra are computed and :func:`lrviz.compress` then builds every factor
with its true shape and no values (the same factorize / build_layer / compress code, without the
eigendecompositions, which are the slow part). The numerical side — decomposed layers built from
real factors, a full plan that reproduces the output — is run on a representative model per family
(``NUMERIC``); the maths of every layer kind is tested exactly in test_decompose.py.

Spectra cost tens of seconds to minutes on a 2-core CPU for the big models (VGG's 25088×4096 head,
ViT-L/H, RegNet-Y-128GF, ...), so models with more than ``COST_ONLY_PARAMS`` parameters (``COST_ONLY``)
get the cost-only path: built directly on ``meta`` where the builder allows, ``spectra=False`` and
therefore no ``vbmf`` plan. That still runs every architecture-dependent part of lrviz (layer
discovery, per-call sizes, plans, structural compression, costs); what it leaves out (spectra and
EVBMF) does not depend on the architecture and runs on the smaller models of the same families.

The whole file takes about 2¼ minutes with ``OMP_NUM_THREADS=2`` on the 2-core CI machine; the cases
that take more than ~3 s there (``SLOW``) are marked ``slow`` (they still run in CI).
"""

from __future__ import annotations

import math
import warnings
from unittest import mock

import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from lrviz import FactorCache, LrvizError, analyze, compress, count_params, make_plan, plan_cost
from lrviz.decompose import LowRankConv2d, LowRankLinear, Tucker2Conv2d

SPECS = ("full", "uniform:0.5", "vbmf", "ratio:3")
COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
CANDIDATES = COUNTED + (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.MultiheadAttention, nn.Embedding, nn.Bilinear)
DECOMPOSED = (Tucker2Conv2d, LowRankConv2d, LowRankLinear)

#: torchvision models with more than this many parameters get the cost-only path (listed below, unless
#: they are a family's NUMERIC representative)
COST_ONLY_PARAMS = 25_000_000
COST_ONLY = frozenset({  # > 25 M params in torchvision 0.29 (a model missing here fails the params check below)
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny", "densenet161", "efficientnet_b5",
    "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_l", "efficientnet_v2_m", "maxvit_t", "regnet_x_8gf",
    "regnet_x_16gf", "regnet_x_32gf", "regnet_y_8gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf",
    "resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "swin_s", "swin_b", "swin_v2_s", "swin_v2_t",
    "swin_v2_b", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_16",
    "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet50_2", "wide_resnet101_2",
})

#: cases measured above ~3 s on the 2-core CI machine
SLOW = {
    "tv-resnext50_32x4d", "tv-regnet_y_3_2gf", "tv-densenet169", "tv-densenet201", "tv-swin_t",
    "tv-efficientnet_v2_l",
}

#: transformers: they have matrix products outside conv/linear modules (attention), which lrviz does not count
ATTENTION = ("vit_", "swin_", "maxvit_", "mobilevit_")

#: one representative per family is also decomposed with real factors (the others are counted on meta only)
NUMERIC = {
    "tv-efficientnet_b0", "tv-googlenet", "tv-mnasnet0_5", "tv-mobilenet_v2", "tv-mobilenet_v3_small",
    "tv-regnet_x_400mf", "tv-resnet18", "tv-resnext50_32x4d", "tv-shufflenet_v2_x0_5", "tv-squeezenet1_1", "tv-swin_t",
    "timm-regnetx_002", "timm-resnext26ts", "timm-convnext_atto", "timm-mobilenetv3_small_100", "timm-ghostnet_100",
    "timm-vit_tiny_patch16_224", "timm-mobilevit_xxs",
}

# (name, input size, create_model kwargs): small CNNs covering timm's own layers (Conv2dSame,
# ScaledStdConv2d, grouped and depthwise convs, SE/ECA, a ViT and a MobileViT)
TIMM = [
    ("resnet18", (3, 32, 32), {}),
    ("resnet50", (3, 32, 32), {}),
    ("efficientnet_b0", (3, 32, 32), {}),
    ("tf_efficientnet_b0", (3, 32, 32), {}),  # Conv2dSame: dynamic 'same' padding → skipped
    ("regnetx_002", (3, 32, 32), {}),
    ("regnety_002", (3, 32, 32), {}),
    ("convnext_atto", (3, 32, 32), {}),
    ("mobilenetv3_small_100", (3, 32, 32), {}),
    ("resnext26ts", (3, 32, 32), {}),
    ("nf_regnet_b0", (3, 32, 32), {}),  # ScaledStdConv2d: weight standardisation → skipped
    ("ghostnet_100", (3, 32, 32), {}),
    ("vit_tiny_patch16_224", (3, 32, 32), {"img_size": 32}),
    ("mobilevit_xxs", (3, 64, 64), {}),
]


def tv_config(name: str) -> tuple[tuple[int, int, int], dict]:
    """Smallest convenient input for each torchvision architecture (and the builder kwargs it needs)."""
    if name == "inception_v3":
        return (3, 75, 75), {}  # its stem needs ≥ 75 px
    if name == "alexnet":
        return (3, 63, 63), {}  # three stride-2 max-pools after a stride-4 conv
    if name == "maxvit_t":
        return (3, 224, 224), {}  # every stage (H/4 … H/32) must be divisible by the 7×7 partition
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        return (3, 2 * patch, 2 * patch), {"image_size": 2 * patch}  # 2×2 patches
    return (3, 32, 32), {}  # swin's windows pad small maps; the CNNs pool adaptively


def _cases():
    out = []
    for name in torchvision.models.list_models(module=torchvision.models):
        size, kw = tv_config(name)
        out.append(pytest.param("tv", name, size, kw, name in COST_ONLY, id=f"tv-{name}"))
    for name, size, kw in TIMM:
        out.append(pytest.param("timm", name, size, kw, False, id=f"timm-{name}"))
    return [pytest.param(*p.values, id=p.id, marks=[pytest.mark.slow] if p.id in SLOW else []) for p in out]


def build(source: str, name: str, kwargs: dict, meta: bool) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's init-weights FutureWarnings
        create = (lambda: torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)) if source == "tv" else (
            lambda: timm.create_model(name, pretrained=False, num_classes=10, **kwargs))
        if meta:
            try:
                with torch.device("meta"):
                    return create().eval()
            except NotImplementedError:  # the builder computes with tensors (RegNet's stage widths)
                pass
            from torchvision.models.regnet import BlockParams

            widths = BlockParams.from_init_params.__func__

            def on_cpu(cls, *args, **kw):  # that arithmetic on the CPU, the model itself on meta
                with torch.device("cpu"):
                    return widths(cls, *args, **kw)

            with mock.patch.object(BlockParams, "from_init_params", classmethod(on_cpu)), torch.device("meta"):
                return create().eval()
        torch.manual_seed(0)
        return create().eval()


def reference_macs(model: nn.Module, size) -> tuple[int, int, tuple]:
    """``(MACs in conv/linear modules, MACs of every op, output shape)`` by FlopCounterMode (FLOPs / 2)."""
    dev = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        out = model(torch.zeros(1, *size, device=dev))
    counts = fc.get_flop_counts()
    root = type(model).__name__
    names = {n for n, m in model.named_modules(remove_duplicate=False) if n and isinstance(m, COUNTED)}
    inside = sum(sum(counts.get(f"{root}.{n}", {}).values()) for n in names)
    return inside // 2, fc.get_total_flops() // 2, tuple(out.shape)


@pytest.mark.parametrize("source,name,size,kwargs,cost_only", _cases())
def test_model_zoo(source, name, size, kwargs, cost_only):
    case = f"{source}-{name}"
    model = build(source, name, kwargs, meta=cost_only)
    a = analyze(model, size, name, spectra=not cost_only)

    # every conv/linear-like module is a decomposable layer or skipped with a reason
    listed = {l.name for l in a.layers}
    skipped = {s.name: s.reason for s in a.skipped}
    assert not listed & set(skipped)
    for n, m in model.named_modules():
        if n and isinstance(m, CANDIDATES):
            assert n in listed or skipped.get(n), f"{n} ({type(m).__name__}) is neither decomposable nor skipped"
    assert all(len(r) > 10 for r in skipped.values())
    by_name = {l.name: l for l in a.layers}
    for n, m in model.named_modules():  # grouped convs are decomposed per group, with their groups
        if n in by_name and isinstance(m, nn.Conv2d):
            assert by_name[n].groups == m.groups and by_name[n].module_weight_shape == tuple(m.weight.shape)
    if case == "tv-resnext50_32x4d":  # the example: its 16 grouped 3x3 convs
        assert sum(l.groups == 32 for l in a.layers) == 16
    if not cost_only:
        assert a.params <= COST_ONLY_PARAMS or case in NUMERIC, "a big model: add it to COST_ONLY"
        assert a.has_spectra and set(a.spectra) == set(a.vbmf) == listed

    plans = {}
    for spec in SPECS if not cost_only else ("full", "uniform:0.5", "ratio:3"):
        try:
            plans[spec] = make_plan(a, spec)
        except LrvizError as e:
            # only a ratio the model cannot reach may fail: check that against rank 1 on every layer
            assert spec == "ratio:3" and "cannot reach" in str(e), str(e)
            assert plan_cost(a, make_plan(a, "uniform:0.000001")).params_ratio < 3 * 1.1
    assert "full" in plans and "uniform:0.5" in plans and (cost_only or "vbmf" in plans)

    changed = {spec: plan for spec, plan in plans.items() if not all(lp.is_dense for lp in plan.layers)}
    for spec, plan in plans.items():
        if spec not in changed:  # nothing to decompose (``full``; ``vbmf`` finds no signal in random weights)
            cost = plan_cost(a, plan)
            assert (cost.params_planned, cost.macs_planned) == (a.params, a.macs), spec
    assert "uniform:0.5" in changed
    if case == "tv-resnext50_32x4d":
        assert sum(not lp.is_dense and by_name[lp.name].groups == 32 for lp in changed["uniform:0.5"].layers) == 16

    if case in NUMERIC:  # real factors: the truncated nets run, a dense plan reproduces the model
        x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y0 = model(x)
            cache = FactorCache(model)
            torch.testing.assert_close(compress(model, plans["full"], cache)(x), y0, rtol=0, atol=1e-5)
            for spec, plan in changed.items():
                net = compress(model, plan, cache)
                y = net(x)
                assert y.shape == y0.shape and torch.isfinite(y).all(), spec
                assert count_params(net) == plan_cost(a, plan).params_planned, spec

    if not cost_only:
        model = model.to("meta")  # the test's own model; costs depend only on shapes
    inside, total, shape = reference_macs(model, size)
    assert a.macs == inside
    if not name.startswith(ATTENTION):
        assert total == inside, "a CNN's FLOPs all come from conv/linear modules"
    for spec, plan in changed.items():
        cost = plan_cost(a, plan)
        small = compress(model, plan)
        inside_p, _, shape_p = reference_macs(small, size)
        assert shape_p == shape, spec
        assert cost.macs_planned == inside_p, spec
        assert cost.params_planned == count_params(small), spec
        for lp in plan.layers:
            assert isinstance(small.get_submodule(lp.name), DECOMPOSED) != lp.is_dense, (spec, lp.name)
    if "ratio:3" in plans:
        assert math.isclose(plan_cost(a, plans["ratio:3"]).params_ratio, 3.0, rel_tol=0.1)
