"""Cross-validated rank selection (issue 7, part 3).  One shape and rank range for all
tests, so the fits compile once per scheme."""

from __future__ import annotations

import numpy as np
import pytest

from jnmf.cross_validation import cross_validate_rank, select_rank

RANKS = range(2, 10)


def _known_rank(r: int, seed: int | None = None):
    rng = np.random.default_rng(r if seed is None else seed)
    m, n = 100, 80
    truth = rng.random((m, r)) @ rng.random((r, n))
    return np.maximum(truth + 0.05 * truth.mean() * rng.standard_normal((m, n)), 0)


@pytest.mark.parametrize("r", [3, 6])
def test_speckled_cv_picks_the_true_rank(r):
    """Speckled hold-out (5% of entries, 3 repeats, one-standard-error rule) picks r on
    rank-r data with 5% noise, and the test error rises past r while the training
    error keeps falling (over-fitting shows only on the held-out entries)."""
    cv = cross_validate_rank(_known_rank(r), RANKS, key=0)
    assert cv.selected_rank == r, cv.table()
    mean = cv.mean_test_error
    i = list(cv.ranks).index(r)
    assert mean[i - 1] > 1.2 * mean[i]  # one rank too few is clearly worse
    assert mean[-1] > mean[i]  # the largest rank predicts worse than r
    train = cv.train_error.mean(axis=0)
    assert train[-1] < train[i]
    assert cv.test_error.shape == (3, len(RANKS)) and np.all(cv.status != 3)


@pytest.mark.parametrize("r", [3, 6])
def test_bicv_error_falls_until_the_true_rank(r):
    """Bi-cross-validation (Owen & Perry 2009): the held-out block's error falls steeply
    up to r and never selects fewer components than r."""
    cv = cross_validate_rank(_known_rank(r), RANKS, scheme="bicv", key=0)
    mean = cv.mean_test_error
    i = list(cv.ranks).index(r)
    assert mean[i - 1] > 1.2 * mean[i], cv.table()
    assert cv.selected_rank >= r
    assert np.all(np.isfinite(cv.test_error))


def test_missing_entries_are_never_scored():
    """With missing="nan", NaN entries are neither fitted nor held out, and the result is
    finite."""
    Y = _known_rank(3, seed=11)
    Y[np.random.default_rng(0).random(Y.shape) < 0.1] = np.nan
    cv = cross_validate_rank(Y, RANKS, missing="nan", key=1)
    assert np.all(np.isfinite(cv.test_error))
    assert cv.selected_rank == 3


def test_select_rank_rules():
    ranks = np.array([2, 3, 4])
    err = np.array([[5.0, 1.03, 1.0], [5.0, 1.0, 0.97], [5.0, 1.02, 1.03]])
    assert select_rank(ranks, err, "min") == 4
    assert select_rank(ranks, err, "1se") == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(scheme="kfold"), "scheme must be one of"),
        (dict(rule="max"), "rule must be one of"),
        (dict(holdout=1.5), "holdout must lie in"),
        (dict(repeats=0), "repeats must be"),
        (dict(method="kl"), "Frobenius loss"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cross_validate_rank(_known_rank(3), RANKS, **kwargs)


def test_bad_ranks():
    with pytest.raises(ValueError, match="ranks must be a sequence"):
        cross_validate_rank(_known_rank(3), 3)
    with pytest.raises(ValueError, match="distinct"):
        cross_validate_rank(_known_rank(3), [2, 2, 3])
    with pytest.raises(ValueError, match="at most"):
        cross_validate_rank(_known_rank(3)[:10, :10], [2, 9], scheme="bicv")
