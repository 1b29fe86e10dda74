"""Numbers a stakeholder can trust (issue 10): honest bands, the two-mode pair terms, the bundled
demo sensitivities and the coarse first estimate."""

import copy
import math

import numpy as np
import pytest

from lrviz import FactorCache, analyze, compress, make_plan, sources
from lrviz.evaluate import Z95, evaluate
from lrviz.models import load_model
from lrviz.project import SensitivityProjector, _fit_error
from lrviz.sensitivity import COARSE_POINTS, load_sensitivity, measure_sensitivity, pair_grid
from lrviz.sensitivity_cache import BUNDLED_ROOT, bundled_dir

N = 120
LAYERS = ["layer1.0.conv1", "layer2.0.conv2", "layer3.1.conv1"]


@pytest.fixture(scope="module")
def demo():
    lm = load_model("demo")
    a = analyze(lm.module, lm.input_size, "demo")
    ds = sources.load_dataset(sources.dataset_source("fashion-mnist-sample", lm.input_size))
    return lm, a, ds, FactorCache(lm.module)


@pytest.fixture(scope="module")
def sens(demo, tmp_path_factory):
    lm, a, ds, fc = demo
    return measure_sensitivity(lm.module, ds, limit=N, layers=LAYERS, factors=fc, cache_root=tmp_path_factory.mktemp("sens"))


def _uniform(a, f, layers=LAYERS):
    full = make_plan(a, "full")
    return full.with_ranks({n: tuple(max(1, math.ceil(f * r)) for r in a.layer(n).full_ranks) for n in layers})


def test_pair_term_makes_a_two_mode_truncation_exact(demo, sens):
    """At the pair grid, projecting both modes of one layer equals measuring it (γ = 1)."""
    lm, a, ds, fc = demo
    name = "layer2.0.conv2"
    pair = sens.pairs[name]
    full_r = a.layer(name).full_ranks
    assert list(pair.ranks0) == pair_grid(full_r[0]) + [full_r[0]] and list(pair.ranks1) == pair_grid(full_r[1]) + [full_r[1]]
    assert not np.any(pair.inter[-1]) and not np.any(pair.inter[:, -1])  # zero when a mode is whole
    p = SensitivityProjector(sens)
    for r0, r1 in ((int(pair.ranks0[0]), int(pair.ranks1[1])), (int(pair.ranks0[2]), int(pair.ranks1[0]))):
        plan = make_plan(a, "full").with_ranks({name: (r0, r1)})
        measured = evaluate(compress(lm.module, plan, fc), ds, limit=N).top1
        assert p.project(plan).calib_top1 == pytest.approx(measured, abs=1.5 / N)  # float16 cache rounding: at most a sample
    # without the pair term the sum of the two single-mode changes is not the joint change
    z_pair = p.logits(make_plan(a, "full").with_ranks({name: (int(pair.ranks0[0]), int(pair.ranks1[0]))}))
    bare = copy.copy(sens)
    bare.pairs = {}
    only = SensitivityProjector(bare)
    z_sum = only.logits(make_plan(a, "full").with_ranks({name: (int(pair.ranks0[0]), int(pair.ranks1[0]))}))
    assert np.abs(z_pair - z_sum).max() > 1e-3


@pytest.mark.parametrize("offset", [0.0, 0.01, 0.03])
def test_bands_stay_within_chance_and_base_plus_sampling_error(demo, sens, offset):
    """Anchors measured with zero or negative drop (better than the original) must not blow the band up."""
    lm, a, ds, fc = demo
    p0 = SensitivityProjector(sens)
    plans = [_uniform(a, f) for f in (0.9, 0.7, 0.5, 0.3)]
    base = sens.base_top1
    points = [(pl, min(base + offset, 1.0)) for pl in plans[:3]] + [(plans[3], base + offset - 0.02)]
    fitted = p0.calibrate(points)
    assert fitted.n_fit == 4 and len(fitted.loo_residuals) == 4
    assert math.isfinite(fitted.abs_error) and math.isfinite(fitted.rel_error) and fitted.rel_error <= 2.0
    ceiling = base + Z95 * math.sqrt(base * (1 - base) / sens.n)
    for pl in plans + [_uniform(a, 0.05), make_plan(a, "full")]:
        pr = fitted.project(pl)
        lo, hi = pr.interval
        assert 0.1 - 1e-12 <= lo <= pr.top1 <= hi <= ceiling + 1e-12
        assert hi - lo < 0.9  # never the whole [0, 1] range


