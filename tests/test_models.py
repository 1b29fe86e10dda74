"""Tests for lrviz.models: registry, spec resolution, weights loading, .pt2 programs."""

from __future__ import annotations

import collections
import sys
import textwrap

import pytest
import torch
from torch import nn

from lrviz import models, weights
from lrviz.errors import LrvizError
from lrviz.models import (
    LoadedModel,
    available_models,
    load_model,
    load_state_dict_checked,
    parse_input_size,
    register_model,
)

SMALL = (3, 32, 32)


class _NotATensor:
    """Something torch.load(weights_only=True) must refuse."""

    def __init__(self) -> None:
        self.value = 3


def _tiny_net(num_classes: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    )


@pytest.fixture
def registry(monkeypatch):
    """An isolated copy of the builtin registry."""
    models._ensure_builtin()
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    return models._REGISTRY


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------- torchvision


def test_resnet18_random_init_is_deterministic_and_inferred():
    rng_before = torch.random.get_rng_state()
    a = load_model("resnet18", seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    b = load_model("ResNet18", seed=0)
    c = load_model("resnet18", seed=1)
    assert isinstance(a, LoadedModel)
    assert a.name == "resnet18"
    assert a.input_size == (3, 224, 224)
    assert a.num_classes == 1000
    assert a.decomposable and a.program is None and a.runnable is a.module
    assert "random init (seed 0)" in a.source
    assert _same_state(a.module.state_dict(), b.module.state_dict())
    assert not _same_state(a.module.state_dict(), c.module.state_dict())
    assert a.module.training  # the forward check restores the training flag
    assert a != b and len({a, b}) == 2  # identity semantics


def test_num_classes_and_input_size_override():
    m = load_model("resnet18", input_size="3,32,32", num_classes=10, weights="none")
    assert m.input_size == SMALL
    assert m.num_classes == 10
    assert m.module.fc.out_features == 10
    out = m.runnable.eval()(torch.zeros(1, *SMALL))
    assert out.shape == (1, 10)


def test_input_size_rejected_by_model():
    with pytest.raises(LrvizError, match=r"does not accept input of size 1,32,32.*--input-size"):
        load_model("resnet18", input_size=(1, 32, 32))
    with pytest.raises(LrvizError, match="three positive integers"):
        load_model("resnet18", input_size=(3, 0, 32))


def test_available_models_lists_torchvision_classifiers():
    avail = available_models()
    assert set(avail) == {"builtin", "torchvision"}
    assert {"resnet18", "vgg11_bn", "mobilenet_v2"} <= set(avail["torchvision"])
    assert "fasterrcnn_resnet50_fpn" not in avail["torchvision"]


# ---------------------------------------------------------------------------------------- state dicts


@pytest.fixture(scope="module")
def resnet18_small():
    return load_model("resnet18", input_size=SMALL, seed=3)


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "model_state_dict", "dataparallel"])
def test_state_dict_round_trip(tmp_path, resnet18_small, wrap):
    state = resnet18_small.module.state_dict()
    if wrap == "dataparallel":
        obj = collections.OrderedDict((f"module.{k}", v) for k, v in state.items())
    elif wrap == "raw":
        obj = state
    else:
        obj = {wrap: state, "epoch": 7}
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    loaded = load_model("resnet18", weights=str(path), input_size=SMALL, seed=99)
    assert _same_state(loaded.module.state_dict(), state)
    assert f"state_dict from {path}" in loaded.source


def test_mismatched_architecture_lists_names_and_leaves_module_unchanged(tmp_path, resnet18_small):
    path = tmp_path / "r18.pth"
    torch.save(resnet18_small.module.state_dict(), path)
    import torchvision

    torch.manual_seed(0)
    r34 = torchvision.models.resnet34()
    before = {k: v.clone() for k, v in r34.state_dict().items()}
    with pytest.raises(LrvizError, match=r"missing from the file \(\d+\): layer1\.2\.conv1\.weight") as info:
        load_state_dict_checked(r34, path)
    assert "... and" in str(info.value) and "more" in str(info.value)
    assert _same_state(r34.state_dict(), before)


def test_mismatched_architecture_via_load_model(tmp_path, resnet18_small):
    path = tmp_path / "r18.pth"
    torch.save(resnet18_small.module.state_dict(), path)
    with pytest.raises(LrvizError, match=r"do not match the model.*missing from the file"):
        load_model("resnet34", weights=str(path), input_size=SMALL)


