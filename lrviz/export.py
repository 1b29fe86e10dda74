"""Export compressed models: ``torch.export`` programs (``.pt2``) with a dynamic batch dimension."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from .errors import LrvizError, short_cause

__all__ = ["export_program", "save_program", "program_params"]

MAX_BATCH = 4096


def export_program(model: nn.Module, input_size: tuple[int, ...], max_batch: int = MAX_BATCH) -> torch.export.ExportedProgram:
    """Trace ``model`` (in eval mode, on a copy) with ``torch.export`` and a dynamic batch dimension.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    input_size : tuple of int
        ``(C, H, W)``.
    max_batch : int
        Upper bound of the dynamic batch dimension.
    """
    m = copy.deepcopy(model).eval().to("cpu")
    x = torch.zeros((2, *input_size))
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    try:
        return torch.export.export(m, (x,), dynamic_shapes=({0: batch},))
    except Exception as e:  # torch.export raises many types; the cause is what the user needs
        raise LrvizError(f"torch.export could not trace the model at input size {tuple(input_size)}: {short_cause(e, limit=300)}") from e


def save_program(model: nn.Module, input_size: tuple[int, ...], path) -> Path:
    """Export and write ``path`` (``.pt2``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(export_program(model, input_size), str(path))
    return path


def program_params(program: torch.export.ExportedProgram) -> int:
    """Parameter entries of an exported program (buffers excluded)."""
    names = set(program.graph_signature.parameters)
    return int(sum(v.numel() for k, v in program.state_dict.items() if k in names))
