"""Rank plans: which rank each decomposable layer gets.

A :class:`RankPlan` is frozen and hashable (safe as a cache key). Specs resolved by :func:`make_plan`:

=================  ==========================================================================
``full``           no truncation (every layer stays dense)
``vbmf``           EVBMF rank of every mode (``vbmf:1``)
``vbmf:K``         weakened: ``r = R − K·(R − r_vbmf)``, K ∈ [0, 1] (MUSCO)
``energy:F``       smallest rank per mode keeping a fraction F ∈ (0, 1] of the squared spectrum
``uniform:F``      ``ceil(F·R)`` on every mode, F ∈ (0, 1]
``ratio:T``        whole-model params reduced about T× (within ±10% where reachable), T ≥ 1
``FILE.json``      a plan written by :meth:`RankPlan.save`
=================  ==========================================================================

:func:`parse_spec` checks a spec's syntax without a model (the CLI does so before any work);
:func:`precheck_plan` resolves or checks what needs no spectra; :func:`max_ratio` is the largest
params or MACs reduction any plan can reach (every factored mode at rank 1).

:func:`plan_for_ratio` is the one way to reach a params or MACs ratio with a one-parameter family
(uniform fraction F, weakened VBMF K, energy fraction F): bisection on F or K. ``ratio:T`` is the
energy family, falling back to the uniform one; the sweep and the dashboard call it directly.

Two rules apply to every spec: a mode where EVBMF finds no signal (rank 0) keeps the layer dense
(clamping to rank 1 would destroy it); and a layer is only decomposed when it gets cheaper — each
mode's factor is dropped (rank set back to full) if the layer has fewer parameters without it
(:func:`effective_ranks`).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .analysis import ModelAnalysis
from .cost import CostReport, check_metric, layer_cost, layer_macs, layer_params
from .errors import LrvizError, is_int
from .layers import MODE_IN, MODE_OUT, TUCKER2, LayerInfo
from .methods import TUCKER, check_method, method_max_rank, method_params, rank_for_params
from .spectra import energy_rank
from .vbmf import weaken_rank

__all__ = ["LayerPlan", "RankPlan", "make_plan", "parse_spec", "precheck_plan", "max_ratio", "classifier_layer", "plan_for_ratio",
           "RATIO_FAMILIES", "uniform_rank", "effective_ranks", "cheapest_structure", "plan_cost", "PLAN_SCHEMA",
           "parse_method_rule", "apply_methods"]

PLAN_SCHEMA = "lrviz.plan/1"
RATIO_TOLERANCE = 0.10


@dataclass(frozen=True)
class LayerPlan:
    """Ranks for one layer.

    Attributes
    ----------
    name : str
    kind : str
        ``"tucker2"``, ``"svd_conv"`` or ``"svd_linear"``.
    weight_shape : tuple of int
    ranks : tuple of int
        ``(r_out, r_in)`` (Tucker-2) or ``(r,)``. Equal to :attr:`full_ranks` on a mode = that mode is
        not factored.
    note : str
        Why the ranks are what they are, when a rule changed them.
    method : str
        ``""``: the layer's own decomposition (Tucker-2 for a k×k conv, SVD otherwise); ``"cp"`` or
        ``"spatial"`` (k×k convs, :mod:`lrviz.methods`): one rank ``(R,)``, and :attr:`full_ranks` is
        the rank from which the layer stays dense (:func:`lrviz.methods.method_max_rank`).
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    ranks: tuple[int, ...]
    note: str = ""
    method: str = ""

    @property
    def full_ranks(self) -> tuple[int, ...]:
        if self.method:
            return (method_max_rank(_info(self), self.method),)
        return _info(self).full_ranks

    @property
    def is_dense(self) -> bool:
        if self.method:
            return self.ranks[0] >= self.full_ranks[0]
        if self.kind == TUCKER2:
            return tuple(self.ranks) == tuple(self.full_ranks)
        return self.ranks[0] >= self.full_ranks[0]


def _info(lp: LayerPlan) -> LayerInfo:
    return LayerInfo(name=lp.name, kind=lp.kind, weight_shape=tuple(lp.weight_shape))


def _check_method_rank(lp_name: str, info: LayerInfo, method: str, ranks) -> tuple[int]:
    """``(R,)`` validated for a CP / spatial-SVD layer: one integer in 1..the method's dense rank."""
    check_method(info, method)
    top = method_max_rank(info, method)
    vals = (ranks,) if is_int(ranks) else ranks
    try:
        vals = list(vals)
    except TypeError as e:
        raise LrvizError(f"layer {lp_name!r} ({method}): rank must be [R]; got {ranks!r}") from e
    if len(vals) != 1 or not is_int(vals[0]):
        raise LrvizError(f"layer {lp_name!r} ({method}) needs one integer rank [R]; got {ranks!r}")
    r = int(vals[0])
    if not 1 <= r <= top:
        raise LrvizError(f"layer {lp_name!r}: {method} rank {r} is outside 1..{top} ({top} keeps the layer dense)")
    return (r,)


