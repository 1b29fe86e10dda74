"""Find, build and load the networks that lrviz analyses.

A model is named by a *spec* string, resolved in this order:

1. a path ending in ``.pt2``: a saved :func:`torch.export.export` program (analysable and runnable,
   but not decomposable), opened through :mod:`lrviz.pt2`, which refuses any archive that would make
   torch unpickle or evaluate something;
2. the name of a builtin model registered with :func:`register_model` (the bundled demo networks);
3. a torchvision classification architecture (``resnet18``, ``vgg11_bn``, ``mobilenet_v2`` ...);
4. ``package.module:factory``: a function in an importable module that returns an ``nn.Module``.

:func:`load_model` resolves the spec, builds the network with its weights, runs one batch through it
and returns a :class:`LoadedModel`. Weights are either random (deterministic, from ``seed``),
torchvision's pretrained weights, bundled weights of a builtin model, or a state_dict file; reading and
checking state_dicts and downloading pretrained weights is :mod:`lrviz.weights`' job. State_dict files
are always read with ``torch.load(..., weights_only=True)``; ``.pt2`` archives are checked entry by
entry before torch sees them. lrviz never unpickles arbitrary Python objects from a user's file.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from .builders import build_builtin, build_factory, build_torchvision
from .errors import LrvizError, is_int, short_cause
from .fmt import number_parts
from .weights import load_state_dict_checked

logger = logging.getLogger(__name__)

__all__ = [
    "BuiltinModel",
    "LoadedModel",
    "available_models",
    "builtin_models",
    "load_model",
    "load_state_dict_checked",  # re-exported from lrviz.weights, where it lives
    "parse_input_size",
    "register_model",
]

#: Spatial size assumed for models whose input size cannot be read from anywhere.
DEFAULT_SPATIAL = 224

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
    num_classes = _check_num_classes(num_classes, f"num_classes for model {name!r}")

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
    try:
        values = tuple(int(p) for p in number_parts(text))
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
    if len(values) != 3 or not all(is_int(v) for v in values) or any(v < 1 for v in values):
        raise LrvizError(
            f"invalid input size {size!r}: expected three positive integers (C, H, W), "
            "e.g. (3, 224, 224)"
        )
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _check_num_classes(num_classes: Any, what: str) -> int:
    if not is_int(num_classes) or num_classes < 1:
        raise LrvizError(f"{what} must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _torchvision_input_size(arch: str) -> tuple[int, int, int]:
    return (3, 299, 299) if arch == "inception_v3" else (3, DEFAULT_SPATIAL, DEFAULT_SPATIAL)


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
# Resolving a spec: builtin, torchvision, package.module:factory
# --------------------------------------------------------------------------------------------------


def _resolve_torchvision(spec: str) -> str | None:
    lowered = {n.lower(): n for n in _torchvision_names()}
    return lowered.get(spec.lower())


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


def _build(
    spec: str, weights: str | None, num_classes: int | None, seed: int, size: tuple[int, int, int] | None
) -> tuple[nn.Module, str, str, tuple[int, int, int]]:
    """Resolve a module spec (builtin, torchvision, factory: in that order) and build it with its
    weights; returns ``(module, name, source, input size)``, the size inferred when not given."""
    _ensure_builtin()
    if spec in _REGISTRY:
        entry = _REGISTRY[spec]
        module, source = build_builtin(entry, weights, num_classes, seed)
        return module, entry.name, source, size or entry.input_size
    if (arch := _resolve_torchvision(spec)) is not None:
        module, source = build_torchvision(arch, weights, num_classes, seed)
        return module, arch, source, size or _torchvision_input_size(arch)
    if _FACTORY_RE.match(spec):
        module, source = build_factory(spec, weights, num_classes, seed)
        return module, spec, source, size or _guess_input_size(module, spec)
    raise _unknown_model(spec)


# --------------------------------------------------------------------------------------------------
# Checking that it runs
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
                f"{short_cause(exc)}; pass --input-size C,H,W with the size it was built for"
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


def _check_classes(name: str, requested: int | None, got: int) -> None:
    if requested is not None and requested != got:
        raise LrvizError(
            f"model {name} outputs {got} classes, but num_classes={requested} was given; "
            f"drop --num-classes or pass --num-classes {got}"
        )


# --------------------------------------------------------------------------------------------------
# Exported programs (.pt2)
# --------------------------------------------------------------------------------------------------


def _program_sizes(program: torch.export.ExportedProgram, path: Path, size) -> tuple[int, tuple[int, int, int]]:
    """The batch size to check the program with, and its ``(C, H, W)`` (read from it when not given)."""
    from .pt2 import user_input_shape

    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise LrvizError(
            f"exported program {str(path)!r} takes {len(user_inputs)} inputs ({user_inputs}); "
            "lrviz needs a model with a single image-batch input"
        )
    shape = user_input_shape(program)
    batch = shape[0] if shape and isinstance(shape[0], int) else 2
    if size is None:
        dims = shape[1:]
        if len(dims) != 3 or not all(isinstance(d, int) for d in dims):
            raise LrvizError(
                f"cannot read a (C, H, W) input size from {str(path)!r} (input shape "
                f"{shape or 'unknown'}); pass --input-size C,H,W"
            )
        size = _validate_input_size(tuple(int(d) for d in dims))
    return batch, size


def _load_exported(spec: str, weights: str | None, size, num_classes: int | None) -> LoadedModel:
    """Step 1 of :func:`load_model`: open a ``.pt2`` through :func:`lrviz.pt2.load_program` (checked
    first, nothing unpickled), read its input size and run one batch through it."""
    from .pt2 import load_program

    if weights is not None:
        raise LrvizError(
            f"--weights cannot be used with the exported program {spec!r}: a .pt2 file "
            "already contains its weights; drop --weights"
        )
    path = Path(spec)
    program = load_program(path)
    batch, size = _program_sizes(program, path, size)
    runnable = program.module()
    out_classes = _forward_check(runnable, path.stem, size, batch=batch, toggle_eval=False)
    _check_classes(path.stem, num_classes, out_classes)
    result = LoadedModel(
        name=path.stem,
        module=None,
        program=program,
        input_size=size,
        num_classes=out_classes,
        source=f"exported program {spec}",
    )
    result.__dict__["runnable"] = runnable  # seed the cached_property with the checked module
    logger.info("loaded %s, input %s, %d classes", result.source, size, out_classes)
    return result


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def _check_arguments(spec: Any, weights: Any, input_size: Any, num_classes: Any):
    """The stripped spec, the input size (or None) and the class count (or None), or an error."""
    if not isinstance(spec, str) or not spec.strip():
        raise LrvizError(
            f"model spec must be a non-empty string, got {spec!r}; see `lrviz models` for names"
        )
    if weights is not None and (not isinstance(weights, str) or not weights.strip()):
        raise LrvizError(
            f"weights must be 'none', 'pretrained' or a file path, got {weights!r}"
        )
    if num_classes is not None:
        num_classes = _check_num_classes(num_classes, "num_classes")
    size = None if input_size is None else _validate_input_size(input_size)
    return spec.strip(), size, num_classes


def _load_export_dir(path: str, weights) -> LoadedModel:
    """An lrviz export directory (``plan.json`` + ``state_dict.pt``) rebuilt as a model (see
    :func:`lrviz.handoff.load_export_dir`)."""
    from .handoff import load_export_dir

    if weights is not None:
        raise LrvizError(f"{path} is an export directory: its weights are its state_dict.pt (drop --weights)")
    net, arch, plan = load_export_dir(path)
    size = tuple(int(v) for v in arch["input_size"])
    out_classes = _forward_check(net, str(path), size)
    return LoadedModel(name=Path(path).name or str(path), module=net, program=None, input_size=size, num_classes=out_classes,
                       source=f"export directory ({arch['spec']} + plan {plan.spec})")


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
    from .handoff import is_export_dir

    if isinstance(spec, str) and is_export_dir(spec):
        return _load_export_dir(spec, weights)
    spec, size, num_classes = _check_arguments(spec, weights, input_size, num_classes)
    if spec.lower().endswith(".pt2"):
        return _load_exported(spec, weights, size, num_classes)
    module, name, source, size = _build(spec, weights, num_classes, seed, size)
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
