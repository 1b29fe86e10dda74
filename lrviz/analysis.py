"""Whole-model analysis: layers, spectra, EVBMF ranks and costs in one object."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn

from .errors import LrvizError
from .cost import LayerIO, check_metric, count_params, layer_macs, layer_params, record_io
from .layers import MODE_IN, MODE_MATRIX, MODE_OUT, LayerInfo, SkippedLayer, find_layers, get_module
from .memory import check_memory, estimate_analysis
from .spectra import LayerSpectrum, layer_spectra, retained_energy
from .vbmf import VBMFResult, evbmf

__all__ = ["ModelAnalysis", "analyze", "analyze_program"]

log = logging.getLogger(__name__)

_UNUSED_REASON = ("not called in the forward pass (a branch that does not run, such as an auxiliary head in eval "
                  "mode, or a module whose weights are used by a functional call): it cannot be costed or replaced")


@dataclass(frozen=True, eq=False)
class ModelAnalysis:
    """Everything lrviz knows about a model before choosing ranks.

    Attributes
    ----------
    model_name : str
    input_size : tuple of int
        ``(C, H, W)``.
    layers : tuple of LayerInfo
        Decomposable layers, in module order.
    skipped : tuple of SkippedLayer
    spectra : dict[str, LayerSpectrum]
    vbmf : dict[str, dict[str, VBMFResult]]
        Per layer, per mode (``"out"``, ``"in"`` or ``"matrix"``; see :data:`lrviz.layers.MODE_OUT`).
    io : dict[str, LayerIO]
        Spatial sizes of every counted layer (decomposable or not), one record per call.
    params, macs : int
        Whole-model totals (see :mod:`lrviz.cost` for the convention).
    """

    model_name: str
    input_size: tuple[int, ...]
    layers: tuple[LayerInfo, ...]
    skipped: tuple[SkippedLayer, ...]
    spectra: dict[str, LayerSpectrum]
    vbmf: dict[str, dict[str, VBMFResult]]
    io: dict[str, LayerIO]
    params: int
    macs: int

    def layer(self, name: str) -> LayerInfo:
        for l in self.layers:
            if l.name == name:
                return l
        raise LrvizError(f"no decomposable layer named {name!r}")

    def total(self, metric: str) -> int:
        """Whole-model :attr:`params` or :attr:`macs` (``metric``, see :data:`lrviz.cost.METRICS`)."""
        return self.macs if check_metric(metric) == "macs" else self.params

    @property
    def has_spectra(self) -> bool:
        """Whether every decomposable layer has its spectra and EVBMF ranks."""
        return all(l.name in self.spectra and l.name in self.vbmf for l in self.layers)

    def vbmf_ranks(self, name: str) -> tuple[int, ...]:
        """``(r_out, r_in)`` for a Tucker-2 layer (modes ``"out"``, ``"in"``), ``(r,)`` for a matrix."""
        if name not in self.vbmf:
            raise LrvizError(f"no spectra for layer {name!r}: run analyze(..., spectra=True)")
        res = self.vbmf[name]
        if MODE_MATRIX in res:
            return (res[MODE_MATRIX].rank,)
        return (res[MODE_OUT].rank, res[MODE_IN].rank)

    def table(self) -> pd.DataFrame:
        """One row per decomposable layer: shape, VBMF ranks, σ², energy kept at the VBMF rank, cost."""
        rows = []
        for l in self.layers if self.has_spectra else []:
            sp = self.spectra[l.name]
            ranks = self.vbmf_ranks(l.name)
            energies = [retained_energy(sp.values[mode], r) for mode, r in zip(sp.modes, ranks)]
            rows.append(
                {
                    "name": l.name,
                    "kind": l.kind,
                    "weight_shape": "×".join(map(str, l.weight_shape)),
                    "full_ranks": l.full_ranks,
                    "vbmf_ranks": ranks,
                    "vbmf_sigma2": tuple(self.vbmf[l.name][m].sigma2 for m in sp.modes),
                    "energy_at_vbmf": tuple(energies),
                    "params": layer_params(l),
                    "macs": layer_macs(l, self.io[l.name]),
                }
            )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """The JSON document written by ``lrviz analyze --json``."""
        out_layers = []
        for l in self.layers:
            io = self.io[l.name]
            row = {
                "name": l.name,
                "kind": l.kind,
                "weight_shape": list(l.weight_shape),
                "in_hw": list(io.in_hw),
                "out_hw": list(io.out_hw),
                "calls": io.n_calls,
            }
            sp = self.spectra.get(l.name)
            if sp is not None and l.name in self.vbmf:  # absent in a cost-only analysis (spectra=False)
                row.update({
                    "singular_values": {m: [float(v) for v in sp.values[m]] for m in sp.modes},
                    "vbmf_ranks": list(self.vbmf_ranks(l.name)),
                    "vbmf_sigma2": [float(self.vbmf[l.name][m].sigma2) for m in sp.modes],
                    "vbmf_threshold": [float(self.vbmf[l.name][m].threshold) for m in sp.modes],
                })
            row.update({"params": int(layer_params(l)), "macs": int(layer_macs(l, io))})
            out_layers.append(row)
        return {
            "model": self.model_name,
            "input_size": list(self.input_size),
            "units": "MACs",
            "note": "MACs at batch 1 for conv/linear layers; FLOPs = 2 x MACs; params = all model.parameters()",
            "layers": out_layers,
            "skipped": [{"name": s.name, "type": s.type, "reason": s.reason} for s in self.skipped],
            "totals": {"params": int(self.params), "macs": int(self.macs), "flops": int(2 * self.macs)},
        }


def analyze(model: nn.Module, input_size: tuple[int, ...], name: str = "", progress=None, spectra: bool = True) -> ModelAnalysis:
    """Spectra, EVBMF ranks and costs of every decomposable layer.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    input_size : tuple of int
        ``(C, H, W)`` of one input sample.
    name : str
        Label for reports.
    progress : callable, optional
        ``progress(done, total, layer_name)`` after each layer.
    spectra : bool
        ``False`` skips spectra and EVBMF (cost-only analysis: plans ``full``, ``uniform:F`` and
        ``ratio:T`` by uniform ranks still work).
    """
    if isinstance(model, torch.export.ExportedProgram) or (isinstance(model, torch.fx.GraphModule) and not find_layers(model)[0]):
        raise LrvizError(
            "this is an exported program (.pt2): it has no modules to decompose, so it has no spectra; "
            "evaluate it, or count its cost with torch.utils.flop_counter (lrviz analyze FILE.pt2 does)"
        )
    if not isinstance(model, nn.Module):
        raise LrvizError(f"analyze needs a torch.nn.Module; got {type(model).__name__}")
    layers, skipped = find_layers(model)
    if spectra and any(p.is_meta for p in model.parameters()):
        raise LrvizError(
            "the model's weights are on the meta device (no values), so it has no spectra; "
            "use analyze(..., spectra=False) for a cost-only analysis, or build the model on a real device"
        )
    if spectra:  # before any work: a clear message when the largest layer's spectra cannot fit
        check_memory(estimate_analysis(model, layers))
    # every unfolding's spectrum and EVBMF estimate, a few at once on worker threads (see
    # lrviz.spectra.layer_spectra), started before the forward pass so that the two overlap
    want_spectra = spectra
    running = layer_spectra([(l, get_module(model, l.name).weight) for l in layers], then=evbmf) if want_spectra else iter(())
    try:
        io = record_io(model, tuple(input_size))
        # layers never reached in the forward pass (e.g. auxiliary heads in eval mode) cannot be costed:
        # report and drop them (and their spectra), so layers, spectra and vbmf cover the same layers
        unused = [l for l in layers if l.name not in io]
        if unused:
            log.info("layers not used in the forward pass are left out: %s", [l.name for l in unused])
            skipped = list(skipped) + [SkippedLayer(l.name, "unused", _UNUSED_REASON) for l in unused]
            layers = [l for l in layers if l.name in io]
        spectra: dict[str, LayerSpectrum] = {}
        vb: dict[str, dict[str, VBMFResult]] = {}
        for sp, est in running:
            if sp.layer.name not in io:
                continue
            spectra[sp.layer.name] = sp
            vb[sp.layer.name] = est
            if progress is not None:
                progress(len(spectra), len(layers), sp.layer.name)
    finally:
        close = getattr(running, "close", None)
        if close is not None:
            close()
    macs = int(sum(r.macs for r in io.values()))
    return ModelAnalysis(
        model_name=name,
        input_size=tuple(int(v) for v in input_size),
        layers=tuple(layers),
        skipped=tuple(skipped),
        spectra=spectra,
        vbmf=vb,
        io=io,
        params=count_params(model),
        macs=macs,
    )


def analyze_program(program: torch.export.ExportedProgram, input_size: tuple[int, ...], name: str = "") -> ModelAnalysis:
    """Cost-only analysis of an exported program (``.pt2``): it has no modules to decompose.

    Params are the program's parameters (buffers excluded); MACs come from
    ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) on one zeros sample — the same
    convention as :mod:`lrviz.cost`.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .export import program_params

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        program.module()(torch.zeros((1, *input_size)))
    return ModelAnalysis(
        model_name=name,
        input_size=tuple(int(v) for v in input_size),
        layers=(),
        skipped=(SkippedLayer("*", "ExportedProgram", "exported program: no modules to decompose (cost and accuracy only)"),),
        spectra={},
        vbmf={},
        io={},
        params=program_params(program),
        macs=int(fc.get_total_flops() // 2),
    )
