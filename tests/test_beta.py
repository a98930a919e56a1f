"""BetaMU, the beta-divergence multiplicative update (Févotte & Idier 2011), beyond the
conformance suite (which runs it at beta = 1.5): other betas, the special cases of the
divergence, and scale equivariance with the loss degree beta."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import xlogy

import jnmf
from jnmf.driver import iterate
from jnmf.problem import build_problem
from jnmf.rules import BetaMU
from jnmf.rules.beta import beta_divergence, mm_exponent


def _data(shape=(14, 10), seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((shape[0], 3)) @ rng.random((3, shape[1])) + 0.05


def test_divergence_special_cases():
    rng = np.random.default_rng(1)
    Y, X = rng.random((5, 4)) + 0.1, rng.random((5, 4)) + 0.1
    Yj, Xj = jnp.asarray(Y), jnp.asarray(X)
    assert float(beta_divergence(Yj, Xj, 2.0)) == pytest.approx(0.5 * np.sum((Y - X) ** 2), rel=1e-12)
    kl = np.sum(xlogy(Y, Y / X) - Y + X)
    assert float(beta_divergence(Yj, Xj, 1.0)) == pytest.approx(float(kl), rel=1e-12)
    itakura_saito = np.sum(Y / X - np.log(Y / X) - 1)
    assert float(beta_divergence(Yj, Xj, 0.0)) == pytest.approx(itakura_saito, rel=1e-12)
    # the general formula is continuous at the special points
    for b in (0.0, 1.0, 2.0):
        near = float(beta_divergence(Yj, Xj, b + 1e-6))
        assert near == pytest.approx(float(beta_divergence(Yj, Xj, b)), rel=1e-4)


def test_mm_exponent():
    np.testing.assert_allclose(mm_exponent(jnp.array([-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0])),
                               [1 / 3, 1 / 2, 1 / 1.5, 1, 1, 1, 1 / 2])  # fmt: skip


@pytest.mark.parametrize("beta", [-1.0, 0.0, 0.5, 1.0, 2.0, 3.0])
def test_objective_never_increases_with_l1(beta):
    """Exact MM steps (Févotte & Idier 2011) with L1 penalties, for any beta; float64."""
    Y = _data()
    problem = build_problem(jnp.asarray(Y), 3, lambda_1L=0.05, lambda_1R=0.02)
    rng = np.random.default_rng(2)
    L0, R0 = jnp.asarray(rng.random((14, 3)) + 0.1), jnp.asarray(rng.random((3, 10)) + 0.1)
    rule = BetaMU(beta)
    state = rule.init(problem, L0, R0)
    res = iterate(rule, problem, state, max_iterations=40, tol=0.0, history_size=40)
    f0 = float(rule.objective(problem.prepared(), state))
    history = np.concatenate([[f0], np.asarray(res.history)])
    assert np.all(np.isfinite(history))
    assert np.diff(history).max() <= 1e-12 * abs(f0)
    assert history[-1] < history[0]


def test_fit_scale_equivariant_with_loss_degree_beta():
    """fit(c Y) = c fit(Y) in float32 for beta = 0.5 (penalties transformed with degree 0.5)."""
    Y = _data().astype(np.float32)
    kw = dict(method=BetaMU(0.5), max_iterations=30, tol=0.0, key=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        base = jnmf.fit(Y, 3, lambda_1L=0.01, **kw)
        c = 1e20
        scaled = jnmf.fit(np.float32(c) * Y, 3, lambda_1L=0.01 * c**0.0, **kw)
    P0 = np.asarray(base.L, np.float64) @ np.asarray(base.R, np.float64)
    P1 = np.asarray(scaled.L, np.float64) @ np.asarray(scaled.R, np.float64) / c
    assert np.abs(P1 - P0).max() < 1e-4 * np.abs(P0).max()
    assert BetaMU(0.5).loss_degree == 0.5


def test_rejects_full_loss_weights_and_bad_beta():
    Y = _data()
    W = np.eye(14) + 0.01
    problem = build_problem(jnp.asarray(Y), 3, W_0R=W)
    with pytest.raises(ValueError, match="beta.*W_0R"):
        BetaMU(1.5).check(problem)
    with pytest.raises(ValueError, match="beta must be a finite real scalar"):
        BetaMU(float("nan"))
