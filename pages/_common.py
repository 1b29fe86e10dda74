"""Streamlit glue shared by app.py and the pages: cached resources, the sidebar, plan state.

Not a page (it is not listed in ``st.navigation``). All logic lives in :mod:`lrviz.dashboard`; this
module only binds it to Streamlit's caches, widgets and session state.

Caching
-------
* ``st.cache_resource`` keyed by explicit strings (``ModelSource.key``, ``DataSource.key``): the loaded
  model, its analysis (spectra + EVBMF), its :class:`lrviz.FactorCache`, datasets. Shared by all
  sessions and never mutated (compressed models are new objects; evaluation restores flags).
* A shared :class:`lrviz.dashboard.ResultStore` for evaluation results, keyed by
  ``(model key, data key, plan key, images)`` — computed with a progress bar the first time.
* Layer sensitivities (:mod:`lrviz.sensitivity`) per ``(model key, data key, images)`` in the same
  store (loading them still costs one forward pass, measuring them is a background job whose partial
  results are cached on disk). The sensitivity projector calibrated to them plus this session's quick
  evaluations is kept per session and refitted only when those change (never on a slider move).
* Per session (``st.session_state``): the current ranks of each model, measured quick evaluations,
  saved configurations, sweeps, fine-tuning and sensitivity jobs.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import streamlit as st  # noqa: E402

from lrviz import FactorCache, RankPlan, plan_cost  # noqa: E402
from lrviz import dashboard as dsh  # noqa: E402
from lrviz import project  # noqa: E402
from lrviz.errors import LrvizError  # noqa: E402
from lrviz.project import SensitivityProjector  # noqa: E402

QUICK_SIZES = [100, 200, 300, 500, 1000, 2000]
DEFAULT_QUICK = 500
#: Above this many MACs × images a baseline evaluation is not started automatically.
AUTO_BASELINE_BUDGET = 5e10

DATA_CHOICES = {
    "sample": "Fashion-MNIST sample (bundled, 2,000 test images)",
    "fashion-mnist": "Fashion-MNIST test set (10,000 images)",
    "imagefolder": "ImageFolder (a local folder)",
}
MODEL_CHOICES = {
    "builtin": "Bundled model",
    "torchvision": "torchvision architecture",
    "program": "Exported program (.pt2)",
}
CTX_KEY = "_lrviz_ctx"
ERR_KEY = "_lrviz_ctx_error"


# ------------------------------------------------------------------------------------------------
# Cached resources (explicit keys; leading-underscore arguments are not hashed)
# ------------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading model…", max_entries=6)
def cached_model(key: str, _source: dsh.ModelSource):
    return dsh.load_source(_source)


@st.cache_resource(show_spinner="Computing spectra and EVBMF ranks…", max_entries=6)
def cached_analysis(key: str, _loaded):
    return dsh.analyze_loaded(_loaded)


@st.cache_resource(max_entries=6)
def cached_inference_model(key: str, _loaded):
    """Eval-mode copy of the original model used for all its inference (see ``dsh.inference_copy``)."""
    return dsh.inference_copy(_loaded.runnable)


@st.cache_resource(max_entries=6)
def cached_factors(key: str, _module) -> FactorCache:
    return FactorCache(_module)


@st.cache_resource(show_spinner="Loading dataset…", max_entries=6)
def cached_dataset(key: str, split: str, _src: dsh.DataSource):
    return dsh.load_dataset(_src, split)


@st.cache_resource(max_entries=6)
def cached_retention_curve(key: str, _analysis):
    return project.retention_curve(_analysis)


@st.cache_resource(max_entries=6)
def cached_energy_plans(key: str, _analysis):
    """``(params ratio, plan)`` of the energy plans the projection curve is drawn along (data-free)."""
    return dsh.energy_plans(_analysis)


@st.cache_resource
def result_store() -> dsh.ResultStore:
    return dsh.ResultStore()


# ------------------------------------------------------------------------------------------------
# Context
# ------------------------------------------------------------------------------------------------


@dataclass
class Context:
    source: dsh.ModelSource
    loaded: Any
    notes: list
    analysis: Any
    data_src: dsh.DataSource | None
    dataset: Any
    data_error: str | None
    quick_n: int

    @property
    def model_id(self) -> str:
        return dsh.short_id(self.source.key)

    @property
    def module(self):
        return self.loaded.module

    @property
    def original(self):
        """The original model for inference (a shared eval-mode copy; never trained, never toggled)."""
        return cached_inference_model(self.source.key, self.loaded)

    @property
    def factors(self) -> FactorCache:
        return cached_factors(self.source.key, self.loaded.module)

    @property
    def eval_problem(self) -> str | None:
        if self.dataset is None:
            return self.data_error or "no dataset loaded"
        return dsh.eval_problem(self.loaded, self.dataset)

    @property
    def data_key(self) -> str:
        return self.data_src.key if self.data_src is not None else "-"


def _model_sidebar() -> dsh.ModelSource:
    from lrviz.models import available_models, builtin_models

    sb = st.sidebar
    kind = sb.radio("Model", list(MODEL_CHOICES), format_func=MODEL_CHOICES.get, key="model_kind")
    if kind == "builtin":
        names = list(builtin_models())
        name = sb.selectbox("Bundled model", names, index=names.index("demo") if "demo" in names else 0, key="builtin_name")
        weights = sb.radio("Weights", ["default", "upload"], key="builtin_weights",
                           format_func={"default": "bundled (random if not bundled yet)", "upload": "upload a state_dict"}.get)
        if weights == "upload":
            up = sb.file_uploader("state_dict file (.pt/.pth)", type=[s[1:] for s in dsh.STATE_DICT_SUFFIXES], key="sd_upload_builtin")
            if up is None:
                raise _NeedInput("upload a state_dict file in the sidebar (or choose the bundled weights)")
            return _uploaded_source(up, "state_dict", name)
        return _builtin_source(name)
    if kind == "torchvision":
        archs = available_models()["torchvision"]
        arch = sb.selectbox("Architecture", archs, index=archs.index("resnet18") if "resnet18" in archs else 0, key="tv_arch")
        weights = sb.radio("Weights", ["none", "pretrained", "upload"], key="tv_weights",
                           format_func={"none": "random init", "pretrained": "pretrained (needs internet the first time)", "upload": "upload a state_dict"}.get)
        if weights == "upload":
            up = sb.file_uploader("state_dict file (.pt/.pth)", type=[s[1:] for s in dsh.STATE_DICT_SUFFIXES], key="sd_upload_tv")
            if up is None:
                raise _NeedInput("upload a state_dict file in the sidebar")
            return _uploaded_source(up, "state_dict", arch)
        return dsh.torchvision_source(arch, weights)
    up = sb.file_uploader("torch.export program (.pt2)", type=["pt2"], key="pt2_upload")
    if up is None:
        raise _NeedInput("upload a .pt2 file in the sidebar")
    return _uploaded_source(up, "program")


UPLOADS_KEY = "_lrviz_uploads"


def _uploaded_source(up, kind: str, arch: str | None = None) -> dsh.ModelSource:
    """The model source of an uploaded file, stored once per upload and session.

    Streamlit hands the same upload to every rerun of the script; hashing and verifying it again on
    every slider move would cost seconds for a large checkpoint. So the source is kept per session,
    keyed by the upload's id, and stored again only when its file has gone (pruned by the folder's
    size cap, see ``lrviz.dashboard.store_upload``).
    """
    file_id = getattr(up, "file_id", None)
    memo = st.session_state.setdefault(UPLOADS_KEY, {})
    key = (kind, arch, file_id, up.name, up.size)
    src = memo.get(key) if file_id is not None else None
    stored = dsh.upload_path(src) if src is not None else None
    if src is not None and stored is not None and stored.is_file():
        return src
    if kind == "program":
        src = dsh.program_source(up.getvalue(), up.name)
    else:
        src = dsh.state_dict_source(arch, up.getvalue(), up.name)
    if file_id is not None:
        memo.clear()  # one upload per session is in use at a time
        memo[key] = src
    return src


def _builtin_source(name: str) -> dsh.ModelSource:
    from lrviz.models import builtin_models

    src = dsh.builtin_source(name)
    entry = builtin_models().get(name)
    path = entry.resolved_weights_path() if entry is not None else None
    stamp = path.stat().st_mtime_ns if path is not None and path.is_file() else "none"
    return dsh.ModelSource(key=f"{src.key}:{stamp}", spec=src.spec, weights=src.weights, label=src.label)


class _NeedInput(Exception):
    pass


def _data_sidebar(loaded) -> tuple[dsh.DataSource | None, Any, str | None]:
    sb = st.sidebar
    choice = sb.radio("Evaluation data", list(DATA_CHOICES), format_func=DATA_CHOICES.get, key="data_kind")
    if choice == "sample":
        name, label = "fashion-mnist-sample", "Fashion-MNIST sample (2,000)"
    elif choice == "fashion-mnist":
        name, label = "fashion-mnist", "Fashion-MNIST test (10,000)"
    else:
        folder = sb.text_input("Image folder (one sub-folder per class)", key="imagefolder_path").strip()
        if not folder:
            return None, None, "enter an image folder in the sidebar"
        name, label = f"imagefolder:{folder}", f"ImageFolder {folder}"
    src = dsh.dataset_source(name, loaded.input_size, label)
    try:
        return src, cached_dataset(src.key, "test", src), None
    except LrvizError as exc:
        sb.error(f"Dataset: {exc}")
        return src, None, str(exc)


def build_context() -> Context | None:
    """Draw the sidebar, load (cached) model, analysis and dataset; None (with st.error) on failure."""
    st.session_state.pop(CTX_KEY, None)
    st.session_state.pop(ERR_KEY, None)
    st.sidebar.title("lrviz")
    try:
        source = _model_sidebar()
    except _NeedInput as exc:
        st.session_state[ERR_KEY] = ("info", str(exc))
        return None
    except LrvizError as exc:
        st.sidebar.error(f"Upload rejected: {exc}")
        st.session_state[ERR_KEY] = ("error", f"Upload rejected: {exc}")
        return None
    try:
        loaded, notes = cached_model(source.key, source)
        analysis = cached_analysis(source.key, loaded)
    except LrvizError as exc:
        st.sidebar.error(f"Could not load the model: {exc}")
        st.session_state[ERR_KEY] = ("error", f"Could not load the model: {exc}")
        return None
    st.sidebar.caption(f"**{loaded.name}** · input {'×'.join(map(str, loaded.input_size))} · {loaded.num_classes} classes")
    data_src, dataset, data_error = _data_sidebar(loaded)
    quick_n = st.sidebar.select_slider("Quick-evaluation images", QUICK_SIZES, value=DEFAULT_QUICK, key="quick_n",
                                       help="Subset size (deterministic) for quick evaluations, sweeps and saved configurations")
    ctx = Context(source, loaded, list(notes), analysis, data_src, dataset, data_error, int(quick_n))
    st.session_state[CTX_KEY] = ctx
    return ctx


def page_config() -> None:
    st.set_page_config(page_title="lrviz — low-rank CNN compression", page_icon=":material/compress:", layout="wide")


def pages() -> list:
    """The dashboard's pages, in navigation order (listed explicitly; ``_common.py`` is not a page)."""
    return [
        st.Page("pages/model.py", title="Model", icon=":material/memory:", default=True),
        st.Page("pages/spectra.py", title="Spectra", icon=":material/ssid_chart:", url_path="spectra"),
        st.Page("pages/ranks.py", title="Ranks", icon=":material/tune:", url_path="ranks"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
        st.Page("pages/finetune.py", title="Fine-tune & export", icon=":material/build:", url_path="finetune"),
        st.Page("pages/present.py", title="Present", icon=":material/slideshow:", url_path="present"),
    ]


def router():
    """What app.py does: page config, navigation, sidebar + context. Returns the selected page."""
    page_config()
    page = st.navigation(pages())
    build_context()
    return page


def _ensure_router() -> None:
    """Run the router when a page was started without app.py.

    Because the pages live in a folder named ``pages/``, Streamlit's legacy multipage mode can run a
    page script directly (the first request of a server that opens a page URL, and AppTest reruns).
    ``st.navigation`` switches that mode off; until it has been called in this run the flag below
    is True, and the page then does app.py's work itself.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        router()


def require_ctx(decomposable: bool = False) -> Context:
    """The context built by the router for this run; stops the page (with a message) when there is none."""
    _ensure_router()
    ctx = st.session_state.get(CTX_KEY)
    if ctx is None:
        level, msg = st.session_state.get(ERR_KEY, ("info", "choose a model in the sidebar"))
        (st.error if level == "error" else st.info)(msg)
        st.stop()
    for note in ctx.notes:
        st.warning(note, icon="⚠️")
    if decomposable and not ctx.loaded.decomposable:
        st.info(
            f"{ctx.loaded.name} is an exported program (.pt2): it can be analysed for cost and evaluated, "
            "but not decomposed. Load the architecture (with a state_dict) to choose ranks."
        )
        st.stop()
    return ctx


# ------------------------------------------------------------------------------------------------
# Plan state (per session, per model) — survives page switches, unlike widget state
# ------------------------------------------------------------------------------------------------


def _plans() -> dict:
    return st.session_state.setdefault("_plans", {})


def current_ranks(ctx: Context) -> dict[str, tuple[int, ...]]:
    plans = _plans()
    if ctx.model_id not in plans:
        plans[ctx.model_id] = {"ranks": {l.name: l.full_ranks for l in ctx.analysis.layers}, "label": "full", "version": 0}
    return plans[ctx.model_id]["ranks"]


def current_label(ctx: Context) -> str:
    current_ranks(ctx)
    return _plans()[ctx.model_id]["label"]


def current_plan(ctx: Context):
    return dsh.plan_from_ranks(ctx.analysis, current_ranks(ctx), spec=current_label(ctx))


def set_plan(ctx: Context, plan, label: str | None = None) -> None:
    """Make ``plan`` the current plan; the Ranks page re-syncs its sliders on the next render."""
    ranks = {lp.name: tuple(int(r) for r in lp.ranks) for lp in plan.layers}
    old = _plans().get(ctx.model_id, {})
    _plans()[ctx.model_id] = {"ranks": ranks, "label": label or plan.spec or "custom", "version": old.get("version", 0) + 1}


def sync_sliders(ctx: Context) -> None:
    """Before the rank sliders render: point them at the stored ranks (all of them after a preset
    or a loaded configuration, otherwise only those whose widget state was dropped)."""
    ranks = current_ranks(ctx)
    state = _plans()[ctx.model_id]
    ver_key = f"_slider_version|{ctx.model_id}"
    force = st.session_state.get(ver_key) != state.get("version", 0)
    for name, r in ranks.items():
        full = ctx.analysis.layer(name).full_ranks
        for i, v in enumerate(r):
            if full[i] <= 1:
                continue
            k = dsh.slider_key(ctx.model_id, name, i)
            if force or k not in st.session_state:
                st.session_state[k] = int(v)
    st.session_state[ver_key] = state.get("version", 0)


def set_ranks_from_sliders(ctx: Context, ranks: dict[str, tuple[int, ...]]) -> None:
    state = _plans()[ctx.model_id]
    if ranks != state["ranks"]:
        state["ranks"] = ranks
        state["label"] = "custom"


# ------------------------------------------------------------------------------------------------
# Evaluations
# ------------------------------------------------------------------------------------------------


def eval_key(ctx: Context, plan_id: str, n: int | None) -> tuple:
    return (ctx.source.key, ctx.data_key, plan_id, n)


def cached_eval(ctx: Context, plan_id: str, n: int | None):
    return result_store().get(eval_key(ctx, plan_id, n))


def run_eval(ctx: Context, plan, n: int | None, label: str):
    """Evaluate the original model (``plan=None``) or a planned model on ``n`` images, with progress.

    Returns the ``EvalResult`` (from the shared store when already measured) or None after showing
    an error.
    """
    from lrviz.evaluate import evaluate

    plan_id = "original" if plan is None else dsh.plan_key(plan)
    key = eval_key(ctx, plan_id, n)
    store = result_store()
    hit = store.get(key)
    if hit is not None:
        return hit
    problem = ctx.eval_problem
    if problem:
        st.error(f"Cannot evaluate: {problem}")
        return None
    total = len(ctx.dataset) if n is None else min(n, len(ctx.dataset))
    bar = st.progress(0.0, text=f"Evaluating {label} on {total} images…")
    try:
        if plan is None:
            model = ctx.original
        else:
            bar.progress(0.0, text=f"Building {label} from cached factors…")
            model = dsh.planned_model(ctx.module, plan, ctx.factors)
        res = evaluate(model, ctx.dataset, limit=n,
                       progress=lambda d, t: bar.progress(min(d / max(t, 1), 1.0), text=f"Evaluating {label}: {d}/{t} images"))
    except LrvizError as exc:
        bar.empty()
        st.error(f"Evaluation failed: {exc}")
        return None
    bar.empty()
    store.put(key, res)
    return res


def baseline(ctx: Context, n: int | None = None, auto: bool = True):
    """Accuracy of the original model on the quick subset: stored, or measured now when cheap."""
    n = ctx.quick_n if n is None else n
    res = cached_eval(ctx, "original", n)
    if res is None and auto and ctx.eval_problem is None and ctx.analysis.macs * n <= AUTO_BASELINE_BUDGET:
        res = run_eval(ctx, None, n, "original model")
    return res


def measured(ctx: Context) -> list[dict]:
    """Quick evaluations of this session for the current model and data (list of dicts)."""
    allm = st.session_state.setdefault("_measured", {})
    return allm.setdefault((ctx.model_id, ctx.data_key, ctx.quick_n), [])


def record_measurement(ctx: Context, plan, res, label: str, proj=None) -> bool:
    """Add a quick evaluation of this session (once per plan); True when it was new.

    ``proj`` is the projection shown when it was measured (energy proxy or sensitivities): kept as
    ``projected`` (and, for the sensitivity basis, ``projected_calib`` — the same projection on the
    calibration images, comparable to the measurement). The plan's JSON is kept so that the
    sensitivity projector can be calibrated to the point.
    """
    rows = measured(ctx)
    pid = dsh.plan_key(plan)
    if any(r["plan_key"] == pid for r in rows):
        return False
    cost = plan_cost(ctx.analysis, plan)
    q = project.layer_retention(ctx.analysis, plan)
    retained = 1.0
    for v in q.values():
        retained *= v
    sens_basis = proj is not None and getattr(proj, "basis", None) == project.SENS_BASIS
    rows.append(
        {
            "plan_key": pid,
            "plan_json": plan.to_json(),
            "label": label,
            "params_ratio": cost.params_ratio,
            "macs_ratio": cost.macs_ratio,
            "top1": res.top1,
            "lo": res.top1_ci[0],
            "hi": res.top1_ci[1],
            "n": res.n,
            "projected": None if proj is None else proj.top1,
            "basis": None if proj is None else proj.basis,
            "projected_calib": proj.calib_top1 if sens_basis else None,
            "retained": retained,
        }
    )
    return True


def projection_base(ctx: Context, measured_base):
    """``(accuracy, text)`` the projection starts from: the user's override or the measured baseline."""
    override = st.session_state.get("_base_override", {}).get(ctx.model_id)
    if override is not None:
        return float(override), "entered by you"
    if measured_base is not None:
        return measured_base.top1, f"measured on {measured_base.n} images"
    return None, None


def projection(ctx: Context, plan, base_top1: float | None):
    override = st.session_state.get("_base_override", {}).get(ctx.model_id)
    if override is not None:
        base_top1 = float(override)
    if base_top1 is None:
        return None
    alpha = st.session_state.get("_proj_exponent", {}).get(ctx.model_id, project.DEFAULT_EXPONENT)
    return project.project_accuracy(ctx.analysis, plan, base_top1, ctx.loaded.num_classes, exponent=alpha)


def finetuned_for(ctx: Context, plan):
    """The fine-tuned model of this session for exactly this plan, or None."""
    ft = st.session_state.get("_finetuned", {}).get(ctx.model_id)
    if ft is not None and ft["plan_key"] == dsh.plan_key(plan):
        return ft
    return None


def fmt_ci(res) -> str:
    return f"{res.top1:.1%} (95 % CI {res.top1_ci[0]:.1%}–{res.top1_ci[1]:.1%}, n={res.n})"


# ------------------------------------------------------------------------------------------------
# Layer sensitivities and the sensitivity projection
# ------------------------------------------------------------------------------------------------

SENS_JOB = "_sens_job"
SENS_ERROR = "_sens_error"


def sens_key(ctx: Context, n: int | None = None) -> tuple:
    return ("sensitivity", ctx.source.key, ctx.data_key, ctx.quick_n if n is None else int(n))


def sens_job():
    """This session's sensitivity job info (``job``, ``key``, ``n``, ``label``, ``final``) or None."""
    return st.session_state.get(SENS_JOB)


def sens_running() -> bool:
    info = sens_job()
    return info is not None and not info["job"].done


def finish_sensitivity_job() -> None:
    """Store the result of a sensitivity job that ended since the last run (complete or partial)."""
    info = sens_job()
    if info is None or not info["job"].done or info.get("final"):
        return
    info["final"] = True
    job = info["job"]
    if job.error:
        st.session_state[SENS_ERROR] = job.error
    elif job.result is not None:
        st.session_state.pop(SENS_ERROR, None)
        result_store().put(info["key"], job.result)


def _disk_state(sens) -> tuple[int, bool]:
    """Layer files and whether the anchors file exist in ``sens``'s disk cache folder."""
    from lrviz.sensitivity import sensitivity_dir

    folder = sensitivity_dir() / sens.key
    try:
        return sum(1 for p in folder.glob("layer-*.npz")), (folder / "anchors.json").is_file()
    except OSError:
        return 0, False


def sensitivity_check_is_cheap(ctx: Context) -> bool:
    """Whether loading cached sensitivities (one forward pass over the quick subset) runs without asking."""
    return ctx.eval_problem is None and ctx.analysis.macs * ctx.quick_n <= AUTO_BASELINE_BUDGET


def sensitivities(ctx: Context, auto: bool = True):
    """Layer sensitivities for (model, data, quick_n): the stored result, or the disk cache's content
    loaded now (``auto`` and cheap, see :func:`sensitivity_check_is_cheap`). None when not looked up.

    An incomplete stored result is re-loaded when the disk cache gained layers since (another
    session or the CLI measured them).
    """
    finish_sensitivity_job()
    if ctx.eval_problem is not None or not ctx.loaded.decomposable:
        return None
    key = sens_key(ctx)
    store = result_store()
    hit = store.get(key)
    if hit is not None and not hit.complete and not sens_running():
        files, _ = _disk_state(hit)
        if files > len({name for name, _ in hit.curves}):
            hit = None
    if hit is None and auto and sensitivity_check_is_cheap(ctx):
        from lrviz.sensitivity import load_sensitivity

        try:
            with st.spinner("Looking for cached layer sensitivities…"):
                hit = load_sensitivity(ctx.original, ctx.dataset, limit=ctx.quick_n, factors=ctx.factors, data_name=_data_label(ctx))
        except LrvizError as exc:
            st.session_state[SENS_ERROR] = str(exc)
            return None
        store.put(key, hit)
    return hit


def _data_label(ctx: Context) -> str:
    label = ctx.data_src.label if ctx.data_src is not None else "data"
    return f"{label}, {ctx.quick_n} images"


def start_sensitivity_job(ctx: Context) -> None:
    """Measure (resume) the sensitivities of (model, data, quick_n) in a background thread."""
    from lrviz.sensitivity import measure_sensitivity

    model, dataset, factors, n, name = ctx.original, ctx.dataset, ctx.factors, ctx.quick_n, _data_label(ctx)

    def _target(progress, should_stop):
        return measure_sensitivity(
            model, dataset, limit=n, factors=factors, data_name=name, should_stop=should_stop,
            progress=lambda done, total, layer: progress({"event": "layer", "done": done, "total": total, "layer": layer}),
        )

    job = dsh.BackgroundJob(_target, name="sensitivity").start()
    st.session_state[SENS_JOB] = {"job": job, "key": sens_key(ctx), "n": n, "model_id": ctx.model_id, "label": name,
                                  "total": len(ctx.analysis.layers), "final": False}
    st.session_state.pop(SENS_ERROR, None)


def measured_plans(ctx: Context) -> dict:
    """``plan_key → RankPlan`` of this session's quick evaluations (parsed once, kept per session)."""
    cache = st.session_state.setdefault("_measured_plans", {})
    out = {}
    for r in measured(ctx):
        pk, text = r["plan_key"], r.get("plan_json")
        if text is None:
            continue
        if pk not in cache:
            try:
                cache[pk] = RankPlan.from_json(text, ctx.analysis.layers)
            except LrvizError:
                cache[pk] = None
        if cache[pk] is not None:
            out[pk] = cache[pk]
    return out


def projector(ctx: Context, sens):
    """The sensitivity projector for complete ``sens``, with γ fitted to the anchors plus every quick
    evaluation of this session on the same images (same data and subset size).

    Kept per session and (model, data, images): refitted (a few ms) only when the sensitivities or the
    measured points change, so slider moves reuse it — and its memo of interpolated logit changes.
    Only the latest one is kept (each holds memoised arrays of calibration-set size).
    """
    plans = measured_plans(ctx)
    rows = [r for r in measured(ctx) if r["plan_key"] in plans and int(r.get("n") or 0) == sens.n]
    sig = (sens.key, id(sens), tuple((r["plan_key"], r["top1"]) for r in rows))
    held = st.session_state.setdefault("_projectors", {})
    slot = (ctx.source.key, ctx.data_key, ctx.quick_n)
    hit = held.get(slot)
    if hit is None or hit[0] != sig:
        p0 = SensitivityProjector(sens)
        hit = (sig, p0.calibrate(p0.anchor_points() + [(plans[r["plan_key"]], float(r["top1"]), None) for r in rows]))
        held[slot] = hit
    return hit[1]


def sensitivity_projection(ctx: Context, proj_obj, plan):
    """The sensitivity projection of ``plan`` (anchored to the user's override of the original's
    accuracy when there is one, else to the calibration images), or None when the plan truncates a
    layer the sensitivities do not cover."""
    if proj_obj is None or proj_obj.missing(plan):
        return None
    override = st.session_state.get("_base_override", {}).get(ctx.model_id)
    return proj_obj.project(plan, None if override is None else float(override))
