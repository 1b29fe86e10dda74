import os

# Before torch is imported: keep OpenMP from spinning on a busy 2-core machine (5-10x slowdowns otherwise).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _private_store(tmp_path_factory, monkeypatch):
    """Each test has its own experiment store (``LRVIZ_DB``): what one test's dashboard recorded (a saved
    configuration, a measured plan, a sweep) never appears in another's session."""
    monkeypatch.setenv("LRVIZ_DB", str(tmp_path_factory.mktemp("store") / "experiments.sqlite"))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches and the experiment store of the test run go to a temporary folder, never to ~/.cache."""
    old = os.environ.get("LRVIZ_CACHE_DIR")
    old_db = os.environ.pop("LRVIZ_DB", None)  # the experiment store goes under the temporary cache folder too
    os.environ["LRVIZ_CACHE_DIR"] = str(tmp_path_factory.mktemp("lrviz-cache"))
    yield
    if old_db is not None:
        os.environ["LRVIZ_DB"] = old_db
    if old is None:
        os.environ.pop("LRVIZ_CACHE_DIR", None)
    else:
        os.environ["LRVIZ_CACHE_DIR"] = old
