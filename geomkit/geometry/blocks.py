"""Parameter blocks: named sets of parameters, resolved from parameter names.

A *block* is a named list of parameter names (``model.named_parameters()``
names, only parameters with ``requires_grad``).  Measurements that work per
block (the diagonal Hessian blocks H_BB of the paper's Table 3, the NTK of a
block, ...) take the output of :func:`resolve_blocks`.

Presets are chosen from the model family, detected from timm-style parameter
names (so timm's own models work too):

========  ===============================================================
family    presets
========  ===============================================================
vit       ``embedding`` (``patch_embed.*``, ``cls_token``, ``pos_embed``,
          ``reg_token``, ``dist_token``), ``attn`` (``blocks.*.attn.*``),
          ``mlp`` (``blocks.*.mlp.*``), ``block{k}`` (``blocks.{k-1}.*``)
mixer     ``embedding`` (``stem.*``), ``token_mlp`` (``blocks.*.mlp_tokens.*``),
          ``channel_mlp`` (``blocks.*.mlp_channels.*``), ``block{k}``
resnet    ``embedding`` (the stem ``conv1.*``/``bn1.*``), ``block{k}`` (the
          k-th residual block ``layer{s}.{j}`` in order)
any       ``whole`` (every trainable parameter)
========  ===============================================================

``block{k}`` is 1-based.  ``paper`` expands to the family's Table-3 columns:
the presets above with ``block1``, ``block{mid}`` and ``block{last}`` (for a
12-block model ``block1``, ``block6``, ``block12``; ``mid = (depth + 1) // 2``),
then ``whole``; duplicates are dropped (a 1-block model has only ``block1``).

Example:
    >>> import torch.nn as nn
    >>> m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    >>> resolve_blocks(m, ("whole",), regex={"first": r"^0\\."})
    {'whole': ['0.weight', '0.bias', '1.weight', '1.bias'], 'first': ['0.weight', '0.bias']}
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch.nn as nn

from geomkit.errors import BlockError, SpecError
from geomkit.models._naming import MIXER_CHANNEL as _MIXER_CHANNEL
from geomkit.models._naming import MIXER_TOKEN as _MIXER_TOKEN
from geomkit.models._naming import RESNET_IDX as _RESNET_IDX
from geomkit.models._naming import VIT_ATTN as _VIT_ATTN
from geomkit.models._naming import strip_wrappers as _strip

__all__ = [
    "FAMILY_PRESETS",
    "block_depth",
    "family",
    "paper_block_indices",
    "paper_blocks",
    "parse_block_arg",
    "resolve_blocks",
]

_VIT_EMBED = re.compile(r"^(patch_embed\.|cls_token$|pos_embed$|reg_token$|dist_token$)")
_VIT_MLP = re.compile(r"^blocks\.\d+\.mlp\.")
_MIXER_EMBED = re.compile(r"^stem\.")
_RESNET_EMBED = re.compile(r"^(conv1|bn1)\.")
_BLOCKS_IDX = re.compile(r"^blocks\.(\d+)\.")
_BLOCK_K = re.compile(r"^block(\d+)$")

#: Named presets per family (``block{k}`` and ``whole`` are always available
#: where the family has blocks).
FAMILY_PRESETS: dict[str, tuple[str, ...]] = {
    "vit": ("embedding", "attn", "mlp"),
    "mixer": ("embedding", "token_mlp", "channel_mlp"),
    "resnet": ("embedding",),
    "other": (),
}




def _trainable(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def family(model: nn.Module) -> str:
    """The model family (:func:`geomkit.models.family`, the one place that decides it)."""
    from geomkit.models import family as _family

    return _family(model)


def _block_keys(names: Sequence[str], fam: str) -> list[tuple]:
    """The distinct blocks of the model in order, as sort keys."""
    keys: set[tuple] = set()
    for n in names:
        s = _strip(n)
        if fam in ("vit", "mixer"):
            m = _BLOCKS_IDX.match(s)
            if m:
                keys.add((int(m.group(1)),))
        elif fam == "resnet":
            m = _RESNET_IDX.match(s)
            if m:
                keys.add((int(m.group(1)), int(m.group(2))))
    return sorted(keys)


def _block_key_of(name: str, fam: str) -> tuple | None:
    s = _strip(name)
    if fam in ("vit", "mixer"):
        m = _BLOCKS_IDX.match(s)
        return (int(m.group(1)),) if m else None
    if fam == "resnet":
        m = _RESNET_IDX.match(s)
        return (int(m.group(1)), int(m.group(2))) if m else None
    return None


def block_depth(model: nn.Module) -> int:
    """Number of blocks (transformer/mixer blocks or residual blocks); 0 for ``other``."""
    names = [n for n, _ in model.named_parameters()]
    return len(_block_keys(names, family(model)))


def paper_block_indices(depth: int) -> tuple[int, int, int]:
    """The 1-based blocks the paper's Table 3 reports for a ``depth``-block model: first,
    middle and last, ``(1, (depth + 1) // 2, depth)`` (1, 6, 12 for 12 blocks)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return 1, (depth + 1) // 2, depth


def paper_blocks(model: nn.Module) -> list[str]:
    """The block names of the paper's Table 3 for this model's family.

    ViT: embedding, attn, mlp, block1, block{mid}, block{last}, whole; Mixer:
    embedding, token_mlp, channel_mlp, blocks, whole; ResNet: embedding, blocks,
    whole; any other model: whole.
    """
    names = [n for n, _ in model.named_parameters()]
    fam = family(model)
    out = list(FAMILY_PRESETS[fam])
    depth = len(_block_keys(names, fam))
    if depth:
        for k in paper_block_indices(depth):
            if f"block{k}" not in out:
                out.append(f"block{k}")
    out.append("whole")
    return out


def _short_list(names: Sequence[str], limit: int = 12) -> str:
    if not names:
        return "(none)"
    if len(names) <= limit:
        return ", ".join(names)
    head = ", ".join(names[: limit - 2])
    return f"{head}, ... ({len(names) - limit + 1} more), {names[-1]}"


def _match_preset(preset: str, names: Sequence[str], fam: str) -> list[str]:
    if preset == "whole":
        return list(names)
    m = _BLOCK_K.match(preset)
    if m:
        k = int(m.group(1))
        keys = _block_keys(names, fam)
        if k < 1 or k > len(keys):
            raise BlockError(
                f"block {preset!r} does not exist: this {fam} model has {len(keys)} blocks "
                f"(block1..block{len(keys)})"
                if keys
                else f"block {preset!r} needs a ViT, Mixer or ResNet model with timm parameter "
                f"names; this model has none; define the block with regex (NAME=REGEX)",
                param=None if keys else "regex",
            )
        key = keys[k - 1]
        return [n for n in names if _block_key_of(n, fam) == key]
    table = {
        ("vit", "embedding"): _VIT_EMBED,
        ("vit", "attn"): _VIT_ATTN,
        ("vit", "mlp"): _VIT_MLP,
        ("mixer", "embedding"): _MIXER_EMBED,
        ("mixer", "token_mlp"): _MIXER_TOKEN,
        ("mixer", "channel_mlp"): _MIXER_CHANNEL,
        ("resnet", "embedding"): _RESNET_EMBED,
    }
    pat = table.get((fam, preset))
    if pat is None:
        valid = ["paper", "whole", *FAMILY_PRESETS[fam]]
        if fam != "other":
            valid.append("block{k}")
        raise BlockError(
            f"unknown block {preset!r} for a {fam} model; valid: {', '.join(valid)} "
            f"(or a user block NAME=REGEX)"
        )
    return [n for n in names if pat.match(_strip(n))]


#: What a user block's name may hold: it names an HDF5 group and a table column.
_BLOCK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def check_block_name(name: str) -> None:
    """Refuse a user block name that is not letters, digits and ``_ . + -`` (a ``/``
    would nest HDF5 groups in the result files)."""
    if not isinstance(name, str) or not _BLOCK_NAME.fullmatch(name):
        raise SpecError(f"block name {name!r} must be letters, digits and _ . + - "
                        "(it names a group in the result files)", param="regex")


def parse_block_arg(text: str) -> tuple[str, str]:
    """Parse a user block ``NAME=REGEX`` into ``(name, regex)``.

    Raises:
        SpecError: if there is no ``=``, the name is empty or the regex does not compile.
    """
    name, sep, pattern = text.partition("=")
    name = name.strip()
    if not sep or not name or not pattern:
        raise SpecError(f"a user block must be NAME=REGEX (e.g. qkv=attn\\.qkv), got {text!r}")
    check_block_name(name)
    try:
        re.compile(pattern)
    except re.error as e:
        raise SpecError(f"block {name!r}: invalid regular expression {pattern!r} ({e})") from None
    return name, pattern


def resolve_blocks(
    model: nn.Module,
    names: Sequence[str] | str = ("paper",),
    regex: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """Resolve block names and user regexes to lists of trainable parameter names.

    Args:
        model: any ``nn.Module``; only parameters with ``requires_grad`` are used.
        names: preset names (``paper``, ``whole``, ``embedding``, ``attn``, ``mlp``,
            ``token_mlp``, ``channel_mlp``, ``block{k}``); ``paper`` expands to the
            family's Table-3 columns (see :func:`paper_blocks`).
        regex: user blocks, name → regular expression searched (``re.search``) in
            each parameter name.  A user block with a preset's name replaces it.

    Returns:
        Block name → parameter names in ``model.named_parameters()`` order; blocks in
        the order requested (presets first, then user blocks), duplicates dropped.

    Raises:
        BlockError: an unknown preset, or a block that matches no trainable parameter
            (the message lists the parameter names).
        SpecError: a user regex that does not compile.
    """
    if isinstance(names, str):
        names = (names,)
    all_names = [n for n, _ in model.named_parameters()]
    trainable = _trainable(model)
    fam = family(model)
    order: list[str] = []
    for n in names:
        if n == "paper":
            order.extend(paper_blocks(model))
        else:
            order.append(n)
    regex = dict(regex or {})
    out: dict[str, list[str]] = {}
    for n in order:
        if n in out or n in regex:
            continue
        members = _match_preset(n, trainable, fam)
        if not members:
            frozen = _match_preset(n, all_names, fam)
            why = " (all its parameters are frozen)" if frozen else ""
            raise BlockError(
                f"block {n!r} matches no trainable parameter{why}; parameters: "
                f"{_short_list(trainable)}"
            )
        out[n] = members
    for n, pattern in regex.items():
        check_block_name(n)
        try:
            pat = re.compile(pattern)
        except re.error as e:
            raise SpecError(f"block {n!r}: invalid regular expression {pattern!r} ({e})") from None
        members = [p for p in trainable if pat.search(p)]
        if not members:
            raise BlockError(
                f"block {n!r} (regex {pattern!r}) matches no trainable parameter; parameters: "
                f"{_short_list(trainable)}"
            )
        out[n] = members
    return out
