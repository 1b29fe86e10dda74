"""Memory estimates of the heavy steps and the check that refuses work that cannot fit."""

import os

import pytest
import torch
import torch.nn as nn

from lrviz import FactorCache, analyze, compress, make_plan
from lrviz import memory
from lrviz.data import get_dataset
from lrviz.errors import LrvizError
from lrviz.evaluate import evaluate
from lrviz.layers import find_layers
from lrviz.spectra import GRAM_BLOCK_BYTES

MiB = 2**20


@pytest.fixture
def little_memory(monkeypatch):
    """The machine has only this much memory available (bytes)."""
    monkeypatch.delenv(memory.CHECK_ENV, raising=False)

    def set_(n):
        monkeypatch.setattr(memory, "available_memory", lambda device="cpu": int(n))

    return set_


class Counting(nn.Module):
    """A model that counts its forward passes (nothing may run before the memory check)."""

    def __init__(self, *layers):
        super().__init__()
        self.body = nn.Sequential(*layers)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.body(x)


def big_head():
    torch.manual_seed(0)
    return Counting(nn.Flatten(), nn.Linear(8 * 16 * 16, 1024), nn.ReLU(), nn.Linear(1024, 10))


def test_analysis_estimate_is_the_largest_layers_gram_work():
    m = big_head()
    est = memory.estimate_analysis(m)
    # Linear 1024 x 2048: float64 Gram 1024² · 8 and LAPACK's copy of it, one block (float64 path)
    expect = 2 * 1024 * 1024 * 8 + min(GRAM_BLOCK_BYTES, 1024 * 2048 * 8)
    assert est.bytes == expect and "body.1" in est.describe()
    conv = nn.Conv2d(64, 128, 3)
    (info,), _ = find_layers(nn.Sequential(conv))
    # mode-1 (64 × 1152): Gram 64² · 8, twice, + its block + the transposed copy of the kernel (float32)
    e = memory.estimate_analysis(nn.Sequential(conv), [info])
    m0 = 2 * 128**2 * 8 + 128 * 576 * 8
    m1 = 2 * 64**2 * 8 + 64 * 1152 * 8 + 128 * 64 * 9 * 4
    assert e.bytes == max(m0, m1)


#: Run in a fresh process, so that memory freed by earlier tests cannot be reused and hide the peak.
_PEAK_CHILD = """
import sys, torch
torch.set_num_threads(2)
from lrviz.spectra import singular_values

def read(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

a = torch.randn(2048, 12288)  # float32 product path: 2048² · 12288 > GRAM_FP64_MAX_WORK
singular_values(torch.randn(64, 256))  # warm up: one-time allocations of the first call
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
except OSError:
    sys.exit(3)
before = read("VmRSS:")
singular_values(a)
print(read("VmHWM:") - before)
"""


def test_analysis_estimate_matches_the_measured_peak_of_a_large_spectrum():
    import subprocess
    import sys

    (info,), _ = find_layers(nn.Sequential(nn.Linear(12288, 2048, bias=False)))
    est = memory.estimate_analysis(nn.Sequential(nn.Linear(12288, 2048, bias=False)), [info]).bytes
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("no /proc/self/clear_refs to measure a peak")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    p = subprocess.run([sys.executable, "-c", _PEAK_CHILD], capture_output=True, text=True, env=env, timeout=300)
    if p.returncode == 3:
        pytest.skip("/proc/self/clear_refs cannot be written")
    assert p.returncode == 0, p.stderr
    grown = int(p.stdout.split()[-1])
    assert 0.6 * est <= grown <= 1.4 * est, (grown / MiB, est / MiB)


def test_analyze_refuses_before_any_work_when_memory_is_short(little_memory, monkeypatch):
    m = big_head()
    need = memory.estimate_analysis(m).bytes
    little_memory(need // 2)
    with pytest.raises(LrvizError) as err:
        analyze(m, (8, 16, 16))
    text = str(err.value)
    assert "the analysis needs about" in text and "body.1" in text and "is available" in text
    assert "spectra=False" in text and "LRVIZ_MEMORY_CHECK=0" in text
    assert m.calls == 0  # refused before the forward pass and the spectra
    a = analyze(m, (8, 16, 16), spectra=False)  # the suggested fix works: cost only
    assert a.params == sum(p.numel() for p in m.parameters())
    little_memory(10 * need)
    assert analyze(m, (8, 16, 16)).has_spectra
    little_memory(need // 2)
    monkeypatch.setenv(memory.CHECK_ENV, "0")
    assert analyze(m, (8, 16, 16)).has_spectra  # the check can be switched off


def test_compress_refuses_when_memory_is_short_and_counts_cached_factors(little_memory):
    m = big_head()
    a = analyze(m, (8, 16, 16), spectra=True)
    plan = make_plan(a, "uniform:0.5", keep_classifier=False)
    layers = [a.layer(lp.name) for lp in plan.layers if not lp.is_dense]
    ranks = {lp.name: lp.ranks for lp in plan.layers}
    est = memory.estimate_compress(m, layers, None, ranks)
    # new model + a private copy of every layer and its float64 basis + the Gram work of body.1
    body1 = 1024 * 2048 * 4 + 1024 * 8 + 1024**2 * 8
    assert est.bytes >= memory.model_bytes(m) + body1
    little_memory(est.bytes // 2)
    with pytest.raises(LrvizError, match=r"decomposition needs about .* --exclude"):
        compress(m, plan)
    little_memory(10 * est.bytes)
    fc = FactorCache(m)
    small = compress(m, plan, fc)
    assert isinstance(small, nn.Module)
    cached = memory.estimate_compress(m, layers, fc, ranks)
    assert cached.bytes < est.bytes  # factors already there cost nothing more


def test_evaluation_estimate_scales_with_the_batch_and_refuses_a_batch_too_large(little_memory):
    m = big_head().eval()
    ds = get_dataset("synthetic:8,16,16,10,64")
    hooks = [dict(mod._forward_hooks) for mod in m.modules()]
    e32 = memory.estimate_evaluation(m, (8, 16, 16), 32)
    e64 = memory.estimate_evaluation(m, (8, 16, 16), 64)
    per_image = memory.ACTIVATION_FACTOR * 8 * 16 * 16 * 4 + 2 * 8 * 16 * 16 * 4  # largest tensor: the input (flattened)
    assert e64.bytes == 2 * e32.bytes == 64 * per_image
    assert [dict(mod._forward_hooks) for mod in m.modules()] == hooks  # the probe adds no hooks
    little_memory(e64.bytes // 2)
    ref = evaluate(m, ds, batch_size=8)
    adapted = evaluate(m, ds, batch_size=64)  # halved until the estimate fits (32), same result
    assert (adapted.n, adapted.correct, adapted.top1) == (64, ref.correct, ref.top1) and adapted.loss == pytest.approx(ref.loss)
    little_memory(memory.estimate_evaluation(m, (8, 16, 16), 1).bytes // 2)
    with pytest.raises(LrvizError, match="smaller batch size"):  # not even one image fits: said, not attempted
        evaluate(m, ds, batch_size=64)


def test_fitting_batch_halves_until_it_fits():
    from lrviz.devices import fitting_batch

    asked = []
    assert fitting_batch(lambda b: asked.append(b) or b <= 40, 256) == 32 and asked == [256, 128, 64, 32]
    assert fitting_batch(lambda b: False, 5) == 1
    assert fitting_batch(lambda b: True, 64) == 64


def test_available_memory_is_a_plausible_figure():
    avail = memory.available_memory()
    if avail is None:
        pytest.skip("no memory figure on this system")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < avail <= total
    assert memory.available_memory("meta") is None


