"""The bundled demo networks load by name and reproduce their model card."""

import json
from pathlib import Path

import pytest
import torch

import lrviz
from lrviz.data import get_dataset
from lrviz.evaluate import evaluate
from lrviz.models import load_model
from lrviz.zoo import ASSETS, DemoNet

CARD = ASSETS / "model_card.json"
needs_card = pytest.mark.skipif(not CARD.exists(), reason="demo weights not bundled yet")


def test_demo_architecture_has_enough_decomposable_convs():
    a = lrviz.analyze(DemoNet(), (1, 28, 28), spectra=False)
    assert sum(l.kind == "tucker2" for l in a.layers) >= 8
    assert a.params == sum(p.numel() for p in DemoNet().parameters())


@needs_card
@pytest.mark.parametrize("name", ["demo", "demo-compressed"])
def test_bundled_model_reproduces_its_card(name):
    card = json.loads(CARD.read_text())["models"][name]
    m = load_model(name)
    assert m.input_size == (1, 28, 28) and m.num_classes == 10
    assert sum(p.numel() for p in m.module.parameters()) == card["params"]
    assert lrviz.count_macs(m.module, m.input_size) == card["macs"]
    r = evaluate(m.module, get_dataset("fashion-mnist-sample"))
    lo, hi = card["sample_top1_ci"]
    assert lo <= r.top1 <= hi
    assert r.correct == card["sample_correct"]  # deterministic on CPU
    for f in ("demo.pt", "demo-compressed.pt"):
        assert (ASSETS / f).stat().st_size <= 5 * 1024 * 1024


@needs_card
def test_card_meets_targets():
    card = json.loads(CARD.read_text())
    assert card["models"]["demo"]["test_top1"] >= 0.93
    assert card["compression"]["params_ratio"] >= 4 and card["compression"]["macs_ratio"] >= 3
    assert card["compression"]["top1_drop_points"] <= 0.5


@needs_card
def test_bundled_weights_are_plain_state_dicts():
    sd = torch.load(ASSETS / "demo.pt", weights_only=True)
    assert set(sd) == set(DemoNet().state_dict())
