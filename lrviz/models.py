"""Find, build and load the networks that lrviz analyses.

A model is named by a *spec* string, resolved in this order:

1. a path ending in ``.pt2``: a saved :func:`torch.export.export` program (analysable and runnable,
   but not decomposable), opened through :mod:`lrviz.pt2`, which refuses any archive that would make
   torch unpickle or evaluate something;
2. the name of a builtin model registered with :func:`register_model` (the bundled demo networks);
3. a torchvision classification architecture (``resnet18``, ``vgg11_bn``, ``mobilenet_v2`` ...);
4. ``package.module:factory``: a function in an importable module that returns an ``nn.Module``.

Weights are either random (deterministic, from ``seed``), torchvision's pretrained weights, bundled
weights of a builtin model, or a state_dict file. State_dict files are always read with
``torch.load(..., weights_only=True)``; ``.pt2`` archives are checked entry by entry before torch
sees them. lrviz never unpickles arbitrary Python objects from a user's file.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import logging
import os
import sys
import pickle
import re
import socket
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from lrviz.errors import LrvizError

logger = logging.getLogger(__name__)

__all__ = [
    "BuiltinModel",
    "LoadedModel",
    "available_models",
    "builtin_models",
    "load_model",
    "load_state_dict_checked",
    "parse_input_size",
    "register_model",
]

#: Spatial size assumed for models whose input size cannot be read from anywhere.
DEFAULT_SPATIAL = 224
#: Seconds a pretrained-weights download may wait on the network before giving up.
DOWNLOAD_TIMEOUT_S = 15.0
#: How many names an error message lists before summarising the rest.
_MAX_LISTED = 8

_PACKAGE_DIR = Path(__file__).resolve().parent
_ZOO_MODULE = "lrviz.zoo"
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")

# --------------------------------------------------------------------------------------------------
# Result type
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A network ready for analysis, with what lrviz knows about how to feed it.

    Exactly one of ``module`` and ``program`` is set. Instances compare and hash by identity.

    Attributes
    ----------
    name : str
        Short name of the model (architecture name, registry name, factory spec or file stem).
    module : torch.nn.Module or None
        The eager module (decomposable).
    program : torch.export.ExportedProgram or None
        An exported program loaded from a ``.pt2`` file (runnable, not decomposable).
    input_size : tuple of int
        Size of one input sample, ``(C, H, W)``, without the batch dimension.
    num_classes : int
        Size of the last output dimension (number of logits).
    source : str
        Human-readable description of where the architecture and weights came from.
    """

    name: str
    module: nn.Module | None
    program: torch.export.ExportedProgram | None
    input_size: tuple[int, int, int]
    num_classes: int
    source: str

    def __post_init__(self) -> None:
        if (self.module is None) == (self.program is None):
            raise TypeError("LoadedModel needs exactly one of `module` and `program` to be set")

    @functools.cached_property
    def runnable(self) -> nn.Module:
        """nn.Module: something to call on a batch: the module itself, or ``program.module()``.

        For an exported program the unlifted module is built once and cached.
        """
        if self.module is not None:
            return self.module
        assert self.program is not None
        return self.program.module()

    @property
    def decomposable(self) -> bool:
        """bool: whether layers can be replaced by low-rank factors (False for ``.pt2`` programs)."""
        return self.module is not None


# --------------------------------------------------------------------------------------------------
# Builtin registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltinModel:
    """A registry entry created by :func:`register_model`.

    Attributes
    ----------
    name : str
        Registry name.
    factory : callable
        ``factory(num_classes) -> nn.Module``.
    input_size : tuple of int
        ``(C, H, W)`` the network expects.
    num_classes : int
        Default number of classes (the one bundled weights were trained for).
    description : str
        One-line description shown by ``lrviz models``.
    weights_path : str or None
        Bundled weights file, absolute or relative to the ``lrviz`` package directory; None when the
        model has no bundled weights.
    """

    name: str
    factory: Callable[[int], nn.Module]
    input_size: tuple[int, int, int]
    num_classes: int
    description: str = ""
    weights_path: str | None = None

    def resolved_weights_path(self) -> Path | None:
        """Return the absolute path of the bundled weights file, or None when there is none.

        Returns
        -------
        pathlib.Path or None
        """
        if self.weights_path is None:
            return None
        path = Path(self.weights_path)
        return path if path.is_absolute() else _PACKAGE_DIR / path


