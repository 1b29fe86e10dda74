"""Where the dashboard's model and data come from: sources with explicit cache keys, and their loaders.

A :class:`ModelSource` (bundled model, torchvision architecture, uploaded state_dict or ``.pt2``, a local
lrviz export directory) and a :class:`DataSource` (a :mod:`lrviz.data` name adapted to the model's input) each carry a ``key`` that
identifies them exactly, so the app can cache on strings, never on weights. Uploads go through the
private store of :mod:`lrviz.uploads`; :func:`load_source` loads them without unpickling anything
(``torch.load(weights_only=True)``, the checked ``.pt2`` loader) and raises only :class:`LrvizError`.

An export directory (``lrviz export MODEL --plan SPEC --format state_dict --out DIR``, or a fine-tuned
model the experiment store recorded, :func:`recorded_models`) is checked by :func:`export_dir_source`
before anything is loaded, keyed by the content of its two files, and rebuilt by
:func:`lrviz.handoff.load_export_dir` (the recorded architecture, the plan's structure, then
``state_dict.pt`` with ``weights_only=True``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import time
import zipfile
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
    "RecordedModel",
    "STATE_DICT_SUFFIXES",
    "analyze_loaded",
    "builtin_source",
    "dataset_source",
    "eval_problem",
    "export_dir_source",
    "inference_copy",
    "load_dataset",
    "load_source",
    "program_source",
    "recorded_models",
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
    filename : str or None
        The name of the user's uploaded file (error messages name it, not the stored copy).
    note : str or None
        A line the UI shows with the model (where an export directory's model came from).
    """

    key: str
    spec: str
    weights: str | None
    label: str
    filename: str | None = None
    note: str | None = None


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


# ---- export directories ---------------------------------------------------------------------------

