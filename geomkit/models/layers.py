"""Building blocks shared by the ViT and Mixer families (timm module names)."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from geomkit.errors import ModelError


def _act(name: str) -> nn.Module:
    acts = {"gelu": nn.GELU, "relu": nn.ReLU}
    if name not in acts:
        raise ModelError(f"unknown activation {name!r}; valid: {', '.join(acts)}")
    return acts[name]()


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens: ``proj`` is a Conv2d with stride = patch size."""

    def __init__(self, image_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise ModelError(f"patch_size {patch_size} must divide image_size {image_size}")
        self.grid = image_size // patch_size
        self.num_patches = self.grid * self.grid
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, T, D]


class Mlp(nn.Module):
    """``fc1 → act → fc2`` (timm's Mlp)."""

    def __init__(self, in_features: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = _act(act)
        self.fc2 = nn.Linear(hidden, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention written out explicitly.

    PyTorch's fused CPU ``scaled_dot_product_attention`` kernel has no second
    derivative; the explicit softmax(QKᵀ/√d)V form is twice differentiable on every
    device, which the Hessian and NTK measurements need.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ModelError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, T, hd]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, T, D)
        return self.proj(out)


def init_weights(module: nn.Module) -> None:
    """timm-style init: truncated normal (std 0.02) for Linear, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            # patch embedding: like a Linear over the flattened patch (lecun normal)
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            nn.init.trunc_normal_(m.weight, std=(1.0 / fan_in) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def default_patch_size(image_size: int) -> int:
    """Patch size giving a useful token count at small and paper sizes (8→2, ≤32→4, else 16)."""
    if image_size <= 8:
        return 2
    if image_size <= 32:
        return 4
    return 16


# -- regularization (AugReg's dropout and stochastic depth; timm's names) --------------------

def check_rate(name: str, rate: float) -> float:
    """``rate`` as a float in [0, 1), else a :class:`ModelError` naming ``name``."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
        raise ModelError(f"{name} must be a number in [0, 1), got {rate!r}")
    return float(rate)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rates of ``depth`` blocks, linear from 0 to ``rate`` (timm's rule)."""
    return [rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, each sample's residual branch is
    zeroed with probability ``p`` and kept ones are scaled by 1/(1 − p); identity in eval."""

    def __init__(self, p: float):
        super().__init__()
        self.p = check_rate("drop_path_rate", p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class DropMlp(Mlp):
    """timm's Mlp with dropout: ``fc1 → act → drop1 → fc2 → drop2`` (same parameters and
    module names as :class:`~geomkit.models.layers.Mlp`, which it is)."""

    def __init__(self, in_features: int, hidden: int, act: str = "gelu", drop: float = 0.0):
        super().__init__(in_features, hidden, act=act)
        self.drop1 = nn.Dropout(drop)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


def mlp(in_features: int, hidden: int, act: str, drop: float) -> Mlp:
    """:class:`Mlp`, or :class:`DropMlp` when ``drop`` > 0."""
    if drop > 0:
        return DropMlp(in_features, hidden, act=act, drop=drop)
    return Mlp(in_features, hidden, act=act)


def apply(module: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, or ``x`` when the (switched-off) module is ``None``."""
    return x if module is None else module(x)
