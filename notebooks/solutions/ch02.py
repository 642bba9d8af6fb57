"""Worked solutions to the exercises of chapter 2, non-maximum suppression (notebooks/02_nms.ipynb).

Each `exercise_K` is the answer in the form `exercises.ch02.exercise_K` takes; the reasoning is in the
comments and docstrings. `MISTAKES` holds a plausible wrong answer per exercise, which the check rejects.
Try the exercise before you read on.
"""

import math

import torch

from minimtl import ops
from minimtl.ops import reference

# --- Exercise 1 ----------------------------------------------------------------------------------
# With >=, box 3 (0.95) removes box 0 (IoU exactly 0.5 >= 0.5). Box 1's only kept predecessor is then
# box 3, at IoU 0.32: kept. Box 2 overlaps nothing: kept. Result [3, 1, 2], the same as > at 0.49.
#
# Another way to reach IoU 0.5 exactly, with neither box inside the other: two 3 x 1 boxes offset by
# one pixel, (0, 0, 3, 1) and (1, 0, 4, 1): |a ∩ b| = 2, |a ∪ b| = 3 + 3 - 2 = 4. (Any a, b with
# |a ∩ b| = (|a| + |b|) / 3 will do.)
#
# Why bit-exactness matters: at an IoU equal to the threshold, `iou > t` is decided by the last bit.
# If the CPU kernel computed 0.5 and the CUDA kernel 0.50000006 (one float32 ulp above, from another
# order of operations or a fused multiply-add), the CPU would keep box 0 and the GPU remove it, and
# every later decision that depends on box 0 would differ too (greedy NMS propagates decisions). Only
# the same IEEE operations in the same order (csrc/box_math.h, no FMA contraction) and the threshold
# rounded to the same dtype make "kernel == reference" an exact, index-for-index property.
exercise_1 = {"keep": [3, 1, 2], "boxes": ((0, 0, 3, 1), (1, 0, 4, 1))}


