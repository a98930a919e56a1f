"""Elementwise loss weights and missing values (issue 7, part 2).

Exactness tests run in float64 (x64 is enabled in conftest.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
from jnmf.driver import Stopping, iterate
from jnmf.problem import build_problem
from jnmf.quadratic import half_problem
from jnmf.rules import make_rule

# tiny fits: the time is compiling, cheaper unoptimized (conftest.py)
CHEAP_PROGRAMS = True

METHODS = ["mu", "au", "hals", "ahals", "anls", "kl", "beta", "pg"]
FROBENIUS = ["mu", "au", "hals", "ahals", "anls", "pg"]


def _low_rank(m=24, n=18, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((m, k)) @ rng.random((k, n)), rng


@pytest.fixture(scope="module")
def masked_case():
    Y, rng = _low_rank()
    M = (rng.random(Y.shape) > 0.3) * rng.uniform(0.5, 2.0, Y.shape)
    L0 = rng.random((Y.shape[0], 3)) + 0.1
    R0 = rng.random((3, Y.shape[1])) + 0.1
    return Y, M, L0, R0


@pytest.mark.parametrize("side", ["L", "R"])
def test_half_problem_matches_autodiff(masked_case, side):
    """G x + d, phi and diag(G) of the masked half problem agree with autodiff of eq. 3
    with the elementwise loss (float64), penalties included."""
    Y, M, L0, R0 = masked_case
    P = build_problem(jnp.asarray(Y), 3, M=M, lambda_2L=0.3, gamma_2R=0.2, lambda_1R=0.1, W_1L=0.05)
    Pp = P.prepared()
    L0, R0 = jnp.asarray(L0), jnp.asarray(R0)
    hp = half_problem(Pp, side, L0.T, R0)
    X = L0.T if side == "L" else R0

    def f(x):
        return P.objective(x.T, R0) if side == "L" else P.objective(L0, x)

    np.testing.assert_allclose(hp.gradient(X), jax.grad(f)(X), rtol=1e-12, atol=1e-12)
    H = jax.hessian(lambda v: f(v.reshape(X.shape)))(X.ravel())
    np.testing.assert_allclose(hp.diagonal(), jnp.diag(H).reshape(X.shape), rtol=1e-12, atol=1e-12)
    other = P.penalty_R.value(R0) if side == "L" else P.penalty_L.value(L0)
    np.testing.assert_allclose(hp.value(X) + Pp.half_data_norm + other, f(X), rtol=1e-12)
    # and the analytic gradients of the problem layer
    gL, gR = P.gradients(L0, R0)
    aL, aR = jax.grad(P.objective, argnums=(0, 1))(L0, R0)
    np.testing.assert_allclose(gL, aL, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gR, aR, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_descends_the_masked_objective(masked_case, method):
    """Each rule's objective history is non-increasing on a masked problem (float64;
    projected gradient only with a small step) and the factors stay finite and >= 0."""
    Y, M, L0, R0 = masked_case
    P = build_problem(jnp.asarray(Y), 3, M=M, lambda_2R=0.01)
    rule = make_rule(method if method != "pg" else __import__("optax").sgd(1e-3))
    res = iterate(rule, P, rule.init(P, jnp.asarray(L0), jnp.asarray(R0)), stopping=Stopping(200, tol=0))
    h = np.asarray(res.history)
    h = h[np.isfinite(h)]
    assert h.size > 10
    assert np.all(np.diff(h) <= 1e-10 * abs(h[0])), f"{method} increased the objective"
    assert h[-1] < 0.5 * h[0]
    assert np.all(np.isfinite(res.L)) and np.all(res.L >= 0) and np.all(res.R >= 0)


@pytest.mark.parametrize("method", ["mu", "ahals", "anls", "kl"])
def test_hidden_entries_do_not_matter(method):
    """Entries with weight 0 have no influence: changing Y there leaves the fit identical."""
    Y, rng = _low_rank(seed=3)
    hide = rng.random(Y.shape) < 0.25
    Y2 = np.where(hide, rng.random(Y.shape) * 10, Y)
    a = jnmf.fit(Y, 3, M=(~hide).astype(float), method=method, max_iterations=50, tol=0, key=1)
    b = jnmf.fit(Y2, 3, M=(~hide).astype(float), method=method, max_iterations=50, tol=0, key=1)
    # the data scale (max Y) differs, so compare up to rounding of the rescaling
    np.testing.assert_allclose(a.L @ a.R, b.L @ b.R, rtol=1e-8, atol=1e-10)


def test_missing_nan_recovers_hidden_entries():
    """Issue 7's acceptance test: a rank-5 matrix plus 1% noise with 30% of its entries
    hidden (NaN).  The held-out RMSE is <= 1.5x the noise level, and >= 5x better than a
    fit with the hidden entries set to zero."""
    rng = np.random.default_rng(7)
    m, n, r = 120, 90, 5
    truth = rng.random((m, r)) @ rng.random((r, n))
    noise = 0.01 * truth.mean()
    Y = np.maximum(truth + noise * rng.standard_normal((m, n)), 0)
    hide = rng.random((m, n)) < 0.3
    Y_nan = np.where(hide, np.nan, Y)

    def held_out_rmse(res):
        return np.sqrt(np.mean((Y - np.asarray(res.L) @ np.asarray(res.R))[hide] ** 2))

    with pytest.raises(ValueError, match="Y must be finite"):
        jnmf.fit(Y_nan, r)  # NaN is an error by default
    for method in ("ahals", "anls"):
        res = jnmf.fit(Y_nan, r, missing="nan", method=method, restarts=2, max_iterations=5000, tol=1e-7)
        assert res.status_name == "converged"
        rmse = held_out_rmse(res)
        assert rmse <= 1.5 * noise, (method, rmse / noise)
    zero = jnmf.fit(np.where(hide, 0, Y), r, restarts=2, max_iterations=5000, tol=1e-7)
    assert held_out_rmse(zero) >= 5 * rmse


def test_diagonal_loss_weights_fold_into_M():
    """W_0R / W_0C vectors combined with M act as M_ij w_i v_j (same objective), full ones
    are refused."""
    Y, rng = _low_rank(seed=4)
    w, v = rng.uniform(0.5, 2, Y.shape[0]), rng.uniform(0.5, 2, Y.shape[1])
    M = (rng.random(Y.shape) > 0.2).astype(float)
    P1 = build_problem(jnp.asarray(Y), 3, M=M, W_0R=w, W_0C=v)
    P2 = build_problem(jnp.asarray(Y), 3, M=M * w[:, None] * v[None, :])
    L, R = jnp.asarray(rng.random((Y.shape[0], 3))), jnp.asarray(rng.random((3, Y.shape[1])))
    np.testing.assert_allclose(P1.objective(L, R), P2.objective(L, R), rtol=1e-13)
    # without M, diagonal W_0R / W_0C give the same loss as M = w v'
    P3 = build_problem(jnp.asarray(Y), 3, W_0R=w, W_0C=v)
    P4 = build_problem(jnp.asarray(Y), 3, M=w[:, None] * v[None, :])
    np.testing.assert_allclose(P3.objective(L, R), P4.objective(L, R), rtol=1e-13)
    with pytest.raises(ValueError, match="W_0R as a full matrix"):
        build_problem(jnp.asarray(Y), 3, M=M, W_0R=np.eye(Y.shape[0]))


@pytest.mark.parametrize(
    ("M", "match"),
    [
        (np.ones((3, 3)), "M must have the data's shape"),
        (-np.ones((24, 18)), "M must be non-negative"),
        (np.zeros((24, 18)), "M is zero everywhere"),
        (np.full((24, 18), np.nan), "M must be finite"),
    ],
)
def test_bad_weights_name_M(M, match):
    Y, _ = _low_rank()
    with pytest.raises(ValueError, match=match):
        jnmf.fit(Y, 3, M=M)


def test_bad_missing_policy():
    Y, _ = _low_rank()
    with pytest.raises(ValueError, match="missing must be one of"):
        jnmf.fit(Y, 3, missing="drop")
    with pytest.raises(ValueError, match="every entry is NaN"):
        jnmf.fit(np.full_like(Y, np.nan), 3, missing="nan")


@pytest.mark.parametrize("method", ["ahals", "mu", "kl", "anls"])
def test_fully_missing_rows_and_columns_stay_finite(method):
    """A row and a column with no observed entry leave their factor entries untouched
    (the objective does not depend on them) and never produce NaN."""
    Y, _ = _low_rank(seed=5)
    Y = Y.copy()
    Y[2, :] = np.nan
    Y[:, 4] = np.nan
    res = jnmf.fit(Y, 3, missing="nan", method=method, max_iterations=100, key=2)
    assert np.all(np.isfinite(res.L)) and np.all(np.isfinite(res.R))
    assert np.isfinite(res.objective)


def test_sweep_over_masks_matches_separate_fits():
    """grid={'M': [...]} runs one fit per weight matrix (e.g. one hold-out mask per fold)
    in one program, each equal to the fit with that M from the same start (every
    setting of a sweep starts from the same points)."""
    Y, rng = _low_rank(seed=6)
    masks = [(rng.random(Y.shape) > 0.2).astype(float) for _ in range(3)]
    start = (rng.random((Y.shape[0], 3)), rng.random((3, Y.shape[1])))
    sw = jnmf.sweep(Y, 3, {"M": masks}, method="hals", init=start, max_iterations=60, tol=0)
    for i, M in enumerate(masks):
        one = jnmf.fit(Y, 3, M=M, method="hals", init=start, max_iterations=60, tol=0)
        np.testing.assert_allclose(sw.L[i] @ sw.R[i], one.L @ one.R, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(sw.objectives[i, 0], one.objective, rtol=1e-9)
    with pytest.raises(ValueError, match="given both in grid and as fixed"):
        jnmf.sweep(Y, 3, {"M": masks}, M=masks[0])


def test_scale_equivariance_with_missing_values():
    """fit(c Y) = c fit(Y) with missing entries too (the weights are not rescaled)."""
    Y, rng = _low_rank(seed=8)
    Y = np.where(rng.random(Y.shape) < 0.2, np.nan, Y)
    a = jnmf.fit(Y, 3, missing="nan", max_iterations=80, tol=0, key=4)
    b = jnmf.fit(1e6 * Y, 3, missing="nan", max_iterations=80, tol=0, key=4)
    np.testing.assert_allclose(b.L @ b.R, 1e6 * (a.L @ a.R), rtol=1e-8)
    np.testing.assert_allclose(b.objective, 1e12 * a.objective, rtol=1e-8)
