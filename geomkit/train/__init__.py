"""Training core: SAM/ASAM, vanilla optimizers, the loop, checkpoints."""

from geomkit.train.config import TrainConfig
from geomkit.train.loop import TrainCallback, TrainEvent, TrainResult, evaluate, train
from geomkit.train.sam import SAM, sam_step

__all__ = ["SAM", "TrainCallback", "TrainConfig", "TrainEvent", "TrainResult", "evaluate",
           "sam_step", "train"]