def test_misshaped_and_unexpected_keys(tmp_path):
    net = _tiny_net(5)
    state = dict(_tiny_net(7).state_dict())
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(LrvizError) as info:
        load_state_dict_checked(net, path)
    msg = str(info.value)
    assert "unexpected in the file (1): extra.weight" in msg
    assert "5.weight: file (7, 4) vs model (5, 4)" in msg
    assert "5.bias: file (7) vs model (5)" in msg
    assert "missing" not in msg
    assert _same_state(net.state_dict(), before)


def test_refuses_to_unpickle_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": collections.OrderedDict(w=_NotATensor())}, path)
    with pytest.raises(LrvizError, match="refused to unpickle.*only plain state_dicts/tensors"):
        load_state_dict_checked(_tiny_net(), path)
    whole = tmp_path / "whole_model.pt"
    torch.save(_tiny_net(), whole)
    with pytest.raises(LrvizError, match="refused to unpickle"):
        load_model("resnet18", weights=str(whole), input_size=SMALL)


def test_bad_weight_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    with pytest.raises(LrvizError, match="not a readable PyTorch weights file"):
        load_state_dict_checked(_tiny_net(), text)
    with pytest.raises(LrvizError, match="does not exist"):
        load_state_dict_checked(_tiny_net(), tmp_path / "missing.pt")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(LrvizError, match="holds a Tensor, not a state_dict"):
        load_state_dict_checked(_tiny_net(), tensor)
    mixed = tmp_path / "mixed.pt"
    torch.save({"a": torch.zeros(1), "lr": 0.1}, mixed)
    with pytest.raises(LrvizError, match="not named tensors: lr"):
        load_state_dict_checked(_tiny_net(), mixed)


# ---------------------------------------------------------------------------------------- pretrained


def test_pretrained_offline_gives_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    calls = []

    def offline(url, dst):
        calls.append(url)
        raise OSError("Name or service not known")

    monkeypatch.setattr(weights, "_download_file", offline)
    with pytest.raises(LrvizError, match=r"pretrained weights for resnet18 need internet") as info:
        load_model("resnet18", weights="pretrained")
    msg = str(info.value)
    assert "Name or service not known" in msg
    assert "get_model('resnet18', weights='DEFAULT').state_dict()" in msg
    assert "torch.save" in msg and "--weights" in msg
    assert len(calls) == 1


def test_pretrained_from_cache_works_offline(monkeypatch, tmp_path):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    enum = torchvision.models.get_model_weights("resnet18").DEFAULT
    cached = weights.hub_cache_path(enum.url)
    cached.parent.mkdir(parents=True)
    torch.manual_seed(123)
    reference = torchvision.models.resnet18().state_dict()
    torch.save(reference, cached)

    def offline(url, dst):
        raise AssertionError("must not download when cached")

    monkeypatch.setattr(weights, "_download_file", offline)
    m = load_model("resnet18", weights="pretrained", input_size=SMALL)
    assert "pretrained" in m.source
    assert _same_state(m.module.state_dict(), reference)


def test_pretrained_with_other_num_classes():
    with pytest.raises(LrvizError, match="1000 classes, but num_classes=10"):
        load_model("resnet18", weights="pretrained", num_classes=10)


# ---------------------------------------------------------------------------------------- factories


def test_module_factory(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg_lrviz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def make(num_classes=3):
                return nn.Sequential(
                    nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                    nn.Linear(2, num_classes),
                )

            def not_a_module():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = load_model("userpkg_lrviz.nets:make", input_size=(1, 16, 16))
    assert m.num_classes == 3 and m.input_size == (1, 16, 16)
    assert m.source.startswith("factory userpkg_lrviz.nets:make")
    m7 = load_model("userpkg_lrviz.nets:make", num_classes=7, input_size="1,16,16")
    assert m7.num_classes == 7
    guessed = load_model("userpkg_lrviz.nets:make")
    assert guessed.input_size == (1, 224, 224)
    with pytest.raises(LrvizError, match="returned int, not a torch.nn.Module"):
        load_model("userpkg_lrviz.nets:not_a_module")
    with pytest.raises(LrvizError, match="has no attribute 'nope'"):
        load_model("userpkg_lrviz.nets:nope")
    with pytest.raises(LrvizError, match="cannot import module 'userpkg_lrviz.missing'"):
        load_model("userpkg_lrviz.missing:make")
    with pytest.raises(LrvizError, match="cannot import module 'no_such_pkg_xyz'"):
        load_model("no_such_pkg_xyz:make")
    sys.modules.pop("userpkg_lrviz.nets", None)
    sys.modules.pop("userpkg_lrviz", None)


# ---------------------------------------------------------------------------------------- .pt2


def test_pt2_round_trip(tmp_path):
    torch.manual_seed(0)
    net = _tiny_net(6).eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(net, (torch.zeros(2, 3, 12, 12),), dynamic_shapes=({0: batch},))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, str(path))

    m = load_model(str(path))
    assert m.input_size == (3, 12, 12)
    assert m.num_classes == 6
    assert m.module is None and not m.decomposable
    assert m.name == "tiny"
    x = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(m.runnable(x), net(x), atol=1e-6)
    assert m.runnable is m.runnable

    with pytest.raises(LrvizError, match="--weights cannot be used with the exported program"):
        load_model(str(path), weights="none")
    with pytest.raises(LrvizError, match="outputs 6 classes, but num_classes=4"):
        load_model(str(path), num_classes=4)


