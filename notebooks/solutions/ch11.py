"""Worked solutions to the exercises of chapter 11; MISTAKES holds a plausible wrong answer to each,
which its check (notebooks/exercises/ch11.py) must reject."""

import math

exercise_1 = 1.0
"""With the scores swapped the ranking is: the perfect hit (0.9), the second object (0.8, IoU 0.71), the
false positive (0.7). Precision 1, 1, 2/3; recall 1/2, 1, 1. Every recall level 0 ... 1 is first reached
at rank 1 or 2, where the precision is 1, so AP50 = 1: the false positive now comes after the last true
positive and costs nothing. (Before the swap it cost (51 * 1 + 50 * 2/3) / 101 = 0.835.)"""

exercise_2 = ([1] + [0] * 10 + [1] * 19, 20)
"""A hit, ten false positives, then nineteen hits, for 20 objects. The raw precision falls to 2/12 after
the false positives and climbs back to 20/30 at the end; the envelope replaces every value after rank 1
with the best precision to its right, 2/3. Read at the 101 recall levels: raw 0.518, COCO 0.686, a
difference of 0.168. Without the envelope, a detector would be punished for the order of its
ranking inside a stretch that ends better: the envelope makes AP depend on the best operating point
at each recall, which is what a user who picks a score threshold can get."""

exercise_3 = (
    1e-3 * (0.001 * 0.5 + 0.5),  # step 50 of 100 warm-up steps: halfway from lr * 0.001 to lr
    1e-3 * 0.5 * (1 + math.cos(math.pi * (1550 - 100) / (3000 - 100))),  # half the cosine: lr / 2
    1e-3 * 0.5 * (1 + math.cos(math.pi * (2250 - 100) / (3000 - 100))),  # about 1.55e-4
    1e-3 * 0.1,  # step schedule: 2500 >= 0.67 * 3000 = 2010, < 0.89 * 3000 = 2670: one factor of gamma
)
"""minimtl.engine.trainer.learning_rate_factor: during the warm-up (step < 100) the factor goes linearly
from warmup_factor (0.001) to 1; then the cosine runs over the remaining 2900 steps, factor
(1 + cos(pi * (step - 100) / 2900)) / 2; the step schedule multiplies by gamma (0.1) at each milestone
passed (fractions of all 3000 steps)."""

exercise_4 = ["correct", "classification", "duplicate", "localisation", "background", "both"]
"""0: the circle, IoU 1: correct. 1: a square on the triangle, IoU 1 with an object of another class:
classification. 2: a circle on the circle again, IoU 0.88, but the circle was taken by detection 0:
duplicate. 3: a square on a quarter of the square, IoU 225 / 900 = 0.25 (between 0.1 and 0.5):
localisation. 4: a triangle on nothing: background. 5: a triangle overlapping the square, IoU
450 / 1350 = 0.33 with an object of another class, none with its own: both. No object is missed: the
square and the triangle have errors pointing at them."""

exercise_5 = 1 - (51 + 50 * 2 / 3) / 101
"""With the duplicate the ranking is hit, miss, hit: as in the hand example, AP50 = (51 * 1 + 50 * 2/3)
/ 101 = 0.835 (levels 0 ... 0.5 at precision 1, 0.51 ... 1 at 2/3). Without it, hit, hit: AP50 = 1. The
duplicate costs 1 - 0.835 = 0.165: a duplicate ranked above a true positive costs as much as any false
positive there, which is why NMS's threshold matters."""

exercise_6 = (0, 5, 3, 21)
"""Two boxes of side w, one shifted by s: intersection (w - s) w, union (w + s) w, IoU (w - s) / (w + s).
IoU >= t means s <= w (1 - t) / (1 + t): for w = 16, 0.84 px at 0.9 (so 0: any whole-pixel shift fails)
and 5.3 px at 0.5; for w = 64, 3.4 and 21.3 px. The allowed error grows with the object: at the strict
thresholds of COCO's AP (up to 0.95) small objects have almost no room, one reason APs is the lowest."""

MISTAKES = {
    1: (51 + 50 * 2 / 3) / 101,  # the unswapped answer
    2: ([1, 1, 0, 0], 2),  # true positives first: the precision never rises again, envelope = raw
    # the warm-up taken to start at 0, the cosine run over all 3000 steps
    3: (5e-4, 1e-3 * 0.5 * (1 + math.cos(math.pi * 1550 / 3000)), 1.55e-4, 1e-4),
    4: ["correct", "classification", "duplicate", "localisation", "background", "classification"],
    5: 1 / 3,  # as if the precision were 2/3 at every recall level
    6: (1, 8, 6, 32),  # s = w (1 - t), the intersection alone
}
