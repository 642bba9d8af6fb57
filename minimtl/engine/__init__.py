"""Training: the resumable loop (trainer.py) and inference over a dataset (inference.py)."""

from minimtl.engine.inference import evaluate_dataset, iter_predictions, predict
from minimtl.engine.trainer import TrainConfig, Trainer, load_checkpoint, pick_device, save_checkpoint

__all__ = [
    "TrainConfig",
    "Trainer",
    "evaluate_dataset",
    "iter_predictions",
    "load_checkpoint",
    "pick_device",
    "predict",
    "save_checkpoint",
]
