"""Where the dashboard's model and data come from: sources with explicit cache keys, and their loaders.

A :class:`ModelSource` (bundled model, torchvision architecture, uploaded state_dict or ``.pt2``) and a
:class:`DataSource` (a :mod:`lrviz.data` name adapted to the model's input) each carry a ``key`` that
identifies them exactly, so the app can cache on strings, never on weights. Uploads go through the
private store of :mod:`lrviz.uploads`; :func:`load_source` loads them without unpickling anything
(``torch.load(weights_only=True)``, the checked ``.pt2`` loader) and raises only :class:`LrvizError`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .analysis import ModelAnalysis
from .errors import LrvizError
from .uploads import store_upload

__all__ = [
    "DataSource",
    "ModelSource",
    "PROGRAM_SUFFIXES",
    "STATE_DICT_SUFFIXES",
    "analyze_loaded",
    "builtin_source",
    "dataset_source",
    "eval_problem",
    "inference_copy",
    "load_dataset",
    "load_source",
    "program_source",
    "state_dict_source",
    "torchvision_source",
    "training_source",
    "upload_path",
]

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
PROGRAM_SUFFIXES = (".pt2",)


# ---- models --------------------------------------------------------------------------------------


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


# ---- data ----------------------------------------------------------------------------------------


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
    if kind in ("fashion-mnist", "fashion-mnist-sample", "fashion-mnist-train-sample"):
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


def training_source(src: DataSource, input_size: Sequence[int]) -> DataSource:
    """The data to fine-tune on (its ``train`` split) when ``src`` is the evaluation data, prepared
    like ``src`` for a model taking ``input_size``: the same dataset, except the bundled test sample,
    whose counterpart is the bundled train sample (:func:`lrviz.data.train_data_name`)."""
    from .data import train_data_name

    name = train_data_name(src.name)
    return src if name == src.name else dataset_source(name, input_size)


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


# ---- a loaded model shared by sessions ----------------------------------------------------------


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

