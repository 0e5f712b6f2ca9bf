"""significance.py against scipy and against closed forms worked by hand."""
from __future__ import annotations

import math
import statistics

import pytest

from dropcheck.records.statistics import (VERDICTS, PairedDifference, Summary, paired_difference, summarize, t_quantile)

pytest.importorskip("scipy", minversion="1.10")  # ttest_rel(...).confidence_interval arrived in 1.10
import scipy.stats as scipy_stats  # noqa: E402

DEGREES_OF_FREEDOM = [*range(1, 31), 60, 1000]
PROBABILITIES = [0.5, 0.9, 0.975, 0.995]

# The brief's example: differences 0.2, 0.4, 0.2, so mean 4/15, sample std 1/sqrt(75), std error 1/15.
TREATMENT = [93.8, 94.1, 93.9]
BASELINE = [93.6, 93.7, 93.7]


@pytest.mark.parametrize("df", DEGREES_OF_FREEDOM)
@pytest.mark.parametrize("p", PROBABILITIES)
def test_t_quantile_matches_scipy(p, df):
    assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("df", [1, 2, 5, 30])
@pytest.mark.parametrize("p", [1e-9, 0.001, 0.025, 0.3])
def test_t_quantile_keeps_relative_precision_in_the_lower_tail(p, df):
    assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-8)


@pytest.mark.parametrize("df", [1, 2, 5, 30])
@pytest.mark.parametrize("p", [0.001, 0.025, 0.3])
def test_t_quantile_is_antisymmetric_about_one_half(p, df):
    assert t_quantile(p, df) < 0
    assert t_quantile(p, df) == pytest.approx(-t_quantile(1 - p, df), rel=1e-10)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.9999])
def test_t_quantile_matches_closed_forms_for_one_and_two_degrees_of_freedom(p):
    # df=1 is the Cauchy distribution; df=2 has F^-1(p) = (2p - 1) / sqrt(2p(1 - p)).
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)


def test_t_quantile_approaches_the_normal_quantile_for_large_df():
    assert t_quantile(0.975, 1000) == pytest.approx(1.962339, abs=1e-6)
    assert t_quantile(0.975, 1000) > statistics.NormalDist().inv_cdf(0.975)


@pytest.mark.parametrize("p, df", [(0.0, 3), (1.0, 3), (-0.1, 3), (0.9, 0)])
def test_t_quantile_rejects_out_of_range_arguments(p, df):
    with pytest.raises(ValueError):
        t_quantile(p, df)


@pytest.mark.parametrize("values", [[93.8, 94.1, 93.9], [1.0, 2.0], [70.25, 71.5, 69.75, 72.0, 70.0, 71.25]])
def test_summarize_matches_statistics_module(values):
    summary = summarize(values)
    assert summary.n == len(values)
    assert summary.mean == pytest.approx(statistics.mean(values), rel=1e-14)
    assert summary.std == pytest.approx(statistics.stdev(values), rel=1e-12)


def test_summarize_single_value_has_no_std():
    assert summarize([94.2]) == Summary(n=1, mean=94.2, std=None)


def test_summarize_identical_values_have_exactly_zero_std():
    assert summarize([0.1, 0.1, 0.1]) == Summary(n=3, mean=0.1, std=0.0)


@pytest.mark.parametrize("values", [[], [93.0, math.nan], [math.inf, 1.0]])
def test_summarize_rejects_empty_or_non_finite_input(values):
    with pytest.raises(ValueError):
        summarize(values)


def test_summary_to_dict_has_the_documented_keys():
    assert summarize([1.0, 3.0]).to_dict() == {"n": 2, "mean": 2.0, "std": pytest.approx(math.sqrt(2))}


def test_paired_difference_matches_hand_computation():
    result = paired_difference(TREATMENT, BASELINE)
    t_crit = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # closed-form t quantile, df = 2, p = 0.975
    assert result.n == 3
    assert result.mean == pytest.approx(4 / 15, rel=1e-9)
    assert result.std == pytest.approx(1 / math.sqrt(75), rel=1e-9)
    assert result.low == pytest.approx((4 - t_crit) / 15, rel=1e-9)
    assert result.high == pytest.approx((4 + t_crit) / 15, rel=1e-9)
    assert result.level == 0.95
    assert result.verdict == "no detectable difference"


