"""Streamlit state shared by the pages: cached resources, the Context of a run, the current plan.

Not a page (it is not listed in ``st.navigation``). Nothing is computed here; this module binds
:mod:`lrviz` to Streamlit's caches and session state.

Caching
-------
* ``st.cache_resource`` keyed by explicit strings (``ModelSource.key``, ``DataSource.key``; the
  leading-underscore arguments are not hashed): the loaded model, its analysis (spectra + EVBMF), its
  :class:`lrviz.FactorCache`, an eval-mode copy for inference, datasets, the energy-plan curve.
  Shared by all sessions and never mutated (compressed models are new objects).
* One shared :class:`pages._jobs.ResultStore` for evaluations and sensitivities (``pages/_measure.py``).
* Per session (``st.session_state``, keys below): the current ranks of each model, measured quick
  evaluations, saved configurations, sweeps, fine-tuning and sensitivity jobs.

Experiment store
----------------
:func:`experiment_store` opens the :class:`lrviz.store.Store` of ``$LRVIZ_DB`` (else the cache folder)
once per process and path. Evaluations, saved configurations, sweeps, fine-tuning runs, benchmarks and
exports are recorded there (:func:`record`: model fingerprint + data + plan) and read back by a new
session, so a reload loses nothing. A store that cannot be opened (corrupt, another program's, newer)
leaves the dashboard working without persistence and every page says so once (:func:`store_notice`);
a write or read that fails is one warning, never a traceback.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import streamlit as st  # noqa: E402

from lrviz import FactorCache, make_plan, project, sources  # noqa: E402
from lrviz.errors import LrvizError  # noqa: E402
from lrviz.keys import plan_key, short_id  # noqa: E402
from lrviz.store import Store, model_key, store_path  # noqa: E402
from pages._jobs import ResultStore  # noqa: E402

#: Session-state keys used by more than one page (the tests read them too).
CTX_KEY = "_lrviz_ctx"
ERR_KEY = "_lrviz_ctx_error"
PLANS_KEY = "_plans"
MEASURED_KEY = "_measured"
BASE_OVERRIDE_KEY = "_base_override"
FINETUNED_KEY = "_finetuned"
SWEEPS_KEY = "_sweeps"


# ---- cached resources (explicit keys) --------------------------------------------------------------


@st.cache_resource(show_spinner="Loading model…", max_entries=6)
def cached_model(key: str, _source: sources.ModelSource):
    return sources.load_source(_source)


@st.cache_resource(show_spinner="Computing spectra and EVBMF ranks…", max_entries=6)
def cached_analysis(key: str, _loaded):
    return sources.analyze_loaded(_loaded)


@st.cache_resource(max_entries=6)
def cached_inference_model(key: str, _loaded):
    """Eval-mode copy of the original model used for all its inference (see ``sources.inference_copy``)."""
    return sources.inference_copy(_loaded.runnable)


@st.cache_resource(max_entries=6)
def cached_factors(key: str, _module) -> FactorCache:
    return FactorCache(_module)


@st.cache_resource(show_spinner="Collecting input statistics for data-aware factors…", max_entries=4)
def cached_stats(key: str, _module, _train, n: int):
    """Input statistics of every decomposable layer on ``n`` training images (:func:`lrviz.activations.input_statistics`)."""
    from lrviz.activations import input_statistics

    return input_statistics(_module, _train, limit=n, data_name=f"{n} training images")


@st.cache_data(max_entries=64, show_spinner=False)
def cached_equal_size(key: str, name: str, tucker_ranks: tuple, cp_error: bool, _layer, _weight) -> list:
    """:func:`lrviz.methods.equal_size` of one layer at its Tucker-2 ranks, once per (model, layer, ranks): the
    Ranks fragment reruns on every slider move, and a CP fit takes seconds."""
    from lrviz.methods import equal_size

    return equal_size(_layer, _weight, tuple(tucker_ranks), cp_error=cp_error)


@st.cache_resource(max_entries=4)
def cached_data_factors(key: str, _module, _stats) -> FactorCache:
    return FactorCache(_module, _stats)


@st.cache_resource(show_spinner="Loading dataset…", max_entries=6)
def cached_dataset(key: str, split: str, _src: sources.DataSource):
    return sources.load_dataset(_src, split)


@st.cache_resource(max_entries=6)
def cached_retention_curve(key: str, _analysis):
    """The energy plans with their params ratio and retained energy (data-free): the projection curves."""
    return project.retention_curve(_analysis)


@st.cache_resource
def result_store() -> ResultStore:
    return ResultStore()


@st.cache_resource(show_spinner="Fingerprinting the model for the experiment store…", max_entries=6)
def cached_model_key(key: str, _loaded) -> str:
    """The store's fingerprint of the model (:func:`lrviz.store.model_key`; a ``.pt2`` program's runnable module)."""
    return model_key(_loaded.module if _loaded.decomposable else _loaded.runnable)


# ---- the experiment store ----------------------------------------------------------------------------


@st.cache_resource(max_entries=4, show_spinner=False)
def _cached_store(path: str) -> Store:
    return Store(path)  # a failure raises, so it is not cached: the next run tries again


def store_key() -> str:
    """The experiment store's path as its cache key (a test that moves ``$LRVIZ_DB`` gets another store)."""
    return str(store_path().expanduser().absolute())


