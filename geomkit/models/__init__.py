"""Reference architectures by name, with timm's parameter and module names.

>>> from geomkit.models import build, list_models
>>> model = build("vit-tiny", image_size=8, in_chans=1, num_classes=10)
"""

from torch import nn

from geomkit.models import mixer, resnet, vit  # noqa: F401  (register the families)
from geomkit.models._naming import family_from_names
from geomkit.models._registry import build, build_model, describe, family_of_name, list_models
from geomkit.models.mixer import MlpMixer
from geomkit.models.resnet import ResNet
from geomkit.models.vit import VisionTransformer

__all__ = ["build", "build_model", "describe", "family", "family_from_names", "list_models",
           "MlpMixer", "ResNet", "VisionTransformer"]


def family(model: nn.Module | str) -> str:
    """``"vit"``, ``"mixer"``, ``"resnet"`` or ``"other"``: the one answer every module uses.

    A registry name, or a model built by :func:`build`, gets the family of the file that
    registered it (a ResNet registered under any name is a ResNet); any other module is
    judged by its timm-style parameter names (``blocks.{i}.attn.*`` → vit,
    ``blocks.{i}.mlp_tokens.*`` → mixer, ``layer{s}.{j}.*`` → resnet), so timm's own
    models are recognized too.
    """
    if isinstance(model, str):
        return family_of_name(model)
    spec = getattr(model, "geomkit_spec", None)
    if isinstance(spec, dict) and spec.get("name") in list_models():
        return family_of_name(spec["name"])
    return family_from_names(n for n, _ in model.named_parameters())
