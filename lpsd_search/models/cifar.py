"""CIFAR-style VGG and ResNet built from standard ``torch.nn`` modules only.

Both adapt to small inputs (8x8 digits, 28x28 Fashion-MNIST, 32x32 CIFAR-10) and take a width
multiplier, so a search can start from a model sized to the data set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from lpsd_search.errors import UserInputError

# Simonyan & Zisserman (2015), table 1: "M" is a 2x2 max-pool.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}
_MIN_CHANNELS = 8


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded, but at least 8 so no layer collapses."""
    # The value comes from a spec (``vgg16:width=…``): text, NaN or infinity are possible.
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise UserInputError(f"model option width={width!r} is invalid; valid: a finite number "
                             "> 0 (e.g. width=0.5)")
    return max(_MIN_CHANNELS, round(channels * width))


class VGG(nn.Module):
    """VGG with BatchNorm, global average pooling and one linear classifier (CIFAR variant).

    A max-pool that would shrink the feature map below 1x1 is replaced by ``nn.Identity`` so
    the model runs on any input size while parameter names stay the same.
    """

    def __init__(
        self,
        config: Sequence[int | str],
        in_channels: int,
        num_classes: int,
        input_size: tuple[int, int],
        width: float = 1.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        height, width_px = input_size
        for item in config:
            if item == "M":
                if height // 2 >= 1 and width_px // 2 >= 1:
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    height, width_px = height // 2, width_px // 2
                else:
                    layers.append(nn.Identity())
                continue
            out_channels = scaled_channels(int(item), width)
            layers += [
                nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016, fig. 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        # Projection shortcut (option B) where the shape changes, identity elsewhere.
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 images: 3 stages of 16/32/64 channels, ``depth = 6n + 2``.

    From He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), section 4.2.
    """

    def __init__(
        self, blocks_per_stage: int, in_channels: int, num_classes: int, width: float = 1.0
    ) -> None:
        super().__init__()
        widths = [scaled_channels(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        channels = widths[0]
        for stage, out_channels in enumerate(widths):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))
