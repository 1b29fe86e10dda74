"""The ``lrviz`` command line's argument types: every bad value is one line, before any work.

Each ``--option`` that takes a number, a size, a plan spec or a target is parsed by a type here, so a
bad value never gets as far as loading a model: argparse reports the type's message, and
:class:`Parser` turns it into the single line ``lrviz: error: ...`` (exit code 2) that every other bad
input gives. :func:`add_model_args` and :func:`add_data_args` add the options most commands share.
"""

from __future__ import annotations

import argparse
import math

from .errors import LrvizError
from .fmt import number_parts

__all__ = [
    "Parser",
    "UsageError",
    "add_calibration_args",
    "add_data_args",
    "add_speed_args",
    "add_model_args",
    "batches_type",
    "count_or_zero",
    "add_device_args",
    "device_type",
    "float_type",
    "input_size_type",
    "int_type",
    "mean_type",
    "nonneg_float",
    "plan_type",
    "positive_float",
    "positive_int",
    "resize_type",
    "std_type",
    "strategies_type",
    "target_type",
    "targets_type",
]


class UsageError(Exception):
    """A bad command line (raised by :meth:`Parser.error`, reported by :func:`lrviz.cli.main`)."""


class Parser(argparse.ArgumentParser):
    """argparse without the usage block: a bad command line is one ``lrviz: error: ...`` line and exit
    code 2, like every other bad input (``--help`` still prints the full help)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def int_type(lo: int, example: int):
    def parse(text: str) -> int:
        try:
            v = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {lo}, got {text!r} (e.g. {example})") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be an integer ≥ {lo}, got {v} (e.g. {example})")
        return v

    parse.__name__ = f"int>={lo}"
    return parse


def float_type(lo: float, strict: bool, example: str):
    op = ">" if strict else "≥"

    def parse(text: str) -> float:
        try:
            v = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {op} {lo:g}, got {text!r} (e.g. {example})") from None
        if not math.isfinite(v) or (v <= lo if strict else v < lo):
            raise argparse.ArgumentTypeError(f"must be a finite number {op} {lo:g}, got {text!r} (e.g. {example})")
        return v

    parse.__name__ = f"float{op}{lo:g}"
    return parse


positive_int = int_type(1, 1000)
count_or_zero = int_type(0, 3)
positive_float = float_type(0.0, True, "0.01")
nonneg_float = float_type(0.0, False, "5e-4")


def _numbers(text: str, what: str, example: str, lo: float | None = None, strict: bool = False) -> list[float]:
    parts = number_parts(text)
    try:
        if not parts:
            raise ValueError(text)
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what} as comma-separated numbers, got {text!r} (e.g. {example})") from None
    bad = [p for p, v in zip(parts, vals) if not math.isfinite(v) or (lo is not None and (v <= lo if strict else v < lo))]
    if bad:
        need = "finite" if lo is None else f"{'>' if strict else '≥'} {lo:g}"
        raise argparse.ArgumentTypeError(f"{what} must be {need}; got {', '.join(bad)} in {text!r} (e.g. {example})")
    return vals


def mean_type(text: str) -> list[float]:
    return _numbers(text, "the per-channel mean", "0.5 or 0.485,0.456,0.406")


def std_type(text: str) -> list[float]:
    return _numbers(text, "the per-channel std", "0.5 or 0.229,0.224,0.225", lo=0.0, strict=True)


def targets_type(text: str) -> list[float]:
    return _numbers(text, "the reduction targets", "1.5,2,3,4", lo=1.0)


_MAX_SIDE = 8192
_MAX_SAMPLE = 3 * 4096 * 4096  # values in one input sample (the forward check runs two of them)


def resize_type(text: str) -> tuple[int, int]:
    try:
        vals = [int(p) for p in number_parts(text)]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2) or not all(1 <= v <= _MAX_SIDE for v in vals):
        raise argparse.ArgumentTypeError(f"expected H or H,W with sizes 1..{_MAX_SIDE} pixels, got {text!r} (e.g. 32 or 224,224)")
    return vals[0], vals[-1]


def input_size_type(text: str) -> tuple[int, int, int]:
    from .models import parse_input_size

    try:
        size = parse_input_size(text)
    except LrvizError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if max(size[1:]) > _MAX_SIDE or size[0] * size[1] * size[2] > _MAX_SAMPLE:
        raise argparse.ArgumentTypeError(
            f"input size {text!r} is too large: at most {_MAX_SIDE} pixels a side and {_MAX_SAMPLE:,} values per sample"
        )
    return size


def plan_type(text: str) -> str:
    from .plan import parse_spec

    try:
        parse_spec(text)
    except LrvizError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return str(text).strip()


def method_rule_type(text: str) -> tuple[str, str, int | None]:
    from .plan import parse_method_rule

    try:
        return parse_method_rule(text)
    except LrvizError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


DECOMP_HELP = ("decompose matching k x k convs by cp or spatial (SVD, k x 1 then 1 x k) instead of Tucker-2, at RANK "
               "(default: the largest rank no bigger than the plan's Tucker-2 layer; layers the plan keeps dense stay "
               "dense); repeatable, e.g. 'layer3.*=cp:48'")


def target_type(text: str) -> tuple[str, float]:
    from .budget import parse_target

    try:
        return parse_target(text)
    except LrvizError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def batches_type(text: str) -> list[int]:
    """``"1,64"`` → ``[1, 64]`` (positive integers, duplicates dropped, order kept)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    out: list[int] = []
    for part in parts:
        try:
            v = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected batch sizes like 1,64; {part!r} is not an integer") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"batch sizes must be ≥ 1, got {v} (e.g. 1,64)")
        if v not in out:
            out.append(v)
    if not out:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 1,64, got {text!r}")
    return out


