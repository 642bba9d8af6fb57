"""Losses: box regression losses (more, and the multi-task weighting, come with issue 6)."""

from minimtl.losses.box import giou_loss

__all__ = ["giou_loss"]
