"""timm's own models through geomkit, against dense float64 oracles.

The models are real timm classes with their real parameter and module names, shrunk to a
few thousand parameters so that a dense Hessian is cheap: ``vit_tiny_patch16_224`` at
32 px with 8-px patches, 2 blocks and width 6; timm's ``MlpMixer`` with the
``mixer_s16_224`` MLP ratios at 32 px, 8-px patches, 2 blocks, width 8 (the registered
``mixer_*`` functions refuse size overrides); ``resnet18d`` (deep stem) with one residual
block per stage and 4 channels, 8 in the last stage (with 4 the six examples' pooled
features had channels dead for all of them and the full NTK was exactly singular).  The
parameters get seeded noise (timm zero-inits the Mixer head and the last BatchNorm weight
of each residual block, which would make most Hessian blocks exactly zero); BatchNorm
running statistics are those of another batch, as after training.

- Hessian λ_max of every ``paper`` block against the eigenvalues of the matching diagonal
  block of one dense float64 Hessian of the whole model: forward-over-reverse of the loss
  of ``tests/geometry/_hessian_oracle.py`` (``torch.func.hessian``'s ``jacrev`` is the
  path that was wrong through LayerNorm), under the math attention backend (timm's
  attention calls ``F.scaled_dot_product_attention``, whose fused CPU kernel has no
  forward-mode AD and no double backward); the oracle itself is checked against central
  finite differences of first-order gradients through the fused kernel.
- NTK kernels and κ against explicit Jacobians (``tests/geometry/test_ntk.py``).
- Table 3 activation statistics against forward hooks written here.
- A loss landscape's center and a corner against the loss computed directly.
- The ``paper`` presets of the full-size ``vit_base_patch16_224``, ``mixer_b16_224`` and
  ``resnet50`` (built without weights, never run) against the definitions of
  ``geomkit/geometry/blocks.py`` and the paper's Table 3.

timm needs torchvision, which cannot load beside the main venv's CPU torch 2.13.0, so
these tests run in their own venv (``make test-timm``: torch 2.14.1 + torchvision 0.29.1
from the local wheel store) and skip elsewhere; ``GEOMKIT_REQUIRE_TIMM=1`` (set by
``make test-timm``) makes a failed ``import timm`` an error instead of a skip.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    import timm
    from timm.models.mlp_mixer import MlpMixer
except Exception as e:  # torchvision's compiled ops fail to load beside torch 2.13 (RuntimeError)
    if os.environ.get("GEOMKIT_REQUIRE_TIMM") == "1":
        raise
    why = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}" if str(e) else type(e).__name__
    pytest.skip(f"timm does not import in this venv ({why}); run these tests with "
                "`make test-timm` (their own venv: torch 2.14.1 + torchvision 0.29.1)",
                allow_module_level=True)

from geomkit.geometry.activations import ACTIVATION_TYPES, activation_stats  # noqa: E402
from geomkit.geometry.blocks import paper_blocks, resolve_blocks  # noqa: E402
from geomkit.geometry.hessian import hessian_eigs  # noqa: E402
from geomkit.geometry.landscape import (  # noqa: E402
    Grid,
    evaluate,
    loss_landscape,
    random_directions,
)
from geomkit.geometry.ntk import ntk  # noqa: E402
from geomkit.models import family  # noqa: E402
from tests.geometry._hessian_oracle import block_loss_fn, fd_hessian  # noqa: E402
from tests.geometry.test_ntk import (  # noqa: E402
    assert_kernel_close,
    dense_jacobian,
    dense_kernel,
)

pytestmark = [
    # torch 2.14's forward-mode AD decompositions call torch.jit.script on first use (the
    # main venv's torch 2.13 says so with a DeprecationWarning, ignored in pyproject.toml)
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
]

DT = torch.float64
N = 6  # analysis examples
CLASSES = 3
TINY = ("vit", "mixer", "resnet")


def _tiny(name: str) -> nn.Module:
    """A seeded tiny timm model in float64, eval mode, no parameter exactly zero."""
    torch.manual_seed(0)
    if name == "vit":
        m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, depth=2, embed_dim=6, num_heads=2, mlp_ratio=2,
                              num_classes=CLASSES)
    elif name == "mixer":  # mixer_s16_224's token/channel ratios (0.5, 4.0) at a tiny size
        m = MlpMixer(img_size=32, patch_size=8, num_blocks=2, embed_dim=8,
                     mlp_ratio=(0.5, 4.0), num_classes=CLASSES)
    else:
        m = timm.create_model("resnet18d", pretrained=False, layers=(1, 1, 1, 1),
                              channels=(4, 4, 4, 8), stem_width=4, num_classes=CLASSES)
    m = m.to(DT)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=DT))
        # BatchNorm running statistics as after training: the mean and variance over a
        # batch of other inputs (momentum None = their plain average), so eval-mode
        # activations are normalized and few ReLUs are dead
        bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        if bns:
            m.train()(torch.randn(16, 3, 32, 32, generator=g, dtype=DT))
        for bn in bns:
            bn.momentum = 0.1
    return m.eval()


@functools.cache
def _case(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, 3, 32, 32, generator=g, dtype=DT)
    y = torch.arange(N) % CLASSES
    return _tiny(name), x, y


def case(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A fresh copy of the model (a test can never leak into another) and the data."""
    m, x, y = _case(name)
    return copy.deepcopy(m), x, y


