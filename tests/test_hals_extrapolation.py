"""HALS with Ang & Gillis's (2019) extrapolation (``HALS(extrapolate=True)``).

All checks run in float64 (x64 is switched on in conftest.py), on one small problem;
each case compiles one ``iterate`` program.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
import jnmf.batch
from jnmf.driver import iterate
from jnmf.rules import AHALS_ALPHA, AlternatingRule, HalfStep
from jnmf.rules.hals import HALS

# the fits here run a fixed count of iterations on purpose
pytestmark = pytest.mark.filterwarnings("ignore::jnmf.ConvergenceWarning")

M, N, K = 30, 20, 4
ITERATIONS = 25


def _data(seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.random((M, K)) @ rng.random((K, N)) + 0.1 * rng.random((M, N))
    return jnp.asarray(Y), jnp.asarray(rng.random((M, K))), jnp.asarray(rng.random((K, N)))


def _fit(rule, P, L, R, iterations=ITERATIONS):
    return iterate(rule, P, rule.init(P, L, R), max_iterations=iterations, tol=0.0, history_size=iterations)


def test_beta_zero_is_plain_accelerated_hals():
    """With beta0 = 0 beta stays 0 (it only ever grows by a factor or shrinks), so every
    extrapolated point is the iterate itself: the iterates are accelerated HALS's."""
    Y, L, R = _data()
    P = jnmf.build_problem(Y, K, lambda_1L=0.1)
    plain = _fit(HALS(inner_sweeps=None), P, L, R)
    off = _fit(HALS(inner_sweeps=None, extrapolate=True, beta0=0.0), P, L, R)
    np.testing.assert_allclose(off.L, plain.L, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(off.R, plain.R, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(off.state.aux.Lt, plain.state.Lt, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(off.history, plain.history, rtol=1e-12)
    np.testing.assert_allclose(off.objective, plain.objective, rtol=1e-12)


def test_returns_the_best_iterate_and_restarts_when_the_objective_rises():
    """An aggressive beta (1, growing fast) makes the objective rise at some steps (the
    restarts); the fit still returns an iterate no worse than any it reported, nor than
    the start, and its factors are non-negative and match its objective."""
    Y, L, R = _data(1)
    P = jnmf.build_problem(Y, K)
    rule = HALS(inner_sweeps=None, extrapolate=True, beta0=1.0, gamma=1.5, gamma_bar=1.2)
    res = _fit(rule, P, L, R)
    history = np.asarray(res.history)
    assert np.any(np.diff(history) > 0), "the case must exercise a restart"
    assert float(res.objective) <= history.min() * (1 + 1e-10)
    assert float(res.objective) <= float(P.objective(L, R))
    np.testing.assert_allclose(res.objective, P.objective(res.L, res.R), rtol=1e-12)
    assert jnp.all(res.L >= 0) and jnp.all(res.R >= 0)
    aux = res.state.aux
    assert 0.0 < float(aux.beta) <= float(aux.beta_max) <= 1.0


def test_extrapolation_reaches_a_lower_objective_than_plain_hals():
    """The point of the option: at the same iteration count extrapolated HALS ends lower."""
    Y, L, R = _data(2)
    P = jnmf.build_problem(Y, K)
    plain = _fit(HALS(), P, L, R)
    extrapolated = _fit(HALS(extrapolate=True), P, L, R)
    assert float(extrapolated.objective) < float(plain.objective)


def test_batched_equals_unbatched():
    Y, _, _ = _data(3)
    rng = np.random.default_rng(4)
    L0, R0 = jnp.asarray(rng.random((2, M, K))), jnp.asarray(rng.random((2, K, N)))
    P = jnmf.build_problem(Y, K)
    rule = HALS(inner_sweeps=None, extrapolate=True)
    batched = jnmf.batch.run_restarts(rule, P, L0, R0, max_iterations=ITERATIONS, tol=0.0)
    for i in range(2):
        single = _fit(rule, P, L0[i], R0[i])
        np.testing.assert_allclose(batched.L[i], single.L, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(batched.R[i], single.R, rtol=1e-10, atol=1e-12)


def test_normalize_applies_to_the_returned_iterate():
    """With ``normalize`` the returned (best) L has unit-max columns and L R matches it."""
    Y, L, R = _data(5)
    P = jnmf.build_problem(Y, K)
    rule = HALS(inner_sweeps=None, extrapolate=True)
    res = iterate(rule, P, rule.init(P, L, R), max_iterations=10, tol=0.0, normalize="max")
    np.testing.assert_allclose(jnp.max(res.L, axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(res.objective, P.objective(res.L, res.R), rtol=1e-12)
    assert float(res.objective) < float(P.objective(L, R))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"beta0": 1.5}, "beta0"),
        ({"eta": 1.0}, "eta"),
        ({"gamma": 0.9}, "gamma"),
        ({"gamma_bar": 0.5}, "gamma_bar"),
    ],
)
def test_bad_settings_are_rejected(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HALS(extrapolate=True, **kwargs)


def test_elementwise_weight_is_rejected():
    Y, L, R = _data()
    mask = np.ones((M, N))
    mask[0, 0] = 0.0
    P = jnmf.build_problem(Y, K, M=jnp.asarray(mask))
    with pytest.raises(ValueError, match="extrapolate"):
        jnmf.fit(Y, K, method=HALS(extrapolate=True), init=(L, R), M=jnp.asarray(mask), max_iterations=2)
    with pytest.raises(ValueError, match="extrapolate"):
        HALS(extrapolate=True).check(P)


def test_extrapolate_takes_true_false_or_auto():
    with pytest.raises(ValueError, match="extrapolate"):
        HALS(extrapolate="yes")


# ------------------------------------------------------- method "ahals", the default


def _default_fit(Y, L, R, **kw):
    kw = dict(init=(L, R), max_iterations=ITERATIONS, tol=0.0, history_size=ITERATIONS) | kw
    return jnmf.fit(Y, K, **kw)


def test_default_method_is_accelerated_hals_with_extrapolation():
    """fit's default ("ahals") is HALS(inner_sweeps=None, alpha=AHALS_ALPHA,
    extrapolate=True) on a problem without an elementwise weight (float64)."""
    Y, L, R = _data(6)
    assert jnmf.fitting.DEFAULT_METHOD == "ahals"
    default = _default_fit(Y, L, R)
    explicit = _default_fit(Y, L, R, method=HALS(inner_sweeps=None, alpha=AHALS_ALPHA, extrapolate=True))
    plain = _default_fit(Y, L, R, method="ahals-plain")
    for name in ("L", "R", "objective", "history"):
        np.testing.assert_array_equal(getattr(default, name), getattr(explicit, name), err_msg=name)
    assert not np.allclose(default.L, plain.L), "the default must differ from plain accelerated HALS"


def test_default_method_falls_back_to_plain_accelerated_hals_with_a_weight():
    """With an elementwise weight (missing values) "ahals" runs plain accelerated HALS:
    no extrapolation state and the same iterates as "ahals-plain" (float64); an explicit
    ``extrapolate=True`` is refused instead (test_elementwise_weight_is_rejected)."""
    Y, L, R = _data(7)
    Y = np.asarray(Y).copy()
    Y[0, 0] = Y[3, 5] = np.nan
    default = _default_fit(Y, L, R, missing="nan")
    plain = _default_fit(Y, L, R, missing="nan", method="ahals-plain")
    for name in ("L", "R", "objective", "history"):
        np.testing.assert_array_equal(getattr(default, name), getattr(plain, name), err_msg=name)
    P = jnmf.build_problem(jnp.asarray(np.nan_to_num(Y)), K, M=jnp.asarray(np.isfinite(Y), float))
    rule = jnmf.rules.make_rule("ahals")
    rule.check(P)  # no error: "auto"
    assert rule.init(P, L, R).aux is None


def test_default_fit_returns_its_best_iterate_although_its_history_rises():
    """The default's history may rise at an extrapolation restart; the fit's objective is
    still no worse than any iterate it reported (float64)."""
    rng = np.random.default_rng(0)
    Y = rng.random((60, 8)) @ rng.random((8, 40)) + 0.1 * rng.random((60, 40))
    res = jnmf.fit(Y, 6, key=0, max_iterations=60, tol=0.0, history_size=60)
    history = np.asarray(res.history)
    assert np.any(np.diff(history) > 0), "the case must exercise a restart"
    assert float(res.objective) <= history.min() * (1 + 1e-12)


def test_relative_change_test_follows_the_iteration_not_the_best_iterate():
    """At a restart the best iterate stands still; ``rel_tol`` compares the reported
    iterates (HALS.factors), so a restart is not taken for convergence (float64)."""
    Y, L, R = _data(1)
    P = jnmf.build_problem(Y, K)
    rule = HALS(inner_sweeps=None, extrapolate=True, beta0=1.0, gamma=1.5, gamma_bar=1.2)
    history = np.asarray(_fit(rule, P, L, R).history)
    first_rise = int(np.nonzero(np.diff(history) > 0)[0][0]) + 2  # the iteration whose objective rose
    res = iterate(rule, P, rule.init(P, L, R), max_iterations=ITERATIONS, tol=0.0, rel_tol=1e-13)
    assert int(res.iterations) > first_rise, (int(res.iterations), first_rise)


class _Scripted(AlternatingRule):
    """A rule that leaves the factors alone and reports a scripted objective sequence
    (``values[0]`` at the start): the driver's ``tol`` test on its own."""

    values: jnp.ndarray
    may_rise: bool = eqx.field(static=True)

    def half_step(self, hp, Xt, aux, side):
        return HalfStep(Xt, aux, step=jnp.ones((), Xt.dtype))

    def init_aux(self, problem, Lt, R):
        return jnp.zeros((), jnp.int32)

    def finish_iteration(self, problem, hp_R, Lt, R, aux):
        return Lt, R, aux + 1, self.values[aux + 1]

    def objective(self, problem, state):
        return self.values[state.aux]

    def objective_may_rise(self, problem):
        return self.may_rise


def test_a_small_rise_is_not_convergence_by_tol_for_a_rule_whose_objective_may_rise():
    """``tol`` takes a change of at most ``tol |f|`` for convergence; for a rule whose
    objective may rise by design (extrapolated HALS) only a decrease counts: a small rise
    at a restart had stopped ORL fits of the default at iteration 10 (error 0.1787
    against 0.1745).  Descent rules keep the two-sided test."""
    Y, L, R = _data()
    P = jnmf.build_problem(Y, K)
    values = jnp.asarray([10.0, 5.0, 5.0001, 4.0, 3.99999, 3.0, 2.0])
    stops = {}
    for may_rise in (False, True):
        rule = _Scripted(values, may_rise)
        stops[may_rise] = int(iterate(rule, P, rule.init(P, L, R), max_iterations=6, tol=1e-4).iterations)
    assert stops == {False: 2, True: 4}, stops
    assert HALS(inner_sweeps=None, extrapolate=True).objective_may_rise(P)
    assert not HALS(inner_sweeps=None).objective_may_rise(P)


def test_implicit_differentiation_accepts_the_default_and_its_fit_is_a_kkt_point():
    """jnmf.differentiable_fit with the default method (extrapolated ahals) stops on
    ``rel_tol`` at a KKT point of eq. 3, as the implicit gradient assumes (float64)."""
    from jnmf.implicit import differentiable_fit, kkt_conditions
    from jnmf.problem import Problem

    Y, L0, R0 = _data(8)
    L, R = differentiable_fit(Y, L0, R0, lambda_1L=0.01, lambda_2R=0.05)
    kkt = kkt_conditions(Problem.from_scalars(Y, lambda_1L=0.01, lambda_2R=0.05), L, R)
    assert float(kkt.stationarity) < 1e-10, float(kkt.stationarity)


@pytest.mark.parametrize("strategy", ["vmap", "map"])
def test_grid_settings_start_from_their_own_objective(strategy):
    """A grid's settings share the starts' states, made for the base problem; extrapolated
    HALS's state holds the start's objective (eq. 3 with the penalties), so each setting
    must remake it for its own penalties.  Before that, a setting with a large L1 penalty
    (lambda_1R = 10: its first step sets R to zero, a lower eq. 3 than the start) kept the
    base problem's smaller start objective as its best and returned the start itself.
    Float64: each setting of the grid equals a batch of fits of that setting alone."""
    Y, _, _ = _data(5)
    rng = np.random.default_rng(6)
    L0, R0 = jnp.asarray(rng.random((2, M, K))), jnp.asarray(rng.random((2, K, N)))
    P = jnmf.build_problem(Y, K)
    rule = HALS(inner_sweeps=None, extrapolate=True)
    values = np.array([0.0, 0.1, 10.0])
    grid = jnmf.batch.run_grid(
        rule, P, {"lambda_1R": values}, L0, R0, max_iterations=ITERATIONS, tol=0.0, strategy=strategy
    )
    for i, value in enumerate(values):
        alone = jnmf.batch.run_restarts(
            rule, P.replace(lambda_1R=value), L0, R0, max_iterations=ITERATIONS, tol=0.0
        )
        np.testing.assert_allclose(grid.objective[i], alone.objective, rtol=1e-10)
        np.testing.assert_allclose(grid.R[i], alone.R, rtol=1e-10, atol=1e-12)
        start = jnp.stack([jnmf.objective(Y, L0[j], R0[j], lambda_1R=value) for j in range(2)])
        assert np.all(np.asarray(grid.objective[i]) <= np.asarray(start))


def test_the_start_objective_is_the_drivers_and_a_continued_state_keeps_its_own():
    """A fresh state holds no start objective (``inf``: computing it was a pass over Y that
    the driver repeats for its own first ``tol`` test); the loop puts the driver's there
    (HALS.begin_fit), so a fit of 0 iterations keeps the start as its best, at eq. 3 of
    the start.  A state that holds its objectives already (a fit continued from a result)
    keeps them: its last iterate is not the best one (float64)."""
    Y, L, R = _data(1)
    P = jnmf.build_problem(Y, K, lambda_1L=0.1)
    rule = HALS(inner_sweeps=None, extrapolate=True, beta0=1.0, gamma=1.5, gamma_bar=1.2)
    fresh = rule.init(P, L, R)
    assert np.isinf(float(fresh.aux.best)) and np.isinf(float(fresh.aux.last))
    started = iterate(rule, P, fresh, max_iterations=0, tol=0.0).state.aux
    np.testing.assert_allclose(started.best, P.objective(L, R), rtol=1e-12)
    np.testing.assert_allclose(started.last, P.objective(L, R), rtol=1e-12)
    res = _fit(rule, P, L, R)
    assert float(res.state.aux.last) != float(res.state.aux.best), "the case must end off its best"
    again = iterate(rule, P, res.state, max_iterations=0, tol=0.0).state.aux
    assert float(again.last) == float(res.state.aux.last)
    assert float(again.best) == float(res.state.aux.best)
