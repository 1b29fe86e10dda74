"""Data-aware factors (--factors data): with an identity input covariance they are the weight-only
bases; on correlated inputs their truncation's output error is never above the weight-only one (exact
for matrices, per mode for k×k convs on pixel-independent inputs); statistics come from hooks, in one
pass, leaving the model as it was."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from lrviz.activations import input_statistics, whitening
from lrviz.decompose import FactorCache, build_layer, factorize
from lrviz.layers import find_layers


def _layer(module):
    net = nn.Sequential(module)
    (info,) = find_layers(net)[0]
    return info


def _matrix(m: nn.Module) -> torch.Tensor:
    """The linear map of a built replacement (Linear / 1×1 conv chain), as one matrix (float64)."""
    mats = [p.weight.detach().to(torch.float64).reshape(p.weight.shape[0], -1) for p in m.modules()
            if isinstance(p, (nn.Linear, nn.Conv2d))]
    out = mats[0]
    for w in mats[1:]:
        out = w @ out
    return out


@pytest.mark.parametrize("module", [nn.Conv2d(12, 20, 3, padding=1), nn.Linear(30, 10), nn.Linear(10, 30), nn.Conv2d(16, 8, 1)])
def test_identity_covariance_gives_the_weight_only_factors(module):
    torch.manual_seed(0)
    info = _layer(module)
    n_in = info.module_weight_shape[1]
    w_only, data = factorize(info, module), factorize(info, module, torch.eye(n_in, dtype=torch.float64))
    assert data.data_aware and not w_only.data_aware
    if info.kind == "tucker2":
        torch.testing.assert_close(data.basis_out, w_only.basis_out, rtol=0, atol=1e-10)
        torch.testing.assert_close(data.basis_in, w_only.basis_in, rtol=0, atol=1e-10)
        torch.testing.assert_close(data.reduce_in, w_only.basis_in, rtol=0, atol=1e-10)
    for r in _some_ranks(info):
        a, b = build_layer(w_only, r), build_layer(data, r)
        if info.kind == "tucker2":
            for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
                assert na == nb
                torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)
        else:  # the best rank-r approximation either way (an m > n matrix has its basis on the other side)
            torch.testing.assert_close(_matrix(a), _matrix(b), rtol=0, atol=1e-6)


def _some_ranks(info):
    if info.kind == "tucker2":
        o, i = info.full_ranks
        return [(max(1, o // 3), i), (o, max(1, i // 2)), (max(1, o // 2), max(1, i // 3))]
    (f,) = info.full_ranks
    return [(1,), (max(1, f // 2),), (f - 1,)]


def _correlated(n: int, dim: int, seed: int) -> torch.Tensor:
    """``n`` samples of ``dim`` features with strongly unequal, rotated variances (a low-rank-ish input)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
    scales = torch.logspace(0, -2.5, dim, dtype=torch.float64)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) @ (q * scales) .T + 0.3


@pytest.mark.parametrize("seed", range(3))
def test_whitened_truncation_never_loses_more_output_than_weight_only_for_a_matrix(seed):
    torch.manual_seed(seed)
    lin = nn.Linear(24, 16).double()
    x = _correlated(4000, 24, seed)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    net = nn.Sequential(lin)
    stats = input_statistics(net, ds, limit=None)
    c = stats.second_moment["0"]
    torch.testing.assert_close(c, x.T @ x / len(x), rtol=1e-10, atol=1e-12)  # the hook's moment is E[x xᵀ]
    info = _layer(lin)
    w_only, data = factorize(info, lin), factorize(info, lin, c)
    y = x @ lin.weight.detach().T
    wins = 0
    for r in range(1, 16):
        e_w = ((x @ _matrix(build_layer(w_only, (r,))).T - y) ** 2).sum()
        e_d = ((x @ _matrix(build_layer(data, (r,))).T - y) ** 2).sum()
        assert e_d <= e_w * (1 + 1e-9) + 1e-12, (r, float(e_d), float(e_w))
        wins += bool(e_d < 0.9 * e_w)
    assert wins >= 5  # and clearly better where the input is far from white


