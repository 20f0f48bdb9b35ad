"""ResNets (He et al. 2016) with timm's parameter names.

Two layouts: the CIFAR layout (3×3 stem, three stages of basic blocks with widths
w, 2w, 4w; ResNet-20/56 have 3/9 blocks per stage) and the ImageNet layout (7×7
stride-2 stem + max-pool, four stages of bottleneck blocks; ResNet-50 = 3/4/6/3).
Every convolution is followed by BatchNorm; activations are modules (``act1``...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from geomkit.errors import ModelError
from geomkit.models._registry import register


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU()
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act3 = nn.ReLU()
        self.downsample = _downsample(inplanes, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.act3(x + shortcut)


def _downsample(inplanes: int, out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and inplanes == out:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))


class ResNet(nn.Module):
    """ResNet with ``conv1``/``bn1``/``act1`` stem, ``layer{1..}`` stages and ``fc`` head."""

    def __init__(
        self,
        layers: Sequence[int] = (3, 3, 3),
        widths: Sequence[int] = (16, 32, 64),
        block: str = "basic",
        stem: str = "cifar",
        in_chans: int = 3,
        num_classes: int = 10,
        image_size: int | None = None,
    ):
        super().__init__()
        if len(layers) != len(widths) or not layers or min(layers) < 1:
            raise ModelError(f"layers {list(layers)} and widths {list(widths)} must match, >= 1")
        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if block not in blocks:
            raise ModelError(f"block must be one of {', '.join(blocks)}, got {block!r}")
        if stem not in ("cifar", "imagenet"):
            raise ModelError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        cls = blocks[block]
        self.num_classes = num_classes
        self.image_size = image_size  # informational: the network is size-agnostic
        w0 = widths[0]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_chans, w0, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, w0, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(w0)
        self.act1 = nn.ReLU()
        inplanes = w0
        for s, (n, w) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if s == 0 else 2
            stage = []
            for j in range(n):
                stage.append(cls(inplanes, w, stride if j == 0 else 1))
                inplanes = w * cls.expansion
            self.add_module(f"layer{s + 1}", nn.Sequential(*stage))
        self.num_stages = len(layers)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(self.global_pool(x).flatten(1))


@register("resnet", "ResNet with layers/widths/block/stem exposed")
def resnet(in_chans: int = 3, num_classes: int = 10, image_size: int | None = None, **kw) -> ResNet:
    return ResNet(in_chans=in_chans, num_classes=num_classes, image_size=image_size, **kw)


@register(
    "resnet-tiny", "small CIFAR-style ResNet for CPU studies (1 basic block per stage, 16/32/64)"
)
def resnet_tiny(image_size: int = 8, in_chans: int = 1, num_classes: int = 10, **kw) -> ResNet:
    return ResNet(
        **{"layers": (1, 1, 1), "widths": (16, 32, 64), **kw},
        in_chans=in_chans,
        num_classes=num_classes,
        image_size=image_size,
    )


@register("resnet20", "CIFAR ResNet-20 (3 basic blocks per stage, 16/32/64; 0.27M params)")
def resnet20(image_size: int = 32, in_chans: int = 3, num_classes: int = 10, **kw) -> ResNet:
    return ResNet(
        **{"layers": (3, 3, 3), "widths": (16, 32, 64), **kw},
        in_chans=in_chans,
        num_classes=num_classes,
        image_size=image_size,
    )


@register("resnet56", "CIFAR ResNet-56 (9 basic blocks per stage, 16/32/64; 0.85M params)")
def resnet56(image_size: int = 32, in_chans: int = 3, num_classes: int = 10, **kw) -> ResNet:
    return ResNet(
        **{"layers": (9, 9, 9), "widths": (16, 32, 64), **kw},
        in_chans=in_chans,
        num_classes=num_classes,
        image_size=image_size,
    )


@register("resnet50", "ImageNet ResNet-50 (bottlenecks 3/4/6/3; ~25.6M params)")
def resnet50(image_size: int = 224, in_chans: int = 3, num_classes: int = 1000, **kw) -> ResNet:
    d = {
        "layers": (3, 4, 6, 3),
        "widths": (64, 128, 256, 512),
        "block": "bottleneck",
        "stem": "imagenet",
    }
    return ResNet(**{**d, **kw}, in_chans=in_chans, num_classes=num_classes, image_size=image_size)
