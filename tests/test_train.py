"""Orthogonal regularisation, over-parameterisation fold-back, training and fine-tuning."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lrviz import analyze, compress, make_plan
from lrviz.data import get_dataset
from lrviz.errors import LrvizError
from lrviz.evaluate import evaluate
from lrviz.train import OverparamConv2d, TrainConfig, finetune, fold, overparameterize, regularizer, soft_orthogonality, srip, train_model
from lrviz.zoo import DemoNet


def test_soft_orthogonality_zero_on_orthogonal_and_closed_form_gradient():
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))[0]
    assert soft_orthogonality(q[:5]).item() == pytest.approx(0, abs=1e-20)  # orthonormal rows
    assert soft_orthogonality(q[:, :5]).item() == pytest.approx(0, abs=1e-20)  # orthonormal columns (tall)
    w = torch.randn(6, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)  # 6 x 8: rows are the smaller side
    val = soft_orthogonality(w)
    m = w.detach().reshape(6, 8)
    e = m @ m.T - torch.eye(6, dtype=torch.float64)
    assert val.item() == pytest.approx((e**2).sum().item())
    val.backward()
    assert torch.allclose(w.grad.reshape(6, 8), 4 * e @ m)


def test_srip_matches_largest_eigenvalue():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 20, generator=g, dtype=torch.float64) * 0.3
    a = w @ w.T - torch.eye(8, dtype=torch.float64)
    want = torch.linalg.eigvalsh(a).abs().max().item()
    assert srip(w, iters=200).item() == pytest.approx(want, rel=1e-6)
    q = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    assert srip(q, iters=5).item() == pytest.approx(0, abs=1e-12)


def test_overparam_layer_folds_back_exactly():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=True)
    op = OverparamConv2d(conv)
    x = torch.randn(2, 8, 9, 9)
    assert (op(x) - conv(x)).abs().max().item() < 1e-5  # same function at initialisation
    with torch.no_grad():  # move away from the initial point: U, V no longer orthogonal
        for p in (op.U, op.V, op.core):
            p.add_(0.1 * torch.randn_like(p))
    folded = op.fold()
    assert type(folded) is nn.Conv2d
    assert (folded(x) - op(x)).abs().max().item() < 1e-5


def test_overparameterize_and_fold_whole_net():
    torch.manual_seed(0)
    net = DemoNet().eval()
    op = overparameterize(net).eval()
    n_op = sum(isinstance(m, OverparamConv2d) for m in op.modules())
    assert n_op == 18 and isinstance(op.conv1, nn.Conv2d)  # the 1-channel stem stays plain
    x = torch.randn(3, 1, 28, 28)
    assert (op(x) - net(x)).abs().max().item() < 1e-4
    back = fold(op)
    assert not any(isinstance(m, OverparamConv2d) for m in back.modules())
    assert set(back.state_dict()) == set(net.state_dict())
    assert (back(x) - op(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("regime", ["plain", "ortho", "overparam"])
def test_one_training_step_changes_weights_and_lowers_loss(regime):
    torch.manual_seed(0)
    net = overparameterize(DemoNet()) if regime == "overparam" else DemoNet()
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    before = copy.deepcopy(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.0)
    net.train()
    losses = []
    for _ in range(2):
        loss = F.cross_entropy(net(x), y) + regularizer(net, regime, 1e-3, 1e-4)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[1] < losses[0]
    changed = [k for k in before if not torch.equal(before[k], net.state_dict()[k])]
    assert any("weight" in k or "core" in k for k in changed)
    if regime == "plain":
        assert regularizer(net, regime, 1.0, 1.0).item() == 0


def test_train_model_resumes_and_checks_config(tmp_path):
    ds = get_dataset("synthetic:1,28,28,10,64", "train")
    ck = str(tmp_path / "ck.pt")
    cfg = TrainConfig(regime="overparam", epochs=2, lr=0.05, batch_size=32)
    full, hist = train_model(DemoNet(), ds, cfg, checkpoint=ck, device="cpu")
    assert len(hist) == 2 and not any(isinstance(m, OverparamConv2d) for m in full.modules())
    # resuming a finished run restores the state and does no more epochs
    again, hist2 = train_model(DemoNet(), ds, cfg, checkpoint=ck, resume=True, device="cpu")
    assert [h["epoch"] for h in hist2] == [1, 2]
    for k, v in full.state_dict().items():
        assert torch.allclose(v, again.state_dict()[k])
    with pytest.raises(LrvizError, match="another configuration"):
        train_model(DemoNet(), ds, TrainConfig(regime="overparam", epochs=3, lr=0.05, batch_size=32), checkpoint=ck, resume=True)
    with pytest.raises(LrvizError, match="unknown training regime 'fancy'"):
        TrainConfig(regime="fancy")


def tiny(num_classes=4):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def test_finetuning_recovers_a_truncated_model():
    torch.manual_seed(0)
    train = get_dataset("synthetic:3,12,12,4,256", "train")
    test = get_dataset("synthetic:3,12,12,4,256", "test")
    net = tiny()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
    for _ in range(8):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    net.eval()
    base = evaluate(net, test).top1
    a = analyze(net, (3, 12, 12))
    cut = compress(net, make_plan(a, "uniform:0.1"))  # deliberately too small
    hurt = evaluate(cut, test)
    res = finetune(cut, train, epochs=3, lr=0.05, batch_size=32, val_set=test, val_limit=None, device="cpu")
    healed = evaluate(res.model, test)
    assert base > 0.9 and hurt.top1 < base
    assert healed.top1 > hurt.top1 and healed.loss < hurt.loss
    assert res.best_epoch >= 1 and len(res.history) >= 1
    # the input model was not modified
    assert evaluate(cut, test).top1 == hurt.top1


def test_distillation_path_runs_and_cancel_returns_best():
    train = get_dataset("synthetic:3,12,12,4,64", "train")
    teacher = tiny().eval()
    calls = []
    res = finetune(tiny(), train, epochs=2, teacher=teacher, progress=calls.append, should_stop=lambda: len(calls) > 0, device="cpu")
    assert res.cancelled
