"""Measured speed in the dashboard (issue 12): the Ranks page's predicted vs measured speedup, break-even
ranks and speed structure from a latency table, and the Present page's latency cards, which the HTML
report repeats.

Nothing is timed for real: the pages' timer hook (``pages._measure.SPEED_TIMER``) gets a deterministic
fake — time grows with the layers and parameters a module runs and with the batch — and the execution
is fixed to ``channels_last`` (no ``torch.compile``). Each test has its own timer, so no result of one
test (the shared result store is per process) is a result of another's. The figures shown are checked
against :func:`lrviz.latency.bench` / :func:`lrviz.latency.measure_latency_table` called directly with
the same timer.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest.importorskip("streamlit")
pytest.importorskip("plotly")

import torch.nn as nn  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import lrviz  # noqa: E402
from lrviz.latency import bench, measure_latency_table  # noqa: E402
from lrviz.plan import speed_structure  # noqa: E402
from lrviz.report import NOT_MEASURED  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app.py"
if str(APP.parent) not in sys.path:
    sys.path.insert(0, str(APP.parent))

from pages import _measure as measure  # noqa: E402
from pages._state import slider_key  # noqa: E402

#: Every fake timer made here stays referenced: its id is part of the result keys, and a freed id could be reused.
_TIMERS: list = []
QUICK_N = 100


def make_timer(scale: float = 1.0, fail: Exception | None = None):
    """A deterministic ``timer(fn, x) -> seconds``: 20 µs per conv/linear layer plus 1 ns per parameter, per image;
    four samples 0.95-1.1× the value (a non-zero IQR)."""

    def timer(fn, x):
        if fail is not None:
            raise fail
        layers = sum(1 for m in fn.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        params = sum(p.numel() for p in fn.parameters())
        t = scale * int(x.shape[0]) * (2e-5 * layers + 1e-9 * params)
        return [0.95 * t, t, 1.05 * t, 1.1 * t]

    _TIMERS.append(timer)
    return timer


@pytest.fixture
def timer(monkeypatch):
    t = make_timer()
    monkeypatch.setattr(measure, "SPEED_TIMER", t)
    monkeypatch.setattr(measure, "SPEED_EXECUTION", "channels_last")
    return t


def ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def new_app(page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    ok(at.run())
    at.select_slider(key="quick_n").set_value(QUICK_N)
    ok(at.run())
    at.switch_page(page)
    return ok(at.run())


def metric(at, label: str):
    for m in at.metric:
        if m.label == label:
            return m
    raise AssertionError(f"no metric {label!r}; have {[m.label for m in at.metric]}")


def measured(b: int) -> str:
    return f"Measured speedup, batch {b} (CPU, {measure.speed_threads()} threads)"


def ctx_of(at):
    return at.session_state["_lrviz_ctx"]


def set_plan(at, spec: str):
    ctx = ctx_of(at)
    plan = lrviz.make_plan(ctx.analysis, spec)
    plans = at.session_state["_plans"] if "_plans" in at.session_state else {}
    version = plans.get(ctx.model_id, {}).get("version", 0) + 1
    plans[ctx.model_id] = {"ranks": {lp.name: tuple(lp.ranks) for lp in plan.layers}, "label": spec, "version": version}
    at.session_state["_plans"] = plans
    return plan


def wait(at, slot: str):
    job = at.session_state[slot]["job"]
    assert job.wait(120), f"{slot} did not finish"
    return job


def direct_bench(ctx, plan, timer):
    return bench(ctx.original, lrviz.compress(ctx.module, plan, ctx.factors), plan, ctx.analysis, batches=measure.SPEED_BATCHES,
                 device="cpu", threads=measure.speed_threads(), execution="channels_last", per_layer=False,
                 rounds=measure.SPEED_ROUNDS, timer=timer)


def test_ranks_measures_the_speed_of_the_current_plan_only(timer):
    at = new_app("pages/ranks.py")
    ctx = ctx_of(at)
    plan = set_plan(at, "ratio:3")
    ok(at.run())
    cost = lrviz.plan_cost(ctx.analysis, plan)
    assert metric(at, "Speedup predicted from MACs").value == f"{cost.macs_ratio:.2f}×"
    for b in (1, 64):
        assert metric(at, measured(b)).value == NOT_MEASURED
    assert not at.button(key="speed_measure").disabled

    at.button(key="speed_measure").click()
    ok(at.run())
    job = wait(at, "_speed_job")
    assert job.error is None, job.error
    ok(at.run())
    expected = {r.batch: r for r in direct_bench(ctx, plan, timer)}
    for b in (1, 64):
        m, r = metric(at, measured(b)), expected[b]
        assert m.value == f"{r.speedup:.2f}×", (m.value, r.speedup)
        assert m.delta == f"{r.original_ms:.2f} → {r.planned_ms:.2f} ms (IQR {r.original_iqr_ms:.2f} → {r.planned_iqr_ms:.2f})"
        assert r.original_iqr_ms > 0
    assert expected[64].speedup != pytest.approx(cost.macs_ratio, rel=0.05)  # measured, not the MACs ratio again
    note = next(c.value for c in at.caption if c.value.startswith("Latency: measured on CPU"))
    assert f"with {measure.speed_threads()} thread" in note and "channels_last" in note and "IQR" in note
    assert at.button(key="speed_measure").disabled  # measured: nothing to do

    # another plan: the measurement of ratio:3 is not shown as its own
    set_plan(at, "uniform:0.5")
    ok(at.run())
    for b in (1, 64):
        assert metric(at, measured(b)).value == NOT_MEASURED
    assert not at.button(key="speed_measure").disabled
    assert not any(c.value.startswith("Latency: measured") for c in at.caption)

    # a slider move makes yet another plan: still not measured
    set_plan(at, "ratio:3")
    ok(at.run())
    name = next(l.name for l in ctx.analysis.layers if l.full_ranks[0] > 2)
    key = slider_key(ctx.model_id, name, 0)
    at.slider(key=key).set_value(at.slider(key=key).value - 1)
    ok(at.run())
    assert metric(at, measured(1)).value == NOT_MEASURED

    # back to ratio:3: shown at once from the store, not measured again
    set_plan(at, "ratio:3")
    ok(at.run())
    assert metric(at, measured(1)).value == f"{expected[1].speedup:.2f}×"
    assert at.session_state["_speed_job"]["job"] is job


def test_speed_mode_shows_break_even_ranks_and_drops_slower_factors(timer):
    at = new_app("pages/ranks.py")
    ctx, a = ctx_of(at), ctx_of(at).analysis
    assert not any("faster than dense" in (s.help or "") for s in at.slider)  # size: no latency table
    at.radio(key="optimise_for").set_value("speed")
    ok(at.run())
    assert any(f"Latency table **{NOT_MEASURED}**" in m.value for m in at.markdown), [m.value for m in at.markdown]
    at.button(key="table_measure").click()
    ok(at.run())
    job = wait(at, "_latency_table_job")
    assert job.error is None, job.error
    ok(at.run())
    assert any("Latency table measured" in m.value for m in at.markdown)

    table = measure_latency_table(ctx.original, a, batch=measure.TABLE_BATCH, threads=measure.speed_threads(), timer=timer,
                                  factors=ctx.factors)
    sliders = {s.key: s for s in at.slider}
    checked = 0
    for l in a.layers:
        for i in range(len(l.full_ranks)):
            s = sliders.get(slider_key(ctx.model_id, l.name, i))
            if s is None:
                continue
            other = None if len(l.full_ranks) == 1 else l.full_ranks[1 - i]  # the full plan: the other mode at full rank
            be = table.layers[l.name].break_even(i, other)
            lab = ("r_out", "r_in")[i] if len(l.full_ranks) == 2 else "r"
            want = f"faster than dense at {lab} ≤ {be}" if be > 0 else f"no {lab} is faster than the dense layer"
            assert want in s.help and f"batch {measure.TABLE_BATCH}, CPU" in s.help, (s.help, want)
            checked += 1
    assert checked >= len(a.layers)

    # a preset optimised for speed: the factors the table times slower than dense are dropped
    spec = "uniform:0.9"
    at.slider(key="preset_uniform_f").set_value(0.9)
    ok(at.run())
    at.button(key="preset_uniform").click()
    ok(at.run())
    want = speed_structure(lrviz.make_plan(a, spec), table, a)
    assert want.ranks() != lrviz.make_plan(a, spec).ranks()  # the fake timer makes some factors slower than dense
    ranks = at.session_state["_plans"][ctx.model_id]["ranks"]
    assert ranks == want.ranks()
    assert at.session_state["_plans"][ctx.model_id]["label"] == f"{spec}:speed"
    assert any(c.value.startswith("Optimised for speed:") and "dropped" in c.value for c in at.caption)
    plan = lrviz.make_plan(a, "full").with_ranks(ranks)
    label = f"Predicted speedup, batch 64 (latency table, CPU, {measure.speed_threads()} threads)"
    assert metric(at, label).value == f"{table.predicted_speedup(plan):.2f}×"

    # for size the same preset keeps every factor
    at.radio(key="optimise_for").set_value("size")
    ok(at.run())
    at.button(key="preset_uniform").click()
    ok(at.run())
    assert at.session_state["_plans"][ctx.model_id]["ranks"] == lrviz.make_plan(a, spec).ranks()
    assert not any(m.label.startswith("Predicted speedup") for m in at.metric)
    slow = [n for n in want.ranks() if want.ranks()[n] != lrviz.make_plan(a, spec).ranks()[n]]
    # speed again: the current plan's slower layers are named, and Drop slower factors restructures it
    at.radio(key="optimise_for").set_value("speed")
    ok(at.run())
    assert any("run slower than dense" in c.value for c in at.caption)
    at.button(key="speed_structure").click()
    ok(at.run())
    assert at.session_state["_plans"][ctx.model_id]["ranks"] == want.ranks() and slow


def _report_html(at) -> str:
    at.button(key="build_report").click()
    ok(at.run())
    return at.session_state["_report"][1].decode("utf-8")


def _card_html(m) -> str:
    return f'<div class="k">{m.label}</div><div class="v">{m.value}</div><div class="d">{m.delta}</div>'


def test_present_and_report_show_the_same_latency(timer):
    at = new_app("pages/ranks.py")
    ctx = ctx_of(at)
    plan = set_plan(at, "ratio:3")
    at.switch_page("pages/present.py")
    ok(at.run())
    card = metric(at, "Latency (measured)")
    assert card.value == NOT_MEASURED and not at.button(key="present_speed").disabled
    html = _report_html(at)
    assert _card_html(card) in html and "Latency: not measured yet for this plan" in html
    assert not re.search(r"latency \(batch \d+, median\)", html)

    at.button(key="present_speed").click()
    ok(at.run())
    assert wait(at, "_speed_job").error is None
    ok(at.run())
    expected = {r.batch: r for r in direct_bench(ctx, plan, timer)}
    cards = [metric(at, f"CPU latency (batch {b}, median)") for b in (1, 64)]
    for m, b in zip(cards, (1, 64)):
        r = expected[b]
        assert m.value == f"{r.original_ms:.2f} → {r.planned_ms:.2f} ms"
        assert f"IQR {r.original_iqr_ms:.2f} → {r.planned_iqr_ms:.2f} ms" in m.delta
        assert f"channels_last, {r.threads} thread" in m.delta and ("faster" in m.delta or "slower" in m.delta)
    note = next(c.value for c in at.caption if c.value.startswith("Latency: measured on CPU"))
    html = _report_html(at)
    for m in cards:
        assert _card_html(m) in html  # the report's cards are the page's, character for character
    assert f"<li>{note}</li>" in html.replace("&#x27;", "'")  # and its latency note is the page's caption
    assert "not measured yet" not in note and NOT_MEASURED not in html.split("<h2>Notes</h2>")[1]

    # the Ranks page shows the same measurement for this plan
    at.switch_page("pages/ranks.py")
    ok(at.run())
    assert metric(at, measured(64)).value == f"{expected[64].speedup:.2f}×"


def test_a_failing_speed_measurement_is_one_error(monkeypatch):
    from lrviz.errors import LrvizError

    monkeypatch.setattr(measure, "SPEED_TIMER", make_timer(fail=LrvizError("the timer broke")))
    monkeypatch.setattr(measure, "SPEED_EXECUTION", "channels_last")
    at = new_app("pages/ranks.py")
    set_plan(at, "uniform:0.6")
    ok(at.run())
    at.button(key="speed_measure").click()
    ok(at.run())
    wait(at, "_speed_job")
    deadline = time.time() + 10
    ok(at.run())
    while time.time() < deadline and not at.error:
        ok(at.run())
    assert [e.value for e in at.error] == ["Speed measurement failed: the timer broke"]
    assert metric(at, measured(1)).value == NOT_MEASURED
    assert not any("Traceback" in str(e.value) for e in at.error)


def test_no_timing_starts_beside_another_background_measurement(monkeypatch):
    """While the latency table is measured, Measure speed waits (a timing beside it would be slowed down)."""
    import threading

    release = threading.Event()
    fast = make_timer()

    def held(fn, x):
        release.wait(60)
        return fast(fn, x)

    _TIMERS.append(held)
    monkeypatch.setattr(measure, "SPEED_TIMER", held)
    monkeypatch.setattr(measure, "SPEED_EXECUTION", "channels_last")
    at = new_app("pages/ranks.py")
    try:
        at.radio(key="optimise_for").set_value("speed")
        ok(at.run())
        at.button(key="table_measure").click()
        ok(at.run())
        assert at.session_state["_latency_table_job"]["job"].running
        ok(at.run())
        assert at.button(key="speed_measure").disabled
        assert any("Measure speed waits for the latency table" in c.value for c in at.caption), [c.value for c in at.caption]
        assert any("Latency table of" in p.text for p in at.get("progress")), [p.text for p in at.get("progress")]
    finally:
        release.set()
    assert wait(at, "_latency_table_job").error is None
    ok(at.run())
    assert not at.button(key="speed_measure").disabled
