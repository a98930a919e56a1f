"""Continuous batching: a batched loop run through S < B slots (``slots=`` of
:func:`jnmf.batch.run_restarts`), a finished fit's slot refilled with the next pending fit.

Each fit's iterates depend only on its own start, so every fit must equal its fit-by-fit
result (strategy ``"map"``): factors, objective and history to rounding, iteration count
and status exactly.  The fits stop at different iterations (a target objective that some
reach early, some late and some never, within the cap), B = 7 is not a multiple of S = 3,
and max_iterations=0 and S >= B (no refill) are covered.  Exactness tests: float64 (x64 is on in conftest.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf.batch
from jnmf import compile_options, make_rule, progress
from jnmf.batch import _loop_over_active, restart_slots, run_grid, run_restarts
from jnmf.driver import Stopping
from jnmf.problem import build_problem

M, N, K, B, S = 24, 16, 3, 7, 3


@pytest.fixture(autouse=True)
def _xla_default_loop_options(monkeypatch):
    """Every strategy's loop compiled with XLA's defaults: at this size the loops would take
    the small-problem options (jnmf.compile_options.small_loop), under which the batched and
    the fit-by-fit programs round differently at ~1e-12 after 60 iterations; the slots
    claim equality to that precision for the same compilation."""
    monkeypatch.setattr(compile_options, "SMALL_LOOP_ENTRIES", 0)


CAP = 60


def uneven_stopping(run) -> Stopping:
    """A target between the fits' objectives after ``CAP`` iterations (fit by fit, via
    ``run``): the better fits reach it at different iterations, the worst never."""
    free = run(strategy="map", stopping=Stopping(max_iterations=CAP, tol=0.0))
    return Stopping(max_iterations=CAP, tol=0.0, target=float(np.quantile(np.asarray(free.objective), 0.8)))


def starts(seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.random((M, K)) @ rng.random((K, N)) + 0.05 * rng.random((M, N))
    # starts of very different quality: the fits stop at different iterations
    scale = np.geomspace(0.05, 20.0, B)
    L0 = rng.random((B, M, K)) * scale[:, None, None] + 0.01
    R0 = rng.random((B, K, N)) / scale[:, None, None] + 0.01
    return jnp.asarray(Y), jnp.asarray(L0), jnp.asarray(R0)


def assert_same_fits(res, ref):
    np.testing.assert_array_equal(np.asarray(res.iterations), np.asarray(ref.iterations))
    np.testing.assert_array_equal(np.asarray(res.status), np.asarray(ref.status))
    for a, b in [(res.L, ref.L), (res.R, ref.R), (res.objective, ref.objective)]:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.history), np.asarray(ref.history), rtol=1e-12, equal_nan=True)


class Reports:
    """A progress listener keeping every report."""

    def __init__(self):
        self.seen = []

    def update(self, iteration, objective, finished):
        self.seen.append((iteration, objective, finished))


@pytest.mark.parametrize(("method", "strategy"), [("ahals", "hybrid"), ("kl", "vmap"), ("mu", "vmap")])
def test_slots_equal_fit_by_fit(method, strategy):
    Y, L0, R0 = starts()
    rule, problem = make_rule(method), build_problem(Y, K)
    run = lambda **kw: run_restarts(rule, problem, L0, R0, history_size=8, **kw)
    stop = uneven_stopping(run)
    ref = run(strategy="map", stopping=stop)
    its = np.asarray(ref.iterations)
    assert len(set(its.tolist())) > 3 and its.max() == CAP, its  # uneven stops
    assert_same_fits(run(strategy=strategy, slots=S, stopping=stop), ref)
    # nothing to run: every fit is written from its start, iteration 0
    zero = run(strategy=strategy, slots=S, stopping=stop, max_iterations=0)
    assert np.all(np.asarray(zero.iterations) == 0)
    np.testing.assert_allclose(np.asarray(zero.L), np.asarray(L0), rtol=1e-12)
    if method != "ahals":
        return  # the rest does not depend on the rule (one more compile each)
    # S >= B: no refill, all fits at once (today's loop)
    assert_same_fits(run(strategy=strategy, slots=B, stopping=stop), ref)
    # progress from the slot loop: the loop's count, and the fits written so far
    listener = Reports()
    with progress.listening(listener):
        assert_same_fits(run(strategy=strategy, slots=S, stopping=stop, progress_every=5), ref)
    iterations, _, finished = map(np.array, zip(*listener.seen, strict=True))
    assert iterations[0] == 0 and np.all(np.diff(iterations) == 5), iterations
    assert np.all(np.diff(finished) >= 0) and finished[-1] <= B, finished
    # S slots hold one fit each at a time: the loop ran at least sum(iterations) / S times
    # (the last report is at most 5 iterations before the end)
    assert S * (iterations[-1] + 5) >= int(np.sum(its)) > S * CAP, (iterations[-1], its)


def test_slots_in_a_grid_equal_fit_by_fit():
    """A grid's settings each run their restarts through the slots (hybrid: lax.map over
    the settings)."""
    Y, L0, R0 = starts(1)
    rule, problem = make_rule("ahals"), build_problem(Y, K)
    grid = {"lambda_1L": np.array([0.0, 0.5])}
    run = lambda **kw: run_grid(rule, problem, grid, L0, R0, history_size=8, **kw)
    stop = uneven_stopping(lambda **kw: run_restarts(rule, problem, L0, R0, history_size=8, **kw))
    ref = run(strategy="map", stopping=stop)
    assert len(set(np.asarray(ref.iterations).ravel().tolist())) > 3, ref.iterations
    assert_same_fits(run(strategy="hybrid", slots=S, stopping=stop), ref)


def test_slots_argument_and_choice():
    Y, L0, R0 = starts()
    rule, problem = make_rule("mu"), build_problem(Y, K)
    for bad in (0, -2, 2.5, "4"):
        with pytest.raises(ValueError, match="slots"):
            run_restarts(rule, problem, L0, R0, slots=bad)
    # a pure function of shapes: fewer slots than fits for a large batched batch only
    assert restart_slots("map", "hals", 25, 32) is None
    assert restart_slots("hybrid", "hals", 25, 1) is None
    chosen = restart_slots("hybrid", "hals", 25, 32)
    assert chosen is not None and 1 <= chosen < 32
    assert restart_slots("hybrid", "hals", 25, 32, "gpu") is None  # measured on CPU only
    # MU / AU under "vmap" stack wider slots (their products run faster wider); others keep
    # the hybrid rule's count; still fewer slots than fits, and none for a small batch
    for method in ("mu", "au"):
        wide = restart_slots("vmap", method, 25, 32)
        assert chosen < wide < 32 and wide >= jnmf.batch.VMAP_SLOT_FITS[method]
        assert restart_slots("vmap", method, 25, 8) is None
        assert restart_slots("vmap", method, 25, 32, "gpu") is None
    assert restart_slots("vmap", "pg", 25, 32) == chosen


@pytest.mark.parametrize("method", ["ahals", "ahals-plain"])
def test_finished_fits_skip_their_half_steps(method):
    """The "hybrid" step's half steps run for the active fits only (float64): an active
    fit's half step equals the fit-by-fit one exactly, an inactive fit comes back as it came
    in (its result is discarded by the driver's freeze), with or without extrapolation's
    auxiliary state (whose unchanged leaves are passed on, not rewritten per fit)."""
    Y, L0, R0 = starts(1)
    rule = make_rule(method)
    problem = build_problem(Y, K)
    states = jax.vmap(lambda L, R: rule.init(problem, L, R))(L0, R0)
    active = jnp.asarray([True, False, True, True, False, False, True])
    hp = jax.vmap(lambda Lt, R, aux: rule.half_problem(problem, "L", Lt, R, aux))(
        states.Lt, states.R, states.aux
    )
    one = lambda hp, X, aux: rule.half_step(hp, X, aux, "L")
    skipping = jax.jit(lambda hp, X, aux, a: _loop_over_active(a)(one)(hp, X, aux))(
        hp, states.Lt, states.aux, active
    )
    every = jax.lax.map(lambda a: one(*a), (hp, states.Lt, states.aux))
    for i, on in enumerate(np.asarray(active)):
        take = lambda x, i=i: x[i]
        if on:  # the same half step, compiled in another program: equal to rounding
            got, expected = jax.tree.map(take, skipping), jax.tree.map(take, every)
            check = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        else:  # passed through untouched
            got = jax.tree.map(take, (skipping.X, skipping.aux))
            expected = jax.tree.map(take, (states.Lt, states.aux))
            check = np.testing.assert_array_equal
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            check(np.asarray(a), np.asarray(b))
    # and none active: everything passes through
    none = _loop_over_active(jnp.zeros(B, bool))(one)(hp, states.Lt, states.aux)
    np.testing.assert_array_equal(np.asarray(none.X), np.asarray(states.Lt))