_REGISTRY: dict[str, BuiltinModel] = {}
_BUILTINS_IMPORTED = False


def register_model(
    name: str,
    *,
    input_size: tuple[int, int, int],
    num_classes: int,
    description: str = "",
    weights_path: str | None = None,
) -> Callable[[Callable[[int], nn.Module]], Callable[[int], nn.Module]]:
    """Register a factory ``factory(num_classes) -> nn.Module`` as a builtin model.

    Parameters
    ----------
    name : str
        Registry name, used as the model spec (e.g. ``lrviz analyze NAME``).
    input_size : tuple of int
        ``(C, H, W)`` the network expects.
    num_classes : int
        Default number of output classes.
    description : str, optional
        One-line description.
    weights_path : str or None, optional
        Bundled weights file (absolute, or relative to the ``lrviz`` package directory). When set,
        loading ``name`` without explicit weights loads this file, and a missing file is an error.

    Returns
    -------
    callable
        A decorator that registers the factory and returns it unchanged.

    Raises
    ------
    LrvizError
        If ``name`` is already registered or the sizes are invalid.
    """
    if not isinstance(name, str) or not name.strip():
        raise LrvizError(f"model name must be a non-empty string, got {name!r}")
    size = _validate_input_size(input_size)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise LrvizError(
            f"num_classes for model {name!r} must be a positive integer, got {num_classes!r}"
        )

    def decorator(factory: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        if name in _REGISTRY:
            raise LrvizError(
                f"a builtin model named {name!r} is already registered "
                f"(by {_REGISTRY[name].factory!r}); choose another name"
            )
        _REGISTRY[name] = BuiltinModel(
            name=name,
            factory=factory,
            input_size=size,
            num_classes=num_classes,
            description=description,
            weights_path=weights_path,
        )
        return factory

    return decorator


def _ensure_builtin() -> None:
    """Import :mod:`lrviz.zoo` once so that it registers the bundled models (if it exists)."""
    global _BUILTINS_IMPORTED
    if _BUILTINS_IMPORTED:
        return
    try:
        importlib.import_module(_ZOO_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != _ZOO_MODULE:
            raise
        logger.debug("no %s module; no bundled models registered", _ZOO_MODULE)
    _BUILTINS_IMPORTED = True


def builtin_models() -> dict[str, BuiltinModel]:
    """Return the registered builtin models.

    Returns
    -------
    dict of str to BuiltinModel
        A copy of the registry, in registration order.
    """
    _ensure_builtin()
    return dict(_REGISTRY)


@functools.lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    return tuple(torchvision.models.list_models(module=torchvision.models))


def available_models() -> dict[str, list[str]]:
    """List the model names :func:`load_model` accepts without a path.

    Returns
    -------
    dict of str to list of str
        ``{"builtin": [...], "torchvision": [...]}``; torchvision lists its classification models.
    """
    _ensure_builtin()
    return {"builtin": list(_REGISTRY), "torchvision": list(_torchvision_names())}


# --------------------------------------------------------------------------------------------------
# Input size
# --------------------------------------------------------------------------------------------------


def parse_input_size(text: str) -> tuple[int, int, int]:
    """Parse ``"C,H,W"`` (commas, ``x`` or spaces) into a tuple of three positive ints.

    Parameters
    ----------
    text : str
        E.g. ``"3,32,32"`` or ``"3x224x224"``.

    Returns
    -------
    tuple of int
        ``(C, H, W)``.

    Raises
    ------
    LrvizError
        If the text is not three positive integers.
    """
    parts = [p for p in re.split(r"[,x×\s]+", str(text).strip().strip("()[]")) if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(v < 1 for v in values):
        raise LrvizError(
            f"invalid input size {text!r}: expected three positive integers C,H,W "
            "(channels, height, width), e.g. 3,224,224 or 3,32,32"
        )
    return values  # type: ignore[return-value]


def _validate_input_size(size: Any) -> tuple[int, int, int]:
    if isinstance(size, str):
        return parse_input_size(size)
    try:
        values = tuple(size)
    except TypeError:
        values = ()
    if (
        len(values) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        or any(v < 1 for v in values)
    ):
        raise LrvizError(
            f"invalid input size {size!r}: expected three positive integers (C, H, W), "
            "e.g. (3, 224, 224)"
        )
    return values  # type: ignore[return-value]


def _guess_input_size(module: nn.Module, name: str) -> tuple[int, int, int]:
    first_conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise LrvizError(
            f"cannot guess the input size of model {name!r}: it has no Conv2d layer; "
            "pass the input size explicitly (--input-size C,H,W)"
        )
    size = (int(first_conv.in_channels), DEFAULT_SPATIAL, DEFAULT_SPATIAL)
    logger.info(
        "input size of %s not known; assuming %s from its first Conv2d "
        "(pass --input-size to change it)",
        name,
        ",".join(map(str, size)),
    )
    return size


# --------------------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------------------


def _capped(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f", ... and {len(names) - _MAX_LISTED} more"
    return shown


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


_SAVE_HINT = "pass a file written by torch.save(model.state_dict(), FILE)"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTO = b"\x80"  # ... its legacy format (and any pickle of protocol >= 2) starts with PROTO


def _refused_global(message: str) -> str:
    """The Python global a refused pickle wanted (``posix.system``), from torch's message."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    return f" (it wants {m.group(1)})" if m else ""


def _read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state_dict file safely and return a flat ``name -> tensor`` dict.

    The file is checked first (exists, not empty, starts like a torch file), then read with
    ``torch.load(weights_only=True)`` — a pickle that would import or call anything but tensors is
    refused, never run. Warnings torch emits while reading are logged at debug level, not shown.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise LrvizError(
            f"weights file {name!r} does not exist (or is not a file); "
            "check the path given with --weights"
        )
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise LrvizError(f"cannot read weights file {name!r} ({exc.strerror or exc}); check its permissions") from exc
    if not head:
        raise LrvizError(f"weights file {name!r} is empty (0 bytes); {_SAVE_HINT}")
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO)):
        looks = ", it looks like text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else ""
        raise LrvizError(
            f"{name!r} is not a readable PyTorch weights file (it starts with {head!r}{looks}; torch.save writes "
            f"a zip archive); {_SAVE_HINT}"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights only" in str(exc).lower():
                raise LrvizError(
                    f"refused to unpickle {name!r}: it contains Python objects other than tensors"
                    f"{_refused_global(str(exc))} (for example a whole model or an optimizer, or code); only "
                    "plain state_dicts/tensors are accepted. Save the weights with "
                    "torch.save(model.state_dict(), FILE) and pass that file instead"
                ) from exc
            raise LrvizError(
                f"{name!r} is not a PyTorch weights file ({_short_cause(exc)}); {_SAVE_HINT}"
            ) from exc
        except Exception as exc:  # torch.load on an untrusted file: corrupt or truncated zip, bad pickle ...
            raise LrvizError(
                f"{name!r} is not a readable PyTorch weights file ({_short_cause(exc)}; truncated or corrupt?); "
                f"{_SAVE_HINT}"
            ) from exc
        finally:
            for w in caught:
                logger.debug("torch.load(%s): %s", name, str(w.message).splitlines()[0] if str(w.message) else w.category.__name__)

    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise LrvizError(
            f"{name!r} holds a {type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''}, not a "
            "state_dict (a non-empty dict of parameter names to tensors); save one with "
            "torch.save(model.state_dict(), FILE)"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise LrvizError(
            f"{name!r} is not a state_dict: these entries are not named tensors: {_capped(bad)}; "
            "save the weights with torch.save(model.state_dict(), FILE) (a dict wrapping it under "
            "'state_dict', 'model_state_dict' or 'model' is also accepted)"
        )
    state = dict(obj)
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _dtype(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def _match_dtypes(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """Cast floating-point entries to the model's dtype (float16 / bfloat16 / float64 files load into a
    float32 model, with a logged note); refuse entries that are not dense real tensors of the same kind
    (integer or quantized weights for float parameters, complex, sparse, meta)."""
    out = dict(state)
    cast: dict[str, int] = {}
    wrong = []
    for k, want in expected.items():
        got = state.get(k)
        if got is None:
            continue
        if got.layout != torch.strided or got.is_meta or got.is_quantized:
            kind = "meta" if got.is_meta else "quantized" if got.is_quantized else str(got.layout).removeprefix("torch.")
            wrong.append(f"{k}: {kind} tensor")
        elif got.dtype == want.dtype:
            continue
        elif want.is_floating_point() and got.is_floating_point():
            cast[_dtype(got.dtype)] = cast.get(_dtype(got.dtype), 0) + 1
            out[k] = got.to(want.dtype)
        elif not (want.is_floating_point() or want.is_complex() or want.dtype == torch.bool) and not (
            got.is_floating_point() or got.is_complex() or got.dtype == torch.bool
        ):
            out[k] = got.to(want.dtype)  # int32 vs int64 counters
        else:
            wrong.append(f"{k}: file {_dtype(got.dtype)} vs model {_dtype(want.dtype)}")
    if wrong:
        raise LrvizError(
            f"weights in {str(path)!r} have tensors of an unusable type ({len(wrong)}): {_capped(wrong)}; lrviz needs "
            "dense floating-point weights (quantized or integer checkpoints are not supported): save the float "
            "model's state_dict"
        )
    if cast:
        target = {_dtype(expected[k].dtype) for k in expected if k in state and state[k].is_floating_point()}
        logger.info(
            "%s: cast %s to the model's %s",
            path,
            ", ".join(f"{n} {d} tensor{'s' if n > 1 else ''}" for d, n in cast.items()),
            "/".join(sorted(target)),
        )
    return out


def load_state_dict_checked(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state_dict file into ``module``, refusing anything that does not match exactly.

    The file is read with ``torch.load(weights_only=True)``. A raw state_dict or a dict wrapping one
    under ``"state_dict"``, ``"model_state_dict"`` or ``"model"`` is accepted; a ``"module."``
    prefix on every key (from ``nn.DataParallel``) is stripped. Floating-point tensors of another
    precision (float16, bfloat16, float64) are cast to the model's dtype, with a note logged at info
    level; integer, quantized, complex, sparse or meta tensors for the model's entries are refused.
    The module is left untouched when anything does not match.

    Parameters
    ----------
    module : torch.nn.Module
        The module to load into (modified in place on success).
    path : str or os.PathLike
        The weights file.

    Raises
    ------
    LrvizError
        If the file is missing, not a torch file, holds non-tensor objects, or its keys/shapes/dtypes
        do not match the module's (the message lists missing, unexpected and mis-shaped names).
    """
    state = _read_state_dict(path)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: file {_shape(state[k])} vs model {_shape(expected[k])}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    # Old checkpoints may lack BatchNorm's step counter; nothing is lost by keeping the model's.
    tolerated = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in tolerated]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing from the file ({len(missing)}): {_capped(missing)}")
        if unexpected:
            parts.append(f"unexpected in the file ({len(unexpected)}): {_capped(unexpected)}")
        if misshaped:
            parts.append(f"mis-shaped ({len(misshaped)}): {_capped(misshaped)}")
        raise LrvizError(
            f"weights in {str(path)!r} do not match the model ({type(module).__name__}): "
            + "; ".join(parts)
            + ". Check that the architecture (and --num-classes) is the one these weights were "
            "trained with"
        )
    state = _match_dtypes(state, expected, path)
    if tolerated:
        logger.info("%s lacks %d BatchNorm counters; keeping the model's", path, len(tolerated))
        module.load_state_dict(state, strict=False)
    else:
        module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------------
# Pretrained torchvision weights
# --------------------------------------------------------------------------------------------------


def _hub_cache_path(url: str) -> Path:
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _download_file(url: str, dst: Path) -> None:
    """Download ``url`` to ``dst`` (checking the hash prefix in its name), failing fast offline.

    Tests replace this function to simulate being offline.
    """
    match = re.search(r"-([a-f0-9]+)\.", dst.name)
    hash_prefix = match.group(1) if match else None
    dst.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=hash_prefix, progress=False)
    finally:
        socket.setdefaulttimeout(previous)


def _short_cause(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:200]


def _ensure_pretrained_cached(arch: str, weights: Any) -> None:
    cached = _hub_cache_path(weights.url)
    if cached.is_file():
        return
    logger.info("downloading pretrained weights for %s from %s", arch, weights.url)
    try:
        _download_file(weights.url, cached)
    except Exception as exc:
        raise LrvizError(
            f"pretrained weights for {arch} need internet (download failed: {_short_cause(exc)}); "
            "on a machine online run: "
            f"python -c \"import torch, torchvision; torch.save(torchvision.models.get_model("
            f"'{arch}', weights='DEFAULT').state_dict(), '{arch}.pth')\" "
            f"then copy {arch}.pth here and pass --weights {arch}.pth (or place {cached.name} in "
            f"{cached.parent})"
        ) from exc


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _resolve_torchvision(spec: str) -> str | None:
    lowered = {n.lower(): n for n in _torchvision_names()}
    return lowered.get(spec.lower())


def _is_random(weights: str | None) -> bool:
    return weights is not None and weights.strip().lower() == "none"


def _is_pretrained(weights: str | None) -> bool:
    return weights is not None and weights.strip().lower() == "pretrained"


def _build_torchvision(
    arch: str, weights: str | None, num_classes: int | None, seed: int
) -> tuple[nn.Module, str]:
    if weights is None or _is_random(weights):
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        module = _seeded(lambda: torchvision.models.get_model(arch, weights=None, **kwargs), seed)
        return module, f"torchvision {arch}, random init (seed {seed})"
    if _is_pretrained(weights):
        try:
            enum = torchvision.models.get_model_weights(arch).DEFAULT
        except Exception as exc:
            raise LrvizError(
                f"torchvision has no pretrained weights for {arch!r} ({exc}); "
                "use --weights none or --weights FILE"
            ) from exc
        n_weights = len(enum.meta.get("categories") or [])
        if num_classes is not None and n_weights and num_classes != n_weights:
            raise LrvizError(
                f"pretrained weights for {arch} have {n_weights} classes, but num_classes="
                f"{num_classes} was given; drop --num-classes, or use --weights none / FILE "
                f"for a {num_classes}-class model"
            )
        _ensure_pretrained_cached(arch, enum)
        try:
            module = _seeded(lambda: torchvision.models.get_model(arch, weights=enum), seed)
        except Exception as exc:
            raise LrvizError(
                f"could not load the cached pretrained weights for {arch} from "
                f"{_hub_cache_path(enum.url)} ({_short_cause(exc)}); delete that file and retry"
            ) from exc
        return module, f"torchvision {arch}, pretrained {enum}"
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    module = _seeded(lambda: torchvision.models.get_model(arch, weights=None, **kwargs), seed)
    load_state_dict_checked(module, weights)
    return module, f"torchvision {arch}, state_dict from {weights}"


def _build_builtin(
    entry: BuiltinModel, weights: str | None, num_classes: int | None, seed: int
) -> tuple[nn.Module, str]:
    n = entry.num_classes if num_classes is None else num_classes
    bundled = entry.resolved_weights_path()
    use_bundled = bundled is not None and (weights is None or _is_pretrained(weights))
    if _is_pretrained(weights) and bundled is None:
        raise LrvizError(
            f"builtin model {entry.name!r} has no bundled pretrained weights; "
            "use --weights none (random init) or --weights FILE"
        )
    if use_bundled:
        assert bundled is not None
        if not bundled.is_file():
            raise LrvizError(
                f"bundled weights for builtin model {entry.name!r} are missing ({bundled}); the "
                "lrviz installation is incomplete: reinstall lrviz, or pass --weights none / FILE"
            )
        if n != entry.num_classes:
            raise LrvizError(
                f"bundled weights of {entry.name!r} are for {entry.num_classes} classes, but "
                f"num_classes={n} was given; drop --num-classes or pass --weights none / FILE"
            )
    module = _seeded(lambda: entry.factory(n), seed)
    if not isinstance(module, nn.Module):
        raise LrvizError(
            f"factory of builtin model {entry.name!r} returned {type(module).__name__}, "
            "not an nn.Module"
        )
    if use_bundled:
        assert bundled is not None
        load_state_dict_checked(module, bundled)
        return module, f"builtin {entry.name}, bundled weights {bundled.name}"
    if weights is None or _is_random(weights):
        return module, f"builtin {entry.name}, random init (seed {seed})"
    load_state_dict_checked(module, weights)
    return module, f"builtin {entry.name}, state_dict from {weights}"


def _accepts_num_classes(func: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.name == "num_classes" and p.kind is not inspect.Parameter.POSITIONAL_ONLY
        or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in params
    )


def _build_factory(
    spec: str, weights: str | None, num_classes: int | None, seed: int
) -> tuple[nn.Module, str]:
    module_name, attr_path = spec.split(":", 1)
    # like `python -m`, look in the current directory too (the console script does not by itself)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        py_module = importlib.import_module(module_name)
    except Exception as exc:
        raise LrvizError(
            f"cannot import module {module_name!r} for model {spec!r} ({_short_cause(exc)}); "
            "make sure the package is installed or on PYTHONPATH (run from its directory)"
        ) from exc
    obj: Any = py_module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise LrvizError(
                f"module {module_name!r} has no attribute {attr_path!r} (model {spec!r}); "
                "check the factory name after the ':'"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise LrvizError(f"{spec!r} is a {type(obj).__name__}, not a callable factory")
    kwargs = {}
    if num_classes is not None and _accepts_num_classes(obj):
        kwargs["num_classes"] = num_classes
    try:
        module = _seeded(lambda: obj(**kwargs), seed)
    except Exception as exc:
        raise LrvizError(
            f"calling factory {spec!r} failed ({_short_cause(exc)}); it must be callable with no "
            "arguments (or with num_classes=N) and return an nn.Module"
        ) from exc
    if not isinstance(module, nn.Module):
        raise LrvizError(
            f"factory {spec!r} returned {type(module).__name__}, not a torch.nn.Module"
        )
    if weights is None or _is_random(weights):
        return module, f"factory {spec}, random init (seed {seed})"
    if _is_pretrained(weights):
        raise LrvizError(
            f"--weights pretrained is only available for torchvision and builtin models, not "
            f"factory {spec!r}; let the factory load its weights, or pass --weights FILE"
        )
    load_state_dict_checked(module, weights)
    return module, f"factory {spec}, state_dict from {weights}"


def _load_program(path: Path) -> torch.export.ExportedProgram:
    """Load a ``.pt2`` through :func:`lrviz.pt2.load_program`: checked first, nothing unpickled."""
    from .pt2 import load_program

    return load_program(path)


def _program_input_shape(program: torch.export.ExportedProgram, path: Path) -> list[Any]:
    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise LrvizError(
            f"exported program {str(path)!r} takes {len(user_inputs)} inputs ({user_inputs}); "
            "lrviz needs a model with a single image-batch input"
        )
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            val = node.meta.get("val")
            if val is not None and hasattr(val, "shape"):
                return list(val.shape)
    return []


# --------------------------------------------------------------------------------------------------
# Forward check
# --------------------------------------------------------------------------------------------------


def _forward_check(
    runnable: nn.Module,
    name: str,
    input_size: tuple[int, int, int],
    *,
    batch: int = 2,
    toggle_eval: bool = True,
) -> int:
    """Run one zeros batch through the model (eval, no_grad) and return the output's last dim."""
    flags = {m: m.training for m in runnable.modules()} if toggle_eval else {}
    try:
        if toggle_eval:
            runnable.eval()
        try:
            with torch.no_grad():
                out = runnable(torch.zeros((batch, *input_size)))
        except Exception as exc:
            raise LrvizError(
                f"model {name} does not accept input of size {','.join(map(str, input_size))}: "
                f"{_short_cause(exc)}; pass --input-size C,H,W with the size it was built for"
            ) from exc
    finally:
        for m, flag in flags.items():
            m.training = flag
    if not isinstance(out, torch.Tensor) or out.ndim < 2:
        got = type(out).__name__ if not isinstance(out, torch.Tensor) else f"shape {tuple(out.shape)}"
        raise LrvizError(
            f"model {name} must return a tensor of logits of shape (batch, classes), got {got}; "
            "wrap it in a module that returns the logits"
        )
    return int(out.shape[-1])


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def _unknown_model(spec: str) -> LrvizError:
    builtin = list(_REGISTRY)
    candidates = {n.lower(): n for n in [*builtin, *_torchvision_names()]}
    close = difflib.get_close_matches(spec.lower(), list(candidates), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(candidates[c] for c in close)}? " if close else ""
    extra = ""
    if Path(spec).is_file():
        extra = (
            f" ({spec!r} is a file: pass weights with --weights FILE next to an architecture name, "
            "or give an exported program ending in .pt2)"
        )
    return LrvizError(
        f"unknown model {spec!r}{extra}; {hint}available: builtin {builtin}, torchvision "
        "classification models (e.g. resnet18, vgg11_bn, mobilenet_v2, ... see `lrviz models`), "
        "a package.module:factory path, or a .pt2 file"
    )


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    input_size: tuple[int, int, int] | str | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Build or load a model from a spec string and check that it runs.

    Parameters
    ----------
    spec : str
        A ``.pt2`` path, a builtin model name, a torchvision classification architecture
        (case-insensitive), or ``package.module:factory``; resolved in that order.
    weights : str or None, optional
        None: the default (bundled weights for builtin models that have them, otherwise random
        init); ``"none"``: random init; ``"pretrained"``: torchvision's default weights (or a
        builtin's bundled weights); anything else: a state_dict file. Not allowed with ``.pt2``.
    input_size : tuple of int or str or None, optional
        ``(C, H, W)`` of one sample (``"3,32,32"`` is accepted). Inferred when None.
    num_classes : int or None, optional
        Number of output classes to build the model with; inferred from the output when None.
    seed : int, optional
        Seed for random initialisation (the global RNG state is restored afterwards).

    Returns
    -------
    LoadedModel

    Raises
    ------
    LrvizError
        On unknown specs, unreadable or mismatched weights, unavailable pretrained weights, or a
        model that does not accept ``input_size``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise LrvizError(
            f"model spec must be a non-empty string, got {spec!r}; see `lrviz models` for names"
        )
    spec = spec.strip()
    if weights is not None and (not isinstance(weights, str) or not weights.strip()):
        raise LrvizError(
            f"weights must be 'none', 'pretrained' or a file path, got {weights!r}"
        )
    if num_classes is not None and (
        not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1
    ):
        raise LrvizError(f"num_classes must be a positive integer, got {num_classes!r}")
    size = None if input_size is None else _validate_input_size(input_size)

    # 1. exported program
    if spec.lower().endswith(".pt2"):
        if weights is not None:
            raise LrvizError(
                f"--weights cannot be used with the exported program {spec!r}: a .pt2 file "
                "already contains its weights; drop --weights"
            )
        path = Path(spec)
        program = _load_program(path)
        shape = _program_input_shape(program, path)
        batch = shape[0] if shape and isinstance(shape[0], int) else 2
        if size is None:
            dims = shape[1:]
            if len(dims) != 3 or not all(isinstance(d, int) for d in dims):
                raise LrvizError(
                    f"cannot read a (C, H, W) input size from {str(path)!r} (input shape "
                    f"{shape or 'unknown'}); pass --input-size C,H,W"
                )
            size = _validate_input_size(tuple(int(d) for d in dims))
        loaded_name = path.stem
        runnable = program.module()
        out_classes = _forward_check(runnable, loaded_name, size, batch=batch, toggle_eval=False)
        _check_classes(loaded_name, num_classes, out_classes)
        result = LoadedModel(
            name=loaded_name,
            module=None,
            program=program,
            input_size=size,
            num_classes=out_classes,
            source=f"exported program {spec}",
        )
        result.__dict__["runnable"] = runnable  # seed the cached_property with the checked module
        logger.info("loaded %s, input %s, %d classes", result.source, size, out_classes)
        return result

    _ensure_builtin()
    # 2. builtin
    if spec in _REGISTRY:
        entry = _REGISTRY[spec]
        module, source = _build_builtin(entry, weights, num_classes, seed)
        name = entry.name
        if size is None:
            size = entry.input_size
    # 3. torchvision
    elif (arch := _resolve_torchvision(spec)) is not None:
        module, source = _build_torchvision(arch, weights, num_classes, seed)
        name = arch
        if size is None:
            size = (3, 299, 299) if arch == "inception_v3" else (3, DEFAULT_SPATIAL, DEFAULT_SPATIAL)
    # 4. package.module:factory
    elif _FACTORY_RE.match(spec):
        module, source = _build_factory(spec, weights, num_classes, seed)
        name = spec
        if size is None:
            size = _guess_input_size(module, spec)
    # 5. unknown
    else:
        raise _unknown_model(spec)

    out_classes = _forward_check(module, name, size)
    _check_classes(name, num_classes, out_classes)
    logger.info("loaded %s (%s), input %s, %d classes", name, source, size, out_classes)
    return LoadedModel(
        name=name,
        module=module,
        program=None,
        input_size=size,
        num_classes=out_classes,
        source=source,
    )


def _check_classes(name: str, requested: int | None, got: int) -> None:
    if requested is not None and requested != got:
        raise LrvizError(
            f"model {name} outputs {got} classes, but num_classes={requested} was given; "
            f"drop --num-classes or pass --num-classes {got}"
        )
