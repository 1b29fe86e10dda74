"""Spectra page: per-layer singular values, EVBMF threshold, chosen rank, retained energy; overview."""

import streamlit as st

from lrviz import dashboard as dsh
from pages import _common as common

ctx = common.require_ctx(decomposable=True)
a = ctx.analysis
st.title("Spectra")
if not a.layers:
    st.info("No decomposable layers.")
    st.stop()

ranks = common.current_ranks(ctx)
names = [l.name for l in a.layers]
st.caption(
    "Singular values of each layer's unfoldings (Tucker-2: mode-0 = output channels, mode-1 = input "
    "channels; 1×1 convs and linear layers: the matrix). Dashed: the EVBMF threshold — values above it "
    "are signal. Diamond: the rank of the current plan (set on the Ranks page). Dotted, right axis: "
    "energy kept, Σᵢ≤ᵣ σᵢ² / Σ σᵢ²."
)

layer_tab, overview_tab = st.tabs(["Per layer", "All layers"])
with layer_tab:
    name = st.selectbox("Layer", names, key="spectra_layer",
                        format_func=lambda n: f"{n}  ({a.layer(n).kind}, VBMF {', '.join(map(str, a.vbmf_ranks(n)))})")
    st.plotly_chart(dsh.spectrum_figure(a, name, ranks.get(name)), key="spectrum_chart")
    vb = a.vbmf[name]
    cols = st.columns(len(vb))
    for col, (mode, res) in zip(cols, vb.items()):
        r = ranks[name][list(vb).index(mode)]
        curve = dsh.energy_curve(a.spectra[name].values[mode])
        energy = float(curve[min(r, len(curve)) - 1])
        col.metric(f"{dsh.MODE_NAMES[mode]}", f"VBMF rank {res.rank} / {min(res.shape)}",
                   help=f"σ² = {res.sigma2:.4g}, threshold {res.threshold:.4g}, matrix {res.shape[0]}×{res.shape[1]}")
        col.caption(f"current rank {r}: keeps {energy:.1%} of the energy · σ² = {res.sigma2:.3g}")
with overview_tab:
    st.plotly_chart(dsh.spectra_heatmap(a), key="spectra_heatmap")
    st.dataframe(dsh.spectra_table(a), hide_index=True, width="stretch")
    st.caption("σ²: EVBMF noise variance; energy kept: fraction of Σσ² retained at the VBMF rank (per mode).")
