"""`dlsa_cli.compare.stats`: the t quantile, the paired t-interval over seeds, the paired bootstrap."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dlsa_cli.compare.stats import paired_bootstrap, paired_difference, t_cdf, t_quantile
from dlsa_cli.errors import InputError

# t_{0.975, df}, as tabulated (scipy.stats.t.ppf(0.975, df))
T975 = {1: 12.706204736174707, 2: 4.302652729749464, 3: 3.182446305284263, 4: 2.7764451051977934,
        9: 2.2621571628540993, 10: 2.2281388519862744, 29: 2.045229642132703, 30: 2.0422724563012373}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_the_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T975[df], abs=1e-9)
    assert t_quantile(0.025, df) == pytest.approx(-T975[df], abs=1e-9)


@pytest.mark.parametrize("t", [-3.0, -0.4, 0.0, 0.7, 5.0])
def test_t_cdf_has_the_closed_forms_of_one_and_two_degrees_of_freedom(t):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_paired_difference_is_the_hand_computed_t_interval():
    a, b = [48.1, 47.6, 48.9], [47.5, 47.4, 48.0]
    d = [0.6, 0.2, 0.9]  # a - b per seed
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = 4.302652729749464 * sd / math.sqrt(3)
    r = paired_difference(a, b)
    assert (r.n, r.mean, r.sd) == (3, pytest.approx(mean), pytest.approx(sd))
    assert (r.low, r.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert r.differences == pytest.approx(d)
    assert r.excludes_zero == (mean - half > 0)
    assert json.loads(json.dumps(r.to_json()))["excludes_zero"] == r.excludes_zero


def test_one_seed_has_a_mean_and_no_interval():
    r = paired_difference([1.0], [0.5])
    assert (r.mean, r.sd, r.low, r.high, r.excludes_zero) == (0.5, None, None, None, False)


@pytest.mark.parametrize("a, b", [([1.0, 2.0], [1.0]), ([], []), ([1.0, float("nan")], [1.0, 2.0]), ([None], [1.0])])
def test_bad_pairs_are_one_line_errors(a, b):
    with pytest.raises(InputError):
        paired_difference(a, b)


def test_paired_bootstrap_mean_is_the_accuracy_difference_and_its_interval_the_index_bootstrap():
    rng = np.random.default_rng(3)
    a = rng.random(400) < 0.62
    b = rng.random(400) < 0.55
    r = paired_bootstrap(a, b, resamples=20_000, seed=1)
    assert r.mean == pytest.approx(a.mean() - b.mean())
    idx = np.random.default_rng(7).integers(0, 400, size=(20_000, 400))  # resampling the samples themselves
    brute = (a[idx].astype(float) - b[idx]).mean(1)
    low, high = np.quantile(brute, [0.025, 0.975])
    assert r.low == pytest.approx(low, abs=0.006) and r.high == pytest.approx(high, abs=0.006)
    assert paired_bootstrap(a, b, resamples=20_000, seed=1) == r  # seeded


def test_paired_bootstrap_of_identical_methods_is_exactly_zero():
    a = np.array([1, 0, 1, 1, 0], dtype=bool)
    r = paired_bootstrap(a, a, resamples=100)
    assert (r.mean, r.low, r.high, r.excludes_zero) == (0.0, 0.0, 0.0, False)


def test_paired_bootstrap_rejects_non_binary_or_unequal_vectors():
    with pytest.raises(InputError, match="0/1"):
        paired_bootstrap(np.array([0.5, 1.0]), np.array([1.0, 0.0]))
    with pytest.raises(InputError, match="one length"):
        paired_bootstrap(np.ones(3), np.ones(4))
