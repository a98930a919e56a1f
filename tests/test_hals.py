"""HALS and accelerated HALS (jnmf.rules.hals).

Exactness checks run in float64 (x64 is switched on in conftest.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jnmf
import jnmf.batch
from jnmf.driver import RNNMF_STOPPING, iterate
from jnmf.quadratic import half_problem_L, half_problem_R
from jnmf.rules.base import NMFState
from jnmf.rules.hals import HALS, hals_is_exact, hals_sweeps

M, N, K = 14, 9, 3


def _data(seed):
    rng = np.random.default_rng(seed)
    Y = rng.random((M, K)) @ rng.random((K, N)) + 0.1 * rng.random((M, N))
    return jnp.asarray(Y), jnp.asarray(rng.random((M, K))), jnp.asarray(rng.random((K, N)))


def _reference_column_sweep(Y, L, R, lam1, lam2):
    """Cichocki & Phan's column update written out with NumPy, one column at a time:
    for 1/2||Y - LR||^2 + lam1 sum(L) + lam2/2 ||L||^2 the exact minimizer over
    column j of L is max(0, (Y R_j' - sum_{i != j} L_i (R_i R_j') - lam1) / (R_j R_j' + lam2))."""
    L = np.array(L, float)
    R = np.asarray(R, float)
    for j in range(L.shape[1]):
        others = [i for i in range(L.shape[1]) if i != j]
        resid = np.asarray(Y) @ R[j] - L[:, others] @ (R[others] @ R[j]) - lam1
        L[:, j] = np.maximum(resid / (R[j] @ R[j] + lam2), 0.0)
    return L


_sweep = jax.jit(lambda hp, Xt: hals_sweeps(hp, Xt, 1, jnp.asarray(0.1)))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), lam1=st.floats(0, 2), lam2=st.floats(0, 2))
def test_column_sweep_matches_explicit_formula(seed, lam1, lam2):
    Y, L, R = _data(seed)
    P = jnmf.build_problem(Y, K, lambda_1L=lam1, lambda_2L=lam2)
    got = _sweep(half_problem_L(P, L.T, R), L.T).T
    want = _reference_column_sweep(Y, L, R, lam1, lam2)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)


_step = jax.jit(lambda rule, P, s: rule.step(P, s))


@pytest.mark.parametrize("rule", [HALS(), HALS(inner_sweeps=None)], ids=["hals", "ahals"])
@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    pen=st.lists(st.floats(0, 1), min_size=6, max_size=6),
    weighted=st.booleans(),
)
def test_objective_never_increases(rule, seed, pen, weighted):
    """Exact block minimization (diagonal weights) or majorization (full W_0R,
    non-orthogonality of R) can only decrease eq. 3."""
    Y, L, R = _data(seed)
    rng = np.random.default_rng(seed + 1)
    W = rng.random((M, M))
    kw = dict(zip(["lambda_1L", "lambda_1R", "lambda_2L", "lambda_2R", "gamma_2L", "gamma_2R"], pen))
    if weighted:
        kw.update(W_0R=W @ W.T / M, W_0C=rng.random(N) + 0.1)
    P = jnmf.build_problem(Y, K, **kw)
    state = NMFState(L.T, R)  # L is stored factor-major
    f = P.objective(L, R)
    for _ in range(3):
        state, info = _step(rule, P, state)
        f_new = P.objective(state.L, state.R)
        assert f_new <= f + 1e-10 * abs(f)
        np.testing.assert_allclose(info.objective, f_new, rtol=1e-9)
        assert jnp.all(state.L >= 0) and jnp.all(state.R >= 0)
        f = f_new


def test_exactness_flag():
    Y, L, R = _data(0)
    assert hals_is_exact(half_problem_L(jnmf.build_problem(Y, K, gamma_2L=1.0), L.T, R))
    assert not hals_is_exact(half_problem_R(jnmf.build_problem(Y, K, gamma_2R=1.0), L.T, R))
    assert not hals_is_exact(half_problem_L(jnmf.build_problem(Y, K, W_0R=np.eye(M)), L.T, R))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_zero_rows_and_columns_stay_finite(dtype):
    Y, L, R = _data(3)
    Y = Y.at[2].set(0.0).at[:, 4].set(0.0).astype(dtype)
    L = L.at[:, 1].set(0.0).astype(dtype)  # a vanished factor: zero curvature in R's step
    P = jnmf.build_problem(Y, K)
    rule = HALS()
    # rnnmf's stopping rule (min_xstep=1e-9, no objective test): iterate's defaults before core v2
    res = iterate(rule, P, rule.init(P, L, R.astype(dtype)), stopping=RNNMF_STOPPING, max_iterations=50)
    assert jnp.all(jnp.isfinite(res.L)) and jnp.all(jnp.isfinite(res.R))
    assert jnp.isfinite(res.objective)
    assert jnp.allclose(res.L[2], 0.0) and jnp.allclose(res.R[:, 4], 0.0)


def test_batched_equals_unbatched():
    Y, _, _ = _data(5)
    rng = np.random.default_rng(7)
    L0 = jnp.asarray(rng.random((3, M, K)))
    R0 = jnp.asarray(rng.random((3, K, N)))
    P = jnmf.build_problem(Y, K, lambda_1R=0.1)
    rule = HALS(inner_sweeps=None)
    batched = jnmf.batch.run_restarts(rule, P, L0, R0, max_iterations=40, tol=1e-6)
    for i in range(3):
        single = iterate(rule, P, rule.init(P, L0[i], R0[i]), max_iterations=40, tol=1e-6, min_xstep=0.0)
        np.testing.assert_allclose(batched.L[i], single.L, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(batched.R[i], single.R, rtol=1e-10, atol=1e-12)
        assert batched.iterations[i] == single.iterations
