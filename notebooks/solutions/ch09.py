"""Worked solutions to the exercises of chapter 9, hypercolumns and semantic segmentation
(notebooks/09_hypercolumns.ipynb).

`exercise_K` is the answer to exercise K in the form `exercises.ch09.exercise_K` takes; the reasoning
is in its docstring and comments. `MISTAKES[K]` is a plausible wrong answer, which the check rejects.
Try the exercise before you read on.
"""

import copy
import math
import statistics

import torch
import torch.nn.functional as F
from torch import Tensor

from minimtl.modeling.hypercolumn import HypercolumnHead

# --- 1. Hypercolumns at the image's pixels ----------------------------------------------------------------


def full_resolution_logits(head: HypercolumnHead, features: list[Tensor], size) -> Tensor:
    """The head's layers applied to hypercolumns built at `size` (the image's pixels).

    Upsampling commutes with the 1x1 projections (section 9.2), so project each level at its own size
    and upsample the D-channel result straight to `size`; then the head's ReLU, hidden layer, ReLU and
    classifier, now at every pixel. The head instead computes all of that on C2's grid (stride 4) and
    upsamples the logits 4x. Two reasons the results differ:

    * Bilinear upsampling in two steps is not one step. 4 -> 128 is linear between the centres of the
      4 x 4 cells; 4 -> 32 -> 128 samples that function on the 32-grid's centres, which miss the 4-grid's
      centres (16, 48, ... px against 14, 18, ... px), and joins the samples by straight lines: the kinks
      are cut off. (C2 itself, already on the 32-grid, is upsampled once either way.)
    * A ReLU does not commute with upsampling: relu(up(x)) != up(relu(x)) wherever x changes sign between
      two cells (up(relu(x)) is never below 0 there, relu(up(x)) crosses 0 mid-way). The head has two ReLUs
      between its projections and its logits.
    """
    columns = sum(
        F.interpolate(projection(f), size=size, mode="bilinear", align_corners=False)
        for projection, f in zip(head.projections, features, strict=True)
    )  # (N, D, H, W)
    return head.classifier(F.relu(head.hidden(F.relu(columns))))  # (N, S, H, W)


exercise_1 = {"logits": full_resolution_logits, "two_steps_same": False, "relu_commutes": False}

_SAME_AS_UPSAMPLED = {  # wrong: assumes the two are the same, so the head's logits upsampled will do
    "logits": lambda head, features, size: F.interpolate(
        head(features), size=size, mode="bilinear", align_corners=False
    ),
    "two_steps_same": True,
    "relu_commutes": False,
}


# --- 2. The paper's linear classifier -------------------------------------------------------------------------


class LinearHypercolumn(HypercolumnHead):
    """W h(p) + b: the projections straight to num_classes channels, summed after upsampling; nothing else.

    To train it on the frozen backbone: `for p in model.backbone.parameters(): p.requires_grad_(False)`,
    replace `model.semantic_head` by this module (and, for the comparison, by a fresh HypercolumnHead),
    and train with the same TrainConfig; the mIoU difference is what the ReLUs and the hidden layer buy
    (one seed, one short run: see exercise 8 before you believe a small one).
    """

    def __init__(self, in_channels: list[int], num_classes: int):
        super().__init__(in_channels, num_classes, channels=num_classes)
        del self.hidden, self.classifier  # not used: no parameters that would never get a gradient

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.hypercolumns(features)  # (N, S, H_0, W_0): already the logits


exercise_2 = LinearHypercolumn


class _ReluAfterTheSum(LinearHypercolumn):
    """Wrong: a ReLU after the sum (the head's first nonlinearity) makes it neither linear nor able to give
    negative logits."""

    def forward(self, features):
        return F.relu(self.hypercolumns(features))


# --- 3. Per-class IoU from a confusion matrix -------------------------------------------------------------


