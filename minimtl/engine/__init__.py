"""Training: the resumable loop (trainer.py) and inference over a dataset (inference.py)."""

from minimtl.engine.inference import predict
from minimtl.engine.trainer import TrainConfig, Trainer, load_checkpoint, pick_device, save_checkpoint

__all__ = ["TrainConfig", "Trainer", "load_checkpoint", "pick_device", "predict", "save_checkpoint"]
