"""Multi-label image classification on the shared pyramid: which of the foreground classes are in the
image. One independent binary decision per class ("binary relevance": Tsoumakas & Katakis, "Multi-label
classification: an overview", IJDWM 2007), as a sigmoid per class trained with binary cross-entropy,
the usual loss of multi-label image recognition (e.g. Chen, Wei, Wang & Guo, "Multi-label image
recognition with graph convolutional networks", CVPR 2019, which reports the mAP over classes that
minimtl.evaluation.classification computes).

Each level P2..P5 (strides 4..32) is averaged over the image's own cells (the padding the batch
adds around a smaller image left out: its zeros would dilute the average by how much smaller the
image is than the batch), the L averages are concatenated, and a two-layer MLP gives one logit per
foreground class k = 1..C-1:

    v = [ GAP(P2), GAP(P3), GAP(P4), GAP(P5) ]                 (N, L*D)
    z = W2 relu(W1 v + b1) + b2                                 (N, C-1)
    p_k = sigmoid(z_k)           the probability that class k is present

Concatenated, not summed: global pooling dilutes a small object on every level, but least on the
level whose scale matches it (FPN assigns small objects to P2, large ones to P5), and the first
layer can weigh that level for the classes that are small; a sum would let the other levels'
background drown it. It costs (L-1) D H more weights than a sum (0.2 M for D = H = 256; the box
head has 12.8 M). P6 is a subsampled P5, its average nearly P5's: left out.

Loss: y_k = 1 when class k is among the image's labels (crowds excluded, as in training), else 0;
binary cross-entropy with logits, mean over the N images and the C-1 classes:

    L_image = -1/(N (C-1)) sum_n sum_k [ y_nk log p_nk + (1 - y_nk) log(1 - p_nk) ]

Class 0, the background, is never "present": it has no logit.

Shapes: N images; L levels (N, D, H_l, W_l), the first of stride 4 in a batch (Hb, Wb); H hidden
units; K = C-1 foreground classes.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minimtl.modeling.precision import full_precision_dtype


class ImageClassificationHead(nn.Module):
    """levels P2..P5 (N, D, H_l, W_l) -> logits (N, K), one per foreground class."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256, num_levels: int = 4):
        super().__init__()
        if num_classes < 1:
            raise ValueError(
                f"ImageClassificationHead: num_classes (foreground classes) must be >= 1, got {num_classes}"
            )
        self.num_levels = num_levels
        self.fc = nn.Linear(num_levels * in_channels, hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        nn.init.kaiming_uniform_(self.fc.weight, a=1)  # as TwoMLPHead's layers
        nn.init.zeros_(self.fc.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)  # start at p = 0.5 for every class
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self, features: list[Tensor], image_sizes: list[tuple[int, int]] | None = None, batch_size=None
    ) -> Tensor:
        """image_sizes: each image's (h, w) inside the padded batch of size batch_size (Hb, Wb); None: the
        whole maps are the images."""
        if len(features) != self.num_levels:
            raise ValueError(f"ImageClassificationHead: expected {self.num_levels} levels, got {len(features)}")
        pooled = [masked_average(f, image_sizes, batch_size) for f in features]  # L x (N, D)
        x = F.relu(self.fc(torch.cat(pooled, dim=1)))  # (N, H)
        return self.classifier(x)  # (N, K)


def masked_average(feature: Tensor, image_sizes=None, batch_size=None) -> Tensor:
    """(N, D, h, w) -> (N, D): each image's mean over its own cells, ceil(h_i h / Hb) x ceil(w_i w / Wb).
    Summed in at least float32: in float16 the sum over P2's cells (65536 for a 1024-pixel image) overflows."""
    dtype = full_precision_dtype(feature.dtype)
    if image_sizes is None:
        return feature.mean(dim=(-2, -1), dtype=dtype)
    h, w = feature.shape[-2:]
    hb, wb = batch_size
    sizes = torch.tensor(image_sizes, device=feature.device)  # (N, 2)
    rows = ((sizes[:, 0] * h + hb - 1) // hb).clamp(1, h)  # (N,) cells the image covers (integer ceil)
    cols = ((sizes[:, 1] * w + wb - 1) // wb).clamp(1, w)
    inside_rows = torch.arange(h, device=feature.device)[None, :] < rows[:, None]  # (N, h)
    inside_cols = torch.arange(w, device=feature.device)[None, :] < cols[:, None]  # (N, w)
    inside = inside_rows[:, :, None] & inside_cols[:, None, :]  # (N, h, w)
    summed = (feature * inside[:, None]).sum(dim=(-2, -1), dtype=dtype)  # (N, D)
    return summed / (rows * cols).to(summed.dtype)[:, None]


def image_targets(targets: list[dict[str, Tensor]], num_classes: int) -> Tensor:
    """Multi-hot presence (N, C-1) float: [n, k-1] = 1 when label k is in targets[n]["labels"] (objects
    with "iscrowd" 1 left out: training never sees them). num_classes C counts the background."""
    device = targets[0]["labels"].device if targets else None
    present = torch.zeros(len(targets), num_classes - 1, device=device)
    for i, (row, t) in enumerate(zip(present, targets, strict=True)):
        labels = t["labels"]
        if "iscrowd" in t:
            labels = labels[t["iscrowd"] == 0]
        if len(labels) and not ((labels >= 1) & (labels < num_classes)).all():
            raise ValueError(f"targets[{i}]['labels'] must be in [1, {num_classes}), got {labels.tolist()}")
        row[labels - 1] = 1.0
    return present


def image_loss(logits: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
    """Binary cross-entropy of (N, K) logits against the images' presence vectors, mean over N and K."""
    present = image_targets(targets, logits.shape[1] + 1)  # (N, K)
    return F.binary_cross_entropy_with_logits(logits.float(), present.to(logits.device))