@dataclass(frozen=True)
class RankPlan:
    """A frozen per-layer rank plan (hashable; use :meth:`with_ranks` to derive a new one)."""

    layers: tuple[LayerPlan, ...]
    spec: str = ""
    model: str = ""

    def __getitem__(self, name: str) -> LayerPlan:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise LrvizError(f"plan has no layer named {name!r}")

    def ranks(self) -> dict[str, tuple[int, ...]]:
        return {lp.name: tuple(lp.ranks) for lp in self.layers}

    def with_ranks(self, changes: dict[str, tuple[int, ...]], spec: str = "custom") -> "RankPlan":
        """A new plan with some layers' ranks replaced (validated, not break-even adjusted)."""

        def changed(lp: LayerPlan) -> LayerPlan:
            if lp.method:
                return replace(lp, ranks=_check_method_rank(lp.name, _info(lp), lp.method, changes[lp.name]), note="")
            return replace(lp, ranks=_info(lp).check_ranks(changes[lp.name]), note="")

        return self._changed(changes, changed, spec)

    def _changed(self, changes: dict, change, spec: str) -> "RankPlan":
        """A new plan with ``change(lp)`` for every layer named in ``changes`` (each must be a layer of the plan)."""
        names = {lp.name for lp in self.layers}
        for name in changes:
            if name not in names:
                raise LrvizError(f"plan has no layer named {name!r}")
        return RankPlan(tuple(change(lp) if lp.name in changes else lp for lp in self.layers), spec=spec, model=self.model)

    def with_methods(self, changes: dict[str, tuple[str, tuple[int, ...] | int | None]], spec: str = "custom") -> "RankPlan":
        """A new plan with some layers' decomposition replaced: ``{name: (method, ranks)}``.

        ``method`` is ``"cp"``, ``"spatial"`` (ranks ``R`` or ``(R,)``; None = the largest rank with no
        more params than the layer has in this plan) or ``"tucker2"`` (ranks ``(r_out, r_in)``; None = full,
        i.e. dense). A CP / spatial rank that would not reduce the layer's params keeps it dense (noted).
        """
        def changed(lp: LayerPlan) -> LayerPlan:
            method, ranks = changes[lp.name]
            info = _info(lp)
            check_method(info, method)
            if method == TUCKER:
                return replace(lp, ranks=info.full_ranks if ranks is None else info.check_ranks(ranks), note="", method="")
            if ranks is None:
                ranks = rank_for_params(info, method, layer_params(info, None if lp.is_dense else tuple(lp.ranks), lp.method))
            r = _check_method_rank(lp.name, info, method, ranks)
            if method_params(info, method, r[0]) >= layer_params(info):  # dense: the layer's own form at full rank
                return replace(lp, ranks=info.full_ranks, note=f"{method} rank {r[0]} would not reduce params: kept dense", method="")
            return replace(lp, ranks=r, note="", method=method)

        return self._changed(changes, changed, spec)

    @property
    def methods(self) -> dict[str, str]:
        """The layers decomposed otherwise than by their own kind: ``{name: "cp" | "spatial"}``."""
        return {lp.name: lp.method for lp in self.layers if lp.method}

    # --- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema": PLAN_SCHEMA,
            "model": self.model,
            "spec": self.spec,
            "layers": [
                {"name": lp.name, "kind": lp.kind, "weight_shape": list(lp.weight_shape), "ranks": list(lp.ranks), "note": lp.note,
                 **({"method": lp.method} if lp.method else {})}
                for lp in self.layers
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path) -> None:
        """Write the plan JSON atomically (a temporary file next to ``path``, then renamed): a failure
        leaves an existing ``path`` as it was."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")  # created with the umask's mode
        try:
            with open(tmp, "x") as fh:
                fh.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def from_dict(cls, d: dict, layers: list[LayerInfo] | tuple[LayerInfo, ...] | None = None) -> "RankPlan":
        """Parse and validate a plan document.

        Every layer needs ``name``, ``kind``, ``weight_shape`` and integer ``ranks`` in 1..full (the
        full rank follows from the weight shape, so a larger rank cannot come from a plan lrviz wrote:
        it is rejected, not clamped). With ``layers`` (the model's decomposable layers) the plan is
        also checked against the model: unknown layer names or a different weight shape are
        rejected (another architecture).
        """
        if not isinstance(d, dict) or d.get("schema") != PLAN_SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise LrvizError(f"not an lrviz plan: expected schema {PLAN_SCHEMA!r}, got {got!r}; "
                             "use a plan written by `lrviz compress`/`lrviz solve --out` or RankPlan.save")
        if not isinstance(d.get("layers"), list):
            raise LrvizError(f"plan JSON has no 'layers' list (got {type(d.get('layers')).__name__}); "
                             "write it with RankPlan.save")
        model_layers = {l.name: l for l in layers} if layers is not None else None
        out = []
        seen: set[str] = set()
        for i, e in enumerate(d["layers"]):
            try:
                name, kind, shape, ranks = e["name"], e["kind"], tuple(_plain_int(v) for v in e["weight_shape"]), e["ranks"]
            except (KeyError, TypeError, ValueError) as err:
                raise LrvizError(f"plan layer #{i} is malformed ({err!r}); needs name, kind, weight_shape, ranks") from err
            if not isinstance(name, str) or not name:
                raise LrvizError(f"plan layer #{i}: name must be a non-empty string; got {name!r}")
            if name in seen:
                raise LrvizError(f"plan layer {name!r} appears twice; give each layer once")
            seen.add(name)
            want_ndim = _KIND_NDIM.get(kind) if isinstance(kind, str) else None
            if want_ndim is None:
                raise LrvizError(f"plan layer {name!r}: unknown kind {kind!r}; allowed: {', '.join(_KIND_NDIM)}")
            if len(shape) not in want_ndim or min(shape, default=0) < 1:
                raise LrvizError(f"plan layer {name!r} ({kind}): weight_shape must be {' or '.join(map(str, want_ndim))} "
                                 f"positive integers (5 for a grouped conv); got {list(shape)}")
            info = LayerInfo(name=name, kind=kind, weight_shape=shape)
            if model_layers is not None:
                m = model_layers.get(name)
                if m is None:
                    raise LrvizError(f"plan layer {name!r} is not a decomposable layer of this model (wrong architecture?)")
                if m.weight_shape != shape or m.kind != kind:
                    raise LrvizError(
                        f"plan layer {name!r} is {kind} {shape} but the model's is {m.kind} {m.weight_shape}: wrong architecture"
                    )
            method = e.get("method", "")
            if method in ("", TUCKER):
                r = info.check_ranks(ranks)
                method = ""
            elif isinstance(method, str):
                r = _check_method_rank(name, info, method, ranks)
                if r[0] >= method_max_rank(info, method):  # at its dense rank: the layer stays dense
                    r, method = info.full_ranks, ""
            else:
                raise LrvizError(f"plan layer {name!r}: method must be a string; got {method!r}")
            out.append(LayerPlan(name, kind, shape, r, str(e.get("note", "")), method))
        return cls(tuple(out), spec=str(d.get("spec", "")), model=str(d.get("model", "")))

    @classmethod
    def from_json(cls, text: str, layers=None) -> "RankPlan":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise LrvizError(f"plan file is not valid JSON: {e}") from e
        return cls.from_dict(d, layers)

    @classmethod
    def load(cls, path, layers=None) -> "RankPlan":
        p = Path(path)
        if not p.is_file():
            raise LrvizError(f"plan file {str(p)!r} does not exist (or is not a file); give a plan .json written by "
                             "`lrviz compress` or `lrviz solve --out`")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise LrvizError(f"cannot read plan file {str(p)!r} ({type(e).__name__}: {e}); give a plan .json") from e
        try:
            return cls.from_json(text, layers)
        except LrvizError as e:
            raise LrvizError(f"plan file {str(p)!r}: {e}") from e


_KIND_NDIM = {TUCKER2: (4, 5), "svd_conv": (4, 5), "svd_linear": (2,)}  # 5: grouped conv (G, C_out/G, C_in/G, kh, kw)


def parse_method_rule(text: str) -> tuple[str, str, int | None]:
    """``"PATTERN=METHOD[:RANK]"`` → ``(pattern, method, rank or None)``; METHOD is cp, spatial or tucker2
    (the syntax only: :func:`apply_methods` checks the layers)."""
    from .methods import METHODS

    pattern, eq, rest = str(text).partition("=")
    method, colon, rank = rest.partition(":")
    if not eq or not pattern or method not in METHODS:
        raise LrvizError(f"decomposition rule {text!r}: expected PATTERN=METHOD[:RANK] with METHOD one of "
                         f"{', '.join(METHODS)} (e.g. 'layer3.*.conv2=cp:32')")
    if method == TUCKER and colon:
        raise LrvizError(f"decomposition rule {text!r}: tucker2 takes no :RANK (it keeps the plan's Tucker-2 ranks)")
    if colon and not (rank.isdigit() and int(rank) >= 1):
        raise LrvizError(f"decomposition rule {text!r}: RANK must be a positive integer; got {rank!r}")
    return pattern, method, int(rank) if colon else None


def apply_methods(plan: "RankPlan", rules) -> "RankPlan":
    """The plan with each rule ``(pattern, method, rank)`` applied to the k×k convs whose names match
    (fnmatch), later rules winning. Without a rank, CP / spatial SVD re-cast the layers the plan truncates,
    each at the largest rank with no more params than it has in the plan (the same size, another form),
    and leave the dense ones dense (give a rank to decompose those). A pattern that matches no k×k conv
    of the plan is an error."""
    changes: dict[str, tuple] = {}
    for pattern, method, rank in rules:
        hit = [lp for lp in plan.layers if fnmatch.fnmatchcase(lp.name, pattern)]
        kxk = [lp for lp in hit if lp.kind == TUCKER2]
        if not kxk:
            what = f"matches only {', '.join(lp.name for lp in hit[:3])} (1x1 convs / Linears: SVD only)" if hit else "matches no layer"
            raise LrvizError(f"decomposition rule {pattern}={method}: the pattern {what}; CP and spatial SVD apply to k x k convs")
        for lp in kxk:
            if method == TUCKER:  # back to the layer's own form: unchanged if it has it, else dense
                if lp.method:
                    changes[lp.name] = (TUCKER, None)
                else:
                    changes.pop(lp.name, None)
            elif rank is not None or not lp.is_dense:  # without a rank, a layer the plan keeps dense stays dense
                changes[lp.name] = (method, rank)
    if not changes:
        return plan
    spec = plan.spec + "".join(f" +{p}={m}" + (f":{r}" if r else "") for p, m, r in rules)
    return plan.with_methods(changes, spec=spec)


def _plain_int(v) -> int:
    """An int from JSON (bools and floats are not ints)."""
    if not is_int(v):
        raise ValueError(f"{v!r} is not an integer")
    return int(v)


def cheapest_structure(layer: LayerInfo, ranks: tuple[int, ...], cost=None) -> tuple[int, ...]:
    """Among keeping each mode at ``ranks`` or at its full rank, the ranks with the lowest ``cost(ranks)``
    (default: the layer's params); ties go to fewer factors. Tucker-2 compares all four combinations."""
    full = layer.full_ranks
    ranks = tuple(min(int(r), f) for r, f in zip(ranks, full))
    if cost is None:
        cost = lambda r: layer_params(layer, r)  # noqa: E731
    if len(full) == 1:
        options = {ranks, full}
    else:
        options = {ranks, (full[0], ranks[1]), (ranks[0], full[1]), full}
    return min(options, key=lambda r: (cost(r), -sum(a == b for a, b in zip(r, full))))


def effective_ranks(layer: LayerInfo, ranks: tuple[int, ...]) -> tuple[tuple[int, ...], str]:
    """Drop factors that do not pay off: the cheapest (fewest params) structure allowed by ``ranks``.

    Tucker-2 tries all four combinations of keeping each mode at ``ranks`` or at full rank; SVD keeps
    the layer dense unless ``r·(m+n) < m·n``. Returns the ranks and a note when something changed.
    """
    full = layer.full_ranks
    ranks = tuple(min(int(r), f) for r, f in zip(ranks, full))
    best = cheapest_structure(layer, ranks)
    if best == ranks:
        return ranks, ""
    if layer.kind != TUCKER2:
        return full, f"rank {ranks[0]} would not reduce params (break-even {_svd_break_even(layer)}): kept dense"
    dropped = [m for m, (a, b) in zip((MODE_OUT, MODE_IN), zip(best, ranks)) if a != b]
    return best, f"{'/'.join(dropped)} factor would not reduce params: kept full"


def _svd_break_even(layer: LayerInfo) -> int:
    m, n = layer.group_shape[0], layer.group_shape[1]  # per group for a grouped conv
    return math.ceil(m * n / (m + n))


def plan_cost(analysis: ModelAnalysis, plan: RankPlan) -> CostReport:
    """Params and MACs of the planned model from closed-form formulas (no model is built)."""
    import pandas as pd

    by_name = {lp.name: lp for lp in plan.layers}
    rows = []
    params_planned, macs_planned = analysis.params, analysis.macs
    for l in analysis.layers:
        lp = by_name.get(l.name)
        method = lp.method if lp is not None and not lp.is_dense else ""
        ranks = tuple(lp.ranks) if lp is not None and (method or not lp.method) else l.full_ranks
        p0, m0 = layer_params(l), layer_macs(l, analysis.io[l.name])
        p1, m1 = layer_params(l, ranks, method), layer_macs(l, analysis.io[l.name], ranks, method)
        params_planned += p1 - p0
        macs_planned += m1 - m0
        rows.append({"name": l.name, "kind": l.kind, "method": method or l.kind, "ranks": ranks,
                     "full_ranks": lp.full_ranks if lp is not None else l.full_ranks,
                     "params": p0, "params_planned": p1, "macs": m0, "macs_planned": m1})
    return CostReport(pd.DataFrame(rows), analysis.params, analysis.macs, params_planned, macs_planned)


# --- spec resolution --------------------------------------------------------------------------

_SPEC_HELP = ("allowed: full, vbmf, vbmf:K (K in [0,1]), energy:F, uniform:F (F in (0,1]), ratio:T (T ≥ 1), "
              "or a plan .json file")


def _parse_number(spec: str, arg: str) -> float:
    try:
        v = float(arg)
    except ValueError as e:
        raise LrvizError(f"plan spec {spec!r}: {arg!r} is not a number; {_SPEC_HELP}") from e
    if not math.isfinite(v):
        raise LrvizError(f"plan spec {spec!r}: {arg!r} is not a finite number; {_SPEC_HELP}")
    return v


def _parse_fraction(spec: str, arg: str, lo_open: bool = True) -> float:
    v = _parse_number(spec, arg)
    if not (0.0 < v <= 1.0) if lo_open else not (0.0 <= v <= 1.0):
        raise LrvizError(f"plan spec {spec!r}: value must be in {'(0, 1]' if lo_open else '[0, 1]'}; got {v:g} "
                         f"(e.g. {spec.partition(':')[0]}:0.5)")
    return v


def parse_spec(spec: str) -> tuple[str, float | str | None]:
    """Check a plan spec's syntax and ranges without a model.

    Returns ``(kind, value)``: ``("full", None)``, ``("vbmf", K)``, ``("energy", F)``, ``("uniform", F)``,
    ``("ratio", T)`` or ``("json", path)`` (the file is not read here). Raises :class:`LrvizError` for
    anything else, with the allowed forms.
    """
    spec = str(spec).strip()
    if not spec:
        raise LrvizError(f"empty plan spec; {_SPEC_HELP}")
    if spec.lower().endswith(".json"):
        return "json", spec
    kind, sep, arg = spec.partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    if kind == "full" and not sep:
        return "full", None
    if kind == "vbmf" and not sep:
        return "vbmf", 1.0
    if kind == "vbmf" and arg:
        return "vbmf", _parse_fraction(spec, arg, lo_open=False)
    if kind in ("energy", "uniform") and arg:
        return kind, _parse_fraction(spec, arg)
    if kind == "ratio" and arg:
        target = _parse_number(spec, arg)
        if not target >= 1.0:
            raise LrvizError(f"plan spec {spec!r}: the params reduction must be ≥ 1 (e.g. ratio:3); got {target:g}")
        return "ratio", target
    if kind in ("vbmf", "energy", "uniform", "ratio"):
        raise LrvizError(f"plan spec {spec!r} needs a value after ':'; {_SPEC_HELP}")
    raise LrvizError(f"unknown plan spec {spec!r}; {_SPEC_HELP}")


def classifier_layer(analysis: ModelAnalysis) -> str | None:
    """Name of the model's output layer: the last decomposable layer run in the forward pass, when it
    is a Linear (the classifier head)."""
    order = [n for n in analysis.io if any(l.name == n for l in analysis.layers)]
    if order and analysis.layer(order[-1]).kind == "svd_linear":
        return order[-1]
    return None


def _build(analysis: ModelAnalysis, spec: str, rank_fn, exclude, keep: str | None = None) -> RankPlan:
    layers = []
    for l in analysis.layers:
        if l.name == keep:
            layers.append(LayerPlan(l.name, l.kind, l.weight_shape, l.full_ranks, "classifier (model output) kept dense"))
            continue
        if any(fnmatch.fnmatchcase(l.name, pat) for pat in exclude):
            layers.append(LayerPlan(l.name, l.kind, l.weight_shape, l.full_ranks, "excluded: kept dense"))
            continue
        ranks, note = rank_fn(l)
        if note == "":
            ranks, note = effective_ranks(l, ranks)
        layers.append(LayerPlan(l.name, l.kind, l.weight_shape, tuple(int(r) for r in ranks), note))
    return RankPlan(tuple(layers), spec=spec, model=analysis.model_name)


def _vbmf_fn(analysis: ModelAnalysis, k: float):
    def fn(l: LayerInfo):
        r_v = analysis.vbmf_ranks(l.name)
        if any(r == 0 for r in r_v):
            return l.full_ranks, "EVBMF found no signal (rank 0): kept dense"
        return tuple(weaken_rank(r, f, k) for r, f in zip(r_v, l.full_ranks)), ""

    return fn


def _energy_fn(analysis: ModelAnalysis, frac: float):
    def fn(l: LayerInfo):
        sp = analysis.spectra[l.name]
        return tuple(min(energy_rank(sp.values[m], frac), f) for m, f in zip(sp.modes, l.full_ranks)), ""

    return fn


def uniform_rank(full: int, fraction: float) -> int:
    """The ``uniform:F`` rank of a mode of full rank ``full``: ``ceil(F·full)``, at least 1 (also the
    rule of the sensitivity anchors, :func:`lrviz.sensitivity.anchor_ranks`)."""
    return max(1, math.ceil(fraction * full - 1e-9))


def _uniform_fn(frac: float):
    def fn(l: LayerInfo):
        return tuple(uniform_rank(f, frac) for f in l.full_ranks), ""

    return fn


def max_ratio(analysis: ModelAnalysis, metric: str = "params", exclude=(), keep_classifier: bool = True) -> float:
    """The largest ``metric`` (``"params"`` or ``"macs"``) reduction any plan can reach: every layer
    that is not excluded (nor the kept classifier) at its cheapest structure with rank 1 on each
    factored mode. Costs grow with the ranks, so no plan (nor the budget solver) can do better."""
    total = analysis.total(metric)
    keep = classifier_layer(analysis) if keep_classifier else None
    saved = 0
    for l in analysis.layers:
        if l.name == keep or any(fnmatch.fnmatchcase(l.name, pat) for pat in exclude):
            continue
        cost = functools.partial(layer_cost, l, analysis.io[l.name], metric=metric)
        saved += cost(l.full_ranks) - cost(cheapest_structure(l, (1,) * len(l.full_ranks), cost))
    return total / max(total - saved, 1)


def _ratio_of(analysis, plan, metric: str) -> float:
    return plan_cost(analysis, plan).ratio(metric)


@dataclass(frozen=True)
class _Family:
    """A one-parameter rank family: ``rank_fn(analysis, x)`` is the per-layer rank function at
    ``x ∈ [0, 1]`` and ``spec(x)`` its plan spec; ``grows_with_x`` says whether the cost ratio rises
    with ``x`` (VBMF weakening K) or falls (energy, uniform fraction); ``endpoints`` are tried besides
    the bisection; ``limit`` says what stops the family short of :func:`max_ratio`."""

    rank_fn: Callable
    spec: Callable[[float], str]
    grows_with_x: bool
    needs_spectra: bool = True
    endpoints: tuple[float, ...] = ()
    limit: str = ""


_FAMILIES = {
    "uniform": _Family(lambda analysis, x: _uniform_fn(x), lambda x: f"uniform:{max(x, 1e-6):.6f}", False, needs_spectra=False),
    "vbmf": _Family(_vbmf_fn, lambda x: f"vbmf:{x:.6f}", True, endpoints=(1.0,),  # K = 1 may be what is needed
                    limit="; weakened VBMF stops at the EVBMF ranks (K = 1)"),
    "energy": _Family(_energy_fn, lambda x: f"energy:{x:.6f}", False),
}

#: The one-parameter families :func:`plan_for_ratio` bisects (and the specs ``uniform:F``, ``vbmf:K``, ``energy:F``).
RATIO_FAMILIES = tuple(_FAMILIES)


def _family(analysis: ModelAnalysis, name: str, what: str) -> _Family:
    fam = _FAMILIES[name]
    if fam.needs_spectra and not analysis.has_spectra:
        raise LrvizError(f"{what} needs spectra; this analysis was made with spectra=False")
    return fam


def _closest_in_family(analysis: ModelAnalysis, family: str, target: float, metric: str, exclude, keep,
                       iters: int) -> tuple[float, RankPlan]:
    """Bisect ``x`` in [0, 1] of ``family`` for the ``metric`` ratio closest to ``target``; every plan
    built on the way is a candidate. Returns ``(relative error, plan)``."""
    fam = _FAMILIES[family]
    best: tuple[float, RankPlan] | None = None

    def consider(x: float) -> float:
        nonlocal best
        p = _build(analysis, fam.spec(x), fam.rank_fn(analysis, x), exclude, keep)
        ratio = _ratio_of(analysis, p, metric)
        err = abs(ratio / target - 1.0)
        if best is None or err < best[0]:
            best = (err, p)
        return ratio

    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        too_compressed = consider(mid) > target
        if too_compressed == fam.grows_with_x:
            hi = mid
        else:
            lo = mid
    for x in fam.endpoints:
        consider(x)
    return best


def _unreachable(what: str, analysis: ModelAnalysis, closest: RankPlan, target: float, metric: str, tolerance: float,
                 exclude, keep, limit: str = "") -> LrvizError:
    reached = _ratio_of(analysis, closest, metric)
    most = max_ratio(analysis, metric, exclude, keep is not None)
    return LrvizError(
        f"{what}: cannot reach a {target:g}x {metric} reduction within ±{tolerance:.0%} (closest {reached:.2f}x{limit}; "
        f"the most this model allows is about {most:.2f}x, limited by layers that cannot be decomposed)"
    )


def plan_for_ratio(
    analysis: ModelAnalysis,
    family: str,
    target: float,
    *,
    metric: str = "params",
    tolerance: float = RATIO_TOLERANCE,
    exclude=(),
    keep_classifier: bool = True,
    iters: int = 40,
) -> RankPlan:
    """The plan of a one-parameter rank family whose ``metric`` ratio is ``target`` (±``tolerance``).

    Parameters
    ----------
    analysis : ModelAnalysis
    family : {"uniform", "vbmf", "energy"}
        ``uniform:F`` (``ceil(F·R)`` on every mode), weakened ``vbmf:K`` or ``energy:F``; F or K is
        bisected in [0, 1] (``iters`` steps) and the plan closest to the target is kept.
    target : float
        The reduction factor of ``metric`` (original / planned), ≥ 1.
    metric : {"params", "macs"}
    tolerance : float
        Largest relative error ``|ratio / target − 1|`` accepted.
    exclude, keep_classifier
        As for :func:`make_plan`.

    Returns
    -------
    RankPlan
        Its spec names the family and the value found (e.g. ``"uniform:0.412109"``).

    Raises
    ------
    LrvizError
        When the family cannot reach ``target`` within ``tolerance`` (the message gives the closest
        ratio and the most any plan allows), and for an unknown family or metric, a target below 1,
        or ``vbmf`` / ``energy`` on an analysis made without spectra.
    """
    if not isinstance(family, str) or family not in _FAMILIES:
        raise LrvizError(f"unknown family {family!r}; use {', '.join(_FAMILIES)} (called as plan_for_ratio(analysis, family, target))")
    check_metric(metric)
    target = float(target)
    if not (target >= 1.0 and math.isfinite(target)):
        raise LrvizError(f"the target reduction must be a finite number ≥ 1 (e.g. 3); got {target:g}")
    limit = _family(analysis, family, f"the {family} family").limit
    exclude = tuple(exclude)
    keep = classifier_layer(analysis) if keep_classifier else None
    err, plan = _closest_in_family(analysis, family, target, metric, exclude, keep, iters)
    if err > tolerance:
        raise _unreachable(f"{family} ranks", analysis, plan, target, metric, tolerance, exclude, keep, limit)
    return plan


def _ratio_plan(analysis: ModelAnalysis, spec: str, target: float, exclude, keep=None) -> RankPlan:
    """``ratio:T``: the energy family, else the uniform one, at a params ratio of T (±10%)."""
    best: tuple[float, RankPlan] | None = None
    for family in ("energy", "uniform") if analysis.has_spectra else ("uniform",):
        cand = _closest_in_family(analysis, family, target, "params", exclude, keep, iters=40)
        if best is None or cand[0] < best[0]:
            best = cand
        if best[0] <= RATIO_TOLERANCE:
            break
    err, plan = best
    if err > RATIO_TOLERANCE:
        raise _unreachable(f"plan spec {spec!r}", analysis, plan, target, "params", RATIO_TOLERANCE, exclude, keep)
    return replace(plan, spec=spec)


def _check_reachable(analysis: ModelAnalysis, spec: str, target: float, exclude, keep_classifier: bool) -> None:
    mx = max_ratio(analysis, "params", exclude, keep_classifier)
    if mx < target * (1.0 - RATIO_TOLERANCE):
        raise LrvizError(
            f"plan spec {spec!r}: cannot reach a {target:g}x params reduction: the most this model allows is about "
            f"{mx:.2f}x (every decomposable layer at rank 1); use a smaller T"
        )


def make_plan(
    analysis: ModelAnalysis, spec: str, exclude: tuple[str, ...] | list[str] = (), keep_classifier: bool = True
) -> RankPlan:
    """Resolve a plan spec (see module docstring) into a :class:`RankPlan`.

    Parameters
    ----------
    analysis : ModelAnalysis
    spec : str
    exclude : sequence of str
        ``fnmatch`` patterns of layer names to keep dense (e.g. ``"conv1"``, ``"layer1.*"``).
    keep_classifier : bool
        Keep the output Linear (see :func:`classifier_layer`) dense. Its matrix is small and
        truncating the logits' basis is disproportionately harmful: EVBMF gives a 10×64 head rank 1,
        which collapses accuracy. Set False to decompose it too (e.g. VGG's big heads are earlier
        layers and are decomposed either way).
    """
    spec = str(spec).strip()
    exclude = tuple(exclude)
    keep = classifier_layer(analysis) if keep_classifier else None
    kind, value = parse_spec(spec)
    if kind == "json":
        return RankPlan.load(spec, analysis.layers)
    if kind == "full":
        return _build(analysis, "full", lambda l: (l.full_ranks, ""), exclude, keep)
    if kind == "ratio":
        _check_reachable(analysis, spec, value, exclude, keep_classifier)
        return _ratio_plan(analysis, spec, value, exclude, keep)
    family = _family(analysis, kind, f"plan spec {spec!r}")  # uniform, vbmf, energy
    return _build(analysis, spec, family.rank_fn(analysis, value), exclude, keep)


def precheck_plan(
    analysis: ModelAnalysis, spec: str, exclude: tuple[str, ...] | list[str] = (), keep_classifier: bool = True
) -> RankPlan | None:
    """What can be done with ``spec`` before the spectra are computed (``analysis`` may lack them).

    Specs that need no spectra (``full``, ``uniform:F``, ``FILE.json``) are resolved and returned;
    for the others the syntax is checked and a ``ratio:T`` beyond :func:`max_ratio` is rejected,
    and ``None`` is returned (resolve with :func:`make_plan` on a full analysis). Raises
    :class:`LrvizError` like :func:`make_plan`.
    """
    kind, value = parse_spec(spec)
    if kind in ("full", "uniform", "json"):
        return make_plan(analysis, spec, exclude, keep_classifier)
    if kind == "ratio":
        _check_reachable(analysis, str(spec).strip(), value, tuple(exclude), keep_classifier)
    return None


# --- hardware-friendly ranks and latency-chosen structures ---------------------------------------

def snap_rank(rank: int, full: int, k: int) -> int:
    """``rank`` rounded to the nearest multiple of ``k`` (at least ``k``); the full rank when that multiple
    reaches it. Ranks already at full stay full."""
    rank, full, k = int(rank), int(full), int(k)
    if k < 1:
        raise LrvizError(f"snap must be a positive integer; got {k}")
    if rank >= full:
        return full
    r = max(k, k * int(math.floor(rank / k + 0.5)))
    return full if r >= full else r


def snap_plan(analysis: ModelAnalysis, plan: RankPlan, k: int, metric: str | None = None, target: float | None = None) -> RankPlan:
    """``plan`` with every rank at a multiple of ``k`` (see :func:`snap_rank`) — widths that vector units
    and GEMM kernels run at full speed.

    With a budget (``metric`` and ``target``, the plan's reduction factor to keep, e.g. ``"macs", 3``):
    ranks rounded *up* are rounded down instead, the costliest first, until the snapped plan meets the
    budget again (rounding down always can, unless the unsnapped plan did not); the result's ratio is
    then ≥ ``target`` whenever the original plan's was.
    """
    spec = f"{plan.spec}:snap{k}"
    new = {lp.name: tuple(snap_rank(r, f, k) for r, f in zip(lp.ranks, lp.full_ranks)) for lp in plan.layers}
    snapped = plan.with_ranks(new, spec=spec)
    if metric is None or target is None:
        return snapped
    # per layer, the ranks rounded down instead (a rank below k has no lower multiple: it stays snapped up)
    down = {lp.name: tuple(f if r >= f else s if r < k else min(k * (r // k), s)
                           for r, f, s in zip(lp.ranks, lp.full_ranks, new[lp.name]))
            for lp in plan.layers}
    by_name, io = {l.name: l for l in analysis.layers}, analysis.io

    def saving(name: str) -> int:
        """What rounding layer ``name`` down instead of up saves."""
        l = by_name[name]
        return layer_cost(l, io[name], new[name], metric) - layer_cost(l, io[name], down[name], metric)

    cur = dict(new)
    while plan_cost(analysis, snapped).ratio(metric) < target:
        ups = [name for name in cur if cur[name] != down[name]]
        if not ups:
            break
        name = max(ups, key=saving)
        cur[name] = down[name]
        snapped = plan.with_ranks(cur, spec=spec)
    return snapped


def speed_structure(plan: RankPlan, table, analysis: ModelAnalysis) -> RankPlan:
    """``plan`` with each layer's structure (dense, one factor, two factors) the fastest allowed by its ranks
    according to a measured :class:`lrviz.latency.LatencyTable`: a factor the table says slows the
    layer down (a rank above its break-even) is dropped."""
    by_name = {l.name: l for l in analysis.layers}
    new = {lp.name: table.fastest_structure(by_name[lp.name], lp.ranks) for lp in plan.layers
           if lp.name in by_name and not lp.is_dense and not lp.method}  # CP / spatial: not in the table, kept
    return plan.with_ranks(new, spec=f"{plan.spec}:speed")
