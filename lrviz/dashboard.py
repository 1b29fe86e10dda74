"""Pure helpers behind the Streamlit dashboard (``app.py`` and ``pages/``).

Nothing here imports Streamlit, so everything can be unit-tested and reused (the HTML report in
:mod:`lrviz.report` draws the same figures). Plotly is imported lazily by the figure functions (it is
an optional dependency: ``pip install lrviz[app]``).

Contents: model and dataset sources with explicit cache keys (uploads are stored content-addressed in a
private folder with a size cap, verified by hash before reuse, and never unpickled), layer grouping and slider keys, number formatting, rank-plan helpers (presets,
plans at a matched params ratio), helpers around layer sensitivities (forward-pass count, projection
curves, projected-vs-measured points), a thread-safe result store, a background job (fine-tuning,
sensitivity measurement), sample predictions, and the plotly figures.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import re
import stat
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .analysis import ModelAnalysis
from .budget import STRATEGIES, STRATEGY_LABELS
from .cost import CostReport
from .errors import LrvizError
from .fmt import human, size_mb  # noqa: F401  (re-exported for the pages until the split)
from .layers import TUCKER2, LayerInfo
from .plan import RankPlan, make_plan, plan_cost, plan_for_ratio
from .spectra import energy_curve
from .storage import TEMP_PREFIX, TEMP_SUFFIX, FileLock, atomic_write, cache_root, private_dir

__all__ = [
    "DataSource",
    "ModelSource",
    "ResultStore",
    "BackgroundJob",
    "builtin_source",
    "torchvision_source",
    "state_dict_source",
    "program_source",
    "upload_dir",
    "upload_cap",
    "store_upload",
    "prune_uploads",
    "upload_path",
    "load_source",
    "dataset_source",
    "load_dataset",
    "eval_problem",
    "stage_of",
    "group_by_stage",
    "mode_labels",
    "slider_key",
    "human",
    "size_mb",
    "full_plan",
    "plan_from_ranks",
    "plan_key",
    "preset_spec",
    "plan_at_ratio",
    "evaluate_plan",
    "headline",
    "sensitivity_passes",
    "energy_plans",
    "projection_curve",
    "calibration_points",
    "projection_figure",
    "calibration_figure",
    "sensitivity_figure",
    "sweep_figure",
]

log = logging.getLogger(__name__)

#: Largest upload accepted (bytes).
MAX_UPLOAD_BYTES = 1 << 30
#: Uploads live in ``<cache>/uploads`` (see :func:`upload_dir`).
UPLOAD_SUBDIR = "uploads"
#: Environment variable with the byte cap of the upload folder (least recently used files go first).
UPLOAD_CAP_ENV = "LRVIZ_UPLOAD_CAP_BYTES"
DEFAULT_UPLOAD_CAP_BYTES = 4 << 30
#: Temporary files of interrupted writes older than this are removed by :func:`prune_uploads`.
STALE_TEMP_SECONDS = 3600.0
UPLOAD_LOCK = ".lock"
_STORED_NAME = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]{1,8}$")
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
PROGRAM_SUFFIXES = (".pt2",)
#: Ratios of the Compare page's sweep (params or MACs reduction, ×).
SWEEP_RATIOS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
#: Allocation strategies of the sweep (:func:`lrviz.budget.sweep`); "solver" needs sensitivities.
SWEEP_STRATEGIES = STRATEGIES
STRATEGY_COLORS = {"solver": "#d62728", "uniform": "#ff7f0e", "vbmf": "#2ca02c", "energy": "#1f77b4"}


# ==================================================================================================
# Models
# ==================================================================================================


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, with an explicit cache key.

    Attributes
    ----------
    key : str
        Stable identity of architecture + weights (uploads: content hash), used as cache key.
    spec : str
        What :func:`lrviz.models.load_model` gets (a name or a ``.pt2`` path).
    weights : str or None
        ``None`` (default weights), ``"none"``, ``"pretrained"`` or a file path.
    label : str
        Short text for the UI.
    """

    key: str
    spec: str
    weights: str | None
    label: str
    filename: str | None = None