_PLAN_FILE = "plan.json"
_WEIGHTS_FILE = "state_dict.pt"
_EXPORT_HOW = "lrviz export MODEL --plan SPEC --format state_dict --out DIR"


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """SHA-256 of a file's bytes; the file's size, modification time and inode are part of the cache key,
    so a file is hashed again only when it changed (the sidebar asks on every rerun)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_export_plan(p: Path) -> dict:
    """``plan.json`` of export directory ``p``, checked to describe a ``state_dict`` export (see
    :func:`export_dir_source`)."""
    if not p.exists():
        raise LrvizError(f"{p} does not exist; give the folder an export wrote ({_EXPORT_HOW})")
    if not p.is_dir():
        raise LrvizError(f"{p} is not a folder: an export directory holds plan.json and state_dict.pt ({_EXPORT_HOW}); "
                         "a .pt2 file opens as an exported program")
    plan_file = p / _PLAN_FILE
    if not plan_file.is_file():
        raise LrvizError(f"{p} has no plan.json: it is not an lrviz export directory ({_EXPORT_HOW})")
    try:
        doc = json.loads(plan_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise LrvizError(f"{plan_file} cannot be read as JSON: {_short_cause(exc)}") from exc
    arch = doc.get("architecture") if isinstance(doc, dict) else None
    if not isinstance(arch, dict) or not isinstance(arch.get("spec"), str):
        raise LrvizError(f"{plan_file} is a plain plan (no 'architecture' record), not an export directory: load its model "
                         f"and apply the plan on the Ranks page, or write an export directory ({_EXPORT_HOW})")
    if not (p / _WEIGHTS_FILE).is_file():
        fmt = doc.get("format") or "another"
        hint = " (its model.pt2 opens as an exported program)" if (p / "model.pt2").is_file() else ""
        raise LrvizError(f"{p} is a {fmt} export without state_dict.pt{hint}: only a --format state_dict export can be "
                         "opened as a model to analyse and compress further")
    if not zipfile.is_zipfile(p / _WEIGHTS_FILE):  # torch.save writes a zip archive; its contents are checked on load
        raise LrvizError(f"{p / _WEIGHTS_FILE} is not an archive torch.save writes (a zip file): it is damaged or was not "
                         "written by lrviz export; export the folder again")
    return doc


def export_dir_source(path: str | Path) -> ModelSource:
    """An lrviz ``state_dict`` export directory (``plan.json`` with an ``architecture`` record +
    ``state_dict.pt``) as a model source, checked before anything is loaded.

    The key is the folder's resolved path plus SHA-256 of both files' bytes, so rewriting the folder
    (another export, a new fine-tuning) loads the new model, and an unchanged folder hits the cache.
    Nothing is unpickled here or later: :func:`load_source` goes through
    :func:`lrviz.handoff.load_export_dir` (``torch.load(weights_only=True)``, ``strict=True``).

    Raises
    ------
    LrvizError
        When ``path`` is not a folder, has no ``plan.json``, holds a plain plan or an export of another
        format, or its files cannot be read (the message says which and how to write one).
    """
    p = Path(str(path).strip()).expanduser()
    try:
        p = p.resolve()
        doc = _read_export_plan(p)
        plan_bytes = (p / _PLAN_FILE).read_bytes()
        info = (p / _WEIGHTS_FILE).stat()
        weights_sha = _file_sha256(str(p / _WEIGHTS_FILE), info.st_size, info.st_mtime_ns, info.st_ino)
    except OSError as exc:
        raise LrvizError(f"{p} cannot be read: {exc.strerror or _short_cause(exc)}") from exc
    arch = doc["architecture"]
    content = hashlib.sha256(plan_bytes + b"\0" + weights_sha.encode()).hexdigest()
    where = hashlib.sha256(str(p).encode()).hexdigest()[:12]
    plan_spec = doc.get("spec") or "custom"
    return ModelSource(
        key=f"export_dir:{where}:{content[:32]}", spec=str(p), weights=None,
        label=f"{p.name or p} ({arch['spec']} + plan {plan_spec})",
        note=f"Compressed model rebuilt from {p}: {arch['spec']} with plan {plan_spec} (plan.json), weights from state_dict.pt",
    )


@dataclass(frozen=True)
class RecordedModel:
    """A fine-tuned or exported model the experiment store recorded, whose export directory is still there."""

    run_id: int
    kind: str
    path: str
    label: str


def _recorded_label(run) -> str:
    plan = None
    if run.plan_json:
        try:
            plan = json.loads(run.plan_json).get("spec")
        except (ValueError, AttributeError):
            plan = None
    what = " / ".join(dict.fromkeys(str(v) for v in (plan, run.name) if v))
    date = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created))
    return " · ".join(v for v in (run.model_name or run.model, run.kind, what, date) if v)


def recorded_models(store=None, limit: int = 500) -> list[RecordedModel]:
    """The export directories of fine-tuning runs and exports in the experiment store, newest first.

    Only records whose ``artifact`` is still an export directory with a ``state_dict.pt`` are listed
    (one entry per folder: its newest record). Without an explicit ``store``, a store that does not
    exist yet lists nothing (and is not created).

    Raises
    ------
    LrvizError
        When the store cannot be opened or read (see :class:`lrviz.store.Store`).
    """
    from .handoff import is_export_dir
    from .store import Store, store_path

    if store is None:
        if not store_path().exists():
            return []
        store = Store()
    out: list[RecordedModel] = []
    seen: set[str] = set()
    for run in reversed(store.runs(kind=("finetune", "export"), limit=limit)):
        if not run.artifact:
            continue
        p = Path(run.artifact).expanduser()
        try:
            usable = is_export_dir(p) and (p / _WEIGHTS_FILE).is_file()
            where = str(p.resolve())
        except OSError:
            continue
        if usable and where not in seen:
            seen.add(where)
            out.append(RecordedModel(run_id=int(run.id), kind=run.kind, path=where, label=_recorded_label(run)))
    return out


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
    elif kind in ("imagefolder", "imagenet"):
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

