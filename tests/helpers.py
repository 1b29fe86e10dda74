"""Shared test helpers (importable: tests/ is on pytest's pythonpath)."""

import torch


def planted_kernel(c_out, c_in, k, r_out, r_in, seed=0):
    """Conv kernel with exact multilinear rank (r_out, r_in) on the two channel modes."""
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(r_out, r_in, *k, generator=g)
    a = torch.linalg.qr(torch.randn(c_out, r_out, generator=g))[0]
    b = torch.linalg.qr(torch.randn(c_in, r_in, generator=g))[0]
    return torch.einsum("rskl,or,is->oikl", core, a, b)
