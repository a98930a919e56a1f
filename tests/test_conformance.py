"""One conformance suite, run for every NMF rule of jnmf.rules.METHODS.

What every rule must do (issue "core v2", item 10):
* the objective never increases where the theory says so (all but projected gradient,
  which promises nothing for adam, and extrapolated accelerated HALS, "ahals");
* zero rows and columns of Y give finite factors;
* batched fits equal unbatched ones, with either batching strategy;
* the rule's support check rejects what it cannot solve, on every path;
* fit is scale-equivariant (float32, c from 1e-30 to 1e30);
* results carry an honest status.

Exactness comparisons run in float64 (x64 is enabled in conftest.py); the scale test
runs in float32 on purpose.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
from jnmf.batch import run_grid, run_restarts
from jnmf.driver import CONVERGED, MAX_ITERATIONS, NONFINITE, STUCK, iterate
from jnmf.problem import Problem, build_problem
from jnmf.rules import METHODS, make_rule

# tiny fits: the time is compiling, cheaper unoptimized (conftest.py)
CHEAP_PROGRAMS = True

ALL = sorted(METHODS)
# adam carries momentum: no descent guarantee; "ahals" extrapolates (Ang & Gillis 2019), so
# its reported objective may rise at a restart ("ahals-plain" is the monotone rule)
MONOTONE = [m for m in ALL if m not in ("pg", "ahals")]
M, N, K = 14, 10, 3


def _data(seed=0, dtype=np.float64, zero_row=None, zero_col=None):
    rng = np.random.default_rng(seed)
    Y = rng.random((M, K)) @ rng.random((K, N)) + 0.05 * rng.random((M, N))
    if zero_row is not None:
        Y[zero_row] = 0.0
    if zero_col is not None:
        Y[:, zero_col] = 0.0
    return Y.astype(dtype)


def _starts(seed=1, restarts=3, dtype=np.float64):
    rng = np.random.default_rng(seed)
    L0 = rng.random((restarts, M, K)) + 0.1
    R0 = rng.random((restarts, K, N)) + 0.1
    return jnp.asarray(L0, dtype), jnp.asarray(R0, dtype)


@pytest.mark.parametrize("method", MONOTONE)
def test_objective_never_increases(method):
    """Every rule but PG decreases its objective (eq. 3, or KL for "kl") monotonically:
    HALS/ANLS minimize exactly per block, MU/KL are majorize-minimize steps (Pav 2024,
    Theorem 2.3; Lee & Seung 2001), AU steps no further than the minimizer along a
    descent direction (Lemma 3.1).  Float64, with ridge and non-orthogonality
    penalties so the penalty terms are exercised too."""
    rule = make_rule(method)
    penalties = dict(lambda_2L=0.3, lambda_2R=0.2, gamma_2L=0.1)
    if method != "anls":
        penalties["gamma_2R"] = 0.05
    problem = build_problem(jnp.asarray(_data()), K, **penalties)
    L0, R0 = _starts(restarts=1)
    res = iterate(
        rule, problem, rule.init(problem, L0[0], R0[0]), max_iterations=40, tol=0.0, history_size=40
    )
    f0 = float(rule.objective(problem.prepared(), rule.init(problem, L0[0], R0[0])))
    history = np.concatenate([[f0], np.asarray(res.history)])
    assert np.all(np.isfinite(history))
    increases = np.diff(history)
    # the per-iteration objective is the cheap form, exact to ~eps ||Y||^2
    assert increases.max() <= 1e-10 * abs(f0), (method, increases.max())
    assert history[-1] < history[0]


@pytest.mark.parametrize("method", ALL)
def test_zero_rows_and_columns_give_finite_factors(method):
    """A zero row and a zero column of Y (a vanished gene or sample) leave no NaN, in
    float32 and float64."""
    for dtype in (np.float32, np.float64):
        Y = _data(zero_row=2, zero_col=4, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
            res = jnmf.fit(Y, K, method=method, max_iterations=50, key=0)
        assert np.all(np.isfinite(np.asarray(res.L))) and np.all(np.isfinite(np.asarray(res.R)))
        assert res.status_name in ("converged", "max_iterations")
        assert np.isfinite(res.objective)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("strategy", ["vmap", "hybrid", "map"])
def test_batched_equals_unbatched(method, strategy):
    """run_restarts (either strategy) gives each restart exactly what iterate gives it
    alone, including iteration counts and statuses when fits stop at different times
    (float64)."""
    rule = make_rule(method)
    problem = build_problem(jnp.asarray(_data()), K, lambda_1L=0.01)
    L0, R0 = _starts(restarts=3)
    batched = run_restarts(rule, problem, L0, R0, max_iterations=25, tol=1e-3, strategy=strategy)
    for i in range(3):
        single = iterate(rule, problem, rule.init(problem, L0[i], R0[i]), max_iterations=25, tol=1e-3)
        assert int(batched.iterations[i]) == int(single.iterations)
        assert int(batched.status[i]) == int(single.status)
        np.testing.assert_allclose(batched.L[i], single.L, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(batched.R[i], single.R, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(batched.objective[i], single.objective, rtol=1e-9)


UNSUPPORTED = {
    "kl": dict(W_0R=np.eye(M) + 0.1 * (np.ones((M, M)) - np.eye(M)) / M),
    "anls": dict(gamma_2R=0.5),
}


@pytest.mark.parametrize("method", sorted(UNSUPPORTED))
def test_support_check_on_every_path(method):
    """A rule that cannot solve a problem says so, naming the setting, through
    iterate, run_restarts, run_grid, fit and sweep, before compiling."""
    rule = make_rule(method)
    settings = UNSUPPORTED[method]
    Y = _data()
    problem = build_problem(jnp.asarray(Y), K, **settings)
    L0, R0 = _starts(restarts=2)
    name = next(iter(settings))
    match = f"{method}.*({name[:-1]}|{name})"
    with pytest.raises(ValueError, match=match):
        iterate(rule, problem, rule.init(problem, L0[0], R0[0]))
    with pytest.raises(ValueError, match=match):
        run_restarts(rule, problem, L0, R0)
    with pytest.raises(ValueError, match=match):
        jnmf.fit(Y, K, method=method, **settings)
    if name == "gamma_2R":  # a swept value is checked too
        base = build_problem(jnp.asarray(Y), K)
        with pytest.raises(ValueError, match=match):
            run_grid(rule, base, {"gamma_2R": np.array([0.0, 0.5])}, L0, R0)
        with pytest.raises(ValueError, match=match):
            jnmf.sweep(Y, K, {"gamma_2R": [0.0, 0.5]}, method=method)


def test_every_rule_supports_the_plain_problem():
    """Sanity for the test above: the support checks accept eq. 3 with diagonal weights."""
    problem = build_problem(jnp.asarray(_data()), K, W_0R=np.linspace(0.5, 1.5, M), lambda_1L=0.1)
    for method in ALL:
        make_rule(method).check(problem)


@pytest.mark.parametrize("method", ALL)
def test_fit_is_scale_equivariant_in_float32(method):
    """fit(c Y) = c fit(Y) for c from 1e-30 to 1e30, in float32, same key and
    iterations, with finite factors (relative 1e-4)."""
    Y = _data(dtype=np.float32)
    # extrapolated HALS ("ahals") restarts when its float32 objective rose: a discrete
    # decision that the rounding of the scaled data can flip (here at c = 1e30, iteration
    # 37), after which the trajectories part (the objective 3% apart at iteration 40);
    # its iterations before the first restart (iteration 7 here) must be equivariant
    may_rise = make_rule(method).objective_may_rise(build_problem(jnp.asarray(Y), K))
    kw = dict(method=method, max_iterations=5 if may_rise else 40, tol=0.0, key=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        base = jnmf.fit(Y, K, **kw)
        P0 = np.asarray(base.L, np.float64) @ np.asarray(base.R, np.float64)
        for c in (1e-30, 1e-15, 1e15, 1e30):
            res = jnmf.fit(np.float32(c) * Y, K, **kw)
            assert res.L.dtype == jnp.float32
            L, R = np.asarray(res.L, np.float64), np.asarray(res.R, np.float64)
            assert np.all(np.isfinite(L)) and np.all(np.isfinite(R)), c
            err = np.linalg.norm(L @ R - c * P0) / np.linalg.norm(c * P0)
            assert err < 1e-4, (c, err)
            assert int(res.iterations) == int(base.iterations)


def test_penalties_keep_their_meaning_under_scaling():
    """Scaled data with penalties scaled as the objective demands (L1 by c^1.5, L2 by
    c) give c times the same product: fit solves the user's problem, not a rescaled one."""
    Y = _data(dtype=np.float32)
    kw = dict(method="hals", max_iterations=60, tol=0.0, key=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        a = jnmf.fit(Y, K, lambda_1L=0.5, lambda_2R=0.3, **kw)
        c = 1e20
        b = jnmf.fit(np.float32(c) * Y, K, lambda_1L=0.5 * c**1.5, lambda_2R=0.3 * c, **kw)
    Pa = np.asarray(a.L @ a.R, np.float64)
    Pb = np.asarray(b.L, np.float64) @ np.asarray(b.R, np.float64) / c
    assert np.abs(Pb - Pa).max() < 1e-4 * np.abs(Pa).max()
    assert b.objective / c**2 == pytest.approx(a.objective, rel=1e-4)
    # and the penalty acted: L1 on L made it sparser than the unpenalized fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
        plain = jnmf.fit(Y, K, **kw)
    assert np.mean(np.asarray(a.L) == 0) > np.mean(np.asarray(plain.L) == 0)


@pytest.mark.parametrize("method", ALL)
def test_all_zero_data_returns_zero_factors_converged(method):
    res = jnmf.fit(np.zeros((M, N)), K, method=method)
    assert res.status_name == "converged"
    assert not np.any(np.asarray(res.L)) and not np.any(np.asarray(res.R))
    assert res.objective == 0.0


@pytest.mark.parametrize("method", ALL)
def test_status_max_iterations_and_converged(method):
    """A capped run reports max_iterations (and fit warns); a loose tol converges."""
    Y = _data()
    with pytest.warns(jnmf.ConvergenceWarning):
        capped = jnmf.fit(Y, K, method=method, max_iterations=2, tol=0.0)
    assert capped.status_name == "max_iterations" and int(capped.iterations) == 2
    assert not bool(capped.converged)
    loose = jnmf.fit(Y, K, method=method, max_iterations=500, tol=0.05)
    assert loose.status_name == "converged" and bool(loose.converged)
    assert int(loose.iterations) < 500


@pytest.mark.parametrize("method", ALL)
def test_status_nonfinite_stops_at_once(method):
    """A problem that produces NaN (built around the validation, which never lets NaN
    in) stops at the first non-finite iterate with status nonfinite."""
    Y = _data()
    Y[0, 0] = np.nan
    problem = Problem.from_scalars(jnp.asarray(Y))
    rule = make_rule(method)
    L0, R0 = _starts(restarts=1)
    res = iterate(rule, problem, rule.init(problem, L0[0], R0[0]), max_iterations=50)
    assert int(res.status) == NONFINITE and res.status_name == "nonfinite"
    assert int(res.iterations) == 1


def test_status_stuck():
    """MURNMF with R = 0 has no positive denominator: stuck after one iteration, as in
    rnnmf (with the convergence tests off: a zero step would otherwise count as converged,
    as rnnmf counts it)."""
    problem = build_problem(jnp.asarray(_data()), K)
    rule = make_rule("mu")
    L0, _ = _starts(restarts=1)
    state = rule.init(problem, L0[0], jnp.zeros((K, N)))
    res = iterate(rule, problem, state, max_iterations=50, tol=0.0, min_xstep=0.0)
    assert int(res.status) == STUCK and not bool(res.converged)
    assert int(res.iterations) == 1


def test_status_codes_are_distinct_and_named():
    assert jnmf.STATUS[CONVERGED] == "converged" and jnmf.STATUS[MAX_ITERATIONS] == "max_iterations"
    assert len(set(jnmf.STATUS)) == 4


def test_fit_returns_every_restart():
    """return_all=True gives every restart's factors; the best one is among them and
    has the smallest objective."""
    Y = _data()
    res = jnmf.fit(Y, K, restarts=4, key=jax.random.key(5), max_iterations=200, return_all=True)
    assert res.all_L.shape == (4, M, K) and res.all_R.shape == (4, K, N)
    np.testing.assert_array_equal(res.all_L[res.best], res.L)
    assert res.objective == min(res.objectives)
    own = [float(build_problem(jnp.asarray(Y), K).objective(a, b)) for a, b in zip(res.all_L, res.all_R)]
    np.testing.assert_allclose(own, res.objectives, rtol=1e-8)


@pytest.mark.parametrize("method", [m for m in ALL if m != "anls"])
def test_step_is_reverse_differentiable(method):
    """jax.grad through one step of the rule (factors and a penalty value) agrees with
    central differences (float64): nothing in the rules blocks reverse mode.  ANLS is
    left out: its exact NNLS half step is an iterative pivoting solve."""
    rule = make_rule(method)
    Y = jnp.asarray(_data())
    L0, R0 = _starts(restarts=1)
    base = build_problem(Y, K, lambda_2L=0.1)

    def f(L, lam):
        p = base.replace(lambda_2L=lam).prepared()
        state, _ = rule.step(p, rule.init(p, L, R0[0]))
        return jnp.sum(state.Lt**2) + jnp.sum(state.R**2)

    g_L, g_lam = jax.grad(f, argnums=(0, 1))(L0[0], 0.1)
    e = 1e-6
    fd = (f(L0[0], 0.1 + e) - f(L0[0], 0.1 - e)) / (2 * e)
    np.testing.assert_allclose(g_lam, fd, rtol=1e-4, atol=1e-8)
    assert np.all(np.isfinite(np.asarray(g_L)))
