"""Spectra page: per-layer singular values, EVBMF threshold, chosen rank, retained energy; overview."""

import streamlit as st

from lrviz import energy_curve, figures, fmt, tables
from pages import _state as state

CAPTION = (
    "Singular values of each layer's unfoldings (Tucker-2: mode-0 = output channels, mode-1 = input "
    "channels; 1×1 convs and linear layers: the matrix). Dashed: the EVBMF threshold — values above it "
    "are signal. Diamond: the rank of the current plan (set on the Ranks page). Dotted, right axis: "
    "energy kept, Σᵢ≤ᵣ σᵢ² / Σ σᵢ²."
)


def layer_tab(a, ranks) -> None:
    name = st.selectbox("Layer", [l.name for l in a.layers], key="spectra_layer",
                        format_func=lambda n: f"{n}  ({a.layer(n).kind}, VBMF {', '.join(map(str, a.vbmf_ranks(n)))})")
    st.plotly_chart(figures.spectrum_figure(a, name, ranks.get(name)), key="spectrum_chart")
    vb = a.vbmf[name]
    for col, (i, (mode, res)) in zip(st.columns(len(vb)), enumerate(vb.items())):
        r = ranks[name][i]
        curve = energy_curve(a.spectra[name].values[mode])
        energy = float(curve[min(r, len(curve)) - 1])
        col.metric(f"{figures.MODE_NAMES[mode]}", f"VBMF rank {res.rank} / {min(res.shape)}",
                   help=f"σ² = {res.sigma2:.4g}, threshold {res.threshold:.4g}, matrix {res.shape[0]}×{res.shape[1]}")
        col.caption(f"current rank {r}: keeps {fmt.percent(energy)} of the energy · σ² = {res.sigma2:.3g}")


def overview_tab(a) -> None:
    st.plotly_chart(figures.spectra_heatmap(a), key="spectra_heatmap")
    st.dataframe(tables.spectra_table(a), hide_index=True, width="stretch")
    st.caption("σ²: EVBMF noise variance; energy kept: fraction of Σσ² retained at the VBMF rank (per mode).")


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