def digest(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def short_id(text: str, n: int = 10) -> str:
    """A short, stable hash of ``text`` (for widget keys)."""
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def upload_dir() -> Path:
    """This user's private upload folder: ``<cache>/uploads`` (see :func:`lrviz.storage.cache_root`).

    Created with mode ``0700``; an existing folder that is a symbolic link or belongs to another user
    is refused, one that others can read has its mode reset (:func:`lrviz.storage.private_dir`).

    Raises
    ------
    LrvizError
        When the folder cannot be used safely (the message says how to fix it).
    """
    return private_dir(cache_root() / UPLOAD_SUBDIR)


def upload_cap() -> int:
    """Most bytes the upload folder keeps (``$LRVIZ_UPLOAD_CAP_BYTES``, default 4 GiB)."""
    text = os.environ.get(UPLOAD_CAP_ENV, "").strip()
    if not text:
        return DEFAULT_UPLOAD_CAP_BYTES
    try:
        cap = int(text)
    except ValueError:
        cap = -1
    if cap < 1:
        raise LrvizError(
            f"{UPLOAD_CAP_ENV}={text!r} is not a positive number of bytes; set it to e.g. {DEFAULT_UPLOAD_CAP_BYTES} "
            f"({DEFAULT_UPLOAD_CAP_BYTES / 2**30:.0f} GiB) or unset it"
        )
    return cap


def _file_sha256(path: Path) -> str | None:
    """SHA-256 of a regular file (not following a symbolic link), or None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stored_copy_is_intact(path: Path, sha: str, size: int) -> bool:
    """Whether ``path`` is a regular file with exactly the content of hash ``sha`` (``size`` bytes).

    A symbolic link or other non-file at ``path`` is removed (it is replaced by a real file).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISLNK(st.st_mode):
            os.unlink(path)
        return False
    if st.st_size != size or _file_sha256(path) != sha:
        log.warning("stored upload %s does not match its content hash; rewriting it", path.name)
        return False
    if stat.S_IMODE(st.st_mode) != 0o600:
        os.chmod(path, 0o600)
    return True


def _stored_uploads(folder: Path) -> list[tuple[float, str, int, Path]]:
    """``(mtime, name, size, path)`` of the stored uploads in ``folder`` (regular files named
    ``<sha256><suffix>``); stale temporary files of interrupted writes are removed on the way."""
    out = []
    now = time.time()
    with os.scandir(folder) as it:
        for e in it:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if _STORED_NAME.match(e.name):
                out.append((st.st_mtime, e.name, st.st_size, Path(e.path)))
            elif e.name.startswith(TEMP_PREFIX) and e.name.endswith(TEMP_SUFFIX) and now - st.st_mtime > STALE_TEMP_SECONDS:
                _unlink_quietly(Path(e.path))
    return out


def _unlink_quietly(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def prune_uploads(folder: str | Path | None = None, cap: int | None = None, keep: Sequence[str | Path] = ()) -> list[Path]:
    """Delete the least recently used stored uploads until they take at most ``cap`` bytes.

    Parameters
    ----------
    folder : path, optional
        Default :func:`upload_dir`. Only files named ``<sha256><suffix>`` are counted or removed.
    cap : int, optional
        Default :func:`upload_cap`.
    keep : paths
        Never removed (the file just stored).

    Returns
    -------
    list of Path
        The removed files, oldest (smallest modification time) first.
    """
    folder = private_dir(folder, fix_mode=False) if folder is not None else upload_dir()
    cap = upload_cap() if cap is None else int(cap)
    kept = {Path(k).name for k in keep}
    files = sorted(_stored_uploads(folder))
    total = sum(size for _, _, size, _ in files)
    removed = []
    for _, name, size, path in files:
        if total <= cap:
            break
        if name in kept:
            continue
        if _unlink_quietly(path):
            removed.append(path)
        total -= size
    if removed:
        log.info("upload folder over %d bytes: removed %d least recently used file(s)", cap, len(removed))
    return removed


def store_upload(data: bytes, filename: str, suffixes: Sequence[str], directory: str | Path | None = None,
                 cap: int | None = None) -> tuple[Path, str]:
    """Keep uploaded bytes as ``<directory>/<sha256><suffix>`` and return ``(path, sha256)``.

    The folder is private (:func:`upload_dir`, or ``directory`` checked the same way); the file is
    written with mode ``0600`` atomically (temporary file + ``os.replace``). A stored copy is reused
    only when its content still hashes to ``sha256`` (its modification time is then refreshed);
    anything else at that name (a truncated or tampered file, a link) is replaced. Afterwards the
    least recently used uploads are deleted until the folder holds at most ``cap`` bytes
    (:func:`prune_uploads`). Store and clean-up run under a lock on the folder (threads and
    processes).

    The file is never loaded here; that is :func:`load_source`'s job (``torch.load(weights_only=True)``
    or the checked ``.pt2`` loader — nothing is unpickled).

    Parameters
    ----------
    data : bytes
    filename : str
        The user's file name (only its suffix is used, checked against ``suffixes``).
    suffixes : sequence of str
        Allowed suffixes, lower case with the dot (``(".pt", ".pth")``).
    directory : path, optional
        Default :func:`upload_dir`. A folder given here is created ``0700`` when missing and must be
        private when it exists (it is refused, not changed, when other users can enter it).
    cap : int, optional
        Byte cap of the folder (default :func:`upload_cap`).

    Raises
    ------
    LrvizError
        For an empty or too large upload, a file name with another suffix, or a folder that is not
        safe to use.
    """
    name = str(filename or "upload")
    suffix = Path(name).suffix.lower()
    if suffix not in suffixes:
        raise LrvizError(f"{name!r} has the wrong file type: expected {' / '.join(suffixes)}")
    if not data:
        raise LrvizError(f"{name!r} is empty (0 bytes)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise LrvizError(f"{name!r} is {len(data) / 2**20:.0f} MiB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MiB")
    cap = upload_cap() if cap is None else int(cap)
    if len(data) > cap:
        raise LrvizError(
            f"{name!r} is {len(data) / 2**20:.1f} MiB but the upload folder keeps at most {cap / 2**20:.1f} MiB; "
            f"raise {UPLOAD_CAP_ENV} (bytes) to store it"
        )
    sha = digest(data)
    folder = private_dir(directory, fix_mode=False) if directory is not None else upload_dir()
    path = folder / f"{sha}{suffix}"
    with FileLock(folder / UPLOAD_LOCK):
        if _stored_copy_is_intact(path, sha, len(data)):
            os.utime(path)  # most recently used: pruned last
        else:
            atomic_write(path, data, mode=0o600)
        prune_uploads(folder, cap, keep=[path])
    return path, sha


def upload_path(source: ModelSource) -> Path | None:
    """The stored upload behind ``source`` (state_dict or ``.pt2``), or None for other sources."""
    if source.key.startswith("state_dict:") and source.weights:
        return Path(source.weights)
    if source.key.startswith("program:"):
        return Path(source.spec)
    return None


def builtin_source(name: str = "demo") -> ModelSource:
    """A bundled model with its default weights (the demo falls back to random weights, see :func:`load_source`)."""
    return ModelSource(key=f"builtin:{name}", spec=name, weights=None, label=name)


def torchvision_source(arch: str, weights: str = "none") -> ModelSource:
    """A torchvision architecture with random (``"none"``) or ``"pretrained"`` weights."""
    if weights not in ("none", "pretrained"):
        raise LrvizError(f"weights must be 'none' or 'pretrained' here; got {weights!r}")
    label = f"{arch} ({'random init' if weights == 'none' else 'pretrained'})"
    return ModelSource(key=f"torchvision:{arch}:{weights}", spec=arch, weights=weights, label=label)


def state_dict_source(arch: str, data: bytes, filename: str, directory: str | Path | None = None) -> ModelSource:
    """An architecture name (builtin or torchvision) plus an uploaded state_dict file."""
    path, sha = store_upload(data, filename, STATE_DICT_SUFFIXES, directory)
    return ModelSource(key=f"state_dict:{arch}:{sha}", spec=arch, weights=str(path), label=f"{arch} + {filename}", filename=filename)


def program_source(data: bytes, filename: str, directory: str | Path | None = None) -> ModelSource:
    """An uploaded ``torch.export`` program (``.pt2``)."""
    path, sha = store_upload(data, filename, PROGRAM_SUFFIXES, directory)
    return ModelSource(key=f"program:{sha}", spec=str(path), weights=None, label=filename, filename=filename)


def _short_cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def load_source(source: ModelSource):
    """Load a model; returns ``(LoadedModel, notes)`` where notes are warnings for the user.

    A builtin model whose bundled weights are missing is loaded with random weights and a note says
    so. Every failure is raised as :class:`LrvizError` with the cause (never another exception type).
    """
    from .models import builtin_models, load_model

    notes: list[str] = []
    try:
        try:
            loaded = load_model(source.spec, weights=source.weights)
        except LrvizError as exc:
            builtin = builtin_models().get(source.spec)
            if source.weights is None and builtin is not None and "weights" in str(exc):
                loaded = load_model(source.spec, weights="none")
                notes.append(f"bundled weights unavailable ({exc}); using random weights")
            else:
                raise
    except LrvizError as exc:
        if source.filename:  # name the user's file, not our content-addressed copy of it
            stored = source.weights if source.weights not in (None, "none", "pretrained") else source.spec
            raise LrvizError(str(exc).replace(str(stored), source.filename)) from exc
        raise
    except Exception as exc:  # anything torch raises on a strange file: report the cause
        raise LrvizError(f"could not load {source.label}: {_short_cause(exc)}") from exc
    if "random init" in loaded.source:
        notes.append(
            f"{loaded.name} has random weights ({loaded.source}): spectra and accuracies describe an "
            "untrained network"
        )
    return loaded, notes


# ==================================================================================================
# Data
# ==================================================================================================


@dataclass(frozen=True)
class DataSource:
    """A dataset choice: the ``lrviz.data`` name and how images are adapted to the model."""

    key: str
    name: str
    label: str
    resize: tuple[int, int] | None = None
    grayscale: bool = False


def dataset_source(name: str, input_size: Sequence[int], label: str | None = None) -> DataSource:
    """Dataset ``name`` prepared for a model taking ``input_size`` ``(C, H, W)``.

    Fashion-MNIST images are resized to the model's ``H×W`` when they differ; ImageFolder images are
    resized to it and converted to grayscale for one-channel models.
    """
    c, h, w = (int(v) for v in input_size)
    kind = name.partition(":")[0].lower()
    resize: tuple[int, int] | None = None
    gray = False
    if kind in ("fashion-mnist", "fashion-mnist-sample"):
        resize = None if (h, w) == (28, 28) else (h, w)
    elif kind == "imagefolder":
        resize, gray = (h, w), c == 1
    key = f"{name}|{resize}|{gray}"
    return DataSource(key=key, name=name, label=label or name, resize=resize, grayscale=gray)


def load_dataset(src: DataSource, split: str = "test"):
    """Build the dataset of ``src`` (raises :class:`LrvizError` with the cause)."""
    from .data import get_dataset

    try:
        return get_dataset(src.name, split=split, resize=src.resize, grayscale=src.grayscale)
    except LrvizError:
        raise
    except Exception as exc:
        raise LrvizError(f"could not load dataset {src.name!r}: {_short_cause(exc)}") from exc


def train_dataset_name(name: str) -> str:
    """Name of the dataset to fine-tune on for evaluation dataset ``name`` (the sample has no train split)."""
    return "fashion-mnist" if name == "fashion-mnist-sample" else name


def eval_problem(loaded, dataset) -> str | None:
    """Why ``dataset`` cannot measure ``loaded``'s accuracy, or None when it can."""
    if dataset is None:
        return "no dataset loaded"
    ds_size = tuple(getattr(dataset, "input_size", ()) or ())
    if ds_size and tuple(ds_size) != tuple(loaded.input_size):
        return (
            f"the dataset's images are {'×'.join(map(str, ds_size))} but the model expects "
            f"{'×'.join(map(str, loaded.input_size))}"
        )
    n = getattr(dataset, "num_classes", None)
    if n is not None and int(n) != int(loaded.num_classes):
        return f"the model has {loaded.num_classes} outputs but the dataset has {n} classes"
    return None


# ==================================================================================================
# Layers, keys, formatting
# ==================================================================================================


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


def slider_key(model_id: str, layer: str, index: int) -> str:
    """Session-state key of one rank slider."""
    return f"rank|{model_id}|{layer}|{index}"


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def headline(cost: CostReport) -> dict[str, float]:
    """The numbers shown above the Ranks page: params, MACs, FLOPs, size and their ratios."""
    return {
        "params": cost.params,
        "params_planned": cost.params_planned,
        "macs": cost.macs,
        "macs_planned": cost.macs_planned,
        "flops": cost.flops,
        "flops_planned": cost.flops_planned,
        "size_mb": size_mb(cost.params),
        "size_mb_planned": size_mb(cost.params_planned),
        "params_ratio": cost.params_ratio,
        "macs_ratio": cost.macs_ratio,
    }


def analyze_loaded(loaded, progress=None) -> ModelAnalysis:
    """:func:`lrviz.analyze` for a module; a cost-only analysis for an exported program.

    A ``.pt2`` program has no modules to decompose: its params come from the program's parameters
    and its MACs from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2, batch 1), as
    ``lrviz analyze`` does for programs.
    """
    from .analysis import analyze, analyze_program

    if loaded.decomposable:
        return analyze(loaded.module, loaded.input_size, loaded.name, progress=progress)
    return analyze_program(loaded.program, loaded.input_size, loaded.name)


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
    from .cost import layer_macs, layer_params

    rows = []
    for l in analysis.layers:
        rows.append(
            {
                "stage": stage_of(l.name),
                "layer": l.name,
                "kind": l.kind,
                "weight shape": "×".join(map(str, l.weight_shape)),
                "full ranks": ", ".join(map(str, l.full_ranks)),
                "params": layer_params(l),
                "MACs": layer_macs(l, analysis.io[l.name]),
            }
        )
    return pd.DataFrame(rows)


def skipped_table(analysis: ModelAnalysis) -> pd.DataFrame:
    return pd.DataFrame([{"layer": s.name, "type": s.type, "why it is skipped": s.reason} for s in analysis.skipped])


def spectra_table(analysis: ModelAnalysis) -> pd.DataFrame:
    """Per layer: VBMF ranks, noise variance σ² and energy kept at the VBMF ranks (readable columns)."""
    if not analysis.has_spectra:
        return pd.DataFrame()
    t = analysis.table()
    fmt = lambda vals, f: ", ".join(f.format(v) for v in vals)  # noqa: E731
    return pd.DataFrame(
        {
            "layer": t["name"],
            "kind": t["kind"],
            "shape": t["weight_shape"],
            "full ranks": [", ".join(map(str, r)) for r in t["full_ranks"]],
            "VBMF ranks": [", ".join(map(str, r)) for r in t["vbmf_ranks"]],
            "σ²": [fmt(v, "{:.3g}") for v in t["vbmf_sigma2"]],
            "energy kept": [fmt(v, "{:.1%}") for v in t["energy_at_vbmf"]],
        }
    )


# ==================================================================================================
# Plans
# ==================================================================================================


def full_plan(analysis: ModelAnalysis) -> RankPlan:
    return make_plan(analysis, "full")


def plan_from_ranks(analysis: ModelAnalysis, ranks: Mapping[str, Sequence[int]], spec: str = "custom") -> RankPlan:
    """The plan with exactly these ranks (layers not given stay at full rank); no break-even rule."""
    base = full_plan(analysis)
    changes = {name: tuple(int(v) for v in r) for name, r in ranks.items()}
    return base.with_ranks(changes, spec=spec)


def plan_key(plan: RankPlan) -> str:
    """Stable short identity of a plan's ranks (for result caches and session state)."""
    text = ";".join(f"{lp.name}={','.join(map(str, lp.ranks))}" for lp in plan.layers)
    return short_id(text, 16)


def preset_spec(kind: str, value: float | None = None) -> str:
    """Plan spec of a preset: ``full``, ``vbmf:K``, ``energy:F``, ``uniform:F``, ``ratio:T``."""
    if kind == "full":
        return "full"
    if value is None:
        raise LrvizError(f"preset {kind!r} needs a value")
    if kind in ("vbmf", "energy", "uniform", "ratio"):
        return f"{kind}:{float(value):g}"
    raise LrvizError(f"unknown preset {kind!r}")


def plan_at_ratio(analysis: ModelAnalysis, family: str, target: float, tol: float = 0.1) -> RankPlan | None:
    """A plan of ``family`` whose params ratio is ``target`` (±``tol``), or None if out of reach.

    ``energy`` uses ``make_plan("ratio:T")`` (energy threshold bisection); ``uniform`` and ``vbmf``
    bisect the uniform fraction ``F`` and the weakening ``K`` of ``vbmf:K``.
    """
    if family == "energy":
        try:
            return make_plan(analysis, f"ratio:{target:g}")
        except LrvizError:
            return None
    if family not in ("uniform", "vbmf"):
        raise LrvizError(f"unknown family {family!r}; use energy, uniform or vbmf")
    return plan_for_ratio(analysis, target, family, iters=24, tolerance=tol)


def planned_model(module: torch.nn.Module, plan: RankPlan, cache, progress=None) -> torch.nn.Module:
    """A new decomposed model from cached factors (``module`` is never modified)."""
    from .decompose import compress

    return compress(module, plan, cache, progress=progress)


def evaluate_plan(module, plan: RankPlan, cache, dataset, limit: int | None, progress=None):
    """Build the planned model from the cached factors and evaluate it; returns an ``EvalResult``."""
    from .evaluate import evaluate

    model = planned_model(module, plan, cache)
    return evaluate(model, dataset, limit=limit, progress=progress)


# ==================================================================================================
# Layer sensitivities and the sensitivity projection (pure helpers; the projector is lrviz.project's)
# ==================================================================================================

#: Energy fractions of the plans along which the Ranks page draws the projection curve.
CURVE_FRACTIONS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0)


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


def energy_plans(analysis: ModelAnalysis, fractions: Sequence[float] = CURVE_FRACTIONS) -> list[tuple[float, RankPlan]]:
    """``(params ratio, plan)`` of the ``energy:F`` plans (data-free; cache it per model), by ratio."""
    if not analysis.has_spectra or not analysis.layers:
        return []
    out = []
    for f in fractions:
        plan = make_plan(analysis, f"energy:{f:g}")
        out.append((plan_cost(analysis, plan).params_ratio, plan))
    return sorted(out, key=lambda t: t[0])


def projection_curve(plans: Sequence[tuple[float, RankPlan]], projector, base_top1: float | None = None) -> pd.DataFrame:
    """The sensitivity projection along ``plans`` (from :func:`energy_plans`): ``params_ratio, top1, lo, hi``.

    Plans that truncate layers the projector does not cover are left out.
    """
    rows = []
    for ratio, plan in plans:
        if projector.missing(plan):
            continue
        p = projector.project(plan, base_top1)
        rows.append({"params_ratio": float(ratio), "top1": p.top1, "lo": p.interval[0], "hi": p.interval[1]})
    return pd.DataFrame(rows, columns=["params_ratio", "top1", "lo", "hi"])


CALIBRATION_COLUMNS = ["kind", "label", "plan_key", "top1", "lo", "hi", "n", "projected", "proj_lo", "proj_hi", "projected_then"]


def calibration_points(measured: Sequence[Mapping], plans: Mapping[str, RankPlan], projector, anchors: bool = True) -> pd.DataFrame:
    """Measured accuracies next to what the (current) projector says, on the calibration images.

    ``measured``: quick-evaluation rows (``plan_key``, ``label``, ``top1``, ``lo``, ``hi``, ``n`` and
    optionally ``projected_calib``, the sensitivity projection when it was measured); ``plans``:
    ``plan_key → RankPlan``. Only rows measured on as many images as the calibration set (the same
    deterministic subset) and covered by the sensitivities are kept. With ``anchors`` the joint
    anchor truncations measured with the sensitivities are added (``kind="anchor"``). The projection
    is re-computed with ``projector`` (``projected``, ``proj_lo``, ``proj_hi``, calibration-set basis);
    ``projected_then`` is the one stored at measurement time (NaN when there was none).
    """
    from .evaluate import wilson_interval

    sens = projector.sens
    rows = []
    for m in measured:
        plan = plans.get(m.get("plan_key"))
        if plan is None or int(m.get("n") or 0) != sens.n or projector.missing(plan):
            continue
        p = projector.project(plan)
        then = m.get("projected_calib")
        rows.append({"kind": "quick evaluation", "label": m.get("label", ""), "plan_key": m.get("plan_key"), "top1": float(m["top1"]),
                     "lo": float(m["lo"]), "hi": float(m["hi"]), "n": int(m["n"]), "projected": p.top1, "proj_lo": p.interval[0],
                     "proj_hi": p.interval[1], "projected_then": math.nan if then is None else float(then)})
    if anchors:
        for a, (plan, top1, _) in zip(getattr(sens, "anchors", None) or [], projector.anchor_points()):
            p = projector.project(plan)
            lo, hi = wilson_interval(int(round(top1 * sens.n)), sens.n)
            rows.append({"kind": "anchor", "label": f"anchor: every layer at {a.get('fraction', 0):.0%} of its ranks", "plan_key": None,
                         "top1": top1, "lo": lo, "hi": hi, "n": sens.n, "projected": p.top1, "proj_lo": p.interval[0],
                         "proj_hi": p.interval[1], "projected_then": math.nan})
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


# ==================================================================================================
# Shared state
# ==================================================================================================


class ResultStore:
    """Thread-safe ``key → value`` memo shared by all sessions (held in ``st.cache_resource``).

    Used for results that need a progress bar while they are computed (evaluations), which a
    Streamlit-cached function cannot show. Bounded: the oldest entries go first.
    """

    def __init__(self, max_items: int = 512):
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.max_items = max_items

    def get(self, key, default=None):
        with self._lock:
            return self._data.get(key, default)

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_items:
                self._data.popitem(last=False)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


class BackgroundJob:
    """Run ``target(progress, should_stop)`` in a daemon thread and collect its events.

    The UI polls :attr:`events`, :attr:`done`, :attr:`result`, :attr:`error`; :meth:`stop` sets the
    flag that ``should_stop()`` returns. Exceptions are kept as text (``error``), never re-raised.
    """

    def __init__(self, target: Callable[[Callable[[dict], None], Callable[[], bool]], Any], name: str = "job"):
        self._target = target
        self.name = name
        self.events: list[dict] = []
        self.result: Any = None
        self.error: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> "BackgroundJob":
        if self._thread is not None:
            raise LrvizError("job already started")
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name=f"lrviz-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _progress(self, event: dict) -> None:
        with self._lock:
            self.events.append(dict(event))

    def _run(self) -> None:
        try:
            self.result = self._target(self._progress, self._stop.is_set)
        except LrvizError as exc:
            self.error = str(exc)
        except Exception as exc:  # keep the cause for the UI, log the trace for developers
            self.error = f"{type(exc).__name__}: {exc}"
            self.trace = traceback.format_exc()
        finally:
            self.finished_at = time.time()
            self._done.set()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self.done

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.events)


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


def split_sample(dataset, val_fraction: float = 0.5, seed: int = 0):
    """Disjoint ``(train, val)`` subsets of one dataset (for when no separate train split exists)."""
    from .data import DatasetSubset

    n = len(dataset)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = int(round(n * (1 - val_fraction)))
    return DatasetSubset(dataset, perm[:k]), DatasetSubset(dataset, perm[k:])


# ==================================================================================================
# Predictions and images
# ==================================================================================================


def predict(model, dataset, indices: Sequence[int]) -> tuple[list[int], list[int], list[float]]:
    """``(labels, predicted classes, confidences)`` of a few dataset items (model flags restored)."""
    xs, ys = zip(*(dataset[i] for i in indices)) if indices else ((), ())
    if not xs:
        return [], [], []
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            p = torch.softmax(model(torch.stack(list(xs))).float(), dim=1)
    finally:
        for m, f in flags.items():
            m.training = f
    conf, pred = p.max(dim=1)
    return [int(y) for y in ys], pred.tolist(), conf.tolist()


def display_image(x: torch.Tensor) -> np.ndarray:
    """A normalised ``C×H×W`` tensor as a ``uint8`` image (min–max scaled; ``H×W`` or ``H×W×3``)."""
    a = x.detach().float().cpu()
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else torch.zeros_like(a)
    img = (a * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return img[0] if img.shape[0] == 1 else np.transpose(img[:3], (1, 2, 0))


def sample_indices(dataset, n: int = 8, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(dataset), generator=g)[: min(n, len(dataset))].tolist()


def clone_model(module: torch.nn.Module) -> torch.nn.Module:
    """A private deep copy (never hand a cached model to code that might change it)."""
    return copy.deepcopy(module)


def inference_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in eval mode without gradients, for inference shared by concurrent sessions.

    Evaluating the cached original directly would toggle its train/eval flags; with several
    sessions (threads) at once, one could run a forward pass in train mode and update BatchNorm
    statistics. A copy that is only ever used in eval mode cannot be changed that way.
    """
    m = copy.deepcopy(module)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def state_fingerprint(module: torch.nn.Module) -> str:
    """Hash of all parameters and buffers (to check that a cached model was not modified)."""
    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ==================================================================================================
# Figures (plotly, imported lazily)
# ==================================================================================================

COLORS = {
    "original": "#8c8c8c",
    "planned": "#1f77b4",
    "out": "#1f77b4",
    "in": "#ff7f0e",
    "matrix": "#2ca02c",
    "projection": "#9467bd",
    "measured": "#d62728",
}
MODE_NAMES = {"out": "output channels (mode-0)", "in": "input channels (mode-1)", "matrix": "matrix"}


def _layout(fig, title: str | None = None, height: int = 380):
    fig.update_layout(
        title=dict(text=title, y=0.98, yanchor="top", x=0.01, xanchor="left", font=dict(size=15)) if title else None,
        height=height,
        margin=dict(l=10, r=10, t=95 if title else 40, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0),
    )  # no template here: Streamlit applies its theme, the report sets its own (templates are slow)
    return fig


def _hlines(fig, lines: Sequence[tuple[float, str, str, str, str]]):
    """Horizontal reference lines ``(y, text, color, dash, "top"|"bottom")`` as plain layout shapes
    (much cheaper than ``add_hline``, which matters on every slider move)."""
    shapes = [dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=y, y1=y, line=dict(color=c, dash=d, width=1)) for y, _, c, d, _ in lines]
    notes = [dict(xref="paper", x=0.005, yref="y", y=y, text=t, showarrow=False, xanchor="left", yanchor=pos, font=dict(size=11, color="gray"))
             for y, t, _, _, pos in lines]
    fig.update_layout(shapes=shapes, annotations=notes)
    return fig


def spectrum_figure(analysis: ModelAnalysis, name: str, ranks: Sequence[int] | None = None):
    """Singular values (log y) of a layer's modes, the EVBMF threshold, the chosen rank and the
    retained energy (secondary axis), in one figure."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sp = analysis.spectra[name]
    layer = analysis.layer(name)
    ranks = tuple(ranks) if ranks is not None else layer.full_ranks
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for mode, r in zip(sp.modes, ranks):
        s = np.asarray(sp.values[mode])
        idx = np.arange(1, len(s) + 1)
        color = COLORS[mode]
        label = MODE_NAMES[mode]
        floor = max(float(s.max()) * 1e-12, 1e-30) if len(s) else 1e-30
        fig.add_trace(
            go.Scatter(x=idx, y=np.maximum(s, floor), mode="lines+markers", name=f"σ {label}", line=dict(color=color), marker=dict(size=4)),
            secondary_y=False,
        )
        fig.add_trace(
            go.Scatter(x=idx, y=energy_curve(s), mode="lines", name=f"energy {label}", line=dict(color=color, dash="dot")),
            secondary_y=True,
        )
        vb = analysis.vbmf.get(name, {}).get(mode)
        if vb is not None and vb.threshold > 0:
            fig.add_trace(
                go.Scatter(
                    x=[1, len(s)], y=[vb.threshold, vb.threshold], mode="lines", name=f"EVBMF threshold {mode} (rank {vb.rank})",
                    line=dict(color=color, dash="dash", width=1),
                ),
                secondary_y=False,
            )
        r = min(int(r), len(s))  # a mode can have fewer singular values than channels
        if r >= 1:
            fig.add_trace(
                go.Scatter(
                    x=[r], y=[max(s[r - 1], floor)], mode="markers", name=f"chosen rank {mode} = {r}",
                    marker=dict(symbol="diamond", size=13, color=color, line=dict(color="black", width=1)),
                ),
                secondary_y=False,
            )
    fig.layout.yaxis.update(type="log", title_text="singular value (log)")
    fig.layout.yaxis2.update(type="linear", range=[0, 1.02], tickmode="linear", tick0=0, dtick=0.2, title_text="retained energy", tickformat=".0%", showgrid=False)
    fig.update_xaxes(title_text="index (rank)")
    return _layout(fig, f"{name} — {layer.kind} {'×'.join(map(str, layer.weight_shape))}", height=420)


def spectra_heatmap(analysis: ModelAnalysis, max_len: int = 64):
    """Normalised spectra (σ_i / σ_1) of every layer mode, one row each, as a heat-map."""
    import plotly.graph_objects as go

    rows, labels = [], []
    width = 0
    for l in analysis.layers:
        sp = analysis.spectra.get(l.name)
        if sp is None:
            continue
        for mode in sp.modes:
            s = np.asarray(sp.values[mode])
            width = max(width, len(s))
            rows.append(s / s[0] if len(s) and s[0] > 0 else s)
            labels.append(f"{l.name} · {mode}")
    width = min(width, max_len)
    z = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        z[i, : min(len(r), width)] = r[:width]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=np.arange(1, width + 1), y=labels, colorscale="Viridis", zmin=0, zmax=1,
            colorbar=dict(title="σᵢ/σ₁"), hovertemplate="%{y}<br>i=%{x}<br>σᵢ/σ₁=%{z:.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="singular value index")
    return _layout(fig, "Normalised spectra of all layers", height=max(320, 16 * len(labels) + 120))


def layer_cost_figure(cost: CostReport, metric: str = "params"):
    """Per-layer bars: original vs planned params (or MACs)."""
    import plotly.graph_objects as go

    t = cost.table
    unit = "params" if metric == "params" else "MACs"
    fig = go.Figure()
    fig.add_bar(x=t["name"], y=t[metric], name=f"original {unit}", marker_color=COLORS["original"])
    fig.add_bar(x=t["name"], y=t[f"{metric}_planned"], name=f"planned {unit}", marker_color=COLORS["planned"])
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text=unit)
    fig.update_xaxes(tickangle=-45)
    return _layout(fig, f"Per-layer {unit}: original vs planned", height=380)


def projection_figure(curve: pd.DataFrame | None, current: Mapping | None, measured: Sequence[Mapping], base_top1: float | None,
                      chance: float | None, curve_name: str = "projection (energy plans)"):
    """Projected accuracy vs params ratio (a curve along the energy family, with its band when ``curve``
    has ``lo``/``hi`` columns; the current plan, with error bars when ``current`` has ``lo``/``hi``) and
    measured quick evaluations with their 95 % intervals."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if curve is not None and len(curve):
        if "lo" in curve and "hi" in curve and curve["lo"].notna().any():
            fig.add_trace(go.Scatter(x=list(curve["params_ratio"]) + list(curve["params_ratio"])[::-1],
                                     y=list(curve["hi"]) + list(curve["lo"])[::-1], fill="toself", mode="lines", line=dict(width=0),
                                     fillcolor="rgba(148,103,189,0.15)", name="projection band (~95 %)", hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=curve["params_ratio"], y=curve["top1"], mode="lines", name=curve_name, line=dict(color=COLORS["projection"], dash="dot")))
    if measured:
        m = pd.DataFrame(list(measured))
        fig.add_trace(
            go.Scatter(
                x=m["params_ratio"], y=m["top1"], mode="markers", name="measured (95 % CI)",
                marker=dict(color=COLORS["measured"], size=9),
                error_y=dict(type="data", symmetric=False, array=m["hi"] - m["top1"], arrayminus=m["top1"] - m["lo"]),
                text=m.get("label"), hovertemplate="%{text}<br>%{x:.2f}× params<br>top-1 %{y:.1%}<extra></extra>",
            )
        )
        if "projected" in m:
            fig.add_trace(
                go.Scatter(x=m["params_ratio"], y=m["projected"], mode="markers", name="projected when measured",
                           marker=dict(color=COLORS["projection"], symbol="x", size=8))
            )
    if current is not None:
        err = None
        if current.get("lo") is not None and current.get("hi") is not None:
            err = dict(type="data", symmetric=False, array=[current["hi"] - current["top1"]], arrayminus=[current["top1"] - current["lo"]])
        fig.add_trace(
            go.Scatter(x=[current["params_ratio"]], y=[current["top1"]], mode="markers", name="current plan (projected)", error_y=err,
                       marker=dict(color=COLORS["projection"], symbol="star", size=16, line=dict(color="black", width=1)))
        )
    lines = []
    if base_top1 is not None:
        lines.append((base_top1, "original", "gray", "dash", "bottom"))
    if chance is not None:
        lines.append((chance, "chance", "lightgray", "dot", "top"))
    _hlines(fig, lines)
    fig.update_xaxes(title_text="params reduction (×)", type="log")
    fig.update_yaxes(title_text="top-1 accuracy", tickformat=".0%", rangemode="tozero")
    return _layout(fig, "Accuracy: projected vs measured", height=380)


def calibration_figure(points: pd.DataFrame, title: str = "Projected vs measured top-1"):
    """Measured top-1 (y, 95 % CI) against the projected top-1 (x, projection band) of each point of
    :func:`calibration_points`, one trace per ``kind``; hollow markers at the projection made when a
    point was measured (``projected_then``); the diagonal ``y = x`` (a perfect projection)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    d = points.dropna(subset=["projected", "top1"]) if len(points) else points
    vals = [v for c in ("projected", "top1", "lo", "hi", "projected_then", "proj_lo", "proj_hi") if c in d for v in d[c].dropna().tolist()]
    lo, hi = (max(min(vals) - 0.02, 0.0), min(max(vals) + 0.02, 1.0)) if vals else (0.0, 1.0)
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x (perfect projection)", line=dict(color="gray", dash="dash", width=1),
                             hoverinfo="skip"))
    colors = {"quick evaluation": COLORS["measured"], "anchor": COLORS["original"]}
    names = {"quick evaluation": "quick evaluations (now projected)", "anchor": "anchors (measured with the sensitivities)"}
    for kind, g in d.groupby("kind", sort=False) if len(d) else ():
        fig.add_trace(
            go.Scatter(
                x=g["projected"], y=g["top1"], mode="markers", name=names.get(kind, str(kind)), text=g["label"],
                marker=dict(color=colors.get(kind, COLORS["planned"]), size=10, symbol="circle" if kind != "anchor" else "diamond"),
                error_y=dict(type="data", symmetric=False, array=g["hi"] - g["top1"], arrayminus=g["top1"] - g["lo"]),
                error_x=dict(type="data", symmetric=False, array=g["proj_hi"] - g["projected"], arrayminus=g["projected"] - g["proj_lo"],
                             thickness=1, color="rgba(148,103,189,0.6)"),
                hovertemplate="%{text}<br>projected %{x:.1%}<br>measured %{y:.1%}<extra></extra>",
            )
        )
    then = d.dropna(subset=["projected_then"]) if "projected_then" in d and len(d) else d.iloc[0:0]
    if len(then):
        fig.add_trace(
            go.Scatter(x=then["projected_then"], y=then["top1"], mode="markers", name="projected when measured", text=then["label"],
                       marker=dict(color=COLORS["projection"], size=10, symbol="circle-open", line=dict(width=2)),
                       hovertemplate="%{text}<br>projected then %{x:.1%}<br>measured %{y:.1%}<extra></extra>")
        )
    fig.update_xaxes(title_text="projected top-1", tickformat=".0%", range=[lo, hi])
    fig.update_yaxes(title_text="measured top-1", tickformat=".0%", range=[lo, hi])
    return _layout(fig, title, height=380)


