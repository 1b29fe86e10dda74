"""The Streamlit dashboard, driven headlessly with ``streamlit.testing.v1.AppTest`` on the demo model.

Small subsets everywhere (quick evaluations on 200 images, tiny fine-tuning) so the file runs in a
couple of minutes on 2 cores. Layer sensitivities are measured once, by a fixture, on the smallest
quick-evaluation size (100 images) into the test session's private cache (``LRVIZ_CACHE_DIR``, see
conftest.py) with exactly the arguments the Ranks page uses, so the pages find them there; no other
test uses that size, so those without the fixture see no sensitivities.
"""

import argparse
import io
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

streamlit = pytest.importorskip("streamlit")
pytest.importorskip("plotly")

import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import lrviz  # noqa: E402
from lrviz import fmt, sources  # noqa: E402
from lrviz.budget import STRATEGY_LABELS  # noqa: E402
from lrviz.errors import LrvizError  # noqa: E402
from lrviz.sensitivity import model_fingerprint  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app.py"
if str(APP.parent) not in sys.path:
    sys.path.insert(0, str(APP.parent))  # the app's pages/ helpers, importable as app.py imports them

from pages._jobs import BackgroundJob, ResultStore  # noqa: E402
from pages._state import slider_key  # noqa: E402
PAGES = ["pages/model.py", "pages/spectra.py", "pages/ranks.py", "pages/compare.py", "pages/finetune.py", "pages/present.py"]
QUICK_N = 200
#: Quick-evaluation size of the tests with layer sensitivities (the smallest the sidebar offers).
SENS_N = 100
#: Quick-evaluation size of the measure/stop test (its partial sensitivities must not reach the others).
STOP_N = 300


def ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def new_app(quick_n: int = QUICK_N) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    ok(at.run())
    at.select_slider(key="quick_n").set_value(quick_n)
    return ok(at.run())