def exercise_3(matrix: Tensor) -> list[float]:
    """IoU_c = TP_c / (TP_c + FP_c + FN_c), from the matrix's diagonal, column sums and row sums.

    TP_c is entry [c, c]; FN_c the rest of row c (class c called something else); FP_c the rest of column c
    (something else called c). So TP + FP + FN = row sum + column sum - TP. A class in no row and no
    column has no IoU (nan), and mean IoU skips it.

    What to expect in the experiment: on C2, C3 alone (strides 4 and 8, small receptive fields) the head
    still finds where the shapes are but confuses circle, square and triangle with one another: the
    off-diagonal entries between the shape classes grow. On C4, C5 alone (strides 16 and 32) it names the
    shapes better but draws them coarsely: the errors move to the shape/background border, rows and columns
    of the background.
    """
    matrix = matrix.double()
    tp = matrix.diagonal()
    union = matrix.sum(dim=0) + matrix.sum(dim=1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.nan).tolist()


def _recall(matrix):
    """Wrong: TP / row sum is the recall of each class (it forgets the false positives)."""
    matrix = matrix.double()
    rows = matrix.sum(dim=1)
    return torch.where(rows > 0, matrix.diagonal() / rows.clamp(min=1), torch.nan).tolist()


# --- 4. Inverse-frequency class weights ---------------------------------------------------------------------


