"""lrviz — see how compressible each layer of a CNN is, choose ranks, decompose, count, evaluate, export.

The public API is re-exported here; the modules follow the data flow
model → layers → spectra → VBMF → plan → decomposed model → cost / evaluation → export.
"""

import os as _os

# OpenMP threads that spin while waiting slow torch down 5-10x (and burn CPU) when another process
# shares the cores — the usual case on laptops and 2-core CI. Takes effect only if torch was not
# imported yet; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Public names and the module that defines each. They are imported on first use (PEP 562), so that
# ``import lrviz`` — and ``lrviz --help`` — does not pay for torch until something needs it.
_EXPORTS = {
    "analysis": ("ModelAnalysis", "analyze"),
    "cost": ("CostReport", "LayerIO", "count_macs", "count_params", "layer_macs", "layer_params", "record_io"),
    "decompose": ("FactorCache", "LayerFactors", "LowRankConv2d", "LowRankLinear", "Tucker2Conv2d", "build_layer", "compress",
                  "factorize"),
    "errors": ("LrvizError",),
    "execution": ("fold_batchnorm",),
    "latency": ("BenchResult", "LatencyTable", "bench", "measure_latency_table"),
    "layers": ("LayerInfo", "SkippedLayer", "find_layers"),
    "plan": ("PLAN_SCHEMA", "LayerPlan", "RankPlan", "effective_ranks", "make_plan", "plan_cost", "plan_for_ratio", "snap_plan",
             "speed_structure"),
    "spectra": ("LayerSpectrum", "energy_curve", "energy_rank", "layer_spectrum", "singular_values", "unfoldings"),
    "vbmf": ("VBMFResult", "evbmf", "weaken_rank"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'lrviz' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


__version__ = "0.1.0"

__all__ = sorted(_WHERE)
