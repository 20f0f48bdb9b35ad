"""Training core: SAM/ASAM, vanilla optimizers, the loop, checkpoints."""

from geomkit.train.config import TrainConfig
from geomkit.train.loop import TrainResult, evaluate, train
from geomkit.train.sam import SAM, sam_step

__all__ = ["SAM", "TrainConfig", "TrainResult", "evaluate", "sam_step", "train"]