def experiment_store() -> Store | None:
    """The experiment store of this process (``$LRVIZ_DB``, else the cache folder), or None when it cannot be used."""
    try:
        return _cached_store(store_key())
    except LrvizError:
        return None


def store_notice() -> None:
    """One error line when the experiment store cannot be used (corrupt, another program's, newer, not writable):
    the dashboard works on without it."""
    try:
        _cached_store(store_key())
    except LrvizError as exc:
        st.error(f"Experiment store not used — nothing is kept across reloads: {exc}", icon=":material/database:")


def store_call(what: str, fn, default=None):
    """``fn(store)``, or ``default`` without a store or when it fails (one warning saying what was not done)."""
    s = experiment_store()
    if s is None:
        return default
    try:
        return fn(s)
    except LrvizError as exc:
        st.warning(f"Experiment store: {what} failed — {exc}", icon="⚠️")
        return default


def record(ctx, kind: str, *, plan=None, name: str = "", metrics: dict | None = None, payload=None, artifact=None,
           replace: bool = False) -> int | None:
    """Record ``kind`` for this model and data in the experiment store; its id, or None (not stored)."""
    return store_call(f"recording the {kind}", lambda s: s.record(
        kind, model=ctx.store_model, model_name=ctx.loaded.name, data=ctx.store_data, plan=plan, name=name, metrics=metrics,
        payload=payload, artifact=artifact, origin="dashboard", replace=replace))


def stored_runs(ctx, kind=None, *, name: str | None = None, all_data: bool = False, limit: int | None = None) -> list:
    """This model's records of ``kind`` (one kind, several, or all; named ``name``) on the current data
    (``all_data``: any), oldest first (``limit``: the newest ``limit``)."""
    return store_call("reading records", lambda s: s.runs(kind=kind, model=ctx.store_model, data=None if all_data else ctx.store_data,
                                                          name=name, limit=limit), default=[])


def stored_run(run_id: int):
    """One record of the experiment store by id, or None."""
    return store_call("reading a record", lambda s: s.get(run_id))


def delete_run(run_id: int) -> bool:
    return bool(store_call("deleting a record", lambda s: s.delete(run_id), default=False))


# ---- layout ------------------------------------------------------------------------------------------

#: Streamlit's default row height of ``st.dataframe`` (px); the header row is as tall.
TABLE_ROW_PX = 35
#: Tables up to this many rows are shown whole; longer ones scroll inside a box of this many rows.
TABLE_MAX_ROWS = 30


def table_height(n_rows: int, max_rows: int = TABLE_MAX_ROWS) -> str | int:
    """``height`` for ``st.dataframe``: every row when there are at most ``max_rows`` (``"content"``),
    else a box of ``max_rows`` rows (never the ten-row default box that makes a 20-layer table scroll)."""
    if int(n_rows) <= max_rows:
        return "content"
    return TABLE_ROW_PX * (max_rows + 1) + 3


# ---- the context of one run ------------------------------------------------------------------------


@dataclass
class Context:
    """What the sidebar chose and loaded for this run (built by ``pages/_sidebar.py``)."""

    source: sources.ModelSource
    loaded: Any
    notes: list
    analysis: Any
    data_src: sources.DataSource | None
    dataset: Any
    data_error: str | None
    quick_n: int
    #: Input statistics of data-aware factors (the sidebar's toggle), else None (weight-only factors). With
    #: them, ``source.key`` carries their fingerprint, so no result of one kind of factors is shown for the other.
    stats: Any = None

    @property
    def model_id(self) -> str:
        return short_id(self.source.key)

    @property
    def module(self):
        return self.loaded.module

    @property
    def original(self):
        """The original model for inference (a shared eval-mode copy; never trained, never toggled)."""
        return cached_inference_model(self.source.key, self.loaded)

    @property
    def factors(self) -> FactorCache:
        if self.stats is not None:
            return cached_data_factors(self.source.key, self.loaded.module, self.stats)
        return cached_factors(self.source.key, self.loaded.module)

    @property
    def eval_problem(self) -> str | None:
        if self.dataset is None:
            return self.data_error or "no dataset loaded"
        return sources.eval_problem(self.loaded, self.dataset)

    @property
    def data_key(self) -> str:
        return self.data_src.key if self.data_src is not None else "-"

    @property
    def data_label(self) -> str:
        return self.data_src.label if self.data_src is not None else "the data"

    @property
    def store_model(self) -> str:
        """The model as the experiment store keys it (its fingerprint, computed once per model)."""
        key = cached_model_key(self.source.key, self.loaded)
        return key if self.stats is None else f"{key}+data:{self.stats.fingerprint()[:12]}"

    @property
    def store_data(self) -> str:
        """The data as the experiment store (and the CLI) names it: ``<dataset>:<split>`` (the sidebar loads ``test``)."""
        return f"{self.data_src.name}:test" if self.data_src is not None else "-"


