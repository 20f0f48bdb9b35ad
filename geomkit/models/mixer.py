"""MLP-Mixer (Tolstikhin et al. 2021) with timm's parameter names.

``drop_rate`` (dropout on both MLPs' hidden activations and outputs, as timm's Mixer; it
has no position embedding to drop) and ``drop_path_rate`` (stochastic depth, linear over
the blocks) as in :mod:`geomkit.models.vit`: off by default, no parameters, the identity in
eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

from geomkit.errors import ModelError
from geomkit.models._registry import register
from geomkit.models.layers import (
    DropPath,
    PatchEmbed,
    apply,
    check_rate,
    default_patch_size,
    drop_path_rates,
    init_weights,
    mlp,
)


class MixerBlock(nn.Module):
    """x + mlp_tokens(norm1(x)ᵀ)ᵀ (mixing across tokens), then x + mlp_channels(norm2(x))."""

    def __init__(self, dim: int, num_tokens: int, tokens_dim: int, channels_dim: int, act: str,
                 drop: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = mlp(num_tokens, tokens_dim, act, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = mlp(dim, channels_dim, act, drop)
        # None when off: at rate 0 the block is the plain one, module for module
        self.drop_path1 = DropPath(drop_path_rate) if drop_path_rate > 0 else None
        self.drop_path2 = DropPath(drop_path_rate) if drop_path_rate > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + apply(self.drop_path1, h)
        return x + apply(self.drop_path2, self.mlp_channels(self.norm2(x)))


class MlpMixer(nn.Module):
    """Mixer: ``stem.proj`` patch embedding, Mixer blocks, ``norm``, mean pool, ``head``."""

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        tokens_dim: int = 384,
        channels_dim: int = 3072,
        act: str = "gelu",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        drop_rate = check_rate("drop_rate", drop_rate)
        drop_path_rate = check_rate("drop_path_rate", drop_path_rate)
        if depth < 1:
            raise ModelError(f"depth must be >= 1, got {depth}")
        patch_size = patch_size or default_patch_size(image_size)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.stem = PatchEmbed(image_size, patch_size, in_chans, embed_dim)
        n = self.stem.num_patches
        self.blocks = nn.Sequential(
            *[MixerBlock(embed_dim, n, tokens_dim, channels_dim, act, drop_rate, dp)
              for dp in drop_path_rates(drop_path_rate, depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(self.norm(x).mean(dim=1))


def _mixer(defaults: dict, image_size: int, in_chans: int, num_classes: int, **kw) -> MlpMixer:
    return MlpMixer(
        image_size=image_size, in_chans=in_chans, num_classes=num_classes, **{**defaults, **kw}
    )


@register("mixer", "MLP-Mixer with every architecture argument exposed")
def mixer(image_size: int = 224, in_chans: int = 3, num_classes: int = 1000, **kw) -> MlpMixer:
    return MlpMixer(image_size=image_size, in_chans=in_chans, num_classes=num_classes, **kw)


@register(
    "mixer-tiny", "small Mixer for CPU studies (width 64, depth 4, token MLP 32, channel MLP 128)"
)
def mixer_tiny(image_size: int = 8, in_chans: int = 1, num_classes: int = 10, **kw) -> MlpMixer:
    d = dict(embed_dim=64, depth=4, tokens_dim=32, channels_dim=128)
    return _mixer(d, image_size, in_chans, num_classes, **kw)


@register("mixer-s16", "Mixer-S/16 (width 512, depth 8, token MLP 256, channel MLP 2048; ~18M)")
def mixer_s16(image_size: int = 224, in_chans: int = 3, num_classes: int = 1000, **kw) -> MlpMixer:
    d = dict(patch_size=16, embed_dim=512, depth=8, tokens_dim=256, channels_dim=2048)
    return _mixer(d, image_size, in_chans, num_classes, **kw)


@register("mixer-b16", "Mixer-B/16 (width 768, depth 12, token MLP 384, channel MLP 3072; ~60M)")
def mixer_b16(image_size: int = 224, in_chans: int = 3, num_classes: int = 1000, **kw) -> MlpMixer:
    d = dict(patch_size=16, embed_dim=768, depth=12, tokens_dim=384, channels_dim=3072)
    return _mixer(d, image_size, in_chans, num_classes, **kw)