def test_paired_difference_uses_t_not_normal_critical_value():
    # With a normal 1.96 the brief's example would be "better" (low = (4 - 1.96) / 15 > 0).
    result = paired_difference(TREATMENT, BASELINE)
    assert result.low < 0 < (4 - 1.96) / 15


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("treatment, baseline", [
    (TREATMENT, BASELINE),
    ([71.2, 70.8, 72.5, 71.9, 70.1], [70.0, 70.9, 71.1, 70.2, 70.4]),
    ([88.0, 87.5, 89.25, 88.75, 87.0, 88.5, 89.0, 87.75], [88.5, 88.0, 88.25, 89.5, 87.5, 88.0, 89.25, 88.5]),
])
def test_paired_difference_interval_matches_scipy_ttest_rel(treatment, baseline, level):
    expected = scipy_stats.ttest_rel(treatment, baseline).confidence_interval(confidence_level=level)
    result = paired_difference(treatment, baseline, level=level)
    assert result.low == pytest.approx(expected.low, rel=1e-9, abs=1e-12)
    assert result.high == pytest.approx(expected.high, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("treatment, baseline, verdict", [
    ([94.0, 94.2, 94.1, 94.3], [93.5, 93.6, 93.7, 93.6], "better"),
    ([93.5, 93.6, 93.7, 93.6], [94.0, 94.2, 94.1, 94.3], "worse"),
    ([94.0, 93.2, 94.1, 93.3], [93.5, 93.6, 93.7, 93.6], "no detectable difference"),
    ([94.0], [93.0], "too few seeds"),
    ([94.5, 93.5, 92.5], [94.0, 93.0, 92.0], "better"),  # every seed +0.5: zero-width interval above 0
    ([93.0, 91.0, 92.0], [94.0, 92.0, 93.0], "worse"),
    ([93.0, 91.0, 92.0], [93.0, 91.0, 92.0], "no detectable difference"),
])
def test_paired_difference_verdicts(treatment, baseline, verdict):
    assert paired_difference(treatment, baseline).verdict == verdict


def test_zero_variance_interval_collapses_to_the_mean():
    result = paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert (result.std, result.low, result.high) == (0.0, 1.0, 1.0)


def test_too_few_seeds_has_no_std_or_interval():
    assert paired_difference([94.0], [93.0]) == PairedDifference(
        n=1, mean=1.0, std=None, low=None, high=None, level=0.95, verdict="too few seeds")


def test_wider_level_gives_wider_interval_and_can_change_the_verdict():
    treatment, baseline = [71.2, 70.8, 72.5, 71.9, 70.1], [70.0, 70.9, 71.1, 70.2, 70.4]
    loose, strict = paired_difference(treatment, baseline, 0.8), paired_difference(treatment, baseline, 0.99)
    assert strict.low < loose.low and strict.high > loose.high
    assert (loose.verdict, strict.verdict) == ("better", "no detectable difference")


def test_paired_difference_to_dict_has_the_documented_keys():
    record = paired_difference(TREATMENT, BASELINE).to_dict()
    assert list(record) == ["n", "mean", "std", "low", "high", "level", "verdict"]
    assert record["verdict"] in VERDICTS


@pytest.mark.parametrize("treatment, baseline", [([1.0, 2.0], [1.0]), ([], []), ([1.0], [1.0, 2.0])])
def test_paired_difference_rejects_mismatched_or_empty_input(treatment, baseline):
    with pytest.raises(ValueError):
        paired_difference(treatment, baseline)


@pytest.mark.parametrize("level", [0.0, 1.0, 95])
def test_paired_difference_rejects_level_outside_zero_one(level):
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [0.0, 0.5], level=level)


def test_resolution_keeps_identical_one_image_differences_from_reading_as_certain() -> None:
    step = 100 / 360  # one digits test image
    base = [99.72, 99.44, 99.44]
    three = paired_difference([b - step for b in base], base, resolution=step)
    assert three.std == pytest.approx(0.0, abs=1e-12)
    half = t_quantile(0.975, 2) * step / math.sqrt(6) / math.sqrt(3)
    assert three.high == pytest.approx(-step + half) and three.verdict == "no detectable difference"
    assert paired_difference([b - step for b in base], base).verdict == "worse"  # no resolution: "certain"
    five = paired_difference([b - step for b in base + base[:2]], base + base[:2], resolution=step)
    assert five.verdict == "worse"  # the same one image in five seeds out of five is evidence


def test_two_seeds_that_differ_a_lot_are_too_few_for_a_null_verdict():
    # +16 points on both seeds but a spread of 4: the df = 1 interval (t = 12.7) holds 0
    result = paired_difference([80.0, 84.0], [66.0, 66.0])
    assert result.n == 2 and result.mean == pytest.approx(16.0)
    assert result.low < 0 < result.high
    assert result.verdict == "too few seeds"
    # an interval that excludes 0 is a verdict at any n
    assert paired_difference([80.0, 80.5], [66.0, 66.0]).verdict == "better"
