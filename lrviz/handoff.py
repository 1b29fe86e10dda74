"""Export directories: a compressed model as ``pt2``, ONNX or a plain state_dict, each checked for parity,
and any export directory loadable again as a MODEL.

An export directory always holds ``plan.json`` — the rank plan plus an ``architecture`` record (the spec
the original was built from: builtin / torchvision / timm name or ``module:factory``; input size;
classes) — and, by format:

``state_dict``  ``state_dict.pt``: the compressed structure's tensors only (``torch.save`` of a state_dict).
``pt2``         ``model.pt2``: a ``torch.export`` program with a dynamic batch dimension.
``onnx``        ``model.onnx``: ONNX (opset :data:`ONNX_OPSET`, dynamic batch) exported with
                ``torch.onnx.export(dynamo=True)`` and run with onnxruntime for the parity check
                (``pip install lrviz[onnx]``).

Every export is checked against the planned PyTorch model on a fixed batch (seeded; or the first images
of the data when given): the max absolute difference of the outputs is recorded in ``plan.json``
(``parity``) and the export fails — nothing written — when it exceeds :data:`PARITY_RTOL` × the output's
scale (max |output|).

:func:`load_export_dir` rebuilds a ``state_dict`` export without unpickling anything: the recorded
architecture is built (random init), the plan's structure applied, and ``state_dict.pt`` loaded with
``torch.load(weights_only=True)`` and ``strict=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .errors import LrvizError, short_cause

__all__ = ["EXPORT_FORMATS", "ONNX_OPSET", "PARITY_RTOL", "export_files", "is_export_dir", "load_export_dir", "parity_batch",
           "check_parity"]

EXPORT_FORMATS = ("pt2", "onnx", "state_dict")
ONNX_OPSET = 18
PARITY_RTOL = 1e-4
_FILES = {"pt2": "model.pt2", "onnx": "model.onnx", "state_dict": "state_dict.pt"}


def export_files(fmt: str) -> tuple[str, ...]:
    """The files an export of format ``fmt`` writes (``plan.json`` first)."""
    if fmt not in EXPORT_FORMATS:
        raise LrvizError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    return ("plan.json", _FILES[fmt])


def parity_batch(input_size, data=None, n: int = 4) -> torch.Tensor:
    """The fixed batch of the parity check: the first ``n`` images of ``data``, else seeded noise."""
    if data is not None and len(data) > 0:
        return torch.stack([torch.as_tensor(data[i][0]) for i in range(min(n, len(data)))]).float()
    return torch.randn(n, *input_size, generator=torch.Generator().manual_seed(0))


def check_parity(reference: torch.Tensor, got: np.ndarray | torch.Tensor, what: str) -> dict:
    """Max |difference| of two outputs, and a clear error above ``PARITY_RTOL`` × max |reference|."""
    ref = reference.detach().cpu().double()
    out = torch.as_tensor(np.asarray(got)).double()
    if tuple(out.shape) != tuple(ref.shape):
        raise LrvizError(f"{what} parity check: output shape {tuple(out.shape)} differs from PyTorch's {tuple(ref.shape)}")
    diff = float((out - ref).abs().max())
    scale = float(ref.abs().max())
    if not diff <= PARITY_RTOL * max(scale, 1e-12):
        raise LrvizError(f"{what} parity check failed: max |difference| {diff:.3g} against PyTorch, above {PARITY_RTOL:g} × the "
                         f"output scale {scale:.3g}; nothing was written")
    return {"max_abs_diff": diff, "output_scale": scale, "rtol": PARITY_RTOL, "batch": int(ref.shape[0])}


def export_onnx(model: nn.Module, input_size, path: Path, x: torch.Tensor) -> dict:
    """Write ``model`` as ONNX (dynamic batch) to ``path`` and check it with onnxruntime on ``x``."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise LrvizError("ONNX export needs onnx, onnxscript and onnxruntime: pip install lrviz[onnx]") from e
    import copy
    import logging

    m = copy.deepcopy(model).eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=4096)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        prog = torch.onnx.export(m, (torch.zeros(2, *input_size),), dynamo=True, dynamic_shapes=({0: batch},),
                                 opset_version=ONNX_OPSET, verbose=False)
        prog.save(str(path))
    except Exception as e:  # the exporter raises many types; the cause is what the user needs
        raise LrvizError(f"ONNX export failed: {short_cause(e, limit=300)}") from e
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = m(x)
    rec = check_parity(ref, got, "ONNX (onnxruntime)")
    rec.update(opset=ONNX_OPSET, runtime=f"onnxruntime {ort.__version__}")
    return rec