def _ensure_router() -> None:
    """Run the router when a page was started without app.py.

    Because the pages live in a folder named ``pages/``, Streamlit's legacy multipage mode can run a
    page script directly (the first request of a server that opens a page URL, and AppTest reruns).
    ``st.navigation`` switches that mode off; until it has been called in this run the flag below
    is True, and the page then does app.py's work itself.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        from pages._sidebar import router

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
    store_notice()
    if decomposable and not ctx.loaded.decomposable:
        st.info(
            f"{ctx.loaded.name} is an exported program (.pt2): it can be analysed for cost and evaluated, "
            "but not decomposed. Load the architecture (with a state_dict) to choose ranks."
        )
        st.stop()
    return ctx


# ---- the current plan (per session, per model; survives page switches, unlike widget state) --------


def slider_key(model_id: str, layer: str, index: int) -> str:
    """Session-state key of one rank slider."""
    return f"rank|{model_id}|{layer}|{index}"


def _plan_state(ctx: Context) -> dict:
    plans = st.session_state.setdefault(PLANS_KEY, {})
    if ctx.model_id not in plans:
        plans[ctx.model_id] = {"ranks": {l.name: l.full_ranks for l in ctx.analysis.layers}, "label": "full", "version": 0}
    return plans[ctx.model_id]


def current_ranks(ctx: Context) -> dict[str, tuple[int, ...]]:
    return _plan_state(ctx)["ranks"]


def current_label(ctx: Context) -> str:
    return _plan_state(ctx)["label"]


def current_methods(ctx: Context) -> dict[str, tuple[str, int]]:
    """The layers decomposed by CP or spatial SVD in the current plan: ``{name: (method, rank)}``."""
    return _plan_state(ctx).setdefault("methods", {})


def current_plan(ctx: Context):
    """The plan with exactly the current ranks (no break-even rule) and CP / spatial-SVD layers, labelled
    with the current label."""
    plan = make_plan(ctx.analysis, "full").with_ranks(current_ranks(ctx), spec=current_label(ctx))
    methods = current_methods(ctx)
    return plan.with_methods(dict(methods), spec=current_label(ctx)) if methods else plan


def set_plan(ctx: Context, plan, label: str | None = None) -> None:
    """Make ``plan`` the current plan; the Ranks page re-syncs its sliders on the next render."""
    infos = {l.name: l for l in ctx.analysis.layers}
    ranks = {lp.name: (tuple(infos[lp.name].full_ranks) if lp.method and lp.name in infos else tuple(int(r) for r in lp.ranks))
             for lp in plan.layers}
    methods = {lp.name: (lp.method, int(lp.ranks[0])) for lp in plan.layers if lp.method}
    old = st.session_state.setdefault(PLANS_KEY, {}).get(ctx.model_id, {})
    st.session_state[PLANS_KEY][ctx.model_id] = {"ranks": ranks, "label": label or plan.spec or "custom", "methods": methods,
                                                 "version": old.get("version", 0) + 1}


def set_method(ctx: Context, name: str, method: str, rank: int | None) -> None:
    """Decompose layer ``name`` by ``method`` (``"cp"`` / ``"spatial"`` at ``rank``; ``"tucker2"``: back to its sliders)."""
    state = _plan_state(ctx)
    methods = state.setdefault("methods", {})
    if method == "tucker2":
        methods.pop(name, None)
    else:
        methods[name] = (method, int(rank))
    state["label"] = "custom"


def sync_sliders(ctx: Context) -> None:
    """Before the rank sliders render: point them at the stored ranks (all of them after a preset
    or a loaded configuration, otherwise only those whose widget state was dropped)."""
    state = _plan_state(ctx)
    ver_key = f"_slider_version|{ctx.model_id}"
    force = st.session_state.get(ver_key) != state.get("version", 0)
    for name, r in state["ranks"].items():
        full = ctx.analysis.layer(name).full_ranks
        for i, v in enumerate(r):
            if full[i] <= 1:
                continue
            k = slider_key(ctx.model_id, name, i)
            if force or k not in st.session_state:
                st.session_state[k] = int(v)
    st.session_state[ver_key] = state.get("version", 0)


def set_ranks_from_sliders(ctx: Context, ranks: dict[str, tuple[int, ...]]) -> None:
    state = _plan_state(ctx)
    if ranks != state["ranks"]:
        state["ranks"] = ranks
        state["label"] = "custom"


def finetuned_for(ctx: Context, plan):
    """The fine-tuned model of this session for exactly this plan, or None."""
    ft = st.session_state.get(FINETUNED_KEY, {}).get(ctx.model_id)
    if ft is not None and ft["plan_key"] == plan_key(plan):
        return ft
    return None