def goto(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    return ok(at.run())


def metric(at: AppTest, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return m.value
    raise AssertionError(f"no metric {label!r}; have {[m.label for m in at.metric]}")


def ctx_of(at: AppTest):
    return at.session_state["_lrviz_ctx"]


def caption_with(at: AppTest, text: str) -> str:
    found = [c.value for c in at.caption if text in c.value]
    assert found, (text, [c.value for c in at.caption])
    return found[0]


def metric_delta(at: AppTest, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return m.delta
    raise AssertionError(f"no metric {label!r}")


def ratio_shown(at: AppTest, label: str) -> float:
    """The ``N.NN× fewer`` of a metric's delta."""
    return float(re.match(r"([\d.]+)× fewer", metric_delta(at, label)).group(1))


@pytest.fixture(scope="module")
def analysis():
    loaded, _ = sources.load_source(sources.builtin_source("demo"))
    return lrviz.analyze(loaded.module, loaded.input_size, loaded.name)


@pytest.fixture(scope="module")
def demo_sensitivities():
    """All layers of the demo on SENS_N sample images, as the Ranks page measures them (disk cache)."""
    from lrviz.sensitivity import measure_sensitivity

    loaded, _ = sources.load_source(sources.builtin_source("demo"))
    ds = sources.load_dataset(sources.dataset_source("fashion-mnist-sample", loaded.input_size), "test")
    t = time.perf_counter()
    sens = measure_sensitivity(sources.inference_copy(loaded.module), ds, limit=SENS_N)
    print(f"\ndemo sensitivities on {SENS_N} images: {time.perf_counter() - t:.1f} s ({sens.cached_layers} layers from the cache)")
    assert sens.complete and sens.anchors
    return sens


def test_every_page_runs_on_the_demo():
    at = new_app()
    assert "demo" in at.session_state["_lrviz_ctx"].loaded.name
    for page in PAGES:
        goto(at, page)
        assert not at.error, (page, [e.value for e in at.error])
        assert at.title, page


def energy_kept_shown(at: AppTest) -> float:
    """The energy kept Π q the Ranks page shows (as an ordering of plans) under its metrics."""
    return float(re.search(r"Energy kept Π q = ([\d.e-]+)", caption_with(at, "Energy kept Π q")).group(1))


def test_slider_move_updates_cost_and_energy_kept_and_is_fast(monkeypatch):
    monkeypatch.setenv("LRVIZ_NO_BUNDLED_SENSITIVITIES", "1")
    at = goto(new_app(), "pages/ranks.py")
    at.number_input(key="proj_base_pct").set_value(90.0)  # a known baseline: still no projection without sensitivities
    ok(at.run())
    mid = ctx_of(at).model_id
    analysis_obj, model_obj = ctx_of(at).analysis, ctx_of(at).loaded
    before = (metric(at, "Params"), metric(at, "MACs / image"), metric(at, "FLOPs / image"), energy_kept_shown(at))
    assert before[3] == 1.0 and metric(at, "Projected top-1") == "not projected yet"
    at.slider(key=slider_key(mid, "layer2.0.conv2", 0)).set_value(4)
    ok(at.run())
    after = (metric(at, "Params"), metric(at, "MACs / image"), metric(at, "FLOPs / image"), energy_kept_shown(at))
    assert all(a != b for a, b in zip(before, after)), (before, after)
    assert after[3] < 1.0 and metric(at, "Projected top-1") == "not projected yet"

    # rerun time of a slider move (the whole app script, AppTest overhead included)
    walls, renders = [], []
    names = ["layer2.1.conv1", "layer2.1.conv2", "layer3.0.conv1", "layer3.1.conv2", "layer3.2.conv1"]
    for name in names:
        at.slider(key=slider_key(mid, name, 1)).set_value(8)
        t = time.perf_counter()
        ok(at.run())
        walls.append(1000 * (time.perf_counter() - t))
        renders.append(at.session_state["_ranks_render_ms"])
    # nothing heavy was recomputed: the same cached model and analysis (spectra, EVBMF) objects
    assert ctx_of(at).analysis is analysis_obj and ctx_of(at).loaded is model_obj
    wall, render = statistics.median(walls), statistics.median(renders)
    print(f"\nslider-move rerun on demo: median {wall:.0f} ms whole rerun (AppTest), {render:.0f} ms Ranks page script")
    # the best case measures the code, the median also the machine's load (shared CI cores)
    assert min(renders) <= 300, renders
    assert wall <= 3000, walls


@pytest.mark.parametrize(
    "button, setting, spec",
    [
        ("preset_vbmf", ("slider", "preset_vbmf_k", 0.5), "vbmf:0.5"),
        ("preset_energy", ("slider", "preset_energy_f", 0.9), "energy:0.9"),
        ("preset_uniform", ("slider", "preset_uniform_f", 0.25), "uniform:0.25"),
        ("preset_ratio", ("number_input", "preset_ratio_t", 3.0), "ratio:3"),
        ("preset_full", None, "full"),
    ],
)
def test_presets_set_the_ranks_of_make_plan(analysis, button, setting, spec):
    at = goto(new_app(), "pages/ranks.py")
    if spec == "full":  # move away first so that reset has something to do
        at.button(key="preset_uniform").click()
        ok(at.run())
    if setting is not None:
        kind, key, value = setting
        getattr(at, kind)(key=key).set_value(value)
        ok(at.run())
    at.button(key=button).click()
    ok(at.run())
    assert not at.error, [e.value for e in at.error]
    mid = ctx_of(at).model_id
    expected = lrviz.make_plan(analysis, spec)
    for lp in expected.layers:
        for i, (r, full) in enumerate(zip(lp.ranks, lp.full_ranks)):
            if full > 1:
                assert at.slider(key=slider_key(mid, lp.name, i)).value == r, (spec, lp.name, i)
    cost = lrviz.plan_cost(analysis, expected)
    assert metric(at, "Params") == fmt.human(cost.params_planned)


def test_quick_evaluation_gives_an_accuracy_with_interval():
    at = goto(new_app(), "pages/ranks.py")
    at.button(key="preset_ratio").click()
    ok(at.run())
    at.button(key="quick_eval").click()
    ok(at.run())
    msgs = [s.value for s in at.success]
    assert any("Measured top-1" in m and "CI" in m and f"n={QUICK_N}" in m for m in msgs), msgs
    rows = at.session_state["_measured"]
    (points,) = [v for k, v in rows.items() if k[2] == QUICK_N]
    assert points and 0.0 <= points[-1]["top1"] <= 1.0 and points[-1]["lo"] <= points[-1]["top1"] <= points[-1]["hi"]
    # nothing was projected before it was measured (no sensitivities at this size): nothing is stored as if
    assert points[-1]["projected"] is None and points[-1]["projected_calib"] is None and points[-1]["calib_lo"] is None


def test_compare_save_load_and_sweep():
    at = goto(new_app(), "pages/ranks.py")
    at.button(key="preset_ratio").click()
    ok(at.run())
    ratio_ranks = dict(at.session_state["_plans"][ctx_of(at).model_id]["ranks"])
    goto(at, "pages/compare.py")
    at.text_input(key="config_name").set_value("three-x")
    at.button(key="save_config").click()
    ok(at.run())
    assert "three-x" in at.session_state["_configs"][ctx_of(at).model_id]
    # change the plan, then load the saved configuration back
    goto(at, "pages/ranks.py")
    at.button(key="preset_full").click()
    ok(at.run())
    goto(at, "pages/compare.py")
    at.selectbox(key="config_choice").set_value("three-x")
    at.button(key="load_config").click()
    ok(at.run())
    assert at.session_state["_plans"][ctx_of(at).model_id]["ranks"] == ratio_ranks
    # no sensitivities for these images: the solver is not offered
    assert STRATEGY_LABELS["solver"] not in at.multiselect(key="sweep_strategies").options  # options are shown by label
    assert STRATEGY_LABELS["uniform"] in at.multiselect(key="sweep_strategies").options
    # a small sweep: two ratios, two strategies, 100 images
    at.multiselect(key="sweep_ratios").set_value([2.0, 4.0])
    at.multiselect(key="sweep_strategies").set_value(["energy", "uniform"])
    at.number_input(key="sweep_n").set_value(100)
    at.button(key="run_sweep").click()
    ok(at.run())
    sweep = next(iter(at.session_state["_sweeps"].values()))
    assert len(sweep) == 4 and sweep["top1"].notna().all() and sweep["projected"].isna().all()
    assert set(sweep["strategy"]) == {"energy", "uniform"} and (sweep["metric"] == "params").all()
    assert at.get("plotly_chart")


def test_finetune_with_stop_flag_and_export():
    at = goto(new_app(), "pages/ranks.py")
    at.button(key="preset_ratio").click()
    ok(at.run())
    goto(at, "pages/finetune.py")
    at.number_input(key="ft_epochs").set_value(1)
    at.number_input(key="ft_train_n").set_value(256)
    at.number_input(key="ft_val_n").set_value(100)
    at.button(key="ft_start").click()
    ok(at.run())
    deadline = time.time() + 150
    while time.time() < deadline:
        time.sleep(1.0)
        ok(at.run())
        if any("Fine-tuning" in s.value for s in at.success):
            break
    assert any("Fine-tuning" in s.value for s in at.success), [e.value for e in at.error]
    # a second run, stopped with the Stop button: the job's should_stop flag is set from the page
    at.number_input(key="ft_epochs").set_value(20)
    train_n = at.number_input(key="ft_train_n")
    train_n.set_value(min(4096, int(train_n.max)))
    at.button(key="ft_start").click()
    ok(at.run())
    at.button(key="ft_stop").click()
    ok(at.run())
    job = at.session_state["_ft_job"]["job"]
    assert job.stop_requested and job.wait(60)
    ok(at.run())
    assert any("cancelled" in s.value for s in at.success), [s.value for s in at.success]
    at.button(key="build_export").click()
    ok(at.run())
    assert not at.error, [e.value for e in at.error]
    labels = [d.label for d in at.get("download_button")]
    assert {"Download plan (JSON)", "Download .pt2 program", "Download weights (state_dict)", "Download ONNX"} <= set(labels), labels
    cap = next(c.value for c in at.caption if "Checked against the PyTorch model" in c.value)
    assert "ONNX (opset 18" in cap and "max |difference|" in cap, cap


def test_background_job_stops_when_asked():
    started = []

    def target(progress, should_stop):
        started.append(1)
        while not should_stop():
            progress({"event": "step", "epoch": 1, "step": 1, "steps": 10, "loss": 1.0})
            time.sleep(0.01)
        return "stopped"

    job = BackgroundJob(target).start()
    time.sleep(0.1)
    assert job.running
    job.stop()
    assert job.wait(5) and job.result == "stopped" and job.error is None and job.snapshot()


def test_result_store_is_bounded():
    s = ResultStore(max_items=2)
    for i in range(3):
        s.put(i, i)
    assert 0 not in s and s.get(2) == 2 and len(s) == 2


def test_background_job_reports_errors():
    def boom(progress, should_stop):
        raise LrvizError("bad plan")

    job = BackgroundJob(boom).start()
    assert job.wait(5) and job.error == "bad plan" and job.result is None


def test_present_measures_and_builds_report():
    at = goto(new_app(), "pages/ranks.py")
    at.button(key="preset_ratio").click()
    ok(at.run())
    goto(at, "pages/present.py")
    at.number_input(key="present_n").set_value(100)
    at.button(key="present_measure").click()
    ok(at.run())
    assert not at.error, [e.value for e in at.error]
    assert metric(at, "Top-1 accuracy (100 images)").count("%") == 2
    assert "ms" in metric(at, "CPU latency (batch 1, median)")
    at.button(key="build_report").click()
    ok(at.run())
    assert any(d.label == "Download report (HTML)" for d in at.get("download_button"))


def _bad_state_dicts():
    buf = io.BytesIO()
    torch.save({"obj": argparse.Namespace(a=1)}, buf)  # not tensors: must be refused, never unpickled
    pickled = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"foo.weight": torch.zeros(3)}, buf)  # tensors, wrong architecture
    return [("garbage.pt", b"this is not a torch file", "garbage.pt"), ("object.pt", pickled, "refused"), ("other.pt", buf.getvalue(), "missing")]


@pytest.mark.parametrize("filename, data, expect", _bad_state_dicts())
def test_bad_state_dict_upload_shows_an_error(filename, data, expect):
    at = new_app()
    at.radio(key="builtin_weights").set_value("upload")
    ok(at.run())
    at.file_uploader(key="sd_upload_builtin").set_value((filename, data, "application/octet-stream"))
    ok(at.run())
    errors = " ".join(e.value for e in at.error)
    assert errors and expect in errors.lower(), errors
    # the app keeps working: back to the bundled weights
    at.radio(key="builtin_weights").set_value("default")
    ok(at.run())
    assert not at.error and at.metric


def test_bad_program_upload_shows_an_error():
    at = new_app()
    at.radio(key="model_kind").set_value("program")
    ok(at.run())
    at.file_uploader(key="pt2_upload").set_value(("broken.pt2", b"PK\x03\x04 not really a zip", "application/octet-stream"))
    ok(at.run())
    errors = " ".join(e.value for e in at.error)
    assert "broken.pt2" in errors or "exported program" in errors, errors


def test_sessions_do_not_change_the_cached_model():
    a1 = new_app()
    model = ctx_of(a1).loaded.module
    before = model_fingerprint(model)
    flags = [m.training for m in model.modules()]
    a2 = new_app()
    assert ctx_of(a2).loaded.module is model  # one cached object shared by the sessions
    for at in (a1, a2):
        goto(at, "pages/ranks.py")
        at.button(key="preset_uniform").click()
        ok(at.run())
        at.button(key="quick_eval").click()
        ok(at.run())
        goto(at, "pages/present.py")
    assert model_fingerprint(model) == before
    assert [m.training for m in model.modules()] == flags  # train/eval flags restored


def test_program_upload_is_analysed_but_not_decomposed(tmp_path):
    from lrviz.export import save_program

    loaded, _ = sources.load_source(sources.builtin_source("demo"))
    data = save_program(loaded.module, loaded.input_size, tmp_path / "demo.pt2").read_bytes()
    at = new_app()
    at.radio(key="model_kind").set_value("program")
    ok(at.run())
    at.file_uploader(key="pt2_upload").set_value(("demo.pt2", data, "application/octet-stream"))
    ok(at.run())
    assert not at.error, [e.value for e in at.error]
    assert metric(at, "Parameters") == fmt.human(sum(p.numel() for p in loaded.module.parameters()))
    at.button(key="model_eval_btn").click()
    ok(at.run())
    assert "%" in metric(at, f"Top-1 on {QUICK_N} of 2,000 images")  # the images it was measured on
    goto(at, "pages/ranks.py")
    assert any("cannot be decomposed" in i.value or "not decomposed" in i.value for i in at.info), [i.value for i in at.info]


# ---- layer sensitivities, sensitivity projection, budget solver, strategy sweep -------------------------


def test_ranks_without_sensitivities_is_not_projected(monkeypatch):
    monkeypatch.setenv("LRVIZ_NO_BUNDLED_SENSITIVITIES", "1")
    at = goto(new_app(), "pages/ranks.py")
    at.number_input(key="proj_base_pct").set_value(90.0)
    ok(at.run())
    assert metric(at, "Projected top-1") == "not projected yet"  # never the energy proxy as an accuracy
    assert "ordering" in caption_with(at, "Energy kept Π q") and not any("energy proxy" in c.value for c in at.caption)
    assert at.button(key="sens_measure").label == f"Measure sensitivities ({QUICK_N} images)" and not at.button(key="sens_measure").disabled
    assert f"press *Measure sensitivities ({QUICK_N} images)*" in caption_with(at, "not projected yet")  # offered under the metric
    assert at.button(key="preset_solve").disabled
    caption_with(at, "Needs complete layer sensitivities")
    assert any("Not measured yet" in m.value for m in at.markdown), [m.value for m in at.markdown]


def test_measure_sensitivities_in_the_background_and_stop(monkeypatch):
    monkeypatch.setenv("LRVIZ_NO_BUNDLED_SENSITIVITIES", "1")
    at = goto(new_app(STOP_N), "pages/ranks.py")
    at.button(key="sens_measure").click()
    ok(at.run())
    job = at.session_state["_sens_job"]["job"]
    deadline = time.time() + 120
    while time.time() < deadline and not any(e.get("done", 0) >= 1 for e in job.snapshot()):
        time.sleep(0.5)
    ok(at.run())  # the live fragment: a per-layer progress bar and the Stop button
    bars = at.get("progress")
    assert bars and "layers done" in bars[0].text, [b.text for b in bars]
    at.button(key="sens_stop").click()
    ok(at.run())
    assert job.stop_requested and job.wait(60)
    ok(at.run())
    res = job.result
    assert res is not None and not res.complete and 1 <= len({name for name, _ in res.curves}) < len(res.layers)
    assert any("Partly measured" in m.value for m in at.markdown), [m.value for m in at.markdown]
    assert metric(at, "Projected top-1") == "not projected yet"  # incomplete: still no projection
    caption_with(at, "only partly measured")
    assert at.button(key="preset_solve").disabled and not at.button(key="sens_measure").disabled  # a new run resumes


def test_ranks_with_sensitivities_projects_with_an_interval_and_calibrates(demo_sensitivities):
    at = goto(new_app(SENS_N), "pages/ranks.py")
    assert any("Measured on" in m.value for m in at.markdown), [m.value for m in at.markdown]
    assert at.button(key="sens_measure").disabled and not at.button(key="preset_solve").disabled
    at.slider(key="preset_uniform_f").set_value(0.5)
    at.button(key="preset_uniform").click()
    ok(at.run())
    shown = metric(at, "Projected top-1")
    m = re.fullmatch(r"([\d.]+)% \(([\d.]+)–([\d.]+)%\)", shown)
    assert m, shown
    top1, lo, hi = (float(v) for v in m.groups())
    assert lo <= top1 <= hi and lo < hi
    assert re.fullmatch(r"[-+]\d+\.\d pts vs original", metric_delta(at, "Projected top-1")), metric_delta(at, "Projected top-1")
    cap = caption_with(at, "Projection basis: **sensitivities**")
    assert f"measured on {SENS_N} calibration images" in cap and "fitted to 3 measured plan(s)" in cap  # the 3 anchors
    # a quick evaluation on the same images: stored with the projection and band shown before it was
    # measured, then γ is refitted with it
    at.button(key="quick_eval").click()
    ok(at.run())
    rows = at.session_state["_measured"][(ctx_of(at).model_id, ctx_of(at).data_key, SENS_N)]
    row = rows[-1]
    assert row["basis"] == "sensitivities" and row["projected_calib"] == pytest.approx(top1 / 100, abs=5e-4)
    assert row["calib_lo"] == pytest.approx(lo / 100, abs=5e-4) and row["calib_hi"] == pytest.approx(hi / 100, abs=5e-4)
    assert row["proj_lo"] == pytest.approx(lo / 100, abs=5e-4) and row["proj_hi"] == pytest.approx(hi / 100, abs=5e-4)
    assert json.loads(row["plan_json"])["layers"]
    caption_with(at, "fitted to 4 measured plan(s)")
    # coverage and error come from the stored pre-measurement values, not from the refitted projector
    text = next(m.value for m in at.markdown if "Projected vs measured" in m.value)
    assert "before each point was measured" in text and "1 quick evaluation" in text, text
    inside = int(row["calib_lo"] <= row["top1"] <= row["calib_hi"])
    assert f"{inside} of 1 inside the band shown beforehand" in text, text
    mae = fmt.points(abs(row["projected_calib"] - row["top1"]), signed=False)
    assert f"mean |projected − measured| {mae}" in text, text
    assert len(at.get("plotly_chart")) >= 3  # bars, projection, projected-vs-measured
    # slider moves keep using the cached projector (no refit, no reload)
    store = at.session_state["_lrviz_ctx"]
    mid = store.model_id
    at.slider(key=slider_key(mid, "layer3.0.conv2", 0)).set_value(8)
    ok(at.run())
    assert re.fullmatch(r"[\d.]+% \([\d.]+–[\d.]+%\)", metric(at, "Projected top-1"))
    assert at.session_state["_ranks_render_ms"] < 3000


@pytest.mark.parametrize("target_metric, ratio, snap, method", [("params", 4.0, False, "greedy"), ("macs", 3.0, True, "greedy"),
                                                                  ("macs", 4.0, False, "knapsack"), ("params", 3.0, False, "continuous"),
                                                                  ("macs", 2.0, False, "bayes")])
def test_solver_preset_meets_the_budget(demo_sensitivities, target_metric, ratio, snap, method):
    at = goto(new_app(SENS_N), "pages/ranks.py")
    at.radio(key="solve_method").set_value(method)
    at.selectbox(key="solve_metric").set_value(target_metric)
    at.number_input(key="solve_ratio").set_value(ratio)
    if snap:
        at.checkbox(key="solve_snap").check()
    ok(at.run())
    at.button(key="preset_solve").click()
    ok(at.run())
    assert not at.error, [e.value for e in at.error]
    label = "Params" if target_metric == "params" else "MACs / image"
    assert ratio_shown(at, label) >= ratio
    state = at.session_state["_plans"][ctx_of(at).model_id]
    assert state["label"].startswith(f"{'solve' if method == 'greedy' else method}:{target_metric}:{ratio:g}")
    a = ctx_of(at).analysis
    cost = lrviz.plan_cost(a, lrviz.make_plan(a, "full").with_ranks(state["ranks"]))
    assert (cost.params_ratio if target_metric == "params" else cost.macs_ratio) >= ratio - 1e-9
    mid = ctx_of(at).model_id
    for name, ranks in state["ranks"].items():
        full = a.layer(name).full_ranks
        for i, (r, f) in enumerate(zip(ranks, full)):
            if f > 1:
                assert at.slider(key=slider_key(mid, name, i)).value == r
            if snap:
                assert r == f or r % 8 == 0, (name, ranks)


def test_compare_sweep_with_the_solver(demo_sensitivities):
    at = goto(new_app(SENS_N), "pages/compare.py")
    assert STRATEGY_LABELS["solver"] in at.multiselect(key="sweep_strategies").options
    at.multiselect(key="sweep_ratios").set_value([3.0])
    at.multiselect(key="sweep_strategies").set_value(["solver", "uniform"])
    at.radio(key="sweep_metric").set_value("macs")
    ok(at.run())
    assert at.number_input(key="sweep_n").value == SENS_N  # the calibration images by default
    at.button(key="run_sweep").click()
    ok(at.run())
    assert not at.error, [e.value for e in at.error]
    sweep = at.session_state["_sweeps"][(ctx_of(at).model_id, ctx_of(at).data_key, (SENS_N, "macs"))]
    assert list(sweep["strategy"]) == ["solver", "uniform"]
    assert sweep["top1"].between(0, 1).all() and sweep["projected"].between(0, 1).all() and (sweep["n"] == SENS_N).all()
    solver = sweep.iloc[0]
    assert solver["macs_ratio"] >= 3.0 and solver["spec"].startswith("solve:macs:3") and json.loads(solver["ranks"])
    assert abs(sweep.iloc[1]["macs_ratio"] / 3.0 - 1) <= 0.1
    assert at.get("plotly_chart") and at.dataframe
    assert not math.isnan(solver["proj_lo"]) and solver["proj_lo"] <= solver["projected"] <= solver["proj_hi"]
    # measured on the calibration images: the sweep points become measurements that recalibrate the projection
    rows = at.session_state["_measured"][(ctx_of(at).model_id, ctx_of(at).data_key, SENS_N)]
    swept = [r for r in rows if r["label"].startswith("sweep ")]
    assert len(swept) == 2 and {r["top1"] for r in swept} == set(sweep["top1"])
    assert all(r["basis"] == "sensitivities" and json.loads(r["plan_json"])["layers"] for r in swept)
    caption_with(at, "every point also recalibrates the projection")


def test_present_uses_the_sensitivity_projection(demo_sensitivities):
    at = goto(new_app(SENS_N), "pages/ranks.py")
    at.slider(key="preset_uniform_f").set_value(0.5)
    at.button(key="preset_uniform").click()
    ok(at.run())
    at.switch_page("pages/present.py")
    ok(at.run())
    card = next(m for m in at.metric if m.label == "Top-1 accuracy (projected)")
    assert "layer sensitivities, 95 % band" in card.delta, card.delta