def export_pt2(model: nn.Module, input_size, path: Path, x: torch.Tensor) -> dict:
    """Write ``model`` as a ``torch.export`` program and check the program (in memory) on ``x``."""
    import copy

    from .export import export_program

    m = copy.deepcopy(model).eval().cpu()
    program = export_program(m, input_size)
    torch.export.save(program, str(path))
    with torch.no_grad():
        rec = check_parity(m(x), program.module()(x), "pt2 (torch.export)")
    return rec


def architecture_record(spec: str, input_size, num_classes: int, weights: str | None) -> dict:
    """What :func:`load_export_dir` needs to build the original architecture again."""
    return {"spec": str(spec), "input_size": [int(v) for v in input_size], "num_classes": int(num_classes),
            "original_weights": weights}


def is_export_dir(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "plan.json").is_file()


def _adopt_biases(net: nn.Module, state: dict) -> None:
    """Give a bias to every conv / linear of ``net`` that has none but whose bias the state_dict holds: data-aware
    factors move the mean's truncation error into the last factor's bias (:mod:`lrviz.activations`), which the
    weight-only structure built from the plan lacks. Nothing else of the structure follows the file."""
    for name, m in net.named_modules():
        key = f"{name}.bias" if name else "bias"
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is None and key in state:
            t = state[key]
            if isinstance(t, torch.Tensor) and tuple(t.shape) == (m.weight.shape[0],):
                m.bias = nn.Parameter(torch.zeros_like(m.weight[:, 0].flatten()))


def load_export_dir(path) -> tuple[nn.Module, dict, object]:
    """Rebuild the compressed model of a ``state_dict`` export directory: ``(module, architecture, plan)``."""
    from .analysis import analyze
    from .decompose import compress, compress_structure
    from .models import load_model
    from .plan import RankPlan

    p = Path(path)
    try:
        doc = json.loads((p / "plan.json").read_text())
    except (OSError, ValueError) as e:
        raise LrvizError(f"{p / 'plan.json'} cannot be read as JSON: {short_cause(e)}") from e
    arch = doc.get("architecture") if isinstance(doc, dict) else None
    if not isinstance(arch, dict) or not isinstance(arch.get("spec"), str):
        raise LrvizError(f"{p / 'plan.json'} has no 'architecture' record: it is a plain plan, not an lrviz export directory "
                         "(use it as --plan with its MODEL)")
    sd = p / "state_dict.pt"
    if not sd.is_file():
        raise LrvizError(f"{p} has no state_dict.pt: only a --format state_dict export can be loaded as a MODEL "
                         "(a model.pt2 file can be given directly)")
    if str(arch["spec"]).lower().endswith(".pt2") or is_export_dir(arch["spec"]):
        raise LrvizError(f"{p}: the recorded architecture {arch['spec']!r} is not buildable")
    base = load_model(arch["spec"], weights="none", input_size=tuple(arch["input_size"]), num_classes=int(arch["num_classes"]))
    a = analyze(base.module, base.input_size, base.name, spectra=False)
    plan = RankPlan.from_dict(doc, a.layers)
    # a CP layer would be fitted to the random weights only to be overwritten: build the structure alone
    net = compress_structure(base.module, plan) if plan.methods else compress(base.module, plan)
    try:
        state = torch.load(sd, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: torch raises many types
        raise LrvizError(f"{sd} cannot be read as a state_dict (weights_only): {short_cause(e)}") from e
    if not isinstance(state, dict):
        raise LrvizError(f"{sd} holds a {type(state).__name__}, not a state_dict")
    _adopt_biases(net, state)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise LrvizError(f"{sd} does not match the plan's structure: {short_cause(e, limit=300)}") from e
    return net.eval(), arch, plan
