"""lrviz — see how compressible each layer of a CNN is, choose ranks, decompose, count, evaluate, export.

The public API is re-exported here; the modules follow the data flow
model → layers → spectra → VBMF → plan → decomposed model → cost / evaluation → export.
"""

import os as _os

# OpenMP threads that spin while waiting slow torch down 5-10x (and burn CPU) when another process
# shares the cores — the usual case on laptops and 2-core CI. Takes effect only if torch was not
# imported yet; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .analysis import ModelAnalysis, analyze
from .cost import CostReport, LayerIO, count_macs, count_params, layer_macs, layer_params, record_io
from .decompose import FactorCache, LayerFactors, LowRankConv2d, LowRankLinear, Tucker2Conv2d, build_layer, compress, factorize
from .errors import LrvizError
from .layers import LayerInfo, SkippedLayer, find_layers
from .plan import PLAN_SCHEMA, LayerPlan, RankPlan, effective_ranks, make_plan, plan_cost, plan_for_ratio
from .spectra import LayerSpectrum, energy_curve, energy_rank, layer_spectrum, singular_values, unfoldings
from .vbmf import VBMFResult, evbmf, weaken_rank

__version__ = "0.1.0"

__all__ = [
    "CostReport",
    "FactorCache",
    "LayerFactors",
    "LayerIO",
    "LayerInfo",
    "LayerPlan",
    "LayerSpectrum",
    "LowRankConv2d",
    "LowRankLinear",
    "LrvizError",
    "ModelAnalysis",
    "PLAN_SCHEMA",
    "RankPlan",
    "SkippedLayer",
    "Tucker2Conv2d",
    "VBMFResult",
    "analyze",
    "build_layer",
    "compress",
    "count_macs",
    "count_params",
    "effective_ranks",
    "energy_curve",
    "energy_rank",
    "evbmf",
    "factorize",
    "find_layers",
    "layer_macs",
    "layer_params",
    "layer_spectrum",
    "make_plan",
    "plan_cost",
    "plan_for_ratio",
    "record_io",
    "singular_values",
    "unfoldings",
    "weaken_rank",
]
