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


def _scripted_validation(monkeypatch, results):
    """Replace the validation inside finetune by scripted (top-1, loss) results, one per call (the first
    is the model before fine-tuning); returns the weights each call saw."""
    import lrviz.train
    from lrviz.evaluate import EvalResult

    results, seen = iter(results), []

    def fake_evaluate(net, dataset, *, limit=None, device=None, amp=False):
        seen.append(copy.deepcopy(net.state_dict()))
        top1, loss = next(results)
        return EvalResult(top1, (top1, top1), None, loss, len(dataset), 0.0)

    monkeypatch.setattr(lrviz.train, "evaluate", fake_evaluate)
    return seen


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_returns_the_best_validation_epoch_and_stops_early(monkeypatch):
    train = get_dataset("synthetic:3,12,12,4,64", "train")
    # before, epochs 1..5: epoch 2 is best; 3 and 4 are worse, so patience 2 stops before epoch 5
    seen = _scripted_validation(monkeypatch, [(0.50, 1.0), (0.60, 0.9), (0.80, 0.5), (0.70, 0.6), (0.65, 0.7), (0.99, 0.1)])
    res = finetune(tiny(), train, epochs=5, lr=0.05, batch_size=32, val_set=train, patience=2, device="cpu")
    assert [h.val_top1 for h in res.history] == [0.60, 0.80, 0.70, 0.65]
    assert res.best_epoch == 2 and res.best_val_top1 == 0.80 and res.stopped_early and not res.cancelled
    assert _same(res.model.state_dict(), seen[2])  # seen[0]: before fine-tuning
    assert not _same(res.model.state_dict(), seen[4])  # not the last epoch's
    # equal top-1: the lower loss wins; keep="last" returns the last epoch's weights
    seen = _scripted_validation(monkeypatch, [(0.5, 1.0), (0.7, 0.9), (0.7, 0.8), (0.7, 0.85)])
    res = finetune(tiny(), train, epochs=3, lr=0.05, batch_size=32, val_set=train, device="cpu")
    assert res.best_epoch == 2 and _same(res.model.state_dict(), seen[2])
    seen = _scripted_validation(monkeypatch, [(0.5, 1.0), (0.7, 0.9), (0.6, 0.8), (0.6, 0.85)])
    res = finetune(tiny(), train, epochs=3, lr=0.05, batch_size=32, val_set=train, device="cpu", keep="last")
    assert res.best_epoch == 3 and _same(res.model.state_dict(), seen[3])


def test_cancelling_returns_the_best_weights_so_far(monkeypatch):
    train = get_dataset("synthetic:3,12,12,4,64", "train")  # batch 16: 4 steps an epoch
    seen = _scripted_validation(monkeypatch, [(0.5, 1.0), (0.7, 0.9), (0.6, 0.8), (0.65, 0.7)])
    polls = iter(range(100))
    # polled before every step: the 10th poll (2 steps into epoch 3) cancels; epoch 3 is still validated
    res = finetune(tiny(), train, epochs=5, lr=0.05, batch_size=16, val_set=train, device="cpu",
                   should_stop=lambda: next(polls) >= 9)
    assert res.cancelled and len(res.history) == 3 and res.best_epoch == 1
    assert _same(res.model.state_dict(), seen[1])
    # cancelled before the first step: the input weights come back, no epoch is recorded
    net = tiny()
    seen = _scripted_validation(monkeypatch, [(0.5, 1.0)])
    res = finetune(net, train, epochs=2, val_set=train, device="cpu", should_stop=lambda: True)
    assert res.cancelled and res.history == () and res.best_epoch == 0
    assert _same(res.model.state_dict(), net.state_dict())


def test_distillation_changes_the_loss_that_is_minimised():
    from lrviz.data import make_loader
    from lrviz.train import distillation_loss

    train = get_dataset("synthetic:3,12,12,4,64", "train")
    torch.manual_seed(1)
    teacher = tiny().eval()
    torch.manual_seed(2)
    student = tiny()
    x, y = next(iter(make_loader(train, batch_size=64, shuffle=True, seed=0)))  # finetune's one batch
    with torch.no_grad():
        s, t = student(x), teacher(x)
    ce = F.cross_entropy(s, y).item()
    # (1 − α)·CE + α·T²·KL(p_teacher ‖ p_student), α = 0.5, T = 4, written out
    p_t, log_p_s = F.softmax(t / 4, 1), F.log_softmax(s / 4, 1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean().item()
    want = 0.5 * ce + 0.5 * 16 * kl
    assert distillation_loss(s, t, y, 0.5, 4.0).item() == pytest.approx(want, rel=1e-5)

    def first_step_loss(**kw):
        events = []
        finetune(student, train, epochs=1, batch_size=64, progress=events.append, device="cpu", **kw)
        return next(e["loss"] for e in events if e["event"] == "step")  # before the step's update

    assert first_step_loss() == pytest.approx(ce, rel=1e-5)
    assert first_step_loss(teacher=teacher) == pytest.approx(want, rel=1e-5)
    assert first_step_loss(teacher=teacher, distill_alpha=0.0) == pytest.approx(ce, rel=1e-5)
    assert abs(want - ce) > 0.01  # the teacher really changes what is minimised


class _Recording(torch.utils.data.Dataset):
    """A dataset that remembers which items were read (and passes its name and split on)."""

    def __init__(self, base):
        self.base, self.seen = base, set()
        self.name, self.split = base.name, base.split

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.seen.add(int(i))
        return self.base[i]


@pytest.mark.parametrize("held_out", [False, True])
def test_finetuning_reads_only_its_train_and_validation_parts(held_out):
    """Through :func:`lrviz.data.finetune_splits`, fine-tuning (training and epoch selection) never reads
    an image of the evaluation part."""
    from helpers import tiny_net

    from lrviz.data import finetune_splits

    test = _Recording(get_dataset("synthetic:3,16,16,10,80"))
    train = None if held_out else _Recording(get_dataset("synthetic:3,16,16,10,80", "train"))
    splits = finetune_splits(test, train)
    assert splits.held_out == held_out
    finetune(tiny_net(), splits.train.dataset, epochs=2, val_set=splits.val.dataset, val_limit=None, patience=5)
    used = set(splits.train.indices) | set(splits.val.indices)
    if held_out:
        assert test.seen == used and not test.seen & set(splits.eval.indices)
    else:
        assert train.seen == used and not test.seen  # the test split is not even opened
