"""Numbers a stakeholder can trust from the first second: what the dashboard shows before any data-driven
projection exists, how it scores its projections, how it writes numbers, and how it lays out figures.

AppTests run the demo at a quick-evaluation size no other test measures sensitivities for (see
test_app.py), with the bundled sensitivities switched off (``LRVIZ_NO_BUNDLED_SENSITIVITIES``), so the
Ranks page has no projection to show. The rest are plain functions of lrviz.figures / lrviz.tables.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
streamlit = pytest.importorskip("streamlit")
pytest.importorskip("plotly")

from streamlit.testing.v1 import AppTest  # noqa: E402

import lrviz  # noqa: E402
from lrviz import figures, sources, tables  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the app's pages/ helpers

from pages._state import TABLE_MAX_ROWS, table_height  # noqa: E402

#: No test measures sensitivities at this size (test_app.py uses 100 and 300).
QUICK_N = 200


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def no_bundled(monkeypatch):
    monkeypatch.setenv("LRVIZ_NO_BUNDLED_SENSITIVITIES", "1")


def new_app(quick_n: int | None = QUICK_N) -> AppTest:
    at = ok(AppTest.from_file(str(APP), default_timeout=60).run())
    if quick_n is not None:
        at.select_slider(key="quick_n").set_value(quick_n)
        ok(at.run())
    return at


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    return ok(at.run())


def metric(at: AppTest, label: str):
    found = [m for m in at.metric if m.label == label]
    assert found, (label, [m.label for m in at.metric])
    return found[0]


@pytest.fixture(scope="module")
def demo():
    loaded, _ = sources.load_source(sources.builtin_source("demo"))
    return loaded, lrviz.analyze(loaded.module, loaded.input_size, loaded.name)


# ---- the Ranks page without sensitivities -----------------------------------------------------------


def test_ranks_without_sensitivities_is_not_projected_and_offers_the_measurement(no_bundled):
    at = goto(new_app(), "pages/ranks.py")
    m = metric(at, "Projected top-1")
    assert m.value == "not projected yet" and not m.delta, (m.value, m.delta)
    offer = at.button(key="sens_measure")  # the measurement is offered: the caption points to its (enabled) button
    assert not offer.disabled and offer.label == f"Measure sensitivities ({QUICK_N} images)"
    cap = next(c.value for c in at.caption if "Energy kept Π q" in c.value)
    assert "not projected yet" in cap and f"press *{offer.label}*" in cap and "No layer sensitivities" in cap
    assert "ordering" in cap and "not an accuracy" in cap
    # an original accuracy entered by hand does not turn the data-free proxy into a headline accuracy
    at.number_input(key="proj_base_pct").set_value(90.0)
    ok(at.run())
    assert metric(at, "Projected top-1").value == "not projected yet"
    mid = at.session_state["_lrviz_ctx"].model_id
    at.slider(key=f"rank|{mid}|layer2.0.conv2|0").set_value(4)
    ok(at.run())
    assert metric(at, "Projected top-1").value == "not projected yet"
    cap2 = next(c.value for c in at.caption if "Energy kept Π q" in c.value)
    q = float(re.search(r"Π q = ([\d.e-]+)", cap2).group(1))
    assert 0 < q < 1 and cap2 != cap  # the ordering moves with the plan
    # no percentage on the page pretends to be a projection: only measured accuracies carry a "%"
    assert not any(re.search(r"projected\s+[\d.]+%", c.value) for c in at.caption), [c.value for c in at.caption]


# ---- model page, spectra page, toolbar, tables --------------------------------------------------------


def test_model_page_names_the_images_it_measured_on_and_formats_numbers(no_bundled, monkeypatch):
    heights = []
    real = streamlit.dataframe

    def spy(data=None, *args, **kwargs):
        heights.append((len(data) if data is not None else 0, kwargs.get("height", "auto")))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(streamlit, "dataframe", spy)
    at = new_app()
    at.button(key="model_eval_btn").click()
    ok(at.run())
    (top1,) = [m for m in at.metric if m.label.startswith("Top-1")]
    assert top1.label == f"Top-1 on {QUICK_N} of 2,000 images", top1.label
    assert re.fullmatch(r"\d{1,3}\.\d%", top1.value), top1.value  # one decimal
    cap = next(c.value for c in at.caption if "95 % CI" in c.value)
    assert re.search(r"95 % CI \d+\.\d–\d+\.\d%", cap) and f"n = {QUICK_N}" in cap, cap
    secs = re.search(r"· ([\d.]+) (m?s)$", cap)
    assert secs and ("." not in secs.group(1) or len(secs.group(1).split(".")[1]) <= 1), cap  # never 25.9855 s
    # the layer tables show their rows (22 decomposable layers) instead of scrolling in a ten-row box
    assert heights and all(h == "content" for n, h in heights if n <= TABLE_MAX_ROWS), heights


def test_spectra_opens_on_an_informative_layer_with_consistent_words(no_bundled, demo):
    _, a = demo
    at = goto(new_app(None), "pages/spectra.py")
    layer = at.selectbox(key="spectra_layer").value
    assert layer != "conv1"
    assert all(figures.mode_full_rank(a, layer, m) > 1 for m in a.spectra[layer].modes)
    from lrviz.cost import layer_params

    assert layer_params(a.layer(layer)) == max(layer_params(l) for l in a.layers)
    for m in at.metric:
        assert re.fullmatch(r"VBMF rank \d+ / \d+", m.value), m.value
    assert sum(c.value.startswith("planned rank") for c in at.caption) == len(a.spectra[layer].modes)
    # the stem: a planned rank above the mode's 9 singular values is clipped, and said so
    at.selectbox(key="spectra_layer").set_value("conv1")
    ok(at.run())
    assert [m.value for m in at.metric][0] == f"VBMF rank {a.vbmf['conv1']['out'].rank} / 9"
    cap = next(c.value for c in at.caption if c.value.startswith("planned rank") and "/ 9" in c.value)
    assert cap.startswith("planned rank 9 / 9") and "exceed the 9 singular values" in cap, cap


def test_toolbar_is_in_viewer_mode():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["client"]["toolbarMode"] == "viewer"  # read by `streamlit run app.py` from the project root
    ok(AppTest.from_file(str(APP), default_timeout=60).run())
    assert streamlit.config.get_option("client.toolbarMode") == "viewer"  # also set by the router


def test_table_height_fits_the_rows():
    assert table_height(0) == table_height(22) == table_height(TABLE_MAX_ROWS) == "content"
    tall = table_height(500)
    assert isinstance(tall, int) and 600 <= tall <= 1200


# ---- out-of-sample scoring ----------------------------------------------------------------------------


def test_out_of_sample_scores_only_what_was_projected_before_measuring():
    pts = pd.DataFrame([
        # refitted now to sit on the point (in-sample), but projected 0.90 [0.86, 0.94] before it was measured
        {"kind": "quick evaluation", "label": "a", "top1": 0.80, "projected": 0.80, "proj_lo": 0.75, "proj_hi": 0.85,
         "projected_then": 0.90, "then_lo": 0.86, "then_hi": 0.94},
        {"kind": "quick evaluation", "label": "b", "top1": 0.60, "projected": 0.60, "proj_lo": 0.55, "proj_hi": 0.65,
         "projected_then": 0.62, "then_lo": 0.55, "then_hi": 0.69},
        # measured before there was any projection: not scored
        {"kind": "quick evaluation", "label": "c", "top1": 0.50, "projected": 0.50, "proj_lo": 0.45, "proj_hi": 0.55,
         "projected_then": math.nan, "then_lo": math.nan, "then_hi": math.nan},
        {"kind": "anchor", "label": "anchor", "top1": 0.9, "projected": 0.9, "proj_lo": 0.85, "proj_hi": 0.95,
         "projected_then": math.nan, "then_lo": math.nan, "then_hi": math.nan},
    ], columns=tables.CALIBRATION_COLUMNS)
    s = tables.out_of_sample(pts)
    assert s["points"] == 2 and s["banded"] == 2 and s["unscored"] == 1
    assert s["inside"] == 1  # a was outside the band shown beforehand, though today's refit covers it
    assert s["mae"] == pytest.approx((0.10 + 0.02) / 2) and s["rmse"] == pytest.approx(math.sqrt((0.01 + 0.0004) / 2))
    empty = tables.out_of_sample(pd.DataFrame(columns=tables.CALIBRATION_COLUMNS))
    assert empty["points"] == 0 and math.isnan(empty["mae"])


# ---- figures: legends never on titles, the energy kept never on the accuracy axis ---------------------


def _figures(a):
    cost = lrviz.plan_cost(a, lrviz.make_plan(a, "uniform:0.5"))
    rows = [{"layer": l.name, "mode": m, "rank": r, "full": l.full_ranks[i], "top1": 0.9 * r / l.full_ranks[i]}
            for l in a.layers for i, m in enumerate(a.spectra[l.name].modes) for r in {1, l.full_ranks[i]}]
    measured = [{"params_ratio": 2.0, "top1": 0.8, "lo": 0.75, "hi": 0.85, "label": "x", "projected": 0.82, "proj_lo": 0.78, "proj_hi": 0.86}]
    curve = pd.DataFrame({"params_ratio": [1.0, 2.0], "retained": [1.0, 0.6]})
    return {
        "spectrum": figures.spectrum_figure(a, "layer3.0.conv2", (20, 30)),
        "bars": figures.layer_cost_figure(cost),
        "sensitivity": figures.sensitivity_figure(pd.DataFrame(rows)),
        "projection": figures.projection_figure(None, None, measured, 0.9, 0.1, energy={"curve": curve, "current": {"params_ratio": 2.0, "retained": 0.6}}),
        "calibration": figures.calibration_figure(pd.DataFrame(columns=tables.CALIBRATION_COLUMNS)),
        "before_after": figures.before_after_figure([{"metric": "size", "before": 2, "after": 1}]),
    }, len({(r["layer"], r["mode"]) for r in rows})


def test_legends_sit_below_the_plot_and_titles_in_the_top_margin(demo):
    _, a = demo
    figs, n_curves = _figures(a)
    for name, fig in figs.items():
        lg, title = fig.layout.legend, fig.layout.title
        assert lg.orientation == "h" and lg.yref == "container" and lg.y == 0 and lg.yanchor == "bottom", name
        assert title.yref == "container" and title.y == 1 and title.yanchor == "top" and fig.layout.margin.t >= 40, name
    # forty-odd sensitivity curves: a legend of stages (one colour each), the layer in every hover
    sens = figs["sensitivity"]
    assert len(sens.data) == n_curves > 30 and sens.layout.showlegend
    stages = list(dict.fromkeys(tables.stage_of(l.name) for l in a.layers))
    entries = [t for t in sens.data if t.showlegend]
    assert [t.legendgroup for t in entries] == stages and all(t.name.startswith(t.legendgroup) for t in entries)
    assert all(t.legendgroup == tables.stage_of(t.hovertemplate.split(" · ")[0]) for t in sens.data)
    colors = {t.legendgroup: t.line.color for t in entries}
    assert len(set(colors.values())) == len(stages) and all(t.line.color == colors[t.legendgroup] for t in sens.data)


def test_energy_kept_is_on_its_own_axis_labelled_as_an_ordering(demo):
    _, a = demo
    fig = _figures(a)[0]["projection"]
    energy = [t for t in fig.data if "energy kept" in t.name]
    assert energy and all(t.yaxis == "y2" for t in energy)
    assert all(t.yaxis in (None, "y") for t in fig.data if t not in energy)
    assert fig.layout.yaxis2.title.text == figures.ENERGY_AXIS and "not accuracy" in figures.ENERGY_AXIS
    assert fig.layout.yaxis.title.text == "top-1 accuracy"
    before = next(t for t in fig.data if t.name == "projected before it was measured")
    assert list(before.error_y.array) == pytest.approx([0.04])  # its band, stored when it was measured


# ---- the Compare page: a clicked Pareto point is the plan of the same run ------------------------------


def _click_point(monkeypatch, at: AppTest, chart_key: str, name: str) -> None:
    """Send the next run a plotly selection of the point named ``name`` on the chart ``chart_key``, as the
    browser does (AppTest has no interaction for charts): one extra widget state, a JSON string."""
    import json

    from streamlit.proto.WidgetStates_pb2 import WidgetState
    from streamlit.testing.v1 import element_tree

    (chart,) = [c for c in at.get("plotly_chart") if c.proto.id.endswith(chart_key)]
    selection = {"selection": {"points": [{"customdata": [name], "curve_number": 0, "point_number": 0}],
                               "point_indices": [0], "box": [], "lasso": []}}
    real = element_tree.ElementTree.get_widget_states

    def with_click(self):
        ws = real(self)
        ws.widgets.append(WidgetState(id=chart.proto.id, string_value=json.dumps(selection)))
        return ws

    monkeypatch.setattr(element_tree.ElementTree, "get_widget_states", with_click)


def test_compare_header_shows_the_plan_loaded_by_a_click(no_bundled, monkeypatch):
    at = goto(new_app(), "pages/ranks.py")
    at.button(key="preset_uniform").click()  # uniform:0.5
    ok(at.run())
    goto(at, "pages/compare.py")
    at.text_input(key="config_name").set_value("half")
    at.button(key="save_config").click()
    ok(at.run())
    at.button(key="eval_configs").click()  # measured: the point appears on the Pareto plots
    ok(at.run())
    goto(at, "pages/ranks.py")
    at.button(key="preset_full").click()
    ok(at.run())
    at = goto(at, "pages/compare.py")
    assert any("**Current plan** (full)" in m.value for m in at.markdown)
    _click_point(monkeypatch, at, "pareto_params", "half")
    ok(at.run())
    headers = [m.value for m in at.markdown if m.value.startswith("**Current plan**")]
    assert headers and headers[0].startswith("**Current plan** (half)"), headers  # in the run of the click
    assert at.session_state["_plans"][at.session_state["_lrviz_ctx"].model_id]["label"] == "half"
