"""minimtl.experiments.stats (Student's t, paired differences, seeds needed) and the paired comparisons of
the joint-versus-separate report (minimtl.experiments.mtl), on fabricated results: no training."""

import math
import statistics

import pytest

from minimtl.experiments import mtl, stats

# --- Student's t ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (29, 2.045), (1e6, 1.960), (math.inf, 1.960)],
)
def test_t_quantile_matches_the_tables(df, expected):
    assert round(stats.t_quantile(0.975, df), 3) == expected


def test_t_quantile_other_levels_and_symmetry():
    assert round(stats.t_quantile(0.995, 1), 3) == 63.657
    assert round(stats.t_quantile(0.95, 4), 3) == 2.132
    assert round(stats.t_quantile(0.995, 9), 3) == 3.250
    assert stats.t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    assert stats.t_quantile(0.025, 5) == pytest.approx(-stats.t_quantile(0.975, 5), abs=1e-12)
    for df in (1, 2.5, 10, 300):
        for p in (0.6, 0.9, 0.999):
            assert stats.t_cdf(stats.t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_cdf_has_the_closed_forms_of_one_and_two_degrees_of_freedom():
    for t in (-30.0, -2.0, -0.3, 0.0, 0.7, 4.0, 100.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_incomplete_beta_has_its_closed_forms():
    for x in (0.0, 0.05, 0.3, 0.5, 0.9, 0.999, 1.0):
        assert stats.incomplete_beta(x, 1.0, 3.5) == pytest.approx(1 - (1 - x) ** 3.5, abs=1e-12)
        assert stats.incomplete_beta(x, 2.5, 1.0) == pytest.approx(x**2.5, abs=1e-12)
        # I_x(a, b) = 1 - I_{1-x}(b, a)
        assert stats.incomplete_beta(x, 4.0, 0.5) == pytest.approx(
            1 - stats.incomplete_beta(1 - x, 0.5, 4.0), abs=1e-12
        )


def test_t_quantile_refuses_what_has_no_quantile():
    for p, df in [(0.0, 3), (1.0, 3), (1.5, 3), (0.9, 0), (0.9, -1)]:
        with pytest.raises(ValueError):
            stats.t_quantile(p, df)


# --- paired differences -------------------------------------------------------------------------------------------


def test_paired_difference_on_a_hand_example():
    # d = a - b = [0.03, 0.02, 0.04]: d̄ = 0.03; deviations 0, -0.01, +0.01, so s_d = sqrt(0.0002 / 2) = 0.01;
    # standard error 0.01 / √3 = 0.0057735; t_{0.975, 2} = 4.3027, half-width 0.024841;
    # interval 0.03 ∓ 0.024841 = [0.005159, 0.054841], without 0.
    p = stats.paired_difference([0.50, 0.46, 0.48], [0.47, 0.44, 0.44])
    assert p.n == 3 and p.confidence == 0.95
    assert p.mean == pytest.approx(0.03, abs=1e-12)
    assert p.std == pytest.approx(0.01, abs=1e-12)
    assert p.stderr == pytest.approx(0.0057735, abs=1e-7)
    assert p.half_width == pytest.approx(0.024841, abs=1e-6)
    assert (p.low, p.high) == (pytest.approx(0.005159, abs=1e-6), pytest.approx(0.054841, abs=1e-6))
    assert p.excludes_zero
    # the same pairs at 99 %: t_{0.995, 2} = 9.9248, half-width 0.057301 > 0.03, so 0 is inside
    wide = stats.paired_difference([0.50, 0.46, 0.48], [0.47, 0.44, 0.44], confidence=0.99)
    assert wide.half_width == pytest.approx(0.057301, abs=1e-6) and not wide.excludes_zero


def test_paired_difference_with_one_pair_says_there_is_no_interval():
    p = stats.paired_difference([0.5], [0.4])
    assert p.n == 1 and p.mean == pytest.approx(0.1)
    assert (p.std, p.stderr, p.low, p.high, p.half_width) == (None, None, None, None, None)
    assert not p.excludes_zero and "no interval" in p.note


def test_paired_difference_refuses_unpaired_input():
    with pytest.raises(ValueError, match="same number"):
        stats.paired_difference([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="no values"):
        stats.paired_difference([], [])
    with pytest.raises(ValueError, match="confidence"):
        stats.paired_difference([0.1, 0.2], [0.1, 0.3], confidence=95)


def test_pairing_resolves_what_the_unpaired_comparison_cannot():
    # The seed moves both rows alike (a hard data order lowers both): the rows' spreads are ~0.06, the
    # joint row is above the baseline by 0.010 to 0.012 at every seed.
    baseline = [0.40, 0.46, 0.52]
    joint = [0.411, 0.470, 0.532]
    # unpaired: difference of means 0.011 against a standard error of ~0.049, with either rule
    results = {"joint, a": [{"mIoU": v} for v in joint], "semantic only": [{"mIoU": v} for v in baseline]}
    (_, _, diff, stderr, old_verdict) = mtl.unpaired_differences(mtl.summary(results), results)[0]
    assert diff == pytest.approx(0.011) and stderr > 0.04 and old_verdict == "no clear difference"
    welch_half = stats.t_quantile(0.975, 4) * stderr  # a t interval on the unpaired standard error, generously df 4
    assert abs(diff) < welch_half
    # paired: d = [0.011, 0.010, 0.012], d̄ = 0.011, s_d = 0.001, half-width 4.303 * 0.001 / √3 = 0.00248
    p = stats.paired_difference(joint, baseline)
    assert p.std == pytest.approx(0.001, abs=1e-9) and p.half_width == pytest.approx(0.0024842, abs=1e-6)
    assert p.excludes_zero and p.low > 0


# --- what an experiment can resolve ------------------------------------------------------------------------------


def test_resolvable_difference_is_the_half_width():
    # 0.03 * t_{0.975, 2} / √3 = 0.03 * 4.3027 / 1.7321 = 0.074524
    assert stats.resolvable_difference(0.03, 3) == pytest.approx(0.074524, abs=1e-6)
    p = stats.paired_difference([0.50, 0.46, 0.48, 0.41], [0.47, 0.44, 0.44, 0.43])
    assert stats.resolvable_difference(p.std, p.n) == pytest.approx(p.half_width, abs=1e-12)
    with pytest.raises(ValueError):
        stats.resolvable_difference(0.03, 1)


@pytest.mark.parametrize(("s_d", "target"), [(0.03, 0.02), (0.01, 0.02), (0.025, 0.02), (0.05, 0.005), (0.2, 0.3)])
def test_seeds_needed_is_the_first_n_that_resolves_the_target(s_d, target):
    n = stats.seeds_needed(s_d, target)
    assert n is not None and n >= 2
    assert stats.resolvable_difference(s_d, n) <= target
    if n > 2:
        assert stats.resolvable_difference(s_d, n - 1) > target


def test_seeds_needed_worked_numbers_and_limits():
    # s_d 0.03: n = 11 gives 2.228 * 0.03 / √11 = 0.02016, n = 12 gives 2.201 * 0.03 / √12 = 0.01906
    assert stats.seeds_needed(0.03, 0.02) == 12
    assert stats.seeds_needed(0.0, 0.02) == 2  # no spread: two seeds show it
    assert stats.seeds_needed(1.0, 0.001, max_seeds=1000) is None  # needs ~3.8 million
    assert stats.seeds_needed(0.03, 0.02, max_seeds=11) is None
    assert stats.seeds_needed(0.03, 0.02, max_seeds=12) == 12
    with pytest.raises(ValueError):
        stats.seeds_needed(0.03, 0.0)


# --- the report ---------------------------------------------------------------------------------------------------

# (seed 0, seed 1, seed 2) per row and metric; the seed moves every row alike
ROWS = {
    "detection only": {"box_AP": (0.43, 0.46, 0.49)},
    "Mask R-CNN (detection + instance)": {"box_AP": (0.44, 0.46, 0.48), "mask_AP": (0.42, 0.45, 0.47)},
    "semantic only": {"mIoU": (0.42, 0.44, 0.45)},
    "joint, ahead": {"box_AP": (0.45, 0.485, 0.505), "mask_AP": (0.43, 0.465, 0.475), "mIoU": (0.44, 0.455, 0.475)},
    "joint, unsure": {"box_AP": (0.47, 0.44, 0.49), "mask_AP": (0.40, 0.47, 0.46), "mIoU": (0.43, 0.43, 0.47)},
}


def fabricated(rows=ROWS, seeds=(0, 1, 2), order=None) -> dict:
    """{row: [result per seed]} as mtl.run returns it; `order` reorders the seeds of a row."""
    results = {}
    for name, metrics in rows.items():
        runs = []
        for i, seed in enumerate(seeds):
            result = {"settings": {"row": name, "seed": seed, "steps": 600}, "train_seconds": 100.0 + i}
            result.update({metric: values[i] for metric, values in metrics.items()})
            runs.append(result)
        results[name] = runs[::-1] if order == name else runs
    return results


def test_differences_pair_by_seed():
    comparisons = mtl.differences(fabricated(order="detection only"))  # pairing follows the seeds, not the order
    assert [(c.row, c.metric) for c in comparisons] == [
        (row, metric) for row in ("joint, ahead", "joint, unsure") for metric in ("box_AP", "mask_AP", "mIoU")
    ]
    ahead = {c.metric: c for c in comparisons if c.row == "joint, ahead"}
    # box_AP: d = [0.02, 0.025, 0.015]: d̄ = 0.02, s_d = 0.005, half-width 4.3027 * 0.005 / √3 = 0.012421,
    # interval [0.007579, 0.032421]: better
    box = ahead["box_AP"]
    assert box.seeds == (0, 1, 2) and box.baseline == "detection only"
    assert box.paired.mean == pytest.approx(0.02) and box.paired.std == pytest.approx(0.005)
    assert (box.paired.low, box.paired.high) == (pytest.approx(0.007579, abs=1e-6), pytest.approx(0.032421, abs=1e-6))
    assert box.verdict == "better" and ahead["mIoU"].verdict == "better"  # mIoU: d = [0.02, 0.015, 0.025]
    # mask_AP: d = [0.01, 0.015, 0.005]: the same spread around 0.01, interval [-0.002421, 0.022421]
    assert ahead["mask_AP"].paired.low == pytest.approx(-0.002421, abs=1e-6)
    assert (
        ahead["mask_AP"].baseline == "Mask R-CNN (detection + instance)" and ahead["mask_AP"].verdict == "cannot tell"
    )
    unsure = {c.metric: c for c in comparisons if c.row == "joint, unsure"}
    # box_AP: d = [+0.04, -0.02, 0.00], d̄ = 0.00667, s_d = 0.030551, half-width 4.3027 * 0.030551 / √3 = 0.075892
    box = unsure["box_AP"].paired
    assert box.mean == pytest.approx(0.02 / 3) and box.std == pytest.approx(0.030551, abs=1e-6)
    assert box.half_width == pytest.approx(0.075892, abs=1e-6)
    assert all(c.verdict == "cannot tell" for c in unsure.values())


def test_a_worse_row_is_called_worse():
    rows = {"detection only": {"box_AP": (0.43, 0.46, 0.49)}, "joint, worse": {"box_AP": (0.40, 0.44, 0.46)}}
    (comparison,) = mtl.differences(fabricated(rows))
    assert comparison.paired.high < 0 and comparison.verdict == "worse"
    assert mtl.verdict([comparison]).startswith("Joint training hurt here: in 1 of 1 comparisons")


def test_rows_run_with_other_seeds_are_refused(tmp_path):
    results = fabricated()
    results["semantic only"] = fabricated(seeds=(0, 1, 3))["semantic only"]
    with pytest.raises(
        ValueError, match=r"'joint, ahead' \(seeds \[0, 1, 2\]\) with 'semantic only' \(seeds \[0, 1, 3\]\)"
    ):
        mtl.differences(results)
    with pytest.raises(ValueError, match="same seeds"):
        mtl.write_report(results, tmp_path / "mtl.md", [0, 1, 2], 600, mtl.shapes_data(200))
    assert not (tmp_path / "mtl.md").exists()
    del results["semantic only"][0]["settings"]
    with pytest.raises(ValueError, match=r"'semantic only': a result without settings\['seed'\]"):
        mtl.differences(results)


def test_report_states_the_paired_intervals_and_what_it_can_resolve(tmp_path):
    results = fabricated()
    text = mtl.write_report(results, tmp_path / "out" / "mtl.md", [0, 1, 2], 600, mtl.shapes_data(200))
    assert (tmp_path / "out" / "mtl.md").read_text() == text + "\n"
    assert "| joint, unsure | 0.467 ± 0.025 | 0.443 ± 0.038 | 0.443 ± 0.023 | 101 s |" in text  # the table stays
    assert "seed by seed" in text and "twice its standard error" not in text
    assert (
        "- joint, unsure vs detection only, box_AP: 0.467 vs 0.460, paired difference +0.007 "
        "(s_d 0.031, 95 % interval -0.069 to +0.083): cannot tell." in text
    )
    assert (
        "- joint, ahead vs semantic only, mIoU: 0.457 vs 0.437, paired difference +0.020 "
        "(s_d 0.005, 95 % interval +0.008 to +0.032): better." in text
    )
    assert text.count(": better.") == 2 and text.count(": cannot tell.") == 4
    assert "Joint training helped here: in 2 of 6 comparisons the 95 % interval is above 0, in none below." in text
    assert "mIoU against semantic only: joint rows differ by +0.007 to +0.020 (paired means); better in 1" in text
    resolvable = text[text.index("## What this experiment can resolve") :]
    # box_AP's largest s_d is joint, unsure's 0.0306: resolvable 0.0759 at 3 seeds, 12 seeds to resolve 0.02
    n = stats.seeds_needed(statistics.stdev([0.04, -0.02, 0.0]), 0.02)
    assert n == 12
    assert f"| box_AP | 3 | 0.031 (joint, unsure) | 0.076 | {n} |" in resolvable
    assert "| mask_AP | 3 |" in resolvable and "| mIoU | 3 |" in resolvable


def test_report_with_one_seed_says_it_cannot_tell(tmp_path):
    text = mtl.write_report(fabricated(seeds=(5,)), tmp_path / "mtl.md", [5], 20, mtl.shapes_data(8))
    assert text.count(": cannot tell.") == 6 and "one pair: no spread between seeds, so no interval" in text
    assert "| box_AP | 1 | – (one seed: no spread) |" in text
    assert "Neither confirmed nor refuted at this budget: none of the 6 comparisons" in text