# --- Exercise 2 ----------------------------------------------------------------------------------
def nms_iou_count(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> int:
    """The number of IoUs csrc/cpu/nms.cpp computes for these boxes.

    The kernel walks the boxes in rank order (rank r = position in decreasing score order). A removed
    box `continue`s at once and computes nothing. A kept box of rank r calls `suppress` on the boxes
    after it: first the rest of its tile (ranks r + 1 .. tile_end - 1), then every box after the tile
    (tile_end .. N - 1), without skipping the removed ones (the inner loop is branch-free). That is
    N - 1 - r IoUs, whatever the tiling, so the total is the sum over kept boxes of N - 1 - r_i.
    """
    n = len(boxes)
    rank = torch.empty(n, dtype=torch.long)
    rank[reference.order_by_score(scores)] = torch.arange(n)  # box index -> rank
    kept = ops.nms(boxes, scores, iou_threshold)
    return int((n - 1 - rank[kept]).sum())


# Every box kept (ranks 0 .. N - 1): (N - 1) + (N - 2) + ... + 0 = N (N - 1) / 2, the upper triangle,
# as many as the reference's full matrix holds above its diagonal. The top box removes all others: only
# rank 0 is kept, N - 1 IoUs. In general the cost grows with the number K of kept boxes and with how
# early they rank: at most K (N - 1) - K (K - 1) / 2, when the kept boxes are the top K.
#
# Timing: 5,000 boxes with sides up to 100 in a 1000 x 1000 image seldom overlap: about 4,060 are kept
# (threshold 0.5, seed 0), and the kernel computes 10.8 million IoUs, 86% of N (N - 1) / 2. In a
# 100 x 100 image they overlap heavily: about 1,230 are kept and the count is 3.7 million, three times
# fewer, and the time falls with it (nms_iou_count on both).
exercise_2 = {"count": nms_iou_count, "all_kept": lambda n: n * (n - 1) // 2, "top_removes_all": lambda n: n - 1}


# --- Exercise 3 ----------------------------------------------------------------------------------
def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, sigma: float = 0.5, score_threshold: float = 0.001):
    """Gaussian Soft-NMS (Bodla et al., ICCV 2017). (N, 4), (N,) -> keep (K,) int64, their scores (K,).

    Repeat: pick the remaining box with the highest *current* score (ties: the lowest index), record
    it with that score, then decay every remaining box by exp(-IoU^2 / sigma), its IoU with the picked
    box, and drop the boxes that fell below score_threshold. The pick is re-sorted every time: a box
    decayed by its neighbour can fall behind a box that was lower at the start (in the hand example,
    box 2, 0.70, is picked before box 0, decayed from 0.90 to 0.55 by box 3).

    No precomputed bitmask can do this. The CUDA mask stores fixed yes/no answers to "does i remove
    j?", valid because plain NMS's answer depends only on the IoU and the threshold, and the order of
    the walk is fixed by the original scores. In Soft-NMS nothing is removed by a single comparison: a
    box's score is a product over all earlier picks, which earlier picks there are depends on the
    decayed scores, and the walk's order changes with them. The IoUs themselves could be precomputed
    (the N x N matrix), but not the decisions, and the sequential re-sort stays.
    """
    iou = ops.box_iou(boxes, boxes)  # (N, N)
    scores = scores.clone()
    alive = scores >= score_threshold  # (N,)
    keep, kept_scores = [], []
    while alive.any():
        i = int(torch.where(alive, scores, -math.inf).argmax())  # argmax returns the first maximum
        keep.append(i)
        kept_scores.append(scores[i])
        alive[i] = False
        scores = torch.where(alive, scores * torch.exp(-(iou[i] ** 2) / sigma), scores)
        alive &= scores >= score_threshold
    kept_scores = torch.stack(kept_scores) if kept_scores else scores.new_empty(0)
    return torch.tensor(keep, dtype=torch.int64), kept_scores


exercise_3 = soft_nms

# --- Exercise 4 ----------------------------------------------------------------------------------
# The mask has one row per box and ceil(N / 64) 8-byte words per row: N ceil(N / 64) 8 bytes.
# 100,000 boxes: 100,000 x 1,563 words = 1,250,400,000 bytes, 1.25 GB (on top of the boxes, and all of
# it allocated, though half is never written). 389,056 boxes: 389,056 x 6,079 x 8 = 18.9 GB, more than
# many GPUs have.
#
# A triangular layout keeps, for row i (row block r = i // 64), only the words of column blocks r ..
# B - 1, B = ceil(N / 64): B - r words. Row by row, the rows of block r start after
#     64 (B + (B - 1) + ... + (B - r + 1)) = 64 (r B - r (r - 1) / 2)
# words, and row i has i - 64 r full rows of its own block before it, each B - r words long, so
#     index(i, c) = 64 (r B - r (r - 1) / 2) + (i - 64 r)(B - r) + (c - r).
# It saves a little less than half: about (B - 1) / (2B) of the words, 49.97% at 100,000 boxes.
W = 64


def mask_bytes(n: int) -> int:
    return n * math.ceil(n / W) * 8


def triangular_bytes(n: int) -> int:
    blocks = math.ceil(n / W)
    return 8 * sum(min(W, n - r * W) * (blocks - r) for r in range(blocks))  # the last block may be short


def word_index(i: int, col_block: int, n: int) -> int:
    blocks, r = math.ceil(n / W), i // W
    return W * (r * blocks - r * (r - 1) // 2) + (i - r * W) * (blocks - r) + (col_block - r)


MAX_BOXES = (48 * 1024 // 8 - W - 1) * W  # 389,056: what the gather kernel's shared memory can hold
exercise_4 = {
    "mask_bytes": {n: mask_bytes(n) for n in (100_000, MAX_BOXES)},
    "triangular_bytes": {n: triangular_bytes(n) for n in (100_000, MAX_BOXES)},
    "word_index": word_index,
}

# --- Exercise 5 ----------------------------------------------------------------------------------
# Worst case: every box kept, so the CPU kernel computes sum over ranks of N - 1 - r = N (N - 1) / 2.
# One NMS over N = 8,000 shifted boxes: 8,000 x 7,999 / 2 = 31,996,000 IoUs. A loop over C = 80 classes
# of 100 boxes: 80 x 100 x 99 / 2 = 396,000, about C times fewer: N^2 / 2 against N^2 / (2C). (The
# shifted boxes of different classes never overlap, so those extra IoUs are all 0: pure waste.)
#
# Spacing: float32 has 24 significant bits, so between 2^e and 2^(e+1) neighbouring numbers are
# 2^(e - 23) apart: 1/64 = 2^-6 up to 2^18 = 262,144, 1/32 above. With offsets c x 1334, class c's
# largest coordinate is 1334 c + 1333 = 1334 (c + 1) - 1 < 262,144 while c + 1 <= 196: classes 0 to 195
# keep 1/64 pixel or finer. Class 196 reaches 262,797, where the spacing is 1/32. COCO's 80 classes are
# safe; LVIS's 1203 are not (the cell of section 2.4: at class 1202 the spacing is 1/8).
exercise_5 = {"shifted": 8000 * 7999 // 2, "per_class": 80 * (100 * 99 // 2), "last_class": 195}

# --- Exercise 6 ----------------------------------------------------------------------------------
# Earlier words (A): removed[w] for w < group belongs to groups already decided; nothing reads them
# again. And they must not be touched: a box's mask row left of its own group lies below the diagonal,
# where the mask kernel returns at once, and the mask comes from at::empty, so those words are garbage.
#
# Word `group` (A): the decide step. Thread 0 starts from removed[group] (what the earlier groups
# remove here) and, for each box it keeps, ORs the box's diagonal word into removed_here, so boxes
# removed by an earlier box of the same group are skipped. removed[group] is not read after that.
#
# First barrier (P): before it, every thread may still be writing removed[group] (the previous group's
# spread; thread t owns words group + t, group + t + 256, ...) and threads 0..63 are loading diagonal.
# Thread 0 must not read either until all are done.
# Second barrier (Q): group_kept is written by thread 0 in the decide step and read by every thread in
# the spread; and the next iteration's load overwrites diagonal, which thread 0 reads while deciding.
exercise_6 = {"earlier_words": "A", "word_group": "A", "first_barrier": "P", "second_barrier": "Q"}


# --- Mistakes the checks must reject ---------------------------------------------------------------
def _soft_nms_without_resorting(boxes, scores, sigma=0.5, score_threshold=0.001):
    """Walks the boxes in their original score order, decaying the later ones: forgets to re-sort."""
    iou = ops.box_iou(boxes, boxes)
    scores = scores.clone()
    keep, kept_scores = [], []
    for i in reference.order_by_score(scores).tolist():
        if scores[i] < score_threshold:
            continue
        keep.append(i)
        kept_scores.append(scores[i])
        later = torch.ones(len(scores), dtype=torch.bool)
        later[keep] = False
        scores = torch.where(later, scores * torch.exp(-(iou[i] ** 2) / sigma), scores)
    return torch.tensor(keep, dtype=torch.int64), torch.stack(kept_scores) if kept_scores else scores.new_empty(0)


MISTAKES = {
    1: {"keep": [3, 0, 2], "boxes": ((0, 0, 10, 10), (0, 0, 10, 5))},  # the > result, and box 0 with box 3
    2: {  # counts K N: as if every kept box compared itself with all N boxes
        "count": lambda boxes, scores, t: len(ops.nms(boxes, scores, t)) * len(boxes),
        "all_kept": lambda n: n * n,
        "top_removes_all": lambda n: n,
    },
    3: _soft_nms_without_resorting,
    4: {  # one bit per pair, forgetting that each row is padded to whole words
        "mask_bytes": {n: n * n // 8 for n in (100_000, MAX_BOXES)},
        "triangular_bytes": {n: n * n // 16 for n in (100_000, MAX_BOXES)},
        "word_index": word_index,
    },
    5: {"shifted": 8000 * 7999 // 2, "per_class": 100 * 99 // 2, "last_class": 196},  # one class only; off by one
    6: {"earlier_words": "B", "word_group": "B", "first_barrier": "P", "second_barrier": "Q"},
}
