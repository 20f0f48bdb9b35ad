"""timm's parameter naming, the lingua franca of ViT / Mixer / ResNet tooling.

Used to recognize the family of a model geomkit did not build (timm's own, a user's) and,
by :mod:`geomkit.geometry.blocks`, to resolve parameter blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Wrappers that prefix every parameter name (DDP, torch.compile).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

VIT_ATTN = re.compile(r"^blocks\.\d+\.attn\.")
MIXER_TOKEN = re.compile(r"^blocks\.\d+\.mlp_tokens\.")
MIXER_CHANNEL = re.compile(r"^blocks\.\d+\.mlp_channels\.")
RESNET_IDX = re.compile(r"^layer(\d+)\.(\d+)\.")


def strip_wrappers(name: str) -> str:
    """``module._orig_mod.blocks.0.attn.qkv.weight`` → ``blocks.0.attn.qkv.weight``."""
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p) :], True
    return name


def family_from_names(names: Iterable[str]) -> str:
    """``vit`` / ``mixer`` / ``resnet`` / ``other`` from timm-style parameter names."""
    stripped = [strip_wrappers(n) for n in names]
    if any(MIXER_TOKEN.match(n) or MIXER_CHANNEL.match(n) for n in stripped):
        return "mixer"
    if any(VIT_ATTN.match(n) for n in stripped):
        return "vit"
    if any(RESNET_IDX.match(n) for n in stripped):
        return "resnet"
    return "other"
