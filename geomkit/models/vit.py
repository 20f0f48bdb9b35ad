"""Vision Transformer (Dosovitskiy et al. 2021) with timm's parameter names.

Regularization as AugReg (Steiner et al. 2021) uses it, with timm's argument names, both
off by default: ``drop_rate`` is dropout on intermediate activations -- the embeddings
(after the position embedding is added), the attention output projection, the MLP's
hidden activation and its output projection; ``drop_path_rate`` is stochastic depth
(each residual branch dropped per sample, the survivors scaled by 1/(1 − p)), its rate
rising linearly over the blocks from 0 to ``drop_path_rate`` at the last. Neither has
parameters, so the state dict is the same with or without them; at rate 0 the modules are
exactly those of a model built without them, and in eval mode (every analysis) they are
the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from geomkit.errors import ModelError
from geomkit.models._registry import register
from geomkit.models.layers import (
    Attention,
    DropPath,
    PatchEmbed,
    apply,
    check_rate,
    default_patch_size,
    drop_path_rates,
    init_weights,
    mlp,
)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); with
    ``drop`` > 0 the attention projection and the MLP drop activations (timm's
    ``proj_drop``, ``mlp.drop1/2``), with ``drop_path_rate`` > 0 each branch is stochastic
    depth. Switched-off regularizers are ``None``, not modules: at rate 0 the block is the
    plain one, module for module."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, act: str, qkv_bias: bool,
                 drop: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = mlp(dim, int(dim * mlp_ratio), act, drop)
        self.proj_drop = nn.Dropout(drop) if drop > 0 else None
        self.drop_path1 = DropPath(drop_path_rate) if drop_path_rate > 0 else None
        self.drop_path2 = DropPath(drop_path_rate) if drop_path_rate > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + apply(self.drop_path1, apply(self.proj_drop, self.attn(self.norm1(x))))
        return x + apply(self.drop_path2, self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT: patch embedding, optional class token, learned positions, blocks, norm, head.

    ``global_pool="token"`` classifies from the class token, ``"avg"`` from the mean
    of the patch tokens (then no class token is created). ``drop_rate`` / ``drop_path_rate``:
    dropout and stochastic depth (see the module docstring), in [0, 1).
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
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        drop_rate = check_rate("drop_rate", drop_rate)
        drop_path_rate = check_rate("drop_path_rate", drop_path_rate)
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
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else None
        self.blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, mlp_ratio, act, qkv_bias, drop_rate, dp)
              for dp in drop_path_rates(drop_path_rate, depth)]
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
        x = apply(self.pos_drop, x + self.pos_embed)
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
