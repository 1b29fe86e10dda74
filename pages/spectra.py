"""Spectra page: per-layer singular values, VBMF threshold, planned rank, retained energy; overview.

Words used in the text, the metrics and the chart legend alike: **VBMF rank** (what EVBMF finds),
**planned rank** (the current plan's, set on the Ranks page) and **full rank** (the mode's number of
singular values, the smaller side of its unfolding). Ranks are written ``r / full rank``; a planned
rank above the full rank (more channels than singular values) is clipped to it and said so.
"""

import streamlit as st

from lrviz import energy_curve, figures, fmt, tables
from lrviz.cost import layer_params
from lrviz.errors import LrvizError
from pages import _state as state

CAPTION = (
    "Singular values of each layer's unfoldings (Tucker-2: mode-0 = output channels, mode-1 = input "
    "channels; 1×1 convs and linear layers: the matrix). Dashed: the VBMF threshold — values above it "
    "are signal, their count is the VBMF rank. Diamond: the planned rank (the current plan, set on the "
    "Ranks page). Ranks read *r / full rank*, the full rank being the mode's number of singular values. "
    "Dotted, right axis: energy kept, Σᵢ≤ᵣ σᵢ² / Σ σᵢ²."
)


def default_layer(a) -> str:
    """The layer the page opens on: the decomposable layer with the most parameters whose spectrum is
    not trivial (more than one singular value in every mode, e.g. not a 1-channel stem); ties go to
    the first. Falls back to the largest layer."""
    informative = [l for l in a.layers if l.name in a.spectra and all(figures.mode_full_rank(a, l.name, m) > 1 for m in a.spectra[l.name].modes)]
    pool = informative or list(a.layers)
    best = max(pool, key=layer_params)  # max keeps the first of equals
    return best.name


def _layer_label(a, n: str) -> str:
    l = a.layer(n)
    full = [figures.mode_full_rank(a, n, m) for m in a.spectra[n].modes]
    vb = ", ".join(f"{r} / {f}" for r, f in zip(a.vbmf_ranks(n), full))
    return f"{n}  ({l.kind} {'×'.join(map(str, l.weight_shape))}, VBMF rank {vb})"


def layer_tab(a, ranks) -> None:
    names = [l.name for l in a.layers]
    default = default_layer(a)
    if st.session_state.get("spectra_layer") not in names:
        st.session_state.pop("spectra_layer", None)  # another model: open on its default layer
    name = st.selectbox("Layer", names, index=names.index(default), key="spectra_layer", format_func=lambda n: _layer_label(a, n),
                        help="opens on the largest layer with a non-trivial spectrum")
    planned = ranks.get(name)
    st.plotly_chart(figures.spectrum_figure(a, name, planned), key="spectrum_chart")
    vb = a.vbmf[name]
    for col, (i, (mode, res)) in zip(st.columns(len(vb)), enumerate(vb.items())):
        full = figures.mode_full_rank(a, name, mode)
        asked = int(planned[i]) if planned is not None else full
        r = figures.planned_rank(a, name, mode, asked)
        curve = energy_curve(a.spectra[name].values[mode])
        energy = float(curve[min(r, len(curve)) - 1])
        col.metric(f"{figures.MODE_NAMES[mode]}", f"VBMF rank {res.rank} / {full}",
                   help=f"σ² = {res.sigma2:.4g}, threshold {res.threshold:.4g}, unfolding {res.shape[0]}×{res.shape[1]}: "
                        f"full rank {full} (its number of singular values)")
        text = f"planned rank {r} / {full}: keeps {fmt.percent(energy)} of the energy"
        if asked > full:
            text += f" (the plan's {asked} channels exceed the {full} singular values: this mode is kept whole)"
        col.caption(f"{text} · σ² = {res.sigma2:.3g}")
    spatial_view(a, name, planned)


def spatial_view(a, name: str, planned) -> None:
    """The spectrum of the layer's other nested decomposition, spatial SVD (k×k ungrouped convs)."""
    from lrviz.cost import layer_params
    from lrviz.layers import get_module
    from lrviz.methods import check_method, method_max_rank, rank_for_params, spatial_spectrum

    l = a.layer(name)
    try:
        check_method(l, "spatial")
    except LrvizError:
        return
    ctx = state.require_ctx(decomposable=True)
    with st.expander("Spatial SVD of this layer (k×1 then 1×k)"):
        w = get_module(ctx.module, name).weight
        size = layer_params(l, tuple(planned)) if planned is not None else None
        r = rank_for_params(l, "spatial", size) if size is not None and tuple(planned) != tuple(l.full_ranks) else None
        values = spatial_spectrum(w).numpy()  # one SVD for the chart and the energy kept
        st.plotly_chart(figures.spatial_spectrum_figure(values, name, r), key="spatial_chart")
        note = (f"At the planned Tucker-2 size ({fmt.count(size)} params) spatial SVD has rank {r}, keeping "
                f"{fmt.percent(float(energy_curve(values)[r - 1]))} of the kernel's energy." if r is not None else "")
        st.caption(f"Singular values of the kernel reshaped to (C_in·kh) × (C_out·kw); exact at rank {method_max_rank(l, 'spatial')}. "
                   f"{note} Choose it per layer on the Ranks page.")


def overview_tab(a) -> None:
    st.plotly_chart(figures.spectra_heatmap(a), key="spectra_heatmap")
    table = tables.spectra_table(a)
    st.dataframe(table, hide_index=True, width="stretch", height=state.table_height(len(table)))
    st.caption("Per mode: full rank (number of singular values), VBMF rank, σ² (EVBMF noise variance) and energy kept (fraction "
               "of Σσ² retained at the VBMF rank).")


def render() -> None:
    ctx = state.require_ctx(decomposable=True)
    st.title("Spectra")
    if not ctx.analysis.layers:
        st.info("No decomposable layers.")
        return
    st.caption(CAPTION)
    per_layer, overview = st.tabs(["Per layer", "All layers"])
    with per_layer:
        layer_tab(ctx.analysis, state.current_ranks(ctx))
    with overview:
        overview_tab(ctx.analysis)


render()