def sensitivity_figure(table: pd.DataFrame, max_traces: int = 80):
    """Top-1 with one mode of one layer truncated vs the kept rank fraction (``Sensitivities.table()``)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if len(table):
        t = table.assign(frac=table["rank"] / table["full"])
        for i, ((layer, mode), g) in enumerate(t.groupby(["layer", "mode"], sort=False)):
            if i >= max_traces:
                break
            g = g.sort_values("frac")
            fig.add_trace(go.Scatter(x=g["frac"], y=g["top1"], mode="lines+markers", name=f"{layer} · {mode}", marker=dict(size=4),
                                     customdata=g["rank"], hovertemplate=f"{layer} · {mode}<br>rank %{{customdata}} (%{{x:.0%}})<br>top-1 %{{y:.1%}}<extra></extra>"))
    fig.update_xaxes(title_text="kept rank / full rank", tickformat=".0%")
    fig.update_yaxes(title_text="top-1 (only this mode truncated)", tickformat=".0%")
    fig.update_layout(showlegend=len(fig.data) <= 12)
    return _layout(fig, "Layer sensitivities", height=420)


def pareto_front(df: pd.DataFrame, x: str, y: str = "top1") -> pd.DataFrame:
    """Rows not dominated (lower ``x`` is better, higher ``y`` is better), sorted by ``x``."""
    d = df.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    best, keep = -math.inf, []
    for idx, row in d.iterrows():
        if row[y] > best:
            keep.append(idx)
            best = row[y]
    return d.loc[keep]


def pareto_figure(configs: pd.DataFrame, x: str = "params", title: str | None = None):
    """Accuracy vs params (or FLOPs) of saved configurations, Pareto front highlighted.

    ``configs`` needs columns ``name``, ``top1``, ``lo``, ``hi`` and ``x``. Point ``customdata`` is the
    configuration name (read back from a plotly selection).
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    unit = "params" if x == "params" else "FLOPs"
    d = configs.dropna(subset=["top1"]) if "top1" in configs else configs.iloc[0:0]
    if len(d):
        fig.add_trace(
            go.Scatter(
                x=d[x], y=d["top1"], mode="markers+text", text=d["name"], textposition="top center", name="configurations",
                customdata=d["name"], marker=dict(size=12, color=COLORS["planned"]),
                error_y=dict(type="data", symmetric=False, array=d["hi"] - d["top1"], arrayminus=d["top1"] - d["lo"]),
                hovertemplate="%{customdata}<br>%{x:.4s} " + unit + "<br>top-1 %{y:.1%}<extra></extra>",
            )
        )
        front = pareto_front(d, x)
        fig.add_trace(go.Scatter(x=front[x], y=front["top1"], mode="lines", name="Pareto front", line=dict(color=COLORS["measured"], dash="dash"), hoverinfo="skip"))
    fig.update_xaxes(title_text=unit, type="log")
    fig.update_yaxes(title_text="top-1 accuracy", tickformat=".0%")
    return _layout(fig, title or f"Accuracy vs {unit}", height=380)


