"""Reference architectures by name, with timm's parameter and module names.

>>> from geomkit.models import build, list_models
>>> model = build("vit-tiny", image_size=8, in_chans=1, num_classes=10)
"""

from geomkit.models import mixer, resnet, vit  # noqa: F401  (register the families)
from geomkit.models._registry import build, describe, list_models
from geomkit.models.mixer import MlpMixer
from geomkit.models.resnet import ResNet
from geomkit.models.vit import VisionTransformer

__all__ = ["build", "describe", "list_models", "MlpMixer", "ResNet", "VisionTransformer"]


def family(model) -> str:
    """``"vit"``, ``"mixer"``, ``"resnet"`` or ``"other"`` from the model's class."""
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, MlpMixer):
        return "mixer"
    if isinstance(model, ResNet):
        return "resnet"
    return "other"
