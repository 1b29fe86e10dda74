"""Weights for the networks :mod:`lrviz.models` builds: state_dict files and pretrained downloads.

What ``--weights`` means: ``none`` (random init), ``pretrained`` (torchvision's default weights, or a
builtin model's bundled file), or the path of a state_dict file.

A state_dict file is untrusted. :func:`load_state_dict_checked` reads it in three steps, each of which
refuses with a message that names the file and the fix:

1. **check the file** — it exists, is not empty, and starts like a torch file (a zip archive or a
   pickle), so text and other files never reach torch;
2. **read it** with ``torch.load(weights_only=True)`` — a pickle that would import or call anything but
   tensors is refused, never run; a dict wrapping the state_dict (``state_dict``, ``model_state_dict``,
   ``model``) and ``nn.DataParallel``'s ``module.`` prefix are accepted;
3. **match it** to the module — the same keys (BatchNorm's ``num_batches_tracked`` may be missing), the
   same shapes, dense real tensors; other float precisions are cast to the model's dtype.

Pretrained torchvision weights are downloaded into torch hub's cache with a short network timeout, so
that offline use fails fast with a message that says how to bring the file by hand.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import urllib.parse
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from .errors import LrvizError, short_cause

logger = logging.getLogger(__name__)

__all__ = ["is_pretrained", "is_random", "load_state_dict_checked", "read_state_dict", "torchvision_pretrained"]

#: Seconds a pretrained-weights download may wait on the network before giving up.
DOWNLOAD_TIMEOUT_S = 15.0
#: How many names an error message lists before summarising the rest.
_MAX_LISTED = 8

_SAVE_HINT = "pass a file written by torch.save(model.state_dict(), FILE)"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTO = b"\x80"  # ... its legacy format (and any pickle of protocol >= 2) starts with PROTO
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_PARALLEL_PREFIX = "module."


def is_random(weights: str | None) -> bool:
    """Whether ``--weights`` asks for random initialisation (``"none"``)."""
    return weights is not None and weights.strip().lower() == "none"


def is_pretrained(weights: str | None) -> bool:
    """Whether ``--weights`` asks for pretrained (or bundled) weights (``"pretrained"``)."""
    return weights is not None and weights.strip().lower() == "pretrained"


def _capped(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f", ... and {len(names) - _MAX_LISTED} more"
    return shown


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def _dtype(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


# --------------------------------------------------------------------------------------------------
# Reading a state_dict file
# --------------------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    """Step 1: the file exists, is not empty and starts like something ``torch.save`` writes."""
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


def _refused_global(message: str) -> str:
    """The Python global a refused pickle wanted (``posix.system``), from torch's message."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    return f" (it wants {m.group(1)})" if m else ""