@pytest.mark.parametrize("mode", ["out", "in"])
def test_whitened_tucker2_output_error_is_lower_per_mode(mode):
    """A 3×3 conv on images whose pixels are independent draws of correlated channels: truncating one
    mode with data-aware bases loses no more of the output than the weight-only bases (2 % slack for the
    finite sample), and less on the whole."""
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 24, 3, padding=1).double()
    pix = _correlated(64 * 12 * 12, 16, 7)
    x = pix.reshape(64, 12, 12, 16).permute(0, 3, 1, 2).contiguous()
    ds = torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long))
    stats = input_statistics(nn.Sequential(conv), ds, limit=None, batch_size=16)
    info = _layer(conv)
    w_only, data = factorize(info, conv), factorize(info, conv, stats.second_moment["0"])
    with torch.no_grad():
        y = conv(x) - conv.bias.view(1, -1, 1, 1)
        tot_w = tot_d = 0.0
        for r in (2, 4, 8, 12):
            ranks = (r, 16) if mode == "out" else (24, r)
            e = []
            for f in (w_only, data):
                m = build_layer(f, ranks).double()
                bias = f.bias.view(1, -1, 1, 1)
                e.append(float(((m(x) - bias - y) ** 2).sum()))
            assert e[1] <= e[0] * 1.02, (ranks, e)
            tot_w, tot_d = tot_w + e[0], tot_d + e[1]
    assert tot_d < 0.9 * tot_w


def test_statistics_leave_the_model_as_it_was_and_grouped_convs_stay_weight_only():
    from helpers import tiny_net

    torch.manual_seed(0)
    net = tiny_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(40, 3, 16, 16)
    stats = input_statistics(net, torch.utils.data.TensorDataset(x, torch.zeros(40, dtype=torch.long)), limit=None)
    assert net.training and not net._forward_pre_hooks and all(not m._forward_pre_hooks for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN running stats untouched: eval mode
    assert set(stats.second_moment) == {"0", "3", "5", "7", "11"} and stats.images == 40
    assert stats.second_moment["3"].shape == (16, 16) and stats.second_moment["11"].shape == (48, 48)
    grouped = nn.Sequential(nn.Conv2d(8, 8, 3, groups=2, padding=1))
    s2 = input_statistics(grouped, torch.utils.data.TensorDataset(torch.randn(4, 8, 6, 6), torch.zeros(4, dtype=torch.long)), limit=None)
    assert s2.second_moment == {}


def test_factor_cache_with_statistics_compresses_and_names_its_kind():
    from helpers import tiny_net
    from lrviz import analyze, compress, make_plan

    torch.manual_seed(0)
    net = tiny_net().eval()
    x = torch.randn(64, 3, 16, 16)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long))
    stats = input_statistics(net, ds, limit=None)
    fc_w, fc_d = FactorCache(net), FactorCache(net, stats)
    assert fc_w.kind == "weights" and fc_d.kind == f"data:{stats.fingerprint()}" and fc_d.stats is stats
    plan = make_plan(analyze(net, (3, 16, 16)), "uniform:0.5")
    with torch.no_grad():
        y, yw, yd = net(x), compress(net, plan, fc_w)(x), compress(net, plan, fc_d)(x)
    assert not torch.equal(yw, yd)
    # on the images the statistics came from, the data-aware network is closer to the original
    assert float(((yd - y) ** 2).mean()) < float(((yw - y) ** 2).mean())


def test_whitening_handles_a_singular_moment():
    c = torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64))
    l, inv = whitening(c)
    torch.testing.assert_close(l @ inv, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-8)
    assert np.isfinite(l.numpy()).all() and float(l[2, 2]) > 0


@pytest.mark.parametrize("module", [nn.Linear(20, 12), nn.Conv2d(10, 14, 3)])
def test_the_mean_input_keeps_the_original_output_after_truncation(module):
    """With the input mean given, bases come from the covariance and the truncation's error on the
    mean input is moved into the bias: the mean input maps exactly as before, at every rank."""
    torch.manual_seed(3)
    module = module.double()
    info = _layer(module)
    n_in = info.module_weight_shape[1]
    x = _correlated(3000, n_in, 5) + torch.linspace(0.5, 2.0, n_in, dtype=torch.float64)
    mu, c = x.mean(0), x.T @ x / len(x)
    f = factorize(info, module, c, None, mu)
    probe = mu.view(1, -1) if isinstance(module, nn.Linear) else mu.view(1, -1, 1, 1).expand(1, n_in, 3, 3)
    with torch.no_grad():
        want = module(probe)
        for r in _some_ranks(info):
            torch.testing.assert_close(build_layer(f, r).double()(probe), want, rtol=0, atol=1e-9)