def _whole(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@functools.cache
def dense_hessian(name: str, bn: str = "eval") -> torch.Tensor:
    """The dense float64 Hessian of the mean CE over every parameter of a tiny model.

    Forward-over-reverse (``jvp`` of ``grad``) of the oracle module's loss, as its
    ``dense_hessian``, with the identity's columns vmapped in chunks (``jacfwd`` would hold
    every column's activations at once) and the math attention backend.  ``bn="train"``:
    BatchNorm normalizes with the statistics of the N examples (on a copy whose BatchNorm
    layers are in train mode and track no running statistics, so nothing is updated).
    """
    model, x, y = _case(name)
    if bn == "train":
        model = copy.deepcopy(model)
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.train()
                mod.track_running_stats = False
    flat, f = block_loss_fn(model, _whole(model), x, y)
    g = torch.func.grad(f)
    eye = torch.eye(flat.numel(), dtype=DT)
    with sdpa_kernel(SDPBackend.MATH):
        h = torch.func.vmap(lambda t: torch.func.jvp(g, (flat,), (t,))[1], chunk_size=512)(eye)
    return (0.5 * (h + h.T)).detach()


def _index(model: nn.Module, names: list[str]) -> torch.Tensor:
    """Positions of ``names``' entries in the flat whole-model parameter vector."""
    offsets, i = {}, 0
    for n, p in model.named_parameters():
        if p.requires_grad:
            offsets[n] = (i, i + p.numel())
            i += p.numel()
    return torch.cat([torch.arange(*offsets[n]) for n in names])


# ----------------------------------------------------------------------------- families


def test_tiny_models_are_timm_families_with_the_paper_blocks():
    for name in TINY:
        model, _, _ = case(name)
        assert family(model) == name
        blocks = resolve_blocks(model, ("paper",))
        assert list(blocks) == paper_blocks(model)
    m = case("vit")[0]
    assert paper_blocks(m) == ["embedding", "attn", "mlp", "block1", "block2", "whole"]
    m = case("resnet")[0]  # four residual blocks: first, middle (4+1)//2 = 2, last
    assert paper_blocks(m) == ["embedding", "block1", "block2", "block4", "whole"]
    # resnet18d's deep stem is a Sequential conv1.{0..6} followed by bn1
    emb = resolve_blocks(m, ("embedding",))["embedding"]
    assert emb == [n for n in _whole(m) if n.startswith(("conv1.", "bn1."))]
    assert "conv1.0.weight" in emb and "bn1.weight" in emb


# ----------------------------------------------------------------------------- Hessian


def test_dense_oracle_matches_finite_differences_through_timm_attention_and_layernorm():
    # A block across LayerNorm, the qkv projection and the attention output: the oracle
    # (forward-over-reverse, math attention) against central differences of first-order
    # gradients through timm's default fused attention kernel.
    model, x, y = case("vit")
    names = ["blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.bias",
             "blocks.1.attn.proj.weight", "blocks.1.attn.proj.bias"]
    idx = _index(model, names)
    want = dense_hessian("vit", "eval")[idx][:, idx]
    got = fd_hessian(model, names, x, y, eps=1e-5)
    err = (got - want).abs().max() / want.abs().max()
    assert err < 1e-7, f"max relative difference {err:.2e}"


@pytest.mark.parametrize(
    "name,strategy,bn",
    [("vit", "reuse", "eval"), ("vit", "stream", "eval"), ("vit", "func", "eval"),
     ("mixer", "auto", "eval"), ("resnet", "auto", "eval"), ("resnet", "stream", "train")],
)
def test_lambda_max_of_every_paper_block_matches_the_dense_hessian(name, strategy, bn, device):
    model, x, y = case(name)
    h = dense_hessian(name, bn)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = hessian_eigs(model.to(device), x.to(device), y.to(device), blocks=("paper",),
                       strategy=strategy, bn=bn, dtype=DT, tol=1e-10, max_iter=200)
    model.cpu()
    assert res.params == resolve_blocks(model, ("paper",))
    assert list(res.blocks) == paper_blocks(model)
    for b, names in res.params.items():
        idx = _index(model, names)
        ev = torch.linalg.eigvalsh(h[idx][:, idx])
        r = res.blocks[b]
        assert r.n_params == len(idx)
        assert r.converged, b
        assert r.lambda_max == pytest.approx(float(ev[-1]), rel=1e-8, abs=1e-12), b
    # the whole model's sharpness bounds every diagonal block's (Cauchy interlacing)
    top = res.blocks["whole"].lambda_max
    assert all(r.lambda_max <= top * (1 + 1e-8) for r in res.blocks.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


# ----------------------------------------------------------------------------- NTK


@pytest.mark.parametrize("name,bn", [("vit", "eval"), ("mixer", "eval"), ("resnet", "eval"),
                                     ("resnet", "train")])
# ntk() vmaps per-example gradients; through timm's fused CPU attention kernel functorch
# falls back to a loop (and says so); the result is exact either way.
def test_ntk_matches_explicit_jacobians(name, bn, device):
    model, x, _ = case(name)
    jac = dense_jacobian(model, x, bn)
    dev_model, dev_x = copy.deepcopy(model).to(device), x.to(device)
    for mode in ("sum", "trace", "full"):
        res = ntk(dev_model, dev_x, mode=mode, bn=bn)
        want = dense_kernel(jac, mode)
        assert_kernel_close(res.kernel, want, rtol=1e-10)
        ev = np.linalg.eigvalsh(want)
        np.testing.assert_allclose(res.eigenvalues, ev, rtol=1e-8, atol=1e-10 * ev[-1])
        assert res.kappa == pytest.approx(ev[-1] / ev[0], rel=1e-6)
        assert res.n_params == jac.shape[-1] and res.n_outputs == CLASSES
        assert res.method == ("batch-jacobian" if bn == "train" else "per-sample")
    # a paper block: the Jacobian of its parameters only
    names = resolve_blocks(model, ("block1",))["block1"]
    res = ntk(dev_model, dev_x, params=names, bn=bn)
    assert_kernel_close(res.kernel, dense_kernel(dense_jacobian(model, x, bn, names), "sum"),
                        rtol=1e-10)


# ----------------------------------------------------------------------------- activations


def _hook_oracle(model: nn.Module, x: torch.Tensor) -> tuple[dict, dict]:
    """Per activation module: (values, active, neurons, dead); per block: mean output norm."""
    mods = dict(model.named_modules())
    acts = [n for n, m in mods.items() if isinstance(m, ACTIVATION_TYPES)]
    blocks = [n for n in mods if re.fullmatch(r"blocks\.\d+|layer\d+\.\d+", n)]
    seen_in: dict[str, torch.Tensor] = {}
    seen_out: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_pre_hook(
        lambda _m, args, n=n: seen_in.__setitem__(n, args[0].detach().clone())) for n in acts]
    hooks += [mods[n].register_forward_hook(
        lambda _m, _a, out, n=n: seen_out.__setitem__(n, out.detach().clone())) for n in blocks]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    layers = {}
    for n, a in seen_in.items():
        pos = a > 0
        # neurons: channels of [B, C, H, W] maps, the last dim of [B, T, D] token tensors
        fired = pos.sum(dim=(0, 2, 3)) if a.ndim == 4 else pos.reshape(-1, a.shape[-1]).sum(0)
        layers[n] = (a.numel(), int(pos.sum()), fired.numel(), int((fired == 0).sum()))
    norms = {n: float(torch.linalg.vector_norm(o.reshape(len(o), -1), dim=1).mean())
             for n, o in seen_out.items()}
    return layers, norms


def _norm(params) -> float:
    return math.sqrt(sum(float(p.detach().double().square().sum()) for p in params))


@pytest.mark.parametrize("name", TINY)
def test_activation_stats_match_forward_hooks(name, device):
    model, x, _ = case(name)
    layers, norms = _hook_oracle(model, x)
    assert layers and len(norms) >= 2
    st = activation_stats(copy.deepcopy(model).to(device), x.to(device), batch_size=4)
    assert st.samples == N
    assert list(st.layers) == list(layers)
    for n, (values, active, neurons, dead) in layers.items():
        s = st.layers[n]
        assert (s.values, s.active, s.neurons, s.dead) == (values, active, neurons, dead), n
    assert list(st.blocks) == list(norms)
    np.testing.assert_allclose(st.output_norms, list(norms.values()), rtol=1e-12)
    mods = dict(model.named_modules())
    for b, s in st.blocks.items():
        assert s.weight_norm == pytest.approx(_norm(mods[b].parameters()), rel=1e-12)
        assert s.layers == tuple(n for n in layers if n.startswith(b + "."))
    assert st.weight_norm == pytest.approx(_norm(model.parameters()), rel=1e-12)
    assert st.values == sum(v[0] for v in layers.values())
    assert st.active == sum(v[1] for v in layers.values())


# ----------------------------------------------------------------------------- landscape


@pytest.mark.parametrize("name", TINY)
def test_landscape_center_is_the_model_loss(name):
    model, x, y = case(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(x)
    want = float(F.cross_entropy(logits, y))
    want_acc = 100.0 * float((logits.argmax(1) == y).double().mean())
    loss, acc = evaluate(model, x, y)
    assert loss == pytest.approx(want, rel=1e-12) and acc == pytest.approx(want_acc)
    dirs = random_directions(model, 2, seed=0)
    surf = loss_landscape(model, x, y, dirs, Grid((-1, 1, 3), (-1, 1, 3)))
    assert surf.loss.shape == (3, 3) and surf.loss[1, 1] == loss  # the center is theta
    # a corner: theta + d1 - d2, evaluated here by hand
    params = {n: p.detach() + dirs[0].get(n, 0) - dirs[1].get(n, 0)
              for n, p in model.named_parameters()}
    with torch.no_grad():
        corner = float(F.cross_entropy(functional_call(model, params, (x,)), y))
    assert surf.loss[0, 2] == pytest.approx(corner, rel=1e-12)
    assert surf.loss[0, 2] != pytest.approx(loss, rel=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- full size


def _names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def _expected_vit(names: list[str]) -> dict[str, list[str]]:
    # Table 3: embedding (patch projection, class token, position embedding), every MSA,
    # every MLP, transformer blocks 1, 6 and 12 (norms included), and the whole model
    return {
        "embedding": [n for n in names
                      if n.startswith("patch_embed.") or n in ("cls_token", "pos_embed")],
        "attn": [n for n in names if re.match(r"blocks\.\d+\.attn\.", n)],
        "mlp": [n for n in names if re.match(r"blocks\.\d+\.mlp\.", n)],
        **{f"block{k}": [n for n in names if n.startswith(f"blocks.{k - 1}.")]
           for k in (1, 6, 12)},
        "whole": names,
    }


def _expected_mixer(names: list[str]) -> dict[str, list[str]]:
    return {
        "embedding": [n for n in names if n.startswith("stem.")],
        "token_mlp": [n for n in names if re.match(r"blocks\.\d+\.mlp_tokens\.", n)],
        "channel_mlp": [n for n in names if re.match(r"blocks\.\d+\.mlp_channels\.", n)],
        **{f"block{k}": [n for n in names if n.startswith(f"blocks.{k - 1}.")]
           for k in (1, 6, 12)},
        "whole": names,
    }


def _expected_resnet(names: list[str]) -> dict[str, list[str]]:
    # ResNet-50: 3 + 4 + 6 + 3 bottlenecks; block k is the k-th in order, so block1 is
    # layer1.0, block8 (the middle, (16 + 1) // 2) layer3.0 and block16 layer4.2
    return {
        "embedding": [n for n in names if n.startswith(("conv1.", "bn1."))],
        "block1": [n for n in names if n.startswith("layer1.0.")],
        "block8": [n for n in names if n.startswith("layer3.0.")],
        "block16": [n for n in names if n.startswith("layer4.2.")],
        "whole": names,
    }


FULL = [
    # timm name, family, expected blocks, millions of parameters in the paper's Table 1
    ("vit_base_patch16_224", "vit", _expected_vit, 87),
    ("mixer_b16_224", "mixer", _expected_mixer, 59),
    ("resnet50", "resnet", _expected_resnet, 25),
]


@pytest.mark.parametrize("timm_name,fam,expected,millions", FULL)
def test_paper_presets_of_the_full_size_models(timm_name, fam, expected, millions):
    torch.manual_seed(0)
    model = timm.create_model(timm_name, pretrained=False)
    names = _names(model)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - millions) < 1
    assert family(model) == fam
    want = expected(names)
    got = resolve_blocks(model, ("paper",))
    assert paper_blocks(model) == list(want)
    assert got == want
    if fam == "vit":
        assert got["embedding"] == ["cls_token", "pos_embed", "patch_embed.proj.weight",
                                    "patch_embed.proj.bias"]
        per_block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                     "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                     "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
        assert got["block6"] == [f"blocks.5.{n}" for n in per_block]
        assert len(got["attn"]) == len(got["mlp"]) == 12 * 4
        rest = {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    elif fam == "mixer":
        assert got["embedding"] == ["stem.proj.weight", "stem.proj.bias"]
        per_block = ["norm1.weight", "norm1.bias", "mlp_tokens.fc1.weight",
                     "mlp_tokens.fc1.bias", "mlp_tokens.fc2.weight", "mlp_tokens.fc2.bias",
                     "norm2.weight", "norm2.bias", "mlp_channels.fc1.weight",
                     "mlp_channels.fc1.bias", "mlp_channels.fc2.weight",
                     "mlp_channels.fc2.bias"]
        assert got["block12"] == [f"blocks.11.{n}" for n in per_block]
        assert len(got["token_mlp"]) == len(got["channel_mlp"]) == 12 * 4
        rest = {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    else:
        assert got["embedding"] == ["conv1.weight", "bn1.weight", "bn1.bias"]
        assert "layer3.0.downsample.0.weight" in got["block8"]
        assert len(got["block16"]) == 9  # 3 convs + 3 BatchNorms, no downsample
        rest = {"fc.weight", "fc.bias"}
    # every parameter is in the embedding, in exactly one block, or in the head / final norm
    key = re.compile(r"^(blocks\.\d+|layer\d+\.\d+)\.")
    keys = {key.match(n).group(1) for n in names if key.match(n)}
    depth = 16 if fam == "resnet" else 12
    assert len(keys) == depth
    in_blocks = {n for n in names if key.match(n)}
    assert set(names) == set(got["embedding"]) | in_blocks | rest
    assert not set(got["embedding"]) & in_blocks


# -- timm:NAME specs and weights from other training code ------------------------------------

_VIT_ARGS = {"img_size": 8, "patch_size": 4, "depth": 1, "embed_dim": 8, "num_heads": 2}


def test_timm_spec_with_weights_is_the_model_it_names(tmp_path):
    """`timm:NAME` + a state dict saved by other code (DDP prefix, nested) and as
    safetensors rebuild timm's model bit for bit, and the CLI measures it."""
    from safetensors.torch import save_file

    from cli.main import main
    from geomkit.checkpoint import load_checkpoint
    from geomkit.imported import import_weights

    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1,
                            num_classes=10, **_VIT_ARGS).eval()
    sd = ref.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    data = {"source": "digits"}  # 1 channel, 10 classes, 8 px: filled in for timm
    for w in ("w.pth", "w.safetensors"):
        ck = import_weights("timm:vit_tiny_patch16_224", tmp_path / w, data,
                            model_args=_VIT_ARGS)
        assert type(ck.model) is type(ref) and ck.model_kwargs["num_classes"] == 10
        for k, v in sd.items():
            assert torch.equal(ck.model.state_dict()[k], v)
    out = tmp_path / "ck.pt"
    argv = ["import", "--model", "timm:vit_tiny_patch16_224", "--weights",
            str(tmp_path / "w.safetensors"), "--data", "digits", "--out", str(out)]
    argv += [a for k, v in _VIT_ARGS.items() for a in ("--model-arg", f"{k}={v}")]
    assert main(argv) == 0
    ck = load_checkpoint(out)
    x, y = ck.analysis_data("train", 32)
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), ref(x), rtol=0, atol=0)
    want = hessian_eigs(ref, x, y, blocks=("whole",)).blocks["whole"].lambda_max
    got = hessian_eigs(ck.model, x, y, blocks=("whole",)).blocks["whole"].lambda_max
    assert got == want


def test_timm_spec_mistakes_are_one_line():
    from geomkit.errors import ModelError
    from geomkit.models import build

    with pytest.raises(ModelError, match="unknown timm model 'vit_tiny_patch16'.*did you mean"):
        build("timm:vit_tiny_patch16", **_VIT_ARGS)
    with pytest.raises(ModelError, match="never downloads weights"):
        build("timm:vit_tiny_patch16_224", pretrained=True)
    with pytest.raises(ModelError) as e:
        build("timm:resnet18", img_size=32)
    assert "cannot build timm:resnet18" in str(e.value) and "\n" not in str(e.value)


def test_mean_std_timm_normalizes_as_the_model_was_trained(tmp_path):
    """`--mean-std timm`: an image folder normalized with the model's pretrained_cfg."""
    from PIL import Image

    from geomkit.imported import import_weights

    g = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(g.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / f"c{c}" / f"{i}.png")
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **_VIT_ARGS)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    data = {"source": "imagefolder", "root": str(tmp_path / "imgs"), "image_size": 8}
    ck = import_weights("timm:vit_tiny_patch16_224", tmp_path / "w.pt", data,
                        model_args=_VIT_ARGS, timm_normalization=True)
    mean, std = m.pretrained_cfg["mean"], m.pretrained_cfg["std"]
    assert ck.data_spec.mean_std == ",".join(map(str, mean)) + "/" + ",".join(map(str, std))
    plain = import_weights("timm:vit_tiny_patch16_224", tmp_path / "w.pt", data,
                           model_args=_VIT_ARGS)
    x, _ = ck.analysis_data("train", 6)
    x0, _ = plain.analysis_data("train", 6)
    assert not torch.allclose(x, x0)  # imagenet (the folder's default) vs the model's own
