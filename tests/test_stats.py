"""freezelab.stats against scipy's reference implementations, plus the degenerate cases.

Warnings are errors here: a report over one seed must not spray RuntimeWarnings.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from freezelab.stats import curve_band, mean_ci, paired_test

pytestmark = pytest.mark.filterwarnings("error")

SAMPLE = np.array([0.912, 0.905, 0.918, 0.899, 0.921, 0.910, 0.907])


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [2, 3, 7])
def test_mean_ci_matches_scipy_t_interval(n: int, confidence: float) -> None:
    x = SAMPLE[:n]
    mean, low, high = mean_ci(x, confidence)
    ref_low, ref_high = sps.t.interval(confidence, n - 1, loc=x.mean(), scale=sps.sem(x))
    assert mean == pytest.approx(x.mean())
    assert (low, high) == pytest.approx((ref_low, ref_high), rel=1e-12)


def test_mean_ci_single_value_has_no_interval() -> None:
    mean, low, high = mean_ci([0.9])
    assert mean == 0.9 and math.isnan(low) and math.isnan(high)


def test_mean_ci_empty_and_nan_values() -> None:
    assert all(math.isnan(v) for v in mean_ci([]))
    assert mean_ci([1.0, np.nan, 3.0]) == pytest.approx(mean_ci([1.0, 3.0]))


def test_mean_ci_constant_values_give_zero_width() -> None:
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=12))
def test_mean_ci_brackets_the_mean(values: list[float]) -> None:
    mean, low, high = mean_ci(values)
    assert low <= mean + 1e-9 and mean <= high + 1e-9


def test_paired_test_matches_scipy() -> None:
    a = SAMPLE
    b = SAMPLE - np.array([0.004, -0.002, 0.006, 0.001, 0.003, 0.0, 0.005])
    r = paired_test(a, b)
    d = a - b
    ref_low, ref_high = sps.t.interval(0.95, d.size - 1, loc=d.mean(), scale=sps.sem(d))
    assert r["n"] == 7 and r["seeds"] is None
    assert r["mean_diff"] == pytest.approx(d.mean())
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ref_low, ref_high))
    assert r["t_pvalue"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert r["wilcoxon_pvalue"] == pytest.approx(sps.wilcoxon(a, b).pvalue)


def test_paired_test_skips_wilcoxon_below_six_pairs() -> None:
    r = paired_test(SAMPLE[:5], SAMPLE[:5] - [0.01, 0.02, 0.0, 0.01, 0.03])
    assert r["wilcoxon_pvalue"] is None
    assert r["t_pvalue"] == pytest.approx(sps.ttest_rel(SAMPLE[:5], SAMPLE[:5] - [0.01, 0.02, 0.0, 0.01, 0.03]).pvalue)


def test_paired_test_aligns_series_on_shared_seeds() -> None:
    variant = pd.Series([0.90, 0.91, 0.92, 0.93], index=[0, 1, 2, 3])
    baseline = pd.Series([0.95, 0.90, 0.89, 0.80], index=[3, 2, 1, 7])  # shuffled, seed 0 and 7 unpaired
    r = paired_test(variant, baseline)
    assert r["seeds"] == [1, 2, 3]
    expected = np.array([0.91 - 0.89, 0.92 - 0.90, 0.93 - 0.95])
    assert r["mean_diff"] == pytest.approx(expected.mean())
    assert r["t_pvalue"] == pytest.approx(sps.ttest_1samp(expected, 0).pvalue)


def test_paired_test_too_few_pairs() -> None:
    one = paired_test([0.9], [0.8])
    assert one["n"] == 1 and one["mean_diff"] == pytest.approx(0.1)
    assert math.isnan(one["ci_low"]) and math.isnan(one["t_pvalue"]) and one["wilcoxon_pvalue"] is None
    none = paired_test(pd.Series([0.9], index=[0]), pd.Series([0.8], index=[1]))
    assert none["n"] == 0 and math.isnan(none["mean_diff"])


def test_paired_test_zero_variance_differences() -> None:
    a = np.array([0.91, 0.92, 0.93, 0.94, 0.95, 0.96])
    same = paired_test(a, a)
    assert same["mean_diff"] == 0 and (same["ci_low"], same["ci_high"]) == (0, 0)
    assert math.isnan(same["t_pvalue"]) and math.isnan(same["wilcoxon_pvalue"])
    shifted = paired_test(a + 0.01, a)  # equal up to rounding: t undefined, signs still testable
    assert shifted["mean_diff"] == pytest.approx(0.01)
    assert math.isnan(shifted["t_pvalue"])
    assert shifted["wilcoxon_pvalue"] == pytest.approx(sps.wilcoxon(np.full(6, 0.01)).pvalue)


def test_paired_test_rejects_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1.0, 2.0], [1.0])


def test_curve_band_matches_groupwise_mean_ci() -> None:
    df = pd.DataFrame(
        {
            "variant": ["a"] * 6 + ["b"] * 3,
            "epoch": [1, 1, 1, 2, 2, 2, 1, 1, 2],
            "val_acc": [0.5, 0.6, 0.7, 0.8, np.nan, 0.9, 0.4, 0.5, 0.6],
        }
    )
    band = curve_band(df, "epoch", "val_acc", "variant")
    assert band[["variant", "epoch", "n"]].values.tolist() == [["a", 1, 3], ["a", 2, 2], ["b", 1, 2], ["b", 2, 1]]
    row = band.iloc[0]
    assert (row["mean"], row["low"], row["high"]) == pytest.approx(mean_ci([0.5, 0.6, 0.7]))
    assert math.isnan(band.iloc[3]["low"])  # one seed: mean only


def test_curve_band_accepts_several_group_columns() -> None:
    df = pd.DataFrame({"experiment": ["e"] * 4, "variant": ["a", "a", "b", "b"], "epoch": [1] * 4, "loss": [1.0, 2.0, 3.0, 5.0]})
    band = curve_band(df, "epoch", "loss", ["experiment", "variant"])
    assert list(band.columns) == ["experiment", "variant", "epoch", "mean", "low", "high", "n"]
    assert band["mean"].tolist() == [1.5, 4.0]


def test_differences_equal_up_to_float32_rounding_get_no_p_value() -> None:
    """Two seeds both 7.22 pp apart, as float32 accuracies: no spread, so no t-test (issue 16's report)."""
    base = np.array([0.8123, 0.9011])
    variant = base - 0.0722 + np.array([0.0, 3e-8])  # one float32 ulp of 0.9 is 6e-8
    assert (variant - base).std(ddof=1) > 0  # float64 sees a spread that float32 rounding made
    r = paired_test(variant, base)
    assert np.isnan(r["t_pvalue"]) and r["ci_low"] == r["ci_high"] == r["mean_diff"]
    assert r["mean_diff"] == pytest.approx(-0.0722, abs=1e-6)
    real = paired_test([0.80, 0.90, 0.85], [0.81, 0.92, 0.86])  # a real spread keeps its test
    assert 0 < real["t_pvalue"] < 1
