"""Your own code, not geomkit's: an image folder from Fashion-MNIST PNGs, and a timm ViT
trained on it with a plain PyTorch loop, saved as a state_dict and as safetensors."""
import sys
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from geomkit.data import DataSpec, load_split
from geomkit.data.sources import FASHION_MNIST_CLASSES

root = Path(sys.argv[1])
raw = DataSpec("fashion-mnist", normalize=False)
for split, folder, per_class in (("train", "train", 200), ("test", "val", 50)):
    x, y = load_split(raw, split)
    for c, name in enumerate(FASHION_MNIST_CLASSES):
        d = root / "imgs" / folder / name.replace("/", "-").replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        for i, k in enumerate(np.flatnonzero(y.numpy() == c)[:per_class]):
            Image.fromarray((x[k, 0].numpy() * 255).round().astype(np.uint8)).save(d / f"{i:04d}.png")

spec = DataSpec("imagefolder", root=str(root / "imgs"), image_size=28)
xt, yt = load_split(spec, "train")
xv, yv = load_split(spec, "test")
torch.manual_seed(0)
model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=7,
                          depth=4, embed_dim=64, num_heads=4, num_classes=10)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
for epoch in range(15):
    model.train()
    perm = torch.randperm(len(xt))
    for i in range(0, len(xt), 64):
        b = perm[i:i + 64]
        loss = F.cross_entropy(model(xt[b]), yt[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xv).argmax(1) == yv).float().mean().item()
    print(f"epoch {epoch + 1}: loss {loss.item():.3f}, val acc {acc:.3f}")
torch.save(model.state_dict(), root / "vit.pt")
save_file(model.state_dict(), str(root / "vit.safetensors"))
