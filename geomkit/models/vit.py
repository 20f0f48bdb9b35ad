"""Vision Transformer (Dosovitskiy et al. 2021) with timm's parameter names."""

from __future__ import annotations

import torch
from torch import nn

from geomkit.errors import ModelError
from geomkit.models._registry import register
from geomkit.models.layers import Attention, Mlp, PatchEmbed, default_patch_size, init_weights


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, act: str, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT: patch embedding, optional class token, learned positions, blocks, norm, head.

    ``global_pool="token"`` classifies from the class token, ``"avg"`` from the mean
    of the patch tokens (then no class token is created).
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        global_pool: str = "token",
        act: str = "gelu",
        qkv_bias: bool = True,
    ):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ModelError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if depth < 1:
            raise ModelError(f"depth must be >= 1, got {depth}")
        patch_size = patch_size or default_patch_size(image_size)
        self.global_pool = global_pool
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(image_size, patch_size, in_chans, embed_dim)
        n_tok = self.patch_embed.num_patches
        if global_pool == "token":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            n_tok += 1
        else:
            self.cls_token = None
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tok, embed_dim))
        self.blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, mlp_ratio, act, qkv_bias) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        init_weights(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        x = self.blocks(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = x[:, 0] if self.global_pool == "token" else x.mean(dim=1)
        return self.head(x)


def _vit(
    defaults: dict, image_size: int, in_chans: int, num_classes: int, **kw
) -> VisionTransformer:
    cfg = {**defaults, **kw}
    return VisionTransformer(
        image_size=image_size, in_chans=in_chans, num_classes=num_classes, **cfg
    )


@register("vit", "ViT with every architecture argument exposed")
def vit(
    image_size: int = 224, in_chans: int = 3, num_classes: int = 1000, **kw
) -> VisionTransformer:
    return _vit({}, image_size, in_chans, num_classes, **kw)


@register("vit-tiny", "small ViT for CPU studies (width 64, depth 4, 4 heads, MLP ×2)")
def vit_tiny(
    image_size: int = 8, in_chans: int = 1, num_classes: int = 10, **kw
) -> VisionTransformer:
    d = dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)
    return _vit(d, image_size, in_chans, num_classes, **kw)


@register("vit-s16", "ViT-S/16 (width 384, depth 12, 6 heads; ~22M params)")
def vit_s16(
    image_size: int = 224, in_chans: int = 3, num_classes: int = 1000, **kw
) -> VisionTransformer:
    d = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0)
    return _vit(d, image_size, in_chans, num_classes, **kw)


@register("vit-b16", "ViT-B/16 (width 768, depth 12, 12 heads; ~86M params)")
def vit_b16(
    image_size: int = 224, in_chans: int = 3, num_classes: int = 1000, **kw
) -> VisionTransformer:
    d = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0)
    return _vit(d, image_size, in_chans, num_classes, **kw)
