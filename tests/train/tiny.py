"""The tiny training run the training, callback and tracking tests share: a 1-block,
width-16 ViT on 96 synthetic examples (3 steps per epoch at batch 32), 3 epochs."""

from __future__ import annotations

from typing import Any

from geomkit.train import TrainConfig

TINY = {"depth": 1, "embed_dim": 16, "num_heads": 2}
DATA = {"source": "synthetic", "synthetic_train": 96, "synthetic_test": 32,
        "synthetic_classes": 4}


def tiny_cfg(**kw: Any) -> TrainConfig:
    """The tiny run's config with ``kw`` overriding its fields."""
    base = dict(model="vit-tiny", model_kwargs=TINY, data=DATA, epochs=3, batch_size=32,
                warmup_epochs=0.5)
    return TrainConfig(**{**base, **kw})
