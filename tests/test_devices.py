"""Devices (lrviz.devices): auto / cpu / cuda[:N] resolved against the machine, clear errors where there is
no GPU, mixed precision only on CUDA, and --device on every command that computes."""

from __future__ import annotations

import pytest
import torch

from lrviz import devices
from lrviz.cli import main
from lrviz.errors import LrvizError

MODEL = ["helpers:tiny_net", "--input-size", "3,16,16"]
DATA = "synthetic:3,16,16,10,96"


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_the_cpu_without_a_gpu(no_gpu):
    assert devices.resolve_device("auto") == torch.device("cpu") == devices.resolve_device(None)
    assert devices.resolve_device("CPU") == torch.device("cpu")
    assert devices.device_label("cpu") == f"CPU ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''})"


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:2"])
def test_cuda_without_a_gpu_is_a_clear_error(no_gpu, name):
    with pytest.raises(LrvizError, match=f"--device {name}: CUDA is not available on this machine.*use --device cpu or auto"):
        devices.resolve_device(name)


def test_a_gpu_index_beyond_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert devices.resolve_device("cuda:0") == torch.device("cuda", 0)
    assert devices.resolve_device("auto") == torch.device("cuda", 0)  # auto takes the GPU when there is one
    with pytest.raises(LrvizError, match="has 1 CUDA device"):
        devices.resolve_device("cuda:1")
    with pytest.raises(LrvizError, match="unknown device"):
        devices.resolve_device("tpu")


def test_mixed_precision_is_refused_on_the_cpu():
    with devices.amp_context(torch.device("cpu"), False):
        pass
    with pytest.raises(LrvizError, match="CUDA only"):
        with devices.amp_context(torch.device("cpu"), True):
            pass


@pytest.mark.parametrize("argv", [
    ["evaluate", *MODEL, "--data", DATA],
    ["compress", *MODEL, "--plan", "uniform:0.5", "--out", "{tmp}/c"],
    ["train", "helpers:tiny_net", "--input-size", "3,16,16", "--data", DATA, "--out", "{tmp}/t", "--epochs", "1"],
    ["sensitivity", *MODEL, "--data", DATA],
    ["sweep", *MODEL, "--data", DATA],
    ["solve", *MODEL, "--target", "params:2"],
    ["project", *MODEL, "--data", DATA, "--plan", "uniform:0.5"],
    ["bench", *MODEL, "--plan", "uniform:0.5"],
    ["report", *MODEL, "--plan", "uniform:0.5", "--out", "{tmp}/r.html"],
], ids=lambda a: a[0])
def test_every_command_takes_device_and_refuses_cuda_without_one(no_gpu, argv, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([*argv, "--device", "cuda"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("lrviz: error: --device cuda: CUDA is not available") and out == ""
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_auto_falls_back_to_the_cpu_and_amp_needs_cuda(no_gpu, capsys):
    assert main(["--no-record", "evaluate", *MODEL, "--data", DATA, "--device", "auto"]) == 0
    out, err = capsys.readouterr()
    assert "[device] CPU (" in err and "top-1" in out
    assert main(["--no-record", "evaluate", *MODEL, "--data", DATA, "--amp"]) == 2
    assert "mixed precision (--amp) runs on CUDA only" in capsys.readouterr().err
    assert main(["evaluate", *MODEL, "--data", DATA, "--device", "gpu"]) == 2
    assert "unknown device 'gpu'; use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_the_dashboard_says_where_it_runs(monkeypatch):
    from helpers import dashboard_without_bundled

    at = dashboard_without_bundled(monkeypatch, 100).run()
    assert not at.exception
    assert any(c.value.startswith("Runs on CPU (") for c in at.sidebar.caption), [c.value for c in at.sidebar.caption]