def exercise_4(labels: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """w_c = N / (K n_c): every present class gets the same total weight N / K, and the weights average 1
    over the N labelled pixels, so the loss keeps its scale. An absent class gets 0.

    With these weights (`pixel_cross_entropy(..., weight=w)`, or `F.cross_entropy(..., weight=w)` inside a
    copy of semantic_loss) a shape pixel weighs about ten times a background pixel here (background: about
    4 pixels in 5; each shape class: 1 in 15). Expect the shapes' IoU to rise and the background's to fall:
    the model now calls doubtful pixels "shape", which adds false positives around every shape; whether
    the mIoU rises depends on which of the two wins.
    """
    valid = labels[labels != ignore_index]  # the ignored pixels (padding) count for nothing
    counts = torch.bincount(valid, minlength=num_classes).float()  # n_c
    present = counts > 0
    return torch.where(present, valid.numel() / (present.sum() * counts.clamp(min=1)), 0.0)


def _counts_the_padding(labels, num_classes, ignore_index=255):
    """Wrong: N counts the ignored pixels too, which inflates every weight by the padding's share."""
    valid = labels[labels != ignore_index]
    counts = torch.bincount(valid, minlength=num_classes).float()
    present = counts > 0
    return torch.where(present, labels.numel() / (present.sum() * counts.clamp(min=1)), 0.0)


# --- 5. Dice and the absent classes ---------------------------------------------------------------------------


def exercise_5(total_probability: float, eps: float = 1.0) -> float:
    """1 - (2 * 0 + eps) / (S + 0 + eps) = S / (S + eps), with S = the class's summed probability.

    A class that is absent from the image has no pixel in G, so the intersection is 0. If the model puts no
    probability on it (S -> 0), the cost is 0: right. If it predicts it on the equivalent of 10 pixels, the
    cost is 10/11: a false positive is penalised nearly in full. Averaged over the present classes only,
    that term would be dropped, and nothing would stop the model predicting classes that are not there
    (their probability mass taken from a present class is all the other terms would see). This is also why
    eps must be > 0: at S = 0 the term would be 0/0.
    """
    return total_probability / (total_probability + eps)


def _forgets_the_numerators_eps(total_probability, eps=1.0):
    """Wrong: 1 - 2|P∩G| / (|P| + |G| + eps) without the eps on top: every absent class costs 1, predicted or not."""
    return 1.0 - 0.0 / (total_probability + eps)


# --- 6. The multiply-adds of Panoptic FPN's head -------------------------------------------------------------
#
# At 800 x 1344, P2..P5 are 200 x 336, 100 x 168, 50 x 84 and 25 x 42. Every stage's 3x3 conv costs
# h w * 128 * C_in * 9 at the size it runs at (C_in = 256 for the first conv of a level, 128 after), and each
# upsampling doubles the size for the next conv of the same level:
#
#   P2: 200·336·128·256·9                                      (one conv, no upsampling)
#   P3: 100·168·128·256·9                                      (then up to 200 x 336)
#   P4:  50·84·128·256·9 + 100·168·128·128·9                   (then up to 200 x 336)
#   P5:  25·42·128·256·9 + 50·84·128·128·9 + 100·168·128·128·9
#   the classifier: 200·336·4·128
#
# 31.9 G multiply-adds, 28 times the hypercolumn head's 1.14 G of section 9.2 (whose count leaves out its
# hidden layer and classifier: 200·336·(128·128 + 128·4) = 1.1 G more; still some 14 times cheaper). The 3x3
# convolutions at stride 4 dominate: P2's alone is 19.8 G.
_P2, _P3, _P4, _P5 = 200 * 336, 100 * 168, 50 * 84, 25 * 42
_FPN_HEAD = (
    _P2 * 128 * 256 * 9
    + _P3 * 128 * 256 * 9
    + _P4 * 128 * 256 * 9
    + _P3 * 128 * 128 * 9
    + _P5 * 128 * 256 * 9
    + _P4 * 128 * 128 * 9
    + _P3 * 128 * 128 * 9
    + _P2 * 4 * 128
)
_HYPERCOLUMN = _P2 * 64 * 128 + _P3 * 128 * 128 + _P4 * 256 * 128 + _P5 * 512 * 128 + 4 * 3 * _P2 * 128  # section 9.2
exercise_6 = {"multiply_adds": _FPN_HEAD, "times_hypercolumn": _FPN_HEAD / _HYPERCOLUMN}


# --- 7. Without P2 in the box's hypercolumns ---------------------------------------------------------------


def exercise_7(pooler, level: int):
    """A copy of the pooler whose projection of `level` is zero, weight and bias: that level adds nothing.

    Zeroing the weight alone would leave its bias in the sum. In a trained joint model, without P2 (stride
    4, the only level with cells smaller than the shapes' corners) the masks' outlines come from P3..P5,
    8 to 32 pixels per cell: expect rounder, coarser outlines, corners cut off. (The mask head never saw
    features without P2's share, so the masks may also shift or shrink overall: compare their mask IoU.)
    """
    pooler = copy.deepcopy(pooler)  # the trained model keeps its pooler
    with torch.no_grad():
        pooler.projections[level].weight.zero_()
        pooler.projections[level].bias.zero_()
    return pooler


def _zeroes_the_weight_only(pooler, level):
    """Wrong: the bias of the zeroed level still adds a constant to every pooled feature."""
    pooler = copy.deepcopy(pooler)
    with torch.no_grad():
        pooler.projections[level].weight.zero_()
    return pooler


# --- 8. Is the difference larger than the spread? ------------------------------------------------------------


def exercise_8(scores_a: list[float], scores_b: list[float]) -> str:
    """Chapter 10.6's rule (minimtl.experiments.mtl.unpaired_differences): a real difference exceeds twice its
    standard error, sqrt(s_a^2 / n_a + s_b^2 / n_b), with s the standard deviation over the seeds.

    The standard error is the spread of a *mean* over n seeds, std / sqrt(n), not the spread of one run.
    With one seed per head there is no spread to compare with: no clear difference, whatever the gap.
    """
    mean_a, mean_b = statistics.fmean(scores_a), statistics.fmean(scores_b)
    std_a = statistics.stdev(scores_a) if len(scores_a) > 1 else 0.0
    std_b = statistics.stdev(scores_b) if len(scores_b) > 1 else 0.0
    stderr = math.sqrt(std_a**2 / len(scores_a) + std_b**2 / len(scores_b))
    difference = mean_a - mean_b
    if stderr == 0 or abs(difference) <= 2 * stderr:
        return "no clear difference"
    return "better" if difference > 0 else "worse"


def _spread_of_one_run(scores_a, scores_b):
    """Wrong: compares the difference of the means with the seeds' spread itself (no division by n)."""
    mean_a, mean_b = statistics.fmean(scores_a), statistics.fmean(scores_b)
    std_a = statistics.stdev(scores_a) if len(scores_a) > 1 else 0.0
    std_b = statistics.stdev(scores_b) if len(scores_b) > 1 else 0.0
    spread = math.sqrt(std_a**2 + std_b**2)
    if spread == 0 or abs(mean_a - mean_b) <= 2 * spread:
        return "no clear difference"
    return "better" if mean_a > mean_b else "worse"


MISTAKES = {
    1: _SAME_AS_UPSAMPLED,
    2: _ReluAfterTheSum,
    3: _recall,
    4: _counts_the_padding,
    5: _forgets_the_numerators_eps,
    6: {"multiply_adds": _FPN_HEAD / 9, "times_hypercolumn": _FPN_HEAD / 9 / _HYPERCOLUMN},
    7: _zeroes_the_weight_only,
    8: _spread_of_one_run,
}
