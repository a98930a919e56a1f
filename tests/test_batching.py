"""Batching and compilation: whole fits under ``jax.vmap`` in one jitted call.

* vmap over starting points (restarts) and over a vector of lambda values runs every
  fit in one ``lax.while_loop``; each batched fit equals the unbatched one (same
  iterates, iteration count and converged flag: finished fits are frozen).
* Changing max_iterations, min_xstep, tol, penalty values or rule settings does not
  recompile the driver (counted two ways: Python traces of the rule's step, and XLA
  backend compilations reported by ``jax.monitoring``).
"""

# Exactness tests run in float64 (x64 is switched on in conftest.py).
import contextlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnmf
import jnmf.batch
from jnmf.driver import RNNMF_STOPPING
from jnmf.rules import AURNMF, MURNMF

M, N, K, B = 20, 12, 3, 4
# The fits below use rnnmf's stopping rule (largest step < min_xstep, no objective test),
# as the front doors they are compared with: iterate's default is DEFAULT_STOPPING.
RULES = {"mu": lambda: MURNMF(), "au": lambda: AURNMF(tau=0.2, annealing_rate=0.05)}


def data(seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.random((M, K)) @ rng.random((K, N)) + 0.01 * rng.random((M, N))
    L0s = rng.random((B, M, K)) + 0.05
    R0s = rng.random((B, K, N)) + 0.05
    return jnp.asarray(Y), jnp.asarray(L0s), jnp.asarray(R0s)


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def arrays(*xs):
    """Python numbers as arrays: eqx.filter_jit treats Python scalars as static."""
    return tuple(jnp.asarray(x) for x in xs)


def fit_restarts(rule, Y, L0s, R0s, lam, max_iterations, min_xstep):
    return _fit_restarts(rule, Y, L0s, R0s, *arrays(lam, max_iterations, min_xstep))


def fit_lambdas(rule, Y, L0, R0, lams, max_iterations, min_xstep):
    return _fit_lambdas(rule, Y, L0, R0, *arrays(lams, max_iterations, min_xstep))


@eqx.filter_jit
def _fit_restarts(rule, Y, L0s, R0s, lam, max_iterations, min_xstep):
    """All restarts in one jitted, vmapped call."""
    problem = jnmf.Problem.from_scalars(Y, lambda_1L=lam, lambda_2R=0.1)

    def one(L0, R0):
        state = rule.init(problem, L0, R0)
        return jnmf.iterate(
            rule, problem, state, stopping=RNNMF_STOPPING, max_iterations=max_iterations, min_xstep=min_xstep
        )

    return jax.vmap(one)(L0s, R0s)


@eqx.filter_jit
def _fit_lambdas(rule, Y, L0, R0, lams, max_iterations, min_xstep):
    """One fit per lambda_1L value, in one jitted, vmapped call."""

    def one(lam):
        problem = jnmf.Problem.from_scalars(Y, lambda_1L=lam, lambda_2R=0.1)
        state = rule.init(problem, L0, R0)
        return jnmf.iterate(
            rule, problem, state, stopping=RNNMF_STOPPING, max_iterations=max_iterations, min_xstep=min_xstep
        )

    return jax.vmap(one)(lams)


def unbatched(rule, Y, L0, R0, lam, max_iterations, min_xstep):
    problem = jnmf.Problem.from_scalars(Y, lambda_1L=lam, lambda_2R=0.1)
    return jnmf.iterate(
        rule,
        problem,
        rule.init(problem, L0, R0),
        stopping=RNNMF_STOPPING,
        max_iterations=max_iterations,
        min_xstep=min_xstep,
    )


def assert_same_fit(batched, b, single):
    assert int(batched.iterations[b]) == int(single.iterations)
    assert bool(batched.converged[b]) == bool(single.converged)
    assert rel(batched.L[b], single.L) <= 1e-10
    assert rel(batched.R[b], single.R) <= 1e-10
    assert abs(float(batched.objective[b]) - float(single.objective)) <= 1e-10 * abs(float(single.objective))


@pytest.mark.parametrize("kind", list(RULES))
def test_vmap_over_restarts_matches_unbatched(kind):
    rule = RULES[kind]()
    Y, L0s, R0s = data(1)
    res = fit_restarts(rule, Y, L0s, R0s, 0.01, 260, 1e-3)
    its = np.asarray(res.iterations)
    # some restarts converge early, others run to the cap: finished ones must stay frozen
    assert np.any(np.asarray(res.converged)) and not np.all(np.asarray(res.converged)), its
    for b in range(B):
        assert_same_fit(res, b, unbatched(rule, Y, L0s[b], R0s[b], 0.01, 260, 1e-3))
    # and the front door gives the same fit
    front = {"mu": jnmf.murnmf, "au": jnmf.aurnmf}[kind]
    kw = {} if kind == "mu" else dict(tau=0.2, annealing_rate=0.05)
    f = front(Y, L0s[0], R0s[0], lambda_1L=0.01, lambda_2R=0.1, max_iterations=260, min_xstep=1e-3, **kw)
    assert_same_fit(res, 0, f)


@pytest.mark.parametrize("kind", list(RULES))
def test_vmap_over_lambda_matches_unbatched(kind):
    rule = RULES[kind]()
    Y, L0s, R0s = data(2)
    lams = jnp.asarray([0.0, 0.05, 0.2, 1.0])
    res = fit_lambdas(rule, Y, L0s[0], R0s[0], lams, 300, 1e-6)
    for b, lam in enumerate(lams):
        assert_same_fit(res, b, unbatched(rule, Y, L0s[0], R0s[0], lam, 300, 1e-6))
    # more L1 weight -> a sparser L
    zeros = [int(np.sum(np.asarray(res.L[b]) < 1e-6)) for b in range(len(lams))]
    assert zeros[-1] >= zeros[0]


@pytest.mark.parametrize("strategy", ["vmap", "map"])
def test_run_grid_replaces_and_matches_unbatched(strategy):
    """run_grid: every (setting, restart) fit equals the unbatched fit of the problem whose
    leaf is REPLACED by the grid value (the base problem's lambda_1L = 0.3 is not added)."""
    rule = MURNMF()
    Y, L0s, R0s = data(7)
    base = jnmf.Problem.from_scalars(Y, lambda_1L=0.3, lambda_2R=0.1)
    lams = np.array([0.0, 0.2])
    res = jnmf.batch.run_grid(
        rule, base, {"lambda_1L": lams}, L0s[:2], R0s[:2], stopping=RNNMF_STOPPING, max_iterations=150,
        min_xstep=1e-6, strategy=strategy,
    )  # fmt: skip
    assert res.L.shape == (2, 2, M, K)
    for g, lam in enumerate(lams):
        batched = jax.tree.map(lambda x, g=g: x[g], res)
        for b in range(2):
            assert_same_fit(batched, b, unbatched(rule, Y, L0s[b], R0s[b], lam, 150, 1e-6))


# ----------------------------------------------------------- recompilation
TRACES = {"n": 0}


class CountingMU(MURNMF):
    """MURNMF that counts how often its step is traced (i.e. how often the driver compiles)."""

    def step(self, problem, state):
        TRACES["n"] += 1
        return super().step(problem, state)


@contextlib.contextmanager
def count_compilations():
    """Count XLA backend compilations while the block runs."""
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_driver_does_not_retrace_for_new_values():
    Y, L0s, R0s = data(3)

    def run(lam=0.0, eps=1e-7, **opts):
        problem = jnmf.Problem.from_scalars(Y, lambda_1L=lam, lambda_2L=0.1)
        r = CountingMU(eps)
        return jnmf.iterate(r, problem, r.init(problem, L0s[0], R0s[0]), **opts)

    run(max_iterations=10)
    first = TRACES["n"]
    assert first >= 1
    with count_compilations() as compiles:
        run(max_iterations=50)
        run(max_iterations=7, min_xstep=1e-3)
        run(max_iterations=20, tol=1e-6)
        run(max_iterations=20, rel_tol=1e-4)
        run(lam=0.3, max_iterations=20)
        run(eps=1e-3, max_iterations=20)
        res = run(max_iterations=0)
    assert TRACES["n"] == first, "the driver was retraced for new values"
    assert compiles == [], f"{len(compiles)} XLA compilations for new values"
    assert int(res.iterations) == 0
    # a static option (history_size) does recompile: the counter is live
    run(max_iterations=5, history_size=17)
    assert TRACES["n"] > first


def test_front_doors_do_not_recompile_for_new_values():
    Y, L0s, R0s = data(4)
    Y, L0, R0 = np.asarray(Y), np.asarray(L0s[0]), np.asarray(R0s[0])
    jnmf.murnmf(Y, L0, R0, max_iterations=3)
    jnmf.aurnmf(Y, L0, R0, max_iterations=3)
    with count_compilations() as compiles:
        jnmf.murnmf(Y, L0, R0, max_iterations=30, lambda_1L=0.2, gamma_2R=0.1, epsilon=1e-4)
        jnmf.murnmf(Y, L0, R0, max_iterations=8, tol=1e-5, min_xstep=1e-4, lambda_2L=1.5)
        jnmf.aurnmf(Y, L0, R0, max_iterations=30, tau=0.4, annealing_rate=0.2, lambda_1R=0.1)
        jnmf.aurnmf(Y, L0, R0, max_iterations=9, zero_tolerance=1e-6, gamma_2L=0.5, tol=1e-3)
    assert compiles == [], f"{len(compiles)} XLA compilations for new values"


def test_batched_fit_does_not_recompile_for_new_values():
    Y, L0s, R0s = data(5)
    rule = MURNMF()
    fit_restarts(rule, Y, L0s, R0s, 0.01, 50, 1e-6)
    L0s_other, rule_other = L0s * 2, MURNMF(1e-5)  # (made outside: eager ops compile too)
    with count_compilations() as compiles:
        fit_restarts(rule_other, Y, L0s_other, R0s, 0.3, 80, 1e-4)
        fit_restarts(rule, Y, L0s, R0s, 0.0, 10, 0.0)
    assert compiles == []


def test_cpu_strategy_stacks_only_products_bound_by_streaming_y():
    """The CPU choice is a pure function of method, rank and number of fits (no timing):
    restarts at a rank below ``STACK_BELOW_RANK`` (accelerated HALS measured 2.1x faster
    stacked on 6000 x 2000 at rank 9, 1.55x on ORL at rank 25) share their products with Y;
    at rank 50 (1000 x 500: fit by fit was fastest), for one fit, or with the rank
    unknown, HALS runs fit by fit."""
    pick = jnmf.batch.cpu_strategy
    low, high = jnmf.batch.STACK_BELOW_RANK - 1, jnmf.batch.STACK_BELOW_RANK
    assert [pick(m, low, 32) for m in ("hals", "anls", "mu", "kl")] == ["hybrid", "map", "vmap", "map"]
    assert [pick(m, high, 32) for m in ("hals", "anls", "mu", "kl")] == ["map", "map", "vmap", "map"]
    assert pick("hals", 9, 32) == pick("hals", 25, 32) == "hybrid"  # 6000 x 2000; ORL
    assert pick("hals", 50, 32) == pick("hals", 9, 1) == pick("hals", None, None) == "map"
    ahals = jnmf.rules.make_rule("ahals")
    assert jnmf.batch.batching_strategy(ahals, "cpu", rank=9, fits=32) == "hybrid"
    assert jnmf.batch.batching_strategy(ahals, "cpu", rank=9, fits=32, uneven_stops=True) == "map"
    assert jnmf.batch.batching_strategy(ahals, "gpu", rank=25, fits=32) == "vmap"