def device_type(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (checked against the machine later, when torch is imported:
    :func:`lrviz.devices.resolve_device`)."""
    t = str(text).strip().lower()
    if t in ("auto", "cpu", "cuda") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N")


#: ``--device``'s help.
DEVICE_HELP = "auto (default: CUDA when this machine has a GPU, else the CPU), cpu, cuda or cuda:N"


def add_device_args(p: argparse.ArgumentParser, amp: bool = False) -> None:
    """``--device`` (and, with ``amp``, ``--amp``: mixed precision on CUDA)."""
    p.add_argument("--device", type=device_type, default="auto", metavar="DEV", help=DEVICE_HELP)
    if amp:
        p.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 autocast) on CUDA")


def strategies_type(text: str) -> list[str]:
    from .budget import STRATEGIES

    names = [s.strip() for s in str(text).split(",") if s.strip()]
    unknown = [s for s in names if s not in STRATEGIES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown strateg{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown)) or repr(text)}; "
            f"use a comma-separated list of {', '.join(STRATEGIES)}"
        )
    return names


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="demo, demo-compressed, a torchvision name (resnet18, ...), pkg.module:factory, or FILE.pt2")
    p.add_argument("--weights", metavar="F", help="none | pretrained | FILE (a state_dict, loaded with weights_only=True)")
    p.add_argument("--input-size", type=input_size_type, metavar="C,H,W", help="input size of one sample (inferred when possible)")
    p.add_argument("--num-classes", type=positive_int, metavar="N", help="number of classes (inferred when possible)")


def add_speed_args(p: argparse.ArgumentParser, batch_default: str = "1,64", one_batch: bool = False) -> None:
    """Where and how latency is measured: ``--batch``, ``--device``, ``--threads``, ``--execution``."""
    if one_batch:
        p.add_argument("--batch", type=positive_int, default=int(batch_default), metavar="N", help="images per forward pass")
    else:
        p.add_argument("--batch", type=batches_type, default=batches_type(batch_default), metavar="B,B",
                       help=f"batch sizes to time (default {batch_default})")
    p.add_argument("--device", type=device_type, default="auto", metavar="DEV", help=DEVICE_HELP)
    p.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads while timing (default: torch's current count)")
    p.add_argument("--execution", default="auto", choices=["auto", "eager", "fold", "channels_last", "compile"],
                   help="how both models run: auto (default) measures each on this device and takes the fastest for "
                        "the planned model; fold = BatchNorm folded into its conv; channels_last = fold + channels-last "
                        "memory; compile = channels_last under torch.compile")


def add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", metavar="NAME", required=required, help="fashion-mnist | imagefolder:DIR | imagenet:DIR (resize 256, "
                   "center-crop 224, ImageNet mean/std; --limit stratified by class) | synthetic[:C,H,W,K,N]")
    p.add_argument("--data-root", metavar="DIR", help="folder with the dataset files")
    p.add_argument("--limit", type=positive_int, metavar="N", help="evaluate on a deterministic subset of N images")
    p.add_argument("--resize", type=resize_type, metavar="H[,W]", help="resize images (default: the model's input size)")
    p.add_argument("--grayscale", action="store_true", help="convert images to one channel")
    p.add_argument("--mean", type=mean_type, metavar="M[,M,M]", help="normalisation mean per channel")
    p.add_argument("--std", type=std_type, metavar="S[,S,S]", help="normalisation std per channel")
    p.add_argument("--batch-size", type=positive_int, default=256, metavar="N")


def add_factor_args(p: argparse.ArgumentParser) -> None:
    """``--factors weights|data`` and ``--factors-images N``."""
    p.add_argument("--factors", choices=["weights", "data"], default="weights",
                   help="Tucker-2 / SVD bases from the weights alone (default) or data-aware (experimental): whitened by "
                        "each layer's input statistics on --factors-images images of --data's training split, so the "
                        "truncation minimises the layer's output error")
    p.add_argument("--factors-images", type=int_type(1, 500), default=500, metavar="N",
                   help="training images for --factors data (default 500)")


def add_calibration_args(p: argparse.ArgumentParser, plan: bool = False, data_required: bool = True, device: bool = True) -> None:
    """Model, data and calibration options of ``sensitivity``, ``project``, ``solve`` and ``sweep``
    (with ``plan``: also ``--exclude`` and ``--decompose-classifier``; with ``device``: ``--device``)."""
    add_model_args(p)
    add_data_args(p, required=data_required)
    if device:
        add_device_args(p)
    p.add_argument("--split", default="test", choices=["test", "train"], help="split of the calibration / evaluation images")
    p.add_argument("--no-cache", action="store_true", help="measure again instead of reading ~/.cache/lrviz/sensitivity")
    p.add_argument("--grid-points", type=int_type(2, 16), default=16, metavar="K",
                   help="ranks measured per mode: every rank up to K+1 channels, else 1, 2, 3 and K evenly spaced (fewer = faster)")
    p.set_defaults(batch_size=500)
    add_factor_args(p)
    if plan:
        p.add_argument("--exclude", action="append", metavar="PATTERN", help="keep matching layers dense")
        p.add_argument("--decompose-classifier", action="store_true", help="also decompose the output Linear")