# --- --factors data through the CLI and the dashboard -------------------------------------------------

def test_cli_data_factors_key_record_and_export(tmp_path, capsys):
    import json

    from lrviz.cli import main
    from lrviz.handoff import load_export_dir
    from lrviz.store import Store

    model = ["helpers:tiny_net", "--input-size", "3,16,16"]
    data = ["--data", "synthetic:3,16,16,10,64"]
    keys = {}
    for kind in ("weights", "data"):
        out = tmp_path / f"{kind}.json"
        assert main(["sensitivity", *model, *data, "--limit", "32", "--grid-points", "2", "--factors", kind,
                     "--factors-images", "16", "--json", str(out)]) == 0
        keys[kind] = json.loads(out.read_text())["key"]
    assert keys["weights"] != keys["data"]  # curves of one kind of factors are never read for the other
    err = capsys.readouterr().err
    assert "[factors] data-aware: input statistics" in err and "16 synthetic" in err
    assert main(["evaluate", *model, *data, "--plan", "uniform:0.5", "--factors", "data", "--factors-images", "16"]) == 0
    run = Store().runs(kind="evaluation")[0]
    assert run.metrics["factors"].startswith("data:") and run.name.endswith("[data factors]")
    # an export of data-aware factors (biases moved into the last factors) loads back as the same model
    d = tmp_path / "sd"
    assert main(["export", *model, *data, "--plan", "uniform:0.5", "--factors", "data", "--factors-images", "16",
                 "--format", "state_dict", "--out", str(d)]) == 0
    net, _, plan = load_export_dir(d)
    sd = torch.load(d / "state_dict.pt", weights_only=True)
    assert net.state_dict().keys() == sd.keys()
    # the mean correction gave bias-free last factors a bias, which the rebuilt structure adopted
    from lrviz.decompose import compress
    from lrviz.models import load_model

    plain = compress(load_model("helpers:tiny_net", input_size=(3, 16, 16)).module, plan)
    assert set(sd) - set(plain.state_dict()), "no bias was added by the data-aware factors"
    capsys.readouterr()
    assert main(["export", *model, "--plan", "uniform:0.5", "--factors", "data", "--format", "state_dict",
                 "--out", str(tmp_path / "nodata")]) == 2
    assert "--factors data needs --data" in capsys.readouterr().err


def test_dashboard_toggle_keys_data_factors_apart():
    import sys
    from pathlib import Path

    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    app = Path(__file__).resolve().parents[1] / "app.py"
    if str(app.parent) not in sys.path:
        sys.path.insert(0, str(app.parent))
    from pages._state import CTX_KEY

    at = AppTest.from_file(str(app), default_timeout=120)
    at.run()
    at.select_slider(key="quick_n").set_value(200)
    at.run()
    at.switch_page("pages/ranks.py")
    at.run()
    weights_ctx = at.session_state[CTX_KEY]
    assert weights_ctx.stats is None and weights_ctx.factors.kind == "weights"
    at.toggle(key="data_factors").set_value(True)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    ctx = at.session_state[CTX_KEY]
    assert ctx.factors.kind.startswith("data:") and ctx.source.key != weights_ctx.source.key
    assert ctx.store_model != weights_ctx.store_model and ctx.model_id != weights_ctx.model_id
    assert any("Factors: data-aware, from 500 train-sample images" in c.value for c in at.sidebar.caption)
    at.button(key="preset_ratio").click()
    at.run()
    at.button(key="quick_eval").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    rows = at.session_state["_measured"]
    assert [k for k in rows if k[0] == ctx.model_id and rows[k]] and not [k for k in rows if k[0] == weights_ctx.model_id and rows[k]]