def test_error_fit_is_out_of_sample_and_nonnegative():
    res = np.array([0.0, 0.01, -0.02, 0.05])
    drops = np.array([0.0, 0.0, 0.1, 0.3])  # zero drops are fine: nothing divides by them
    a_, b_ = _fit_error(res, drops)
    assert a_ >= 0 and b_ >= 0 and math.isfinite(a_) and math.isfinite(b_)
    # squared residuals exactly a² + b²·drop² are recovered
    d = np.array([0.0, 0.1, 0.2, 0.4])
    r = np.sqrt(0.01 ** 2 + (0.2 * d) ** 2)
    assert _fit_error(r, d) == pytest.approx((0.01, 0.2), rel=1e-6)


def test_leave_one_out_residuals_are_not_in_sample(demo, sens):
    """Each residual is the point projected with γ fitted to the *other* points."""
    lm, a, ds, fc = demo
    p0 = SensitivityProjector(sens)
    plans = [_uniform(a, f) for f in (0.6, 0.4, 0.25)]
    truth = [sens.top1_of(p0.logits(pl, gain=g)) for pl, g in zip(plans, (0.4, 0.8, 1.6))]  # inconsistent gains
    fitted = p0.calibrate(list(zip(plans, truth)))
    for i in range(3):
        others = [(plans[j], truth[j]) for j in range(3) if j != i]
        gi = p0.calibrate(others).gain
        loo = sens.top1_of(p0.logits(plans[i], gain=gi)) - truth[i]
        assert fitted.loo_residuals[i] == pytest.approx(loo, abs=0.02)


def test_bundled_sensitivities_load_with_an_empty_cache_and_match_a_fresh_measurement(demo, tmp_path, monkeypatch):
    lm, a, ds, fc = demo
    monkeypatch.setenv("LRVIZ_CACHE_DIR", str(tmp_path))  # empty cache
    assert BUNDLED_ROOT.is_dir() and any(BUNDLED_ROOT.iterdir()), "run python benchmarks/bundle_sensitivities.py"
    got = load_sensitivity(lm.module, ds, limit=500, factors=fc)  # the dashboard's default quick-evaluation size
    assert got.complete and got.cached_layers == len(a.layers) and len(got.anchors) == 3 and got.pairs
    assert bundled_dir(got.key) is not None and not any(tmp_path.rglob("*.npz"))  # read from the package, nothing written
    fresh = measure_sensitivity(lm.module, ds, limit=500, layers=["layer1.1.conv2", "layer3.2.conv1"], factors=fc, cache=False, anchors=())
    for k, c in fresh.curves.items():
        b = got.curves[k]
        assert list(b.ranks) == list(c.ranks)
        np.testing.assert_allclose(b.delta, c.delta, atol=2e-2, rtol=2e-3)  # float16 on disk
        np.testing.assert_allclose(b.top1, c.top1, atol=1.5 / 500)
    for name, pt in fresh.pairs.items():
        np.testing.assert_allclose(got.pairs[name].inter, pt.inter, atol=3e-2, rtol=3e-3)
    proj = SensitivityProjector.from_sensitivities(got)
    assert proj.n_fit == 3 and 0.3 < proj.gain < 1.5
    monkeypatch.setenv("LRVIZ_NO_BUNDLED_SENSITIVITIES", "1")
    assert bundled_dir(got.key) is None
    assert not load_sensitivity(lm.module, ds, limit=500, factors=fc).complete


def test_coarse_first_estimate(demo, tmp_path):
    lm, a, ds, fc = demo
    s = measure_sensitivity(lm.module, ds, limit=60, layers=LAYERS[:2], factors=fc, cache_root=tmp_path, grid_points=COARSE_POINTS,
                            pairs=False, anchors=(0.5,))
    assert s.coarse and not s.pairs and s.complete
    c = s.curve("layer2.0.conv2", 0)
    assert len(c.ranks) <= COARSE_POINTS + 3
    p = SensitivityProjector.from_sensitivities(s)
    assert p.n_fit == 1 and p.project(_uniform(a, 0.5, LAYERS[:2])).basis == "sensitivities"


def test_dashboard_opens_with_a_data_driven_projection_from_the_bundled_sensitivities(tmp_path, monkeypatch):
    """Default model, data and quick-evaluation size, empty cache: the Ranks page projects on arrival."""
    import re

    from streamlit.testing.v1 import AppTest

    from test_app import APP, metric, ok

    monkeypatch.setenv("LRVIZ_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LRVIZ_NO_BUNDLED_SENSITIVITIES", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=120)
    ok(at.run())
    at.switch_page("pages/ranks.py")
    ok(at.run())
    shown = metric(at, "Projected top-1")
    m = re.fullmatch(r"([\d.]+)% \(([\d.]+)–([\d.]+)%\)", shown)
    assert m, shown  # a percentage with its band, not "not projected yet"
    top1, lo, hi = (float(v) for v in m.groups())
    assert 10.0 <= lo <= top1 <= hi <= 100.0
    assert any("Measured on" in md.value and "500 images" in md.value for md in at.markdown)
    assert not any(tmp_path.rglob("*.npz"))  # read from the package
