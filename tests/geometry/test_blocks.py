"""Block presets resolved from timm-style parameter names."""

import pytest
import torch.nn as nn

from geomkit.errors import BlockError, SpecError
from geomkit.geometry.blocks import (
    block_depth,
    family,
    paper_blocks,
    parse_block_arg,
    resolve_blocks,
)


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(2, 6)
        self.proj = nn.Linear(2, 2)


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 3)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(3, 2)


class _VitBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(2)
        self.attn = _Attn()
        self.norm2 = nn.LayerNorm(2)
        self.mlp = _Mlp()


class _MixerBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(2)
        self.mlp_tokens = _Mlp()
        self.norm2 = nn.LayerNorm(2)
        self.mlp_channels = _Mlp()


class _PatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(1, 2, 2)


class FakeViT(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.patch_embed = _PatchEmbed()
        self.cls_token = nn.Parameter(nn.init.zeros_(nn.Linear(2, 1).weight.T.clone()))
        self.pos_embed = nn.Parameter(nn.init.zeros_(nn.Linear(2, 1).weight.T.clone()))
        self.blocks = nn.Sequential(*[_VitBlock() for _ in range(depth)])
        self.norm = nn.LayerNorm(2)
        self.head = nn.Linear(2, 3)


class FakeMixer(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.stem = _PatchEmbed()
        self.blocks = nn.Sequential(*[_MixerBlock() for _ in range(depth)])
        self.norm = nn.LayerNorm(2)
        self.head = nn.Linear(2, 3)


class _Basic(nn.Module):
    def __init__(self, down=False):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3)
        self.bn1 = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 3)
        self.bn2 = nn.BatchNorm2d(2)
        if down:
            self.downsample = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))


class FakeResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.bn1 = nn.BatchNorm2d(2)
        for s in (1, 2, 3):
            setattr(self, f"layer{s}", nn.Sequential(_Basic(s > 1), _Basic()))
        self.fc = nn.Linear(2, 3)


def test_family_detection():
    assert family(FakeViT(2)) == "vit"
    assert family(FakeMixer(2)) == "mixer"
    assert family(FakeResNet()) == "resnet"
    assert family(nn.Sequential(nn.Linear(2, 2))) == "other"
    assert block_depth(FakeViT(12)) == 12
    assert block_depth(FakeResNet()) == 6


def test_vit_paper_blocks_12():
    m = FakeViT(12)
    assert paper_blocks(m) == ["embedding", "attn", "mlp", "block1", "block6", "block12", "whole"]
    b = resolve_blocks(m, ("paper",))
    assert list(b) == paper_blocks(m)
    assert b["embedding"] == [
        "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"
    ]
    assert all(".attn." in n for n in b["attn"]) and len(b["attn"]) == 12 * 4
    assert all(".mlp." in n for n in b["mlp"]) and len(b["mlp"]) == 12 * 4
    assert all(n.startswith("blocks.5.") for n in b["block6"]) and len(b["block6"]) == 12
    assert b["whole"] == [n for n, _ in m.named_parameters()]


def test_paper_small_depths_dedup():
    assert paper_blocks(FakeViT(1))[3:] == ["block1", "whole"]
    assert paper_blocks(FakeViT(4))[3:] == ["block1", "block2", "block4", "whole"]
    assert paper_blocks(FakeMixer(3)) == [
        "embedding", "token_mlp", "channel_mlp", "block1", "block2", "block3", "whole"
    ]


def test_mixer_presets():
    b = resolve_blocks(FakeMixer(2), ("token_mlp", "channel_mlp", "embedding", "block2"))
    assert all(".mlp_tokens." in n for n in b["token_mlp"]) and len(b["token_mlp"]) == 8
    assert all(".mlp_channels." in n for n in b["channel_mlp"])
    assert b["embedding"] == ["stem.proj.weight", "stem.proj.bias"]
    assert all(n.startswith("blocks.1.") for n in b["block2"])


def test_resnet_blocks_in_order():
    m = FakeResNet()
    b = resolve_blocks(m, ("paper",))
    assert list(b) == ["embedding", "block1", "block3", "block6", "whole"]
    assert b["embedding"] == ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias"]
    assert all(n.startswith("layer1.0.") for n in b["block1"])
    assert all(n.startswith("layer2.0.") for n in b["block3"])
    assert any("downsample" in n for n in b["block3"])
    assert all(n.startswith("layer3.1.") for n in b["block6"])


def test_frozen_params_excluded_and_all_frozen_block_errors():
    m = FakeViT(1)
    m.cls_token.requires_grad_(False)
    assert "cls_token" not in resolve_blocks(m, ("embedding",))["embedding"]
    for p in m.patch_embed.parameters():
        p.requires_grad_(False)
    m.pos_embed.requires_grad_(False)
    with pytest.raises(BlockError, match="frozen"):
        resolve_blocks(m, ("embedding",))


def test_user_regex_blocks_and_wrapped_names():
    m = FakeViT(2)
    b = resolve_blocks(m, ("whole",), regex={"qkv": r"attn\.qkv", "ln": r"norm\d?\.weight$"})
    assert list(b) == ["whole", "qkv"] + ["ln"]
    assert b["qkv"] == [f"blocks.{i}.attn.qkv.{t}" for i in range(2) for t in ("weight", "bias")]
    assert all(n.endswith("weight") and "norm" in n for n in b["ln"])
    wrapped = nn.Module()
    wrapped.module = m
    assert family(wrapped) == "vit"
    assert resolve_blocks(wrapped, ("block2",))["block2"][0].startswith("module.blocks.1.")


def test_errors():
    m = FakeResNet()
    with pytest.raises(BlockError, match="valid: paper, whole, embedding"):
        resolve_blocks(m, ("attn",))
    with pytest.raises(BlockError, match="6 blocks"):
        resolve_blocks(m, ("block7",))
    with pytest.raises(BlockError, match="no trainable parameter; parameters: conv1.weight"):
        resolve_blocks(m, (), regex={"nothing": "^zzz"})
    with pytest.raises(BlockError, match=r"\.\.\. \(\d+ more\)"):
        resolve_blocks(m, (), regex={"nothing": "^zzz"})
    with pytest.raises(BlockError):
        resolve_blocks(nn.Sequential(nn.Linear(2, 2)), ("block1",))
    assert resolve_blocks(nn.Sequential(nn.Linear(2, 2)), ("paper",)) == {
        "whole": ["0.weight", "0.bias"]
    }


def test_parse_block_arg():
    assert parse_block_arg("qkv=attn\\.qkv") == ("qkv", "attn\\.qkv")
    assert parse_block_arg("eq=a=b") == ("eq", "a=b")
    for bad in ("noequals", "=x", "name=", "bad=(["):
        with pytest.raises(SpecError):
            parse_block_arg(bad)
