import os

import pytest
import torch

# Two cores, possibly busy: keep OpenMP from spinning (see RESOURCES: 5-10x slowdowns otherwise).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