def _torch_load(path: Path) -> Any:
    """Step 2: ``torch.load(weights_only=True)``; torch's warnings are logged at debug level, not shown."""
    name = str(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights only" in str(exc).lower():
                raise LrvizError(
                    f"refused to unpickle {name!r}: it contains Python objects other than tensors"
                    f"{_refused_global(str(exc))} (for example a whole model or an optimizer, or code); only "
                    "plain state_dicts/tensors are accepted. Save the weights with "
                    "torch.save(model.state_dict(), FILE) and pass that file instead"
                ) from exc
            logger.debug("torch.load failed on %s: %s", name, short_cause(exc))
            raise LrvizError(f"{name!r} is not a PyTorch weights file (its pickle data cannot be read); {_SAVE_HINT}") from exc
        except Exception as exc:  # torch.load on an untrusted file: corrupt or truncated zip, bad pickle ...
            # torch's own message (an IndexError from the unpickler, a miniz error ...) says nothing to a
            # user: it goes to the log, the message says what the file is and how to make a good one
            logger.debug("torch.load failed on %s: %s", name, short_cause(exc))
            raise LrvizError(
                f"{name!r} is not a readable PyTorch weights file (it looks truncated or corrupt: torch.load cannot "
                f"read it); {_SAVE_HINT}"
            ) from exc
        finally:
            for w in caught:
                logger.debug("warning while reading %s: %s", name, str(w.message).splitlines()[0] if str(w.message) else w.category.__name__)


def _as_state_dict(obj: Any, name: str) -> dict[str, torch.Tensor]:
    """Step 2, continued: unwrap ``{"state_dict": ...}``, check every entry is a named tensor, drop
    ``nn.DataParallel``'s ``module.`` prefix."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
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
    if all(k.startswith(_PARALLEL_PREFIX) for k in state):
        state = {k[len(_PARALLEL_PREFIX) :]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state_dict file safely and return a flat ``name -> tensor`` dict (steps 1 and 2).

    Raises
    ------
    LrvizError
        If the file is missing, empty, not a torch file, holds non-tensor objects, or is not a dict of
        named tensors.
    """
    path = Path(path)
    _check_file(path)
    return _as_state_dict(_torch_load(path), str(path))


# --------------------------------------------------------------------------------------------------
# Matching it to a module
# --------------------------------------------------------------------------------------------------


def _mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """What does not match by name and shape (as message parts), and the tolerated missing keys.

    Old checkpoints may lack BatchNorm's step counter; nothing is lost by keeping the model's.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k}: file {_shape(state[k])} vs model {_shape(expected[k])}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    tolerated = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in tolerated]
    parts = []
    if missing:
        parts.append(f"missing from the file ({len(missing)}): {_capped(missing)}")
    if unexpected:
        parts.append(f"unexpected in the file ({len(unexpected)}): {_capped(unexpected)}")
    if misshaped:
        parts.append(f"mis-shaped ({len(misshaped)}): {_capped(misshaped)}")
    return parts, tolerated


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


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
        elif _is_integer(want) and _is_integer(got):
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
    state = read_state_dict(path)
    expected = module.state_dict()
    parts, tolerated = _mismatch(state, expected)
    if parts:
        raise LrvizError(
            f"weights in {str(path)!r} do not match the model ({type(module).__name__}): "
            + "; ".join(parts)
            + ". Check that the architecture (and --num-classes) is the one these weights were "
            "trained with"
        )
    state = _match_dtypes(state, expected, path)
    if tolerated:
        logger.info("%s lacks %d BatchNorm counters; keeping the model's", path, len(tolerated))
    module.load_state_dict(state, strict=not tolerated)


# --------------------------------------------------------------------------------------------------
# Pretrained torchvision weights
# --------------------------------------------------------------------------------------------------


def hub_cache_path(url: str) -> Path:
    """Where torch hub keeps the file downloaded from ``url`` (``$TORCH_HOME/hub/checkpoints/...``)."""
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


def _ensure_cached(arch: str, weights: Any) -> None:
    cached = hub_cache_path(weights.url)
    if cached.is_file():
        return
    logger.info("downloading pretrained weights for %s from %s", arch, weights.url)
    try:
        _download_file(weights.url, cached)
    except Exception as exc:
        raise LrvizError(
            f"pretrained weights for {arch} need internet (download failed: {short_cause(exc)}); "
            "on a machine online run: "
            f"python -c \"import torch, torchvision; torch.save(torchvision.models.get_model("
            f"'{arch}', weights='DEFAULT').state_dict(), '{arch}.pth')\" "
            f"then copy {arch}.pth here and pass --weights {arch}.pth (or place {cached.name} in "
            f"{cached.parent})"
        ) from exc


def torchvision_pretrained(arch: str, num_classes: int | None) -> Any:
    """torchvision's default weights for ``arch``, checked against ``num_classes`` and in the local cache.

    Returns
    -------
    torchvision.models.WeightsEnum
        The ``DEFAULT`` weights entry, whose file is now in torch hub's cache (downloaded if needed).

    Raises
    ------
    LrvizError
        If ``arch`` has no pretrained weights, they have another number of classes, or the download
        fails (offline): the message says how to bring the file by hand.
    """
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
    _ensure_cached(arch, enum)
    return enum
