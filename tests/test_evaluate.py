"""Tests for lrviz.evaluate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lrviz.data import get_dataset
from lrviz.errors import LrvizError
from lrviz.evaluate import (
    EvalResult,
    LatencyResult,
    compare_latency,
    evaluate,
    measure_latency,
    wilson_interval,
)

Z = 1.959963984540054


# ------------------------------------------------------------------------------ Wilson interval


def test_wilson_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4901624, abs=1e-6)
    assert hi == pytest.approx(0.9433178, abs=1e-6)


@pytest.mark.parametrize("k,n", [(8, 10), (1, 3), (50, 100), (997, 1000), (3, 7)])
def test_wilson_matches_scipy(k, n):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9)
    assert hi == pytest.approx(ref.high, abs=1e-9)


def test_wilson_edges_closed_form():
    n = 20
    assert wilson_interval(0, n) == (0.0, pytest.approx(Z**2 / (n + Z**2), abs=1e-12))
    assert wilson_interval(n, n) == (pytest.approx(n / (n + Z**2), abs=1e-12), 1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(5, 10, z=1.0)
    half = math.sqrt(0.25 / 10 + 1 / 400) / 1.1
    assert (lo, hi) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    with pytest.raises(LrvizError, match="0 <= k <= n"):
        wilson_interval(11, 10)
    with pytest.raises(LrvizError, match="0 <= k <= n"):
        wilson_interval(-1, 10)


# ------------------------------------------------------------------------------ evaluate


class IndexDataset(torch.utils.data.Dataset):
    """Item i is (a 1x2x2 image filled with i, label[i])."""

    def __init__(self, labels, num_classes):
        self.labels = list(labels)
        self.num_classes = num_classes
        self.classes = [str(c) for c in range(num_classes)]
        self.input_size = (1, 2, 2)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), self.labels[i]


class TableModel(nn.Module):
    """Returns a fixed row of logits for each image, chosen by the index stored in its pixels."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))
        self.drop = nn.Dropout(0.5)
        self.seen_training = []

    def forward(self, x):
        self.seen_training.append(self.training)
        idx = x[:, 0, 0, 0].long()
        return self.drop(self.table[idx])


def _reference(table, labels):
    table = np.asarray(table, dtype=np.float64)
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    top1 = float(np.mean(table.argmax(1) == labels))
    order = np.argsort(-table, axis=1)[:, :5]
    top5 = float(np.mean([labels[i] in order[i] for i in rows]))
    lse = np.log(np.exp(table).sum(1))
    loss = float(np.mean(lse - table[rows, labels]))
    return top1, top5, loss


def _problem(n=13, c=7, seed=0):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    # make a few predictions certainly right
    for i in range(0, n, 3):
        table[i, labels[i]] = 10.0
    return table, labels.tolist()


def test_evaluate_exact_against_reference():
    table, labels = _problem()
    model = TableModel(table)
    calls = []
    res = evaluate(
        model, IndexDataset(labels, 7), batch_size=4, device="cpu",
        progress=lambda done, total: calls.append((done, total)),
    )
    top1, top5, loss = _reference(table, labels)
    assert isinstance(res, EvalResult)
    assert res.n == 13
    assert res.top1 == pytest.approx(top1, abs=1e-12)
    assert res.correct == round(top1 * 13)
    assert res.top5 == pytest.approx(top5, abs=1e-12)
    assert res.loss == pytest.approx(loss, rel=1e-5)
    assert res.top1_ci == wilson_interval(res.correct, 13)
    assert res.seconds >= 0
    assert calls == [(4, 13), (8, 13), (12, 13), (13, 13)]
    d = res.to_dict()
    assert set(d) == {"top1", "top1_ci", "top5", "loss", "n"}
    assert json.loads(json.dumps(d)) == d
    with pytest.raises(AttributeError):
        res.top1 = 0.5  # frozen


def test_evaluate_top5_none_for_few_classes_and_limit():
    table, labels = _problem(n=20, c=3, seed=1)
    res = evaluate(TableModel(table), IndexDataset(labels, 3), device="cpu")
    assert res.top5 is None
    assert res.to_dict()["top5"] is None
    assert res.top1 == pytest.approx(_reference(table, labels)[0])
    limited = evaluate(TableModel(table), IndexDataset(labels, 3), limit=5, device="cpu")
    assert limited.n == 5


def test_evaluate_restores_training_flags():
    table, labels = _problem()
    model = TableModel(table)
    model.train()
    model.drop.eval()  # mixed flags must come back exactly
    evaluate(model, IndexDataset(labels, 7), batch_size=5, device="cpu")
    assert model.training is True and model.drop.training is False
    assert model.seen_training and not any(model.seen_training)  # ran in eval mode
    assert model.table.device.type == "cpu"


