"""Fan-out over Ray (lrviz[ray]) on a local Ray with this machine's 2 CPUs: the results, the cache
files and the store records are those of a local run, exactly; bad addresses are one line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lrviz.cli import main
from lrviz.errors import LrvizError

ray = pytest.importorskip("ray")

MODEL = ["helpers:tiny_net", "--input-size", "3,16,16"]
DATA = ["--data", "synthetic:3,16,16,10,64", "--limit", "64"]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def shared_ray():
    """A local Ray of 2 CPUs started by the test (lrviz reuses it and leaves it running), shut down after."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _cache_files(root: Path) -> dict:
    """Every file under a sensitivity cache: npz files as their arrays (bytes and dtype), others as bytes.

    (An npz written twice differs in its zip timestamps only; the arrays are what a reader gets.)"""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(root))
        if p.suffix == ".npz":
            with np.load(p) as z:
                out[rel] = {k: (z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files}
        else:
            out[rel] = p.read_bytes()
    return out


def test_demo_sensitivity_on_ray_equals_local_run(tmp_path, capsys, monkeypatch):
    """The issue's test: the demo on 100 images, --ray (lrviz starts and stops its own local Ray) vs a
    local run: same cache files, same JSON but for the backend and timing, backend recorded in the store.

    The local run uses the test session's cache: when the dashboard tests measured these sensitivities
    already (the same key: demo, 100 sample images, the default grid) it reads the files a local
    measurement wrote; otherwise it measures them. The Ray run measures into an empty folder."""
    import os

    assert not ray.is_initialized()
    data = ["--data", "fashion-mnist-sample", "--limit", "100"]
    docs, roots = {}, {"local": Path(os.environ["LRVIZ_CACHE_DIR"]), "ray": tmp_path / "ray"}
    for backend, extra in (("local", []), ("ray", ["--ray"])):
        monkeypatch.setenv("LRVIZ_CACHE_DIR", str(roots[backend]))
        rc, out, err = run(capsys, "sensitivity", "demo", *data, "--json", str(tmp_path / f"{backend}.json"), *extra)
        assert rc == 0, err
        docs[backend] = (json.loads((tmp_path / f"{backend}.json").read_text()), out)
    assert "measured in" in err  # the Ray run measured every layer
    assert "[ray] 1 worker(s), 2 thread(s) each (a local Ray)" in err  # 2 CPUs, the driver's 2 threads per task
    assert not ray.is_initialized()  # the Ray lrviz started is shut down again
    local, ray_doc = docs["local"][0], docs["ray"][0]
    assert (local["backend"], local["workers"]) == ("local", 1)
    assert (ray_doc["backend"], ray_doc["workers"]) == ("ray", 1)
    for d in (local, ray_doc):
        for k in ("backend", "workers", "seconds"):
            d.pop(k)
    assert ray_doc == local
    assert docs["ray"][1] == docs["local"][1]  # the printed table too
    key = local["key"]
    a = _cache_files(roots["local"] / "sensitivity" / key)
    b = _cache_files(roots["ray"] / "sensitivity" / key)
    assert len([f for f in a if f.endswith(".npz")]) == 22 and a == b

    from lrviz.store import Store

    runs = [r for r in Store().runs() if r.kind == "sensitivity"]
    assert sorted(r.metrics["backend"] for r in runs) == ["local", "ray"]
    assert {r.metrics["cache_key"] for r in runs} == {key}  # the same cache entry


def test_sweep_on_ray_equals_local_sweep(tmp_path, capsys, monkeypatch, shared_ray):
    """One task per plan (compress + evaluate the demo) on 2 workers of 1 thread each vs the local sweep
    at 1 thread: the same rows, the same printed table, the backend in the JSON and the store."""
    monkeypatch.setenv("LRVIZ_CACHE_DIR", str(tmp_path / "cache"))
    args = ["sweep", "demo", "--data", "fashion-mnist-sample", "--limit", "200", "--targets", "2,3,5", "--metric", "macs",
            "--strategies", "uniform,vbmf", "--no-projection"]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc, out_local, err = run(capsys, *args, "--json", str(tmp_path / "local.json"))
        assert rc == 0, err
        rc, out_ray, err = run(capsys, *args, "--json", str(tmp_path / "ray.json"), "--ray", "--ray-threads", "1")
        assert rc == 0, err
    finally:
        torch.set_num_threads(old)
    assert "[ray] 2 worker(s), 1 thread(s) each" in err
    local, fanned = json.loads((tmp_path / "local.json").read_text()), json.loads((tmp_path / "ray.json").read_text())
    assert (local["backend"], local["workers"], fanned["backend"], fanned["workers"]) == ("local", 1, "ray", 2)
    assert len(fanned["rows"]) == 6 and fanned["rows"] == local["rows"]
    measured = [r for r in fanned["rows"] if r["spec"] != "unreachable"]
    assert len(measured) >= 4 and all(r["n"] == 200 for r in measured)
    assert len({r["top1"] for r in measured}) >= 3 and max(r["top1"] for r in measured) > 0.8  # real, distinct accuracies
    assert out_ray == out_local
    assert ray.is_initialized()  # a Ray that was already running is left running

    from lrviz.store import Store

    sweeps = [r for r in Store().runs() if r.kind == "sweep"]
    assert sorted((r.metrics["backend"], r.metrics["workers"]) for r in sweeps) == [("local", 1), ("ray", 2)]


def test_solver_sweep_on_ray_reads_the_local_sensitivities(tmp_path, capsys, monkeypatch, shared_ray):
    """With the solver in the sweep, --ray measures nothing the cache already holds, and gives the local rows."""
    monkeypatch.setenv("LRVIZ_CACHE_DIR", str(tmp_path / "cache"))
    args = ["sweep", *MODEL, *DATA, "--targets", "1.5,2.5", "--metric", "macs", "--strategies", "solver,uniform"]
    rc, _, err = run(capsys, *args, "--json", str(tmp_path / "local.json"))
    assert rc == 0 and "measured in" in err
    rc, _, err = run(capsys, *args, "--json", str(tmp_path / "ray.json"), "--ray")
    assert rc == 0 and "from the cache" in err
    assert json.loads((tmp_path / "ray.json").read_text())["rows"] == json.loads((tmp_path / "local.json").read_text())["rows"]


def test_sensitivity_layers_fan_out_over_two_workers(tmp_path, capsys, monkeypatch, shared_ray):
    """Two workers measuring layers in whatever order they finish write the same cache as one process."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for backend, extra in (("local", []), ("ray", ["--ray", "--ray-threads", "1"])):
            monkeypatch.setenv("LRVIZ_CACHE_DIR", str(tmp_path / backend))
            rc, _, err = run(capsys, "sensitivity", *MODEL, *DATA, "--grid-points", "4", *extra)
            assert rc == 0, err
    finally:
        torch.set_num_threads(old)
    assert "[ray] 2 worker(s), 1 thread(s) each" in err and "[sensitivity] 5/5" in err
    a, b = _cache_files(tmp_path / "local" / "sensitivity"), _cache_files(tmp_path / "ray" / "sensitivity")
    assert len([f for f in a if f.endswith(".npz")]) == 5 and a == b
    monkeypatch.setenv("LRVIZ_CACHE_DIR", str(tmp_path / "ray"))
    rc, _, err = run(capsys, "sensitivity", *MODEL, *DATA, "--grid-points", "4")
    assert rc == 0 and "from the cache" in err  # a local run reads what Ray measured


class _Failing:
    """A job whose items raise lrviz's one-line error on the worker (or succeed for even items)."""

    token = "failing"

    def prepare(self, device):
        return self

    def run(self, item):
        if item % 2:
            raise LrvizError(f"item {item} is odd")
        return item * 10


def test_executor_results_errors_and_stop(shared_ray, monkeypatch):
    import sys

    from ray import cloudpickle

    from lrviz.distributed import RayExecutor, backend_info

    ex = RayExecutor(threads=1)
    with pytest.raises(LrvizError, match="a Ray worker cannot rebuild the job .*No module named 'test_ray'"):
        list(ex.map(_Failing(), [0]))  # the workers cannot import this test module: one line, not a traceback
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ... so its job travels by value

    assert backend_info(ex) == {"backend": "ray", "workers": 2, "threads": 1, "gpus": 0, "address": "local"}
    assert sorted(ex.map(_Failing(), [0, 2, 4])) == [(0, 0), (1, 20), (2, 40)]
    with pytest.raises(LrvizError, match=r"^item 1 is odd$"):
        list(ex.map(_Failing(), [0, 1]))
    assert list(ex.map(_Failing(), [0, 2], should_stop=lambda: True)) == []  # stopped: nothing waited for
    with pytest.raises(LrvizError, match="needs 3 CPUs"):
        RayExecutor(threads=3)
    ex.close()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert ray.is_initialized()  # not lrviz's Ray: left running
    assert backend_info(None) == {"backend": "local", "workers": 1}


@pytest.mark.parametrize("address, message", [
    ("nohost", "bad Ray address 'nohost'; use HOST:PORT"),
    ("10.0.0.5:99999", "bad Ray address"),
    ("127.0.0.1:9", "cannot reach the Ray cluster at 127.0.0.1:9"),
])
def test_bad_ray_address_is_one_line_before_any_work(capsys, address, message):
    rc, out, err = run(capsys, "sensitivity", *MODEL, *DATA, "--ray", address)
    assert rc == 2 and out == ""
    assert err.startswith("lrviz: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "[sensitivity]" not in err and not ray.is_initialized()


def test_without_ray_installed_the_flag_says_how_to_get_it(capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    rc, _, err = run(capsys, "sweep", *MODEL, *DATA, "--targets", "2", "--ray")
    assert rc == 2 and err.strip() == "lrviz: error: --ray needs Ray: pip install lrviz[ray]"


def test_dashboard_executor_from_environment(monkeypatch, shared_ray):
    from lrviz import distributed

    monkeypatch.delenv(distributed.ADDRESS_ENV, raising=False)
    assert distributed.executor_from_env() is None
    monkeypatch.setenv(distributed.ADDRESS_ENV, "local")
    monkeypatch.setenv(distributed.THREADS_ENV, "1")
    ex = distributed.executor_from_env()
    assert ex.workers == 2 and distributed.executor_from_env() is ex  # one per process, kept
    monkeypatch.setenv(distributed.THREADS_ENV, "two")
    with pytest.raises(LrvizError, match="LRVIZ_RAY_THREADS must be a positive integer"):
        distributed.executor_from_env()
    distributed._env_executor.clear()


def _ranks_page(monkeypatch, tmp_path, address: str):
    pytest.importorskip("streamlit")
    from test_app import goto, new_app

    monkeypatch.setenv("LRVIZ_NO_BUNDLED_SENSITIVITIES", "1")
    monkeypatch.setenv("LRVIZ_CACHE_DIR", str(tmp_path / "cache"))  # this test's partial sensitivities stay its own
    monkeypatch.setenv("LRVIZ_RAY_ADDRESS", address)
    return goto(new_app(200), "pages/ranks.py")


def test_dashboard_bad_ray_address_is_an_error_and_starts_nothing(monkeypatch, tmp_path):
    from test_app import ok

    at = _ranks_page(monkeypatch, tmp_path, "not an address")
    at.button(key="sens_measure").click()
    ok(at.run())
    assert "_sens_job" not in at.session_state
    errors = [e.value for e in at.error]
    assert errors == ["Sensitivities: cannot use Ray (bad Ray address 'not an address'; use HOST:PORT (a running cluster's head, "
                      "e.g. 10.0.0.5:6379), ray://HOST:PORT, auto, or nothing for a local Ray)"], errors
    assert not at.button(key="sens_measure").disabled  # fix the address and press again


def test_dashboard_measures_sensitivities_on_the_configured_ray(monkeypatch, tmp_path, shared_ray):
    import time

    from lrviz import distributed
    from test_app import ok

    monkeypatch.setenv(distributed.THREADS_ENV, "1")
    at = _ranks_page(monkeypatch, tmp_path, "local")
    at.button(key="sens_measure").click()
    ok(at.run())
    job = at.session_state["_sens_job"]["job"]
    deadline = time.time() + 120
    while time.time() < deadline and not any(e.get("done", 0) >= 2 for e in job.snapshot()):
        time.sleep(0.5)
    ok(at.run())
    bars = at.get("progress")
    assert bars and "Sensitivities on 200 images (on Ray, 2 worker(s)): " in bars[0].text and "layers done" in bars[0].text, \
        [b.text for b in bars]
    at.button(key="sens_stop").click()
    ok(at.run())
    assert job.stop_requested and job.wait(60)
    cached = list((tmp_path / "cache" / "sensitivity").rglob("layer-*.npz"))
    assert len(cached) >= 2  # what the Ray tasks measured is in this machine's cache, as after a local run
    distributed._env_executor.clear()
