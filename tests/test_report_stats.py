"""Uncertainty for the report (kept.report.stats) and the grid's student names (kept.grid)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kept.errors import KeptError
from kept.grid import Trained, parse, row_name, trained
from kept.report import stats


def _binary(n: int, k: int, *, offset: int = 0) -> np.ndarray:
    return np.array([float((i + offset) % n < k) for i in range(n)])


def test_paired_test_is_exact_mcnemar_on_binary_items():
    from scipy.stats import binomtest

    rng = np.random.default_rng(3)
    for n10, n01 in ((7, 1), (5, 5), (12, 3)):  # discordant pairs; the rest agree
        a = np.array([1.0] * n10 + [0.0] * n01 + list(rng.integers(0, 2, 30).astype(float)))
        b = np.array([0.0] * n10 + [1.0] * n01 + list(a[n10 + n01:]))
        ids = [str(i) for i in range(len(a))]
        p = stats.paired_test(stats.mean_sample(ids, a), stats.mean_sample(ids, b))
        assert p == pytest.approx(binomtest(n10, n10 + n01).pvalue, abs=2e-3 if n10 + n01 > 16 else 1e-12)
    same = stats.mean_sample(["a", "b"], [1.0, 0.0])
    assert stats.paired_test(same, same) == 1.0


def test_paired_test_pairs_by_unit_id_and_refuses_other_units():
    a = stats.mean_sample(["x", "y", "z"], [1.0, 1.0, 0.0])
    b = stats.mean_sample(["z", "y", "x"], [0.0, 1.0, 1.0])  # the same scores in another order
    assert stats.paired_test(a, b) == 1.0
    other = stats.Sample([stats.Stratum(["x", "y", "z"], np.ones(3), np.array([1.0, 2.0, 1.0]))])
    with pytest.raises(KeptError, match="different denominators"):
        stats.paired_test(a, other)
    with pytest.raises(KeptError, match="no unit in common"):
        stats.paired_test(a, stats.mean_sample(["p", "q"], [1.0, 0.0]))


def test_bootstrap_se_matches_the_analytic_error_and_propagates_over_strata():
    ids = [str(i) for i in range(400)]
    x = _binary(400, 120)
    se = stats.bootstrap_se(stats.mean_sample(ids, x, scale=100.0))
    assert se == pytest.approx(100 * x.std(ddof=1) / math.sqrt(400), rel=0.06)
    parts = [stats.mean_sample(ids, _binary(400, k), scale=100.0) for k in (120, 200, 300)]
    avg = stats.average_sample(parts)
    assert avg.value() == pytest.approx(100 * (120 + 200 + 300) / 1200)
    ses = [stats.bootstrap_se(p) for p in parts]
    assert stats.bootstrap_se(avg) == pytest.approx(stats.propagate(ses, [1 / 3] * 3), rel=0.08)
    assert math.isnan(stats.bootstrap_se(stats.mean_sample(["only"], [1.0])))


def test_ratio_statistic_and_seed_mean():
    ids = ["d0", "d1", "d2"]
    nll, tok = np.array([10.0, 20.0, 30.0]), np.array([10.0, 10.0, 10.0])
    ppl = stats.Sample([stats.Stratum(ids, nll, tok)], transform=math.exp)
    assert ppl.value() == pytest.approx(math.exp(2.0))
    other = stats.Sample([stats.Stratum(list(reversed(ids)), nll[::-1] + 10.0, tok)], transform=math.exp)
    pooled = stats.seed_mean([ppl, other])
    assert pooled.value() == pytest.approx(math.exp(2.5))  # per document, the mean NLL of the two seeds
    reps = stats.joint_replicates([ppl, other], iters=200)
    assert np.allclose(np.log(reps[:, 1]) - np.log(reps[:, 0]), 1.0)  # same documents drawn for both
    assert stats.seed_sd([70.0, 80.0]) == pytest.approx(math.sqrt(50.0)) and math.isnan(stats.seed_sd([1.0]))


def test_student_names_round_trip_and_keep_primary_paths_plain():
    assert trained("xkd_z", init="paper", corpus=None, seed=1234, primary_init="paper", primary_seed=1234).name == "xkd_z"
    name = trained("xkd_z", init="exact", corpus="broad", seed=7, primary_init="paper", primary_seed=1234).name
    assert name == "xkd_z@exact+broad.s7"
    assert parse(name) == Trained("xkd_z", "exact", "broad", 7)
    assert parse("ut") == Trained("ut") and parse("teacher") is None and parse("init-exact") is None
    assert row_name("xkd_h@centered.s99") == "xkd_h@centered" and row_name("init-fit") == "init-fit"
