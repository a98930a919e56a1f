"""A rule built on another (``jnmf.rules.wrapped.WrappedRule``) runs the wrapped rule exactly.

The estimator's stopping tests and its ``transform`` wrap rules; a hook a wrapper did not
forward silently fell back to the base class's default (a wrapper that dropped
``converged`` ran ``transform`` to ``max_iter``).  Here a bare ``WrappedRule`` must give
the wrapped rule's fit bit for bit for rules that use the optional hooks: extrapolated
HALS (``begin_fit``, ``for_problem`` in a grid, ``rescale`` with ``normalize``,
``objective_may_rise``) and KL (``in_loop``/``out_of_loop``, its own objective and
``loss_degree``).

x64 is on (conftest.py): the float64 comparisons are exactness tests.
"""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from jnmf.batch import run_grid, run_restarts
from jnmf.driver import iterate
from jnmf.estimator import ErrorTestRule, FixedRRule, ViolationRule
from jnmf.problem import build_problem
from jnmf.rules import HALS, KLMU
from jnmf.rules.base import AlternatingRule
from jnmf.rules.wrapped import WrappedRule

CHEAP_PROGRAMS = True

rng = np.random.default_rng(7)
M, N, K = 24, 18, 3
Y = jnp.asarray(rng.random((M, N)) + 0.05)
L0 = jnp.asarray(rng.random((M, K)) + 0.1)
R0 = jnp.asarray(rng.random((K, N)) + 0.1)


def _hooks(cls) -> set[str]:
    """The overridable methods and properties of ``cls`` (the rule protocol)."""
    return {
        name
        for name, value in vars(cls).items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))
    }


def test_every_hook_of_the_protocol_is_forwarded():
    # ``init`` and ``step`` are the shared machinery (they call the hooks), not hooks
    missing = _hooks(AlternatingRule) - _hooks(WrappedRule) - {"init", "step"}
    assert not missing, f"WrappedRule does not forward {sorted(missing)}"
    for wrapper in (FixedRRule, ViolationRule, ErrorTestRule):
        assert issubclass(wrapper, WrappedRule)


@pytest.mark.parametrize("rule", [HALS(inner_sweeps=None, extrapolate=True), KLMU()], ids=["ahals", "kl"])
@pytest.mark.parametrize("normalize", [None, "max"])
def test_wrapped_fit_is_the_rules_fit(rule, normalize):
    problem = build_problem(Y, K, lambda_1L=0.05)
    opts = dict(max_iterations=25, tol=0.0, history_size=25, normalize=normalize)
    outs = [iterate(r, problem, r.init(problem, L0, R0), **opts) for r in (rule, WrappedRule(rule))]
    bare, wrapped = outs
    assert int(bare.iterations) == int(wrapped.iterations) == 25
    np.testing.assert_array_equal(np.asarray(wrapped.L), np.asarray(bare.L))
    np.testing.assert_array_equal(np.asarray(wrapped.R), np.asarray(bare.R))
    np.testing.assert_array_equal(np.asarray(wrapped.history), np.asarray(bare.history))
    assert WrappedRule(rule).loss_degree == rule.loss_degree
    assert WrappedRule(rule).method_name == rule.method_name


def test_wrapped_grid_remakes_each_settings_start():
    # extrapolated HALS keeps its start's objective: a grid's setting must get its own
    # (for_problem); a wrapper that kept the base's state would differ from the bare rule
    rule = HALS(inner_sweeps=None, extrapolate=True)
    problem = build_problem(Y, K)
    grid = {"lambda_2R": jnp.asarray([0.0, 0.5, 2.0])}
    starts = (jnp.stack([L0, 0.5 * L0]), jnp.stack([R0, 2.0 * R0]))
    opts = dict(max_iterations=15, tol=1e-9, history_size=1, strategy="vmap", groups=1)
    bare = run_grid(rule, problem, grid, *starts, **opts)
    wrapped = run_grid(WrappedRule(rule), problem, grid, *starts, **opts)
    np.testing.assert_array_equal(np.asarray(wrapped.iterations), np.asarray(bare.iterations))
    np.testing.assert_array_equal(np.asarray(wrapped.L), np.asarray(bare.L))
    np.testing.assert_array_equal(np.asarray(wrapped.objective), np.asarray(bare.objective))


def test_fixed_R_changes_L_only_and_stops_on_its_own_test():
    rule = ErrorTestRule(FixedRRule(HALS()), np.float64(1e-4))
    problem = build_problem(Y, K)
    res = run_restarts(rule, problem, L0[None], R0[None], max_iterations=500, tol=0.0, history_size=1)
    np.testing.assert_array_equal(np.asarray(res.R[0]), np.asarray(R0))
    assert not np.array_equal(np.asarray(res.L[0]), np.asarray(L0))
    n = int(res.iterations[0])
    assert n < 500 and n % 10 == 0  # scikit-learn's test, every 10 iterations
