"""Box deltas (R-CNN, Girshick et al. 2014, appendix C; Faster R-CNN eq. 2).

A network does not predict box corners directly: it predicts how to move and rescale a reference
box (an anchor or a proposal) onto the target, in a form that does not depend on the box's size or
position. For a reference (centre x_a, y_a, size w_a, h_a) and a target (x, y, w, h):

    dx = wx * (x - x_a) / w_a,   dy = wy * (y - y_a) / h_a,   dw = ww * log(w / w_a),   dh = wh * log(h / h_a)

The weights (wx, wy, ww, wh) scale the targets to roughly unit variance: (1, 1, 1, 1) for the RPN,
(10, 10, 5, 5) for the Fast R-CNN head. Decoding inverts this; dw and dh are first clamped at
log(1000 / 16), so that a wild prediction cannot overflow exp() (no box grows more than 62.5x).

Shapes: K boxes; deltas (K, 4), or (K, 4 * C) for class-specific deltas (decoded to (K, C, 4)).
"""

import math

import torch
from torch import Tensor


class BoxCoder:
    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), clip: float = math.log(1000.0 / 16)):
        self.weights = tuple(weights)
        self.clip = clip

    def encode(self, targets: Tensor, references: Tensor) -> Tensor:
        """The deltas that move each reference box onto its target box. (K, 4), (K, 4) -> (K, 4)"""
        wx, wy, ww, wh = (torch.tensor(w, dtype=targets.dtype, device=targets.device) for w in self.weights)
        ref_w = references[:, 2:3] - references[:, 0:1]  # (K, 1)
        ref_h = references[:, 3:4] - references[:, 1:2]
        ref_x = references[:, 0:1] + 0.5 * ref_w
        ref_y = references[:, 1:2] + 0.5 * ref_h
        w = targets[:, 2:3] - targets[:, 0:1]
        h = targets[:, 3:4] - targets[:, 1:2]
        x = targets[:, 0:1] + 0.5 * w
        y = targets[:, 1:2] + 0.5 * h
        dx = wx * (x - ref_x) / ref_w
        dy = wy * (y - ref_y) / ref_h
        dw = ww * torch.log(w / ref_w)
        dh = wh * torch.log(h / ref_h)
        return torch.cat((dx, dy, dw, dh), dim=1)  # (K, 4)

    def decode(self, deltas: Tensor, references: Tensor) -> Tensor:
        """Apply deltas (K, 4 * C) to references (K, 4): boxes (K, 4 * C), x1 y1 x2 y2 per class."""
        references = references.to(deltas.dtype)
        ref_w = references[:, 2] - references[:, 0]  # (K,)
        ref_h = references[:, 3] - references[:, 1]
        ref_x = references[:, 0] + 0.5 * ref_w
        ref_y = references[:, 1] + 0.5 * ref_h
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx  # (K, C)
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.clip)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.clip)
        x = dx * ref_w[:, None] + ref_x[:, None]  # (K, C)
        y = dy * ref_h[:, None] + ref_y[:, None]
        half_w = torch.tensor(0.5, dtype=x.dtype, device=x.device) * (torch.exp(dw) * ref_w[:, None])
        half_h = torch.tensor(0.5, dtype=y.dtype, device=y.device) * (torch.exp(dh) * ref_h[:, None])
        boxes = torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=2)  # (K, C, 4)
        return boxes.flatten(1)  # (K, 4 * C)
