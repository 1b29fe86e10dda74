"""One truth: the HTML report shows exactly the projection — value, basis, band, images — the Present
page shows, from the same object (``pages._measure.project_plan`` → ``Projected.sens``, a
:class:`lrviz.project.Projection`), and says "not projected yet" where the page does. The data-free
energy proxy is never shown as an accuracy, on the page or in the report, and the report's method
notes describe the basis actually used.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lrviz  # noqa: E402
from lrviz import fmt, project, sources  # noqa: E402
from lrviz.data import get_dataset  # noqa: E402
from lrviz.project import SENS_BASIS, Projection, SensitivityProjector  # noqa: E402
from lrviz.report import (NOT_PROJECTED, PROJECTED_LABEL, build_report, method_notes, projection_card,  # noqa: E402
                          projection_note)

APP = Path(__file__).resolve().parents[1] / "app.py"
#: Quick-evaluation size with sensitivities (as tests/test_app.py measures them: the disk cache is shared)
SENS_N = 100
#: Quick-evaluation size without (no test measures sensitivities on it)
NO_SENS_N = 200
#: Where the energy proxy once put the Present page's headline.
ENERGY_CURVE = "projection (energy plans)"
SENS_CURVE = "projection along energy plans (sensitivities)"


# ---- the library: one Projection → card, notes, report ----------------------------------------------------


def test_report_card_and_notes_are_made_from_the_projection():
    from helpers import tiny_net
    from lrviz.sensitivity import measure_sensitivity

    net = tiny_net().eval()
    sens = measure_sensitivity(net, get_dataset("synthetic:3,16,16,10,64"), limit=64, cache=False, grid_points=2)
    a = lrviz.analyze(net, (3, 16, 16), "tiny")
    plan = lrviz.make_plan(a, "uniform:0.5")
    p = SensitivityProjector.from_sensitivities(sens).project(plan)
    assert p.basis == SENS_BASIS
    card = projection_card(p, p.base_top1)
    assert card["label"] == PROJECTED_LABEL and card["value"] == f"{fmt.percent(p.base_top1)} → {fmt.percent(p.top1)}"
    assert f"95 % band {fmt.percent_range(*p.interval)}" in card["delta"] and "before fine-tuning" in card["delta"]
    notes = method_notes(projection_note(p, "measured on the 64 calibration images"))
    html = build_report("tiny", [card], notes=notes)
    for text in (card["value"], card["delta"], p.detail, "basis layer sensitivities", fmt.percent_range(*p.interval),
                 "measured on 64 calibration images"):
        assert text in html, text
    assert project.DESCRIPTION not in html and "energy proxy:" not in html


def test_report_says_not_projected_without_sensitivities():
    card = projection_card(None, 0.94)
    assert card["value"] == NOT_PROJECTED and "%" not in card["value"] + card["delta"]
    html = build_report("x", [card], notes=method_notes(projection_note(None)))
    assert html.count(NOT_PROJECTED) >= 2 and project.DESCRIPTION not in html
    # an energy-proxy Projection handed in by mistake is not shown as an accuracy either: only sens counts
    energy = Projection(0.132, (0.1, 0.944), 0.944, project.BASIS, project.DESCRIPTION)
    assert projection_card(None, energy.base_top1)["value"] == NOT_PROJECTED


# ---- the dashboard: what the Present page shows is what the report says ---------------------------------------


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def _app(monkeypatch, quick_n: int):
    from helpers import dashboard_without_bundled

    return dashboard_without_bundled(monkeypatch, quick_n)


def _plan_ratio3(at):
    """Make ``ratio:3`` the current plan (as the Ranks page's preset does) and return it."""
    ctx = at.session_state["_lrviz_ctx"]
    plan = lrviz.make_plan(ctx.analysis, "ratio:3")
    at.session_state["_plans"] = {ctx.model_id: {"ranks": {lp.name: tuple(lp.ranks) for lp in plan.layers}, "label": "ratio:3",
                                                 "version": 1}}
    return ctx, plan


def _present_and_report(at):
    at.switch_page("pages/present.py")
    _ok(at.run())
    card = next(m for m in at.metric if m.label == PROJECTED_LABEL)
    at.button(key="build_report").click()
    _ok(at.run())
    return card, at.session_state["_report"][1].decode("utf-8")


def test_present_and_report_say_not_projected_yet_without_sensitivities(monkeypatch):
    at = _app(monkeypatch, NO_SENS_N)
    ctx, plan = _plan_ratio3(at)
    at.session_state["_base_override"] = {ctx.model_id: 0.944}  # the energy proxy would have a number to show
    proxy = project.project_accuracy(ctx.analysis, plan, 0.944, 10)
    assert proxy.top1 < 0.5  # the kind of number that once headlined the Present page
    card, html = _present_and_report(at)
    assert card.value == NOT_PROJECTED and fmt.percent(proxy.top1) not in card.value + card.delta
    assert f'<div class="v">{NOT_PROJECTED}</div>' in html and "Projected accuracy: not projected yet" in html
    assert fmt.percent(proxy.top1) not in html and project.DESCRIPTION not in html and ENERGY_CURVE not in html


from test_app import demo_sensitivities  # noqa: E402,F401 (the same module fixture, disk-cached)


def test_report_shows_the_sensitivity_projection_the_page_shows(monkeypatch, demo_sensitivities):
    at = _app(monkeypatch, SENS_N)
    _plan_ratio3(at)
    at.switch_page("pages/ranks.py")  # looks the sensitivities up (disk cache) for this model, data and size
    _ok(at.run())
    card, html = _present_and_report(at)
    assert card.delta.startswith("layer sensitivities, 95 % band"), card.delta
    # the report's card is the page's card, value, basis and band, character for character
    assert f'<div class="k">{PROJECTED_LABEL}</div><div class="v">{card.value}</div><div class="d">{card.delta}</div>' in html
    base, _, top1 = card.value.partition(" → ")
    # the method note describes that projection (same numbers, its basis and images), never the energy proxy
    note = next(li for li in html.split("<li>") if li.startswith("Projected accuracy:"))
    assert "basis layer sensitivities" in note and f"{base} → {top1}" in note
    assert card.delta.split("band ")[1].split(";")[0] in note and f"measured on {SENS_N} calibration images" in note
    assert project.DESCRIPTION not in html and ENERGY_CURVE not in html and SENS_CURVE in html
    # and it is the projection of the plan by the calibrated sensitivities (not a proxy): top-1 well above chance
    assert float(top1.rstrip("%")) > 50.0
