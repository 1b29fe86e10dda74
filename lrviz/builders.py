"""Build a network of each kind a model spec can name, with its weights.

:func:`lrviz.models.load_model` resolves the spec and calls one of these:

* :func:`build_builtin` — a model registered with :func:`lrviz.models.register_model` (bundled weights
  by default);
* :func:`build_torchvision` — a torchvision classification architecture (random init, pretrained, or a
  state_dict file);
* :func:`build_factory` — ``package.module:factory``, a function that returns an ``nn.Module``.

Each returns ``(module, source)``, ``source`` saying in words where the architecture and weights came
from. Random initialisation is seeded and leaves the global RNG state as it was. Weights files and
downloads go through :mod:`lrviz.weights`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torchvision
from torch import nn

from .errors import LrvizError, short_cause
from .weights import hub_cache_path, is_pretrained, is_random, load_state_dict_checked, torchvision_pretrained

if TYPE_CHECKING:
    from .models import BuiltinModel

__all__ = ["build_builtin", "build_factory", "build_torchvision"]


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _random_or_file(module: nn.Module, weights: str | None, what: str, seed: int) -> tuple[nn.Module, str]:
    """Keep the random init (``weights`` None or ``"none"``) or load a state_dict file into ``module``."""
    if weights is None or is_random(weights):
        return module, f"{what}, random init (seed {seed})"
    load_state_dict_checked(module, weights)
    return module, f"{what}, state_dict from {weights}"


def build_torchvision(
    arch: str, weights: str | None, num_classes: int | None, seed: int
) -> tuple[nn.Module, str]:
    if is_pretrained(weights):
        enum = torchvision_pretrained(arch, num_classes)
        try:
            module = _seeded(lambda: torchvision.models.get_model(arch, weights=enum), seed)
        except Exception as exc:
            raise LrvizError(
                f"could not load the cached pretrained weights for {arch} from "
                f"{hub_cache_path(enum.url)} ({short_cause(exc)}); delete that file and retry"
            ) from exc
        return module, f"torchvision {arch}, pretrained {enum}"
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    module = _seeded(lambda: torchvision.models.get_model(arch, weights=None, **kwargs), seed)
    return _random_or_file(module, weights, f"torchvision {arch}", seed)


def _bundled_file(entry: "BuiltinModel", weights: str | None, num_classes: int) -> Path | None:
    """The bundled weights file to load (checked to be there and to fit), or None when ``weights`` asks
    for random init or a user's file."""
    bundled = entry.resolved_weights_path()
    if is_pretrained(weights) and bundled is None:
        raise LrvizError(
            f"builtin model {entry.name!r} has no bundled pretrained weights; "
            "use --weights none (random init) or --weights FILE"
        )
    if bundled is None or not (weights is None or is_pretrained(weights)):
        return None
    if not bundled.is_file():
        raise LrvizError(
            f"bundled weights for builtin model {entry.name!r} are missing ({bundled}); the "
            "lrviz installation is incomplete: reinstall lrviz, or pass --weights none / FILE"
        )
    if num_classes != entry.num_classes:
        raise LrvizError(
            f"bundled weights of {entry.name!r} are for {entry.num_classes} classes, but "
            f"num_classes={num_classes} was given; drop --num-classes or pass --weights none / FILE"
        )
    return bundled


def build_builtin(
    entry: "BuiltinModel", weights: str | None, num_classes: int | None, seed: int
) -> tuple[nn.Module, str]:
    n = entry.num_classes if num_classes is None else num_classes
    bundled = _bundled_file(entry, weights, n)
    module = _seeded(lambda: entry.factory(n), seed)
    if not isinstance(module, nn.Module):
        raise LrvizError(
            f"factory of builtin model {entry.name!r} returned {type(module).__name__}, "
            "not an nn.Module"
        )
    if bundled is not None:
        load_state_dict_checked(module, bundled)
        return module, f"builtin {entry.name}, bundled weights {bundled.name}"
    return _random_or_file(module, weights, f"builtin {entry.name}", seed)


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


def _import_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``package.module:factory`` (attributes may be dotted)."""
    module_name, attr_path = spec.split(":", 1)
    # like `python -m`, look in the current directory too (the console script does not by itself)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        py_module = importlib.import_module(module_name)
    except Exception as exc:
        raise LrvizError(
            f"cannot import module {module_name!r} for model {spec!r} ({short_cause(exc)}); "
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
    return obj


def build_factory(
    spec: str, weights: str | None, num_classes: int | None, seed: int
) -> tuple[nn.Module, str]:
    factory = _import_factory(spec)
    kwargs = {}
    if num_classes is not None and _accepts_num_classes(factory):
        kwargs["num_classes"] = num_classes
    try:
        module = _seeded(lambda: factory(**kwargs), seed)
    except Exception as exc:
        raise LrvizError(
            f"calling factory {spec!r} failed ({short_cause(exc)}); it must be callable with no "
            "arguments (or with num_classes=N) and return an nn.Module"
        ) from exc
    if not isinstance(module, nn.Module):
        raise LrvizError(
            f"factory {spec!r} returned {type(module).__name__}, not a torch.nn.Module"
        )
    if is_pretrained(weights):
        raise LrvizError(
            f"--weights pretrained is only available for torchvision and builtin models, not "
            f"factory {spec!r}; let the factory load its weights, or pass --weights FILE"
        )
    return _random_or_file(module, weights, f"factory {spec}", seed)
