"""Matcher and BalancedPositiveNegativeSampler (minimtl/modeling/matcher.py, sampler.py)."""

import importlib

import pytest
import torch

from minimtl.modeling.matcher import Matcher
from minimtl.modeling.sampler import BalancedPositiveNegativeSampler

BELOW, BETWEEN = Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS


def test_thresholds():
    quality = torch.tensor([[0.9, 0.5, 0.1, 0.7], [0.2, 0.65, 0.0, 0.69]])  # 2 GT x 4 predictions
    assert Matcher(0.7, 0.3)(quality).tolist() == [0, BETWEEN, BELOW, 0]


def test_no_ground_truth_is_all_background_and_no_predictions_is_empty():
    assert Matcher(0.7, 0.3)(torch.zeros(0, 5)).tolist() == [BELOW] * 5
    assert Matcher(0.7, 0.3)(torch.zeros(3, 0)).shape == (0,)


def test_all_below_threshold_unless_low_quality_matches_allowed():
    quality = torch.tensor([[0.1, 0.2, 0.05], [0.15, 0.1, 0.25]])
    assert Matcher(0.7, 0.3)(quality).tolist() == [BELOW, BELOW, BELOW]
    # each ground truth keeps its best prediction, whatever its IoU
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality).tolist() == [BELOW, 0, 1]


def test_ties():
    # a prediction tied between two ground truths goes to the first
    assert Matcher(0.5, 0.5)(torch.tensor([[0.8], [0.8]])).tolist() == [0]
    # a ground truth tied between two predictions keeps both as low-quality matches
    quality = torch.tensor([[0.4, 0.4, 0.1]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality).tolist() == [0, 0, BELOW]


def test_ground_truth_overlapping_nothing_claims_nothing():
    # GT 1 lies outside every prediction: its "best" IoU is 0, shared by all predictions. It must
    # not turn them into low-quality positives (torchvision's matcher would make all three match).
    quality = torch.tensor([[0.0, 0.8, 0.0], [0.0, 0.0, 0.0]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality).tolist() == [BELOW, 0, BELOW]
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(torch.zeros(2, 4)).tolist() == [BELOW] * 4


def test_matches_torchvision():
    tv = importlib.import_module("torchvision.models.detection._utils")
    g = torch.Generator().manual_seed(0)
    for allow in (False, True):
        quality = (torch.rand(7, 300, generator=g) * 10).round() / 10  # many ties
        expected = tv.Matcher(0.7, 0.3, allow)(quality)
        assert torch.equal(Matcher(0.7, 0.3, allow)(quality), expected)


def test_invalid_thresholds():
    with pytest.raises(ValueError, match="low_threshold 0.8 must be <= high_threshold 0.5"):
        Matcher(0.5, 0.8)


def test_sampler_ratio_and_fill():
    sampler = BalancedPositiveNegativeSampler(batch_size_per_image=64, positive_fraction=0.25)
    labels = torch.cat([torch.ones(100), torch.zeros(1000), -torch.ones(50)]).long()
    pos, neg = sampler(labels, torch.Generator().manual_seed(0))
    assert pos.sum() == 16 and neg.sum() == 48  # 25 % of 64 positive
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()  # never an ignored one
    few = torch.cat([torch.ones(5), torch.zeros(1000)]).long()
    pos, neg = sampler(few)
    assert pos.sum() == 5 and neg.sum() == 59  # negatives fill in
    pos, neg = sampler(torch.zeros(10, dtype=torch.long))
    assert pos.sum() == 0 and neg.sum() == 10  # fewer than asked: all of them


def test_sampler_is_random_but_reproducible():
    sampler = BalancedPositiveNegativeSampler(32, 0.5)
    labels = torch.cat([torch.ones(100), torch.zeros(100)]).long()
    a = sampler(labels, torch.Generator().manual_seed(1))
    b = sampler(labels, torch.Generator().manual_seed(1))
    c = sampler(labels, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
