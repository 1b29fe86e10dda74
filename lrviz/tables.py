"""What the dashboard and the report show as rows: summaries and DataFrames of lrviz results.

Layers grouped by stage, model / layer / spectra tables, what a sensitivity measurement costs and
holds, the sensitivity projection along the energy plans of :func:`lrviz.project.retention_curve`,
measured-vs-projected points, and fine-tuning histories. Pure functions (no Streamlit, no plotly):
the figures of :mod:`lrviz.figures` draw these frames.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from .analysis import ModelAnalysis
from .cost import CostReport, layer_macs, layer_params
from .fmt import size_mb
from .layers import TUCKER2, LayerInfo
from .plan import RankPlan

__all__ = [
    "CALIBRATION_COLUMNS",
    "calibration_points",
    "cost_table",
    "finetune_history",
    "group_by_stage",
    "layer_table",
    "mode_labels",
    "model_summary",
    "out_of_sample",
    "projection_curve",
    "sensitivity_passes",
    "sensitivity_summary",
    "skipped_table",
    "spectra_table",
    "stage_of",
]


# ---- layers and models ---------------------------------------------------------------------------


def _joined(values: Iterable, spec: str = "{}") -> str:
    """``(8, 16)`` → ``"8, 16"`` (each value formatted with ``spec``)."""
    return ", ".join(spec.format(v) for v in values)


def stage_of(name: str) -> str:
    """Stage of a layer: its name up to the first ``.`` (``layer2.0.conv1`` → ``layer2``)."""
    return name.split(".", 1)[0]


def group_by_stage(layers: Iterable[LayerInfo]) -> "OrderedDict[str, list[LayerInfo]]":
    """Layers grouped by :func:`stage_of`, stages in order of first appearance."""
    out: OrderedDict[str, list[LayerInfo]] = OrderedDict()
    for l in layers:
        out.setdefault(stage_of(l.name), []).append(l)
    return out


def mode_labels(kind: str) -> tuple[str, ...]:
    """Rank names of a layer kind: ``("r_out", "r_in")`` for Tucker-2, ``("r",)`` otherwise."""
    return ("r_out", "r_in") if kind == TUCKER2 else ("r",)


def model_summary(analysis: ModelAnalysis, loaded) -> dict[str, Any]:
    """Headline facts of a model for the Model page."""
    kinds: dict[str, int] = {}
    for l in analysis.layers:
        kinds[l.kind] = kinds.get(l.kind, 0) + 1
    return {
        "name": loaded.name,
        "source": loaded.source,
        "input_size": "×".join(map(str, loaded.input_size)),
        "num_classes": loaded.num_classes,
        "params": analysis.params,
        "macs": analysis.macs,
        "flops": 2 * analysis.macs,
        "size_mb": size_mb(analysis.params),
        "decomposable": len(analysis.layers),
        "skipped": len(analysis.skipped),
        "kinds": kinds,
    }


def layer_table(analysis: ModelAnalysis) -> pd.DataFrame:
    """Decomposable layers with stage, kind, shape, params and MACs."""
    rows = []
    for l in analysis.layers:
        rows.append(
            {
                "stage": stage_of(l.name),
                "layer": l.name,
                "kind": l.kind,
                "weight shape": "×".join(map(str, l.weight_shape)),
                "full ranks": _joined(l.full_ranks),
                "params": layer_params(l),
                "MACs": layer_macs(l, analysis.io[l.name]),
            }
        )
    return pd.DataFrame(rows)


def skipped_table(analysis: ModelAnalysis) -> pd.DataFrame:
    """Layers that are not decomposed, with their module type and why."""
    return pd.DataFrame([{"layer": s.name, "type": s.type, "why it is skipped": s.reason} for s in analysis.skipped])


def spectra_table(analysis: ModelAnalysis) -> pd.DataFrame:
    """Per layer: full ranks (each mode's number of singular values, as the Spectra page counts them),
    VBMF ranks, noise variance σ² and energy kept at the VBMF ranks (readable columns)."""
    if not analysis.has_spectra:
        return pd.DataFrame()
    t = analysis.table()
    return pd.DataFrame(
        {
            "layer": t["name"],
            "kind": t["kind"],
            "shape": t["weight_shape"],
            "full ranks": [_joined(len(analysis.spectra[n].values[m]) for m in analysis.spectra[n].modes) for n in t["name"]],
            "VBMF ranks": [_joined(r) for r in t["vbmf_ranks"]],
            "σ²": [_joined(v, "{:.3g}") for v in t["vbmf_sigma2"]],
            "energy kept": [_joined(v, "{:.1%}") for v in t["energy_at_vbmf"]],
        }
    )


def cost_table(cost: CostReport) -> pd.DataFrame:
    """A cost report's per-layer table with the rank tuples written out (``"8, 16"``)."""
    t = cost.table
    return t.assign(ranks=t["ranks"].map(_joined), full_ranks=t["full_ranks"].map(_joined))

# ---- layer sensitivities and the sensitivity projection -----------------------------------------


def sensitivity_passes(analysis: ModelAnalysis) -> int:
    """Forward passes over the calibration set that :func:`lrviz.sensitivity.measure_sensitivity`
    runs for this model: the original, one per grid rank of every mode, and the joint anchors."""
    from .sensitivity import DEFAULT_ANCHORS, rank_grid

    return 1 + sum(len(rank_grid(f)) for l in analysis.layers for f in l.full_ranks) + len(DEFAULT_ANCHORS)


def sensitivity_summary(sens, total_layers: int | None = None) -> dict[str, Any]:
    """What the dashboard says about a :class:`lrviz.sensitivity.Sensitivities`: ``complete``, ``layers``
    (measured), ``total``, ``modes``, ``n``, ``base_top1``, ``anchors``, ``seconds``."""
    measured = {name for name, _ in sens.curves}
    total = len(sens.layers) if total_layers is None else int(total_layers)
    return {
        "complete": bool(sens.complete), "layers": len(measured), "total": total, "modes": len(sens.curves), "n": sens.n,
        "base_top1": sens.base_top1, "anchors": len(getattr(sens, "anchors", None) or []), "seconds": float(getattr(sens, "seconds", 0.0)),
    }


def projection_curve(curve: pd.DataFrame, projector, base_top1: float | None = None) -> pd.DataFrame:
    """The sensitivity projection along the energy plans of a :func:`lrviz.project.retention_curve`
    frame (its ``params_ratio`` and ``plan`` columns): ``params_ratio, top1, lo, hi``.

    Plans that truncate layers the projector does not cover are left out.
    """
    rows = []
    for ratio, plan in zip(curve["params_ratio"], curve["plan"]):
        if projector.missing(plan):
            continue
        p = projector.project(plan, base_top1)
        rows.append({"params_ratio": float(ratio), "top1": p.top1, "lo": p.interval[0], "hi": p.interval[1]})
    return pd.DataFrame(rows, columns=["params_ratio", "top1", "lo", "hi"])


CALIBRATION_COLUMNS = ["kind", "label", "plan_key", "top1", "lo", "hi", "n", "projected", "proj_lo", "proj_hi", "projected_then",
                       "then_lo", "then_hi"]


def _num(v) -> float:
    return math.nan if v is None else float(v)


def calibration_points(measured: Sequence[Mapping], plans: Mapping[str, RankPlan], projector, anchors: bool = True) -> pd.DataFrame:
    """Measured accuracies next to what the (current) projector says, on the calibration images.

    ``measured``: quick-evaluation rows (``plan_key``, ``label``, ``top1``, ``lo``, ``hi``, ``n`` and
    optionally ``projected_calib`` with its band ``calib_lo`` / ``calib_hi``: the sensitivity projection
    on the calibration images stored *before* the plan was measured); ``plans``: ``plan_key → RankPlan``.
    Only rows measured on as many images as the calibration set (the same deterministic subset) and
    covered by the sensitivities are kept. With ``anchors`` the joint anchor truncations measured with
    the sensitivities are added (``kind="anchor"``). The projection is re-computed with ``projector``
    (``projected``, ``proj_lo``, ``proj_hi``, calibration-set basis: in-sample once the projector was
    refitted to the point); ``projected_then``, ``then_lo``, ``then_hi`` are the ones stored at
    measurement time (NaN when there was none) — the out-of-sample values (:func:`out_of_sample`).
    """
    from .evaluate import wilson_interval

    sens = projector.sens
    rows = []
    for m in measured:
        plan = plans.get(m.get("plan_key"))
        if plan is None or int(m.get("n") or 0) != sens.n or projector.missing(plan):
            continue
        p = projector.project(plan)
        rows.append({"kind": "quick evaluation", "label": m.get("label", ""), "plan_key": m.get("plan_key"), "top1": float(m["top1"]),
                     "lo": float(m["lo"]), "hi": float(m["hi"]), "n": int(m["n"]), "projected": p.top1, "proj_lo": p.interval[0],
                     "proj_hi": p.interval[1], "projected_then": _num(m.get("projected_calib")), "then_lo": _num(m.get("calib_lo")),
                     "then_hi": _num(m.get("calib_hi"))})
    if anchors:
        for a, (plan, top1, _) in zip(getattr(sens, "anchors", None) or [], projector.anchor_points()):
            p = projector.project(plan)
            lo, hi = wilson_interval(int(round(top1 * sens.n)), sens.n)
            rows.append({"kind": "anchor", "label": f"anchor: every layer at {a.get('fraction', 0):.0%} of its ranks", "plan_key": None,
                         "top1": top1, "lo": lo, "hi": hi, "n": sens.n, "projected": p.top1, "proj_lo": p.interval[0],
                         "proj_hi": p.interval[1], "projected_then": math.nan, "then_lo": math.nan, "then_hi": math.nan})
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


def out_of_sample(points: pd.DataFrame) -> dict[str, Any]:
    """How the projection did on the quick evaluations of :func:`calibration_points`, scored only
    against what was projected *before* each point was measured (``projected_then`` and its band
    ``then_lo`` / ``then_hi``), never against a projection refitted to the point.

    Returns ``points`` (quick evaluations with a stored projection), ``mae`` and ``rmse`` (of
    projected − measured, fractions; NaN without points), ``banded`` (those with a stored band),
    ``inside`` (measured top-1 inside it) and ``unscored`` (quick evaluations without a stored projection).
    """
    quick = points[points["kind"] == "quick evaluation"] if len(points) else points
    scored = quick.dropna(subset=["projected_then"]) if len(quick) else quick
    err = (scored["projected_then"] - scored["top1"]) if len(scored) else pd.Series(dtype=float)
    banded = scored.dropna(subset=["then_lo", "then_hi"]) if len(scored) else scored
    inside = ((banded["top1"] >= banded["then_lo"]) & (banded["top1"] <= banded["then_hi"])) if len(banded) else pd.Series(dtype=bool)
    return {
        "points": int(len(scored)),
        "mae": float(err.abs().mean()) if len(err) else math.nan,
        "rmse": float((err**2).mean() ** 0.5) if len(err) else math.nan,
        "banded": int(len(banded)),
        "inside": int(inside.sum()),
        "unscored": int(len(quick) - len(scored)),
    }


# ---- fine-tuning ---------------------------------------------------------------------------------


def finetune_history(events: Sequence[Mapping]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split fine-tuning progress events into step rows (``x`` = fractional epoch) and epoch rows."""
    steps, epochs = [], []
    for e in events:
        if e.get("event") == "step":
            steps.append({"x": e["epoch"] - 1 + e["step"] / max(e["steps"], 1), "loss": e["loss"]})
        elif e.get("event") == "epoch":
            epochs.append(
                {"epoch": e["epoch"], "train_loss": e["train_loss"], "val_top1": e.get("val_top1"), "lr": e.get("lr"), "seconds": e.get("seconds")}
            )
    return pd.DataFrame(steps, columns=["x", "loss"]), pd.DataFrame(epochs, columns=["epoch", "train_loss", "val_top1", "lr", "seconds"])