def sweep_figure(sweep: pd.DataFrame, base_top1: float | None = None, metric: str | None = None):
    """Accuracy vs compression ratio per allocation strategy (:func:`lrviz.budget.sweep`'s rows).

    Measured top-1 (solid, 95 % CI) and projected top-1 (dotted, hollow markers) where available;
    x is ``{metric}_ratio`` (``metric`` defaults to the frame's ``metric`` column, else params).
    """
    import plotly.graph_objects as go

    if metric is None:
        metric = str(sweep["metric"].iloc[0]) if "metric" in sweep and len(sweep) else "params"
    x = f"{metric}_ratio"
    unit = "params" if metric == "params" else "MACs"
    col = "strategy" if "strategy" in sweep else "family"
    fig = go.Figure()
    for strat, d in sweep.dropna(subset=[x]).groupby(col, sort=False) if len(sweep) else ():
        d = d.sort_values(x)
        label = str(d["label"].iloc[0]) if "label" in d else STRATEGY_LABELS.get(strat, strat)
        color = STRATEGY_COLORS.get(strat)
        m = d.dropna(subset=["top1"]) if "top1" in d else d.iloc[0:0]
        if len(m):
            fig.add_trace(
                go.Scatter(
                    x=m[x], y=m["top1"], mode="lines+markers", name=label, legendgroup=str(strat), line=dict(color=color),
                    error_y=dict(type="data", symmetric=False, array=m["hi"] - m["top1"], arrayminus=m["top1"] - m["lo"]),
                    hovertemplate=label + "<br>%{x:.2f}× " + unit + "<br>measured %{y:.1%}<extra></extra>",
                )
            )
        p = d.dropna(subset=["projected"]) if "projected" in d else d.iloc[0:0]
        if len(p):
            fig.add_trace(
                go.Scatter(
                    x=p[x], y=p["projected"], mode="lines+markers", name=f"{label} (projected)", legendgroup=str(strat),
                    line=dict(color=color, dash="dot", width=1.5), marker=dict(symbol="circle-open", size=9, color=color),
                    hovertemplate=label + "<br>%{x:.2f}× " + unit + "<br>projected %{y:.1%}<extra></extra>",
                )
            )
    if base_top1 is not None:
        _hlines(fig, [(base_top1, "original", "gray", "dash", "bottom")])
    fig.update_xaxes(title_text=f"{unit} reduction (×)", type="log")
    fig.update_yaxes(title_text="top-1 accuracy", tickformat=".0%")
    return _layout(fig, f"Accuracy vs compression ratio (matched {unit})", height=400)