def test_evaluate_inference_mode_and_no_grad_side_effects():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 7))
    table, labels = _problem()
    before = [p.detach().clone() for p in net.parameters()]
    evaluate(net, IndexDataset(labels, 7), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert all(p.grad is None for p in net.parameters())


def test_evaluate_exported_program_static_and_dynamic_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 10)).eval()
    ds = get_dataset("synthetic:3,8,8,10,37")
    ref = evaluate(net, ds, batch_size=16, device="cpu")
    static = torch.export.export(net, (torch.randn(5, 3, 8, 8),))  # batch fixed to 5
    res = evaluate(static, ds, batch_size=16, device="cpu")
    assert res.n == 37
    assert res.top1 == ref.top1 and res.top5 == ref.top5
    assert res.loss == pytest.approx(ref.loss, rel=1e-5)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic = torch.export.export(net, (torch.randn(4, 3, 8, 8),),
                                  dynamic_shapes={"input": {0: batch}})
    res2 = evaluate(dynamic, ds, batch_size=16, device="cpu")
    assert res2.top1 == ref.top1 and res2.loss == pytest.approx(ref.loss, rel=1e-5)


def test_evaluate_bad_output_shape():
    table, labels = _problem()
    wrong = TableModel(np.zeros((13, 9), dtype=np.float32))  # 9 logits, dataset has 7 classes
    with pytest.raises(LrvizError, match=r"shape \(13, 9\).*expected 13 x 7"):
        evaluate(wrong, IndexDataset(labels, 7), device="cpu")

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(LrvizError, match="returned a tuple"):
        evaluate(Pair(), IndexDataset(labels, 7), device="cpu")


def test_evaluate_model_input_mismatch():
    conv = nn.Conv2d(3, 7, 2)  # expects 3 channels, data has 1
    table, labels = _problem()
    with pytest.raises(LrvizError, match="channels, image size"):
        evaluate(conv, IndexDataset(labels, 7), device="cpu")


def test_evaluate_argument_errors():
    table, labels = _problem()
    with pytest.raises(LrvizError, match="at least 1"):
        evaluate(TableModel(table), IndexDataset(labels, 7), limit=0, device="cpu")
    with pytest.raises(LrvizError, match="Expected a torch.nn.Module"):
        evaluate("model.pt", IndexDataset(labels, 7), device="cpu")
    with pytest.raises(LrvizError, match="empty"):
        evaluate(TableModel(table), IndexDataset([], 7), device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LrvizError, match="CUDA is not available"):
            evaluate(TableModel(table), IndexDataset(labels, 7), device="cuda")


# ------------------------------------------------------------------------------ latency


def _small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_measure_latency_positive():
    net = _small_cnn().train()
    res = measure_latency(net, (1, 8, 8), batch_size=2, min_run_time=0.05, threads=1)
    assert isinstance(res, LatencyResult)
    assert res.median_ms > 0 and res.iqr_ms >= 0 and res.n_runs >= 1
    assert res.batch_size == 2 and res.device == "cpu" and res.threads == 1
    assert res.per_image_ms == pytest.approx(res.median_ms / 2)
    assert res.throughput > 0
    assert len(res.times_ms) == res.n_runs
    assert net.training  # flag restored
    assert json.loads(json.dumps(res.to_dict()))["batch_size"] == 2


def test_measure_latency_exported_and_errors():
    net = _small_cnn().eval()
    ep = torch.export.export(net, (torch.randn(1, 1, 8, 8),))
    assert measure_latency(ep, (1, 8, 8), min_run_time=0.02).median_ms > 0
    with pytest.raises(LrvizError, match="fixed batch size of 1"):
        measure_latency(ep, (1, 8, 8), batch_size=4, min_run_time=0.02)
    with pytest.raises(LrvizError, match="input_size"):
        measure_latency(net, (8, 8), min_run_time=0.02)
    with pytest.raises(LrvizError, match="channels, image size"):
        measure_latency(net, (3, 8, 8), min_run_time=0.02)


def test_compare_latency_interleaved():
    big = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    small = _small_cnn()
    out = compare_latency({"baseline": big, "compressed": small}, (1, 8, 8), rounds=2,
                          min_run_time=0.02, threads=1)
    assert list(out) == ["baseline", "compressed"]
    for res in out.values():
        assert res.median_ms > 0 and res.n_runs >= 2
    with pytest.raises(LrvizError, match="at least one model"):
        compare_latency({}, (1, 8, 8))
    with pytest.raises(LrvizError, match="rounds"):
        compare_latency({"a": small}, (1, 8, 8), rounds=0)
