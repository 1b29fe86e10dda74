"""Shared test helpers (importable: tests/ is on pytest's pythonpath)."""

import torch


def planted_kernel(c_out, c_in, k, r_out, r_in, seed=0):
    """Conv kernel with exact multilinear rank (r_out, r_in) on the two channel modes."""
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(r_out, r_in, *k, generator=g)
    a = torch.linalg.qr(torch.randn(c_out, r_out, generator=g))[0]
    b = torch.linalg.qr(torch.randn(c_in, r_in, generator=g))[0]
    return torch.einsum("rskl,or,is->oikl", core, a, b)


def tiny_net(num_classes: int = 10):
    """A small CNN for 3x16x16 inputs used by CLI tests (importable as ``helpers:tiny_net``)."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 48, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(48, num_classes),
    )


def dashboard_without_bundled(monkeypatch, quick_n: int):
    """The dashboard (AppTest) with ``quick_n`` quick-evaluation images and the bundled demo
    sensitivities switched off (``LRVIZ_NO_BUNDLED_SENSITIVITIES=1``), after its first run."""
    import sys
    from pathlib import Path

    import pytest

    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    app = Path(__file__).resolve().parents[1] / "app.py"
    if str(app.parent) not in sys.path:
        sys.path.insert(0, str(app.parent))
    monkeypatch.setenv("LRVIZ_NO_BUNDLED_SENSITIVITIES", "1")
    at = AppTest.from_file(str(app), default_timeout=120)
    assert not at.run().exception
    at.select_slider(key="quick_n").set_value(quick_n)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at
