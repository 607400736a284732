"""``bench.median_interval`` and ``bench.against_ceiling``: how a noisy benchmark says whether its
median is under a target beyond the run's own scatter."""

from __future__ import annotations

import statistics

import pytest

from bench import against_ceiling, median_interval


def test_the_interval_holds_the_median_and_is_reproducible():
    samples = [12.0, 3.2, 19.1, -4.0, 8.5, 10.2, 14.7, 6.6, 9.9, 30.0, 1.1, 11.4]
    low, high = median_interval(samples)
    assert low <= statistics.median(samples) <= high
    assert min(samples) <= low < high <= max(samples)
    assert median_interval(samples) == (low, high)  # seeded: the same samples, the same interval


def test_more_scatter_gives_a_wider_interval():
    tight = [10.0 + 0.1 * (i % 5) for i in range(40)]
    loose = [10.0 + 8.0 * ((i * 7) % 11 - 5) for i in range(40)]
    tight_low, tight_high = median_interval(tight)
    loose_low, loose_high = median_interval(loose)
    assert tight_high - tight_low < 0.5
    assert loose_high - loose_low > 5 * (tight_high - tight_low)


def test_a_wider_confidence_never_narrows_the_interval():
    samples = [float((i * 37) % 23) for i in range(30)]
    low90, high90 = median_interval(samples, confidence=0.9)
    low99, high99 = median_interval(samples, confidence=0.99)
    assert low99 <= low90
    assert high90 <= high99


@pytest.mark.parametrize(
    ("interval", "verdict"),
    [
        ((4.0, 9.5), "under the target beyond this run's scatter"),
        ((10.5, 14.0), "over the target beyond this run's scatter"),
        ((8.0, 12.0), "this run's scatter spans the target"),
    ],
)
def test_against_a_ceiling(interval, verdict):
    assert against_ceiling(interval, 10.0) == verdict


def test_no_samples_is_refused():
    with pytest.raises(ValueError, match="no samples"):
        median_interval([])
