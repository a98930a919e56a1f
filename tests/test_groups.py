"""Concurrent groups on CPU (``groups=`` of :func:`jnmf.batch.run_restarts`,
:func:`jnmf.batch.continue_restarts` and :func:`jnmf.batch.run_grid`): the fits split into
equal groups (the last padded with copies of the last start), each group's program run
from its own thread, the results joined in order with the padding dropped.

Each fit's iterates depend only on its own start, so every count of groups must give the
results of one program (``groups=1``): factors, objective and history to rounding,
iteration counts and status exactly.  B = 7 fits do not split evenly into 2 or 3 groups
(padded fits dropped), and the fits stop at different iterations.  Exactness tests:
float64 (x64 is on in conftest.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_batching import count_compilations  # XLA compilations while a block runs

import jnmf
from jnmf import compile_options, make_rule
from jnmf.batch import (
    GROUP_FITS,
    GROUPS_ENV,
    concurrent_groups,
    continue_restarts,
    run_grid,
    run_restarts,
    usable_cpus,
)
from jnmf.driver import Stopping
from jnmf.problem import build_problem

M, N, K, B = 24, 16, 3, 7

# this module's time is compiling (tiny problems): see conftest.py
CHEAP_PROGRAMS = True


@pytest.fixture(autouse=True)
def _xla_default_loop_options(monkeypatch):
    """Every loop compiled with XLA's defaults: a group's program runs fewer fits than one
    program for all, so at this size one of them could take the small-problem options
    (jnmf.compile_options.small_loop) and round differently at ~1e-12."""
    monkeypatch.setattr(compile_options, "SMALL_LOOP_ENTRIES", 0)
    monkeypatch.delenv(GROUPS_ENV, raising=False)


def starts(seed=0, count=B):
    rng = np.random.default_rng(seed)
    Y = rng.random((M, K)) @ rng.random((K, N)) + 0.05 * rng.random((M, N))
    scale = np.geomspace(0.05, 20.0, count)  # starts of very different quality: uneven stops
    L0 = rng.random((count, M, K)) * scale[:, None, None] + 0.01
    R0 = rng.random((count, K, N)) / scale[:, None, None] + 0.01
    return jnp.asarray(Y), jnp.asarray(L0), jnp.asarray(R0)


def assert_same_fits(res, ref):
    assert res.L.shape == ref.L.shape and res.iterations.shape == ref.iterations.shape
    np.testing.assert_array_equal(np.asarray(res.iterations), np.asarray(ref.iterations))
    np.testing.assert_array_equal(np.asarray(res.status), np.asarray(ref.status))
    for a, b in [(res.L, ref.L), (res.R, ref.R), (res.objective, ref.objective)]:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.history), np.asarray(ref.history), rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize(("method", "strategy"), [("ahals", "hybrid"), ("kl", "map"), ("mu", "vmap")])
def test_groups_equal_one_program(method, strategy):
    Y, L0, R0 = starts()
    rule, problem = make_rule(method), build_problem(Y, K)
    run = lambda **kw: run_restarts(rule, problem, L0, R0, history_size=8, strategy=strategy, **kw)
    free = run(groups=1, stopping=Stopping(max_iterations=40, tol=0.0))
    # a target some fits reach early, some late, one never: uneven stops
    stop = Stopping(max_iterations=40, tol=0.0, target=float(np.quantile(np.asarray(free.objective), 0.8)))
    ref = run(groups=1, stopping=stop)
    assert len(set(np.asarray(ref.iterations).tolist())) > 2, ref.iterations
    for groups in (2, 3):  # 7 fits: 4 + 3 (one padded), 3 + 3 + 1 (two padded)
        assert_same_fits(run(groups=groups, stopping=stop), ref)
    # more groups than fits: one fit per group
    assert_same_fits(run(groups=B + 5, stopping=stop), ref)


def test_groups_through_slots_and_continue():
    Y, L0, R0 = starts(1)
    rule, problem = make_rule("ahals"), build_problem(Y, K)
    kw = dict(history_size=4, strategy="hybrid", max_iterations=15, tol=0.0)
    ref = run_restarts(rule, problem, L0, R0, groups=1, slots=2, **kw)
    res = run_restarts(rule, problem, L0, R0, groups=2, slots=2, **kw)
    assert_same_fits(res, ref)
    more = continue_restarts(rule, problem, ref.state, groups=1, **kw)
    assert_same_fits(continue_restarts(rule, problem, ref.state, groups=3, **kw), more)


@pytest.mark.parametrize(("settings", "restarts"), [(3, 1), (2, 3)])
def test_grid_groups_equal_one_program(settings, restarts):
    """The settings dealt into 2 or 3 groups (3 settings), or the restarts (2 settings, 3
    groups); the result keeps its (settings, restarts) axes in order."""
    Y, L0, R0 = starts(2, restarts)
    rule, problem = make_rule("mu"), build_problem(Y, K)
    grid = {"lambda_1L": jnp.asarray([0.0, 0.05, 0.3][:settings])}
    kw = dict(history_size=3, max_iterations=25, tol=1e-5)
    run = lambda g: run_grid(rule, problem, grid, L0, R0, groups=g, **kw)
    ref = run(1)
    assert ref.L.shape[:2] == (settings, restarts)
    for groups in (2, 3):
        assert_same_fits(run(groups), ref)


def test_fit_restarts_through_groups(monkeypatch):
    """``jnmf.fit(restarts=...)`` runs its restarts through the groups the chooser (or
    ``JNMF_CPU_GROUPS``) picks, with the same result."""
    Y = np.asarray(starts(3)[0])
    monkeypatch.setenv(GROUPS_ENV, "1")
    ref = jnmf.fit(Y, K, restarts=5, key=4, max_iterations=300, tol=1e-6)
    monkeypatch.setenv(GROUPS_ENV, "2")
    res = jnmf.fit(Y, K, restarts=5, key=4, max_iterations=300, tol=1e-6)
    np.testing.assert_allclose(np.asarray(res.L), np.asarray(ref.L), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.R), np.asarray(ref.R), rtol=1e-12, atol=1e-12)
    assert int(res.iterations) == int(ref.iterations)


def test_groups_do_not_recompile_for_new_values():
    Y, L0, R0 = starts(5)
    rule, problem = make_rule("ahals"), build_problem(Y, K)
    run = lambda history_size=2, **kw: run_restarts(
        rule, problem, L0, R0, history_size=history_size, groups=2, **kw
    )
    run(max_iterations=5)
    with count_compilations() as compiles:
        run(max_iterations=12, tol=1e-4)
        run(max_iterations=3, tol=0.0, rel_tol=1e-3)
        run(stopping=Stopping(max_iterations=7, target=1.0))
    assert compiles == [], f"{len(compiles)} XLA compilations for new values"
    with count_compilations() as compiles:  # the counter is live: a new static option compiles
        run(max_iterations=5, history_size=3)
    assert len(compiles) >= 1


def test_bad_groups_raise_before_compiling():
    Y, L0, R0 = starts(6)
    rule, problem = make_rule("mu"), build_problem(Y, K)
    for bad in (0, -2, 1.5, "2", True):
        with count_compilations() as compiles, pytest.raises(ValueError, match="groups"):
            run_restarts(rule, problem, L0, R0, groups=bad)
        assert compiles == []
    with pytest.raises(ValueError, match="groups"):
        run_grid(rule, problem, {"lambda_1L": jnp.asarray([0.0, 0.1])}, L0, R0, groups=0)
    with pytest.raises(ValueError, match="groups"):
        continue_restarts(
            rule, problem, run_restarts(rule, problem, L0, R0, max_iterations=1).state, groups=-1
        )
    with pytest.raises(ValueError, match="groups.*progress_every"):
        run_restarts(rule, problem, L0, R0, groups=2, progress_every=5)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fits",))
    with pytest.raises(ValueError, match="groups.*mesh"):
        run_restarts(rule, problem, L0, R0, groups=2, mesh=mesh)


def test_concurrent_groups_is_a_pure_choice(monkeypatch):
    assert concurrent_groups("cpu", 32, "hybrid", cpus=2) == 2
    assert concurrent_groups("cpu", 32, "map", cpus=4) == min(4, 32 // GROUP_FITS)
    assert concurrent_groups("cpu", 2 * GROUP_FITS - 1, "hybrid", cpus=2) == 1  # too few fits
    assert concurrent_groups("cpu", 32, "hybrid", cpus=1) == 1
    assert concurrent_groups("gpu", 32, "map", cpus=8) == 1
    assert concurrent_groups("cpu", 32, "vmap", cpus=2) == 1  # not measured: one program
    assert concurrent_groups("cpu", 32, "hybrid", cpus=2, progress=True) == 1
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fits",))
    assert concurrent_groups("cpu", 32, "hybrid", cpus=2, mesh=mesh) == 1
    assert 1 <= concurrent_groups("cpu", 32, "hybrid") <= usable_cpus()
    monkeypatch.setenv(GROUPS_ENV, "1")
    assert concurrent_groups("cpu", 32, "hybrid", cpus=2) == 1
    monkeypatch.setenv(GROUPS_ENV, "3")
    assert concurrent_groups("cpu", 32, "hybrid", cpus=2) == 3
    assert concurrent_groups("cpu", 2, "hybrid", cpus=2) == 2  # capped at the fits
    monkeypatch.setenv(GROUPS_ENV, "zero")
    with pytest.raises(ValueError, match=GROUPS_ENV):
        concurrent_groups("cpu", 32, "hybrid", cpus=2)


def test_groups_inside_a_trace_run_as_one_program():
    """Under ``jax.jit`` the fits cannot leave the trace for threads: one program, same fits."""
    Y, L0, R0 = starts(7)
    rule, problem = make_rule("mu"), build_problem(Y, K)
    kw = dict(max_iterations=10, history_size=2)
    run = lambda L0, groups: run_restarts(rule, problem, L0, R0, groups=groups, **kw)
    ref = run(L0, 1)
    assert_same_fits(jax.jit(lambda L0: run(L0, 3))(L0), ref)