def finetune_figure(steps: pd.DataFrame, epochs: pd.DataFrame):
    """Training loss per step and validation accuracy per epoch (secondary axis)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if len(steps):
        fig.add_trace(go.Scatter(x=steps["x"], y=steps["loss"], mode="lines", name="train loss (step)", line=dict(color=COLORS["planned"])), secondary_y=False)
    if len(epochs):
        fig.add_trace(go.Scatter(x=epochs["epoch"], y=epochs["train_loss"], mode="markers", name="train loss (epoch)", marker=dict(color=COLORS["planned"], size=9)), secondary_y=False)
        val = epochs.dropna(subset=["val_top1"])
        if len(val):
            fig.add_trace(go.Scatter(x=val["epoch"], y=val["val_top1"], mode="lines+markers", name="val top-1", line=dict(color=COLORS["measured"])), secondary_y=True)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="val top-1", tickformat=".0%", secondary_y=True, showgrid=False, tickmode="auto", range=[0, 1.02])
    return _layout(fig, "Fine-tuning", height=360)


def before_after_figure(rows: Sequence[Mapping]):
    """Grouped bars of relative before/after values (``metric``, ``before``, ``after``); after shown as % of before."""
    import plotly.graph_objects as go

    metrics = [r["metric"] for r in rows]
    rel = [100.0 * r["after"] / r["before"] if r["before"] else math.nan for r in rows]
    fig = go.Figure()
    fig.add_bar(x=metrics, y=[100.0] * len(rows), name="original", marker_color=COLORS["original"])
    fig.add_bar(x=metrics, y=rel, name="compressed", marker_color=COLORS["planned"], text=[f"{v:.0f} %" for v in rel], textposition="outside")
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="% of original")
    return _layout(fig, "Compressed model relative to the original", height=360)