def test_pt2_missing_or_corrupt(tmp_path):
    with pytest.raises(LrvizError, match="does not exist"):
        load_model(str(tmp_path / "nope.pt2"))
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(LrvizError, match="is not a torch.export program .it is not a zip archive"):
        load_model(str(bad))


# ---------------------------------------------------------------------------------------- unknown


def test_unknown_name_suggests_close_match():
    with pytest.raises(LrvizError, match=r"unknown model 'resnt18'.*did you mean resnet18") as info:
        load_model("resnt18")
    assert "package.module:factory" in str(info.value)
    assert ".pt2" in str(info.value)


def test_weights_file_given_as_spec(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_tiny_net().state_dict(), path)
    with pytest.raises(LrvizError, match="is a file: pass weights with --weights"):
        load_model(str(path))


@pytest.mark.parametrize("text", ["3,32", "3,32,32,1", "a,b,c", "3,-1,32", "", "3,0,32"])
def test_parse_input_size_errors(text):
    with pytest.raises(LrvizError, match="invalid input size"):
        parse_input_size(text)


def test_parse_input_size_ok():
    assert parse_input_size("3,32,32") == (3, 32, 32)
    assert parse_input_size(" 1x28x28 ") == (1, 28, 28)
    assert parse_input_size("(3, 224, 224)") == (3, 224, 224)


# ---------------------------------------------------------------------------------------- registry


def test_register_and_load_builtin(registry, tmp_path):
    @register_model("lrviz_test_tiny", input_size=(3, 12, 12), num_classes=5, description="tiny")
    def make(num_classes):
        return _tiny_net(num_classes)

    assert "lrviz_test_tiny" in available_models()["builtin"]
    m = load_model("lrviz_test_tiny")
    assert m.input_size == (3, 12, 12) and m.num_classes == 5
    assert m.source == "builtin lrviz_test_tiny, random init (seed 0)"
    assert load_model("lrviz_test_tiny", num_classes=9).num_classes == 9
    with pytest.raises(LrvizError, match="no bundled pretrained weights"):
        load_model("lrviz_test_tiny", weights="pretrained")

    with pytest.raises(LrvizError, match="already registered"):

        @register_model("lrviz_test_tiny", input_size=(3, 12, 12), num_classes=5)
        def again(num_classes):
            return _tiny_net(num_classes)


def test_builtin_bundled_weights(registry, tmp_path):
    torch.manual_seed(5)
    trained = _tiny_net(5)
    weights = tmp_path / "tiny.pt"
    torch.save(trained.state_dict(), weights)

    @register_model("lrviz_test_bundled", input_size=(3, 12, 12), num_classes=5, weights_path=str(weights))
    def make(num_classes):
        return _tiny_net(num_classes)

    m = load_model("lrviz_test_bundled")
    assert _same_state(m.module.state_dict(), trained.state_dict())
    assert "bundled weights" in m.source
    random = load_model("lrviz_test_bundled", weights="none")
    assert "random init" in random.source
    with pytest.raises(LrvizError, match="bundled weights of 'lrviz_test_bundled' are for 5 classes"):
        load_model("lrviz_test_bundled", num_classes=3)

    @register_model(
        "lrviz_test_lost", input_size=(3, 12, 12), num_classes=5, weights_path=str(tmp_path / "gone.pt")
    )
    def make_lost(num_classes):
        return _tiny_net(num_classes)

    with pytest.raises(LrvizError, match="bundled weights for builtin model 'lrviz_test_lost' are missing"):
        load_model("lrviz_test_lost")


def test_register_validates_arguments(registry):
    with pytest.raises(LrvizError, match="invalid input size"):
        register_model("lrviz_bad", input_size=(3, 32), num_classes=2)
    with pytest.raises(LrvizError, match="positive integer"):
        register_model("lrviz_bad", input_size=(3, 32, 32), num_classes=0)


def test_loaded_model_needs_exactly_one():
    with pytest.raises(TypeError):
        LoadedModel("x", None, None, (3, 1, 1), 1, "nothing")
