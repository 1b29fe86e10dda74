"""Bundled demo networks, registered by name (``demo``, ``demo-compressed``, ``demo-7x``).

``demo`` is a ResNet-20-style CNN for 1×28×28 Fashion-MNIST (He et al. 2016, CIFAR variant: three
stages of three basic blocks, widths 16/32/64, 1×1 projection shortcuts): 19 k×k convs that Tucker-2
can decompose, two 1×1 shortcuts and the classifier for SVD. ``demo-compressed`` is the same net after
VBMF-ranked decomposition and fine-tuning, ``demo-7x`` after the budget solver's plan at ≥ 7× fewer params
and ≥ 6× fewer MACs and 3 epochs of distilled fine-tuning; their structures are rebuilt from the bundled plans.
See ``lrviz/assets/MODEL_CARD.md`` for how the weights were made.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
import torch.nn.functional as F

from .models import register_model

__all__ = ["DemoNet", "BasicBlock"]

ASSETS = Path(__file__).parent / "assets"
DEMO_WEIGHTS = "assets/demo.pt"
DEMO_COMPRESSED_WEIGHTS = "assets/demo-compressed.pt"
DEMO_COMPRESSED_PLAN = ASSETS / "demo-compressed.plan.json"
DEMO_7X_WEIGHTS = "assets/demo-7x.pt"
DEMO_7X_PLAN = ASSETS / "demo-7x.plan.json"


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN + shortcut (1×1 conv + BN when the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class DemoNet(nn.Module):
    """ResNet-20-style classifier for ``(1, 28, 28)`` inputs."""

    def __init__(self, num_classes: int = 10, widths=(16, 32, 64), blocks: int = 3, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(c, w, 2 if (i > 0 and b == 0) else 1))
                c = w
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model(
    "demo",
    input_size=(1, 28, 28),
    num_classes=10,
    description="ResNet-20-style CNN for Fashion-MNIST (bundled weights; see lrviz/assets/MODEL_CARD.md)",
    weights_path=DEMO_WEIGHTS if (ASSETS / "demo.pt").exists() else None,
)
def demo(num_classes: int = 10) -> nn.Module:
    return DemoNet(num_classes)


def _structure_of(plan_path: Path, num_classes: int = 10) -> nn.Module:
    """DemoNet with a bundled plan's decomposed structure (weights are loaded afterwards)."""
    from .analysis import analyze
    from .decompose import compress, compress_structure
    from .plan import RankPlan

    net = DemoNet(num_classes)
    a = analyze(net, (1, 28, 28), "demo", spectra=False)
    plan = RankPlan.load(plan_path, a.layers)
    return compress_structure(net, plan) if plan.methods else compress(net, plan)


def _register_compressed(name: str, plan_path: Path, weights: str, description: str) -> None:
    """Register a bundled compressed demo (when its plan is bundled): DemoNet with the plan's structure."""
    if not plan_path.exists():
        return

    def structure(num_classes: int = 10) -> nn.Module:
        return _structure_of(plan_path, num_classes)

    register_model(name, input_size=(1, 28, 28), num_classes=10, description=description, weights_path=weights)(structure)


_register_compressed("demo-compressed", DEMO_COMPRESSED_PLAN, DEMO_COMPRESSED_WEIGHTS,
                     "demo after VBMF ranks + Tucker-2/SVD + fine-tuning (see lrviz/assets/MODEL_CARD.md)")
_register_compressed("demo-7x", DEMO_7X_PLAN, DEMO_7X_WEIGHTS,
                     "demo at >=7x fewer params and >=6x fewer MACs, fine-tuned 3 epochs (see lrviz/assets/MODEL_CARD.md)")
