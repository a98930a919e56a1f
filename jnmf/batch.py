"""Batching (layer 5): restarts and penalty grids as one compiled program.

Every function here runs the one driver loop (:func:`jnmf.driver.iterate_impl`)
over a batch of fits, with one of two strategies, chosen here and nowhere else:

* ``"vmap"``: the rule's step under ``jax.vmap``, all fits in ONE loop.  Y is shared
  (not batched), so each product with Y becomes one large GEMM over all fits: JAX's
  batching rule for ``dot_general`` folds the batch axis of the factor into its free
  dimension, i.e. the restarts are stacked along the rank axis.  Fits that stopped
  early are frozen (their state is carried unchanged), so results equal the
  unbatched ones.
* ``"map"``: ``lax.map`` over the fits, each with its own loop, in one program.  It
  shares no product with Y, but each fit stops on its own and runs its unbatched
  code.

:func:`batching_strategy` picks one per rule and backend from measurements
(experiments/bench_batching.py); every function takes ``strategy=`` to override it.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .driver import DEFAULT_STOPPING, Result, Stopping, check_static_options, iterate_impl
from .problem import Problem, check_replacements

STRATEGIES = ("vmap", "map")

# Rules whose batched fits run faster as a loop of fits on CPU (measured, see
# experiments/bench_batching.py); on GPU/TPU every rule is batched.
_LOOP_ON_CPU: frozenset[str] = frozenset()


def batching_strategy(rule, backend: str | None = None) -> str:
    """The strategy for a batch of fits of ``rule`` on ``backend`` (default: JAX's)."""
    backend = backend or jax.default_backend()
    if backend == "cpu" and getattr(rule, "method_name", None) in _LOOP_ON_CPU:
        return "map"
    return "vmap"


def _run(rule, problem, states, opts, history_size, normalize, strategy) -> Result:
    if strategy == "vmap":
        return iterate_impl(rule, problem, states, *opts, history_size, normalize, batched=True)
    return jax.lax.map(lambda s: iterate_impl(rule, problem, s, *opts, history_size, normalize), states)


@eqx.filter_jit
def _restarts(rule, problem, states, opts, history_size, normalize, strategy) -> Result:
    return _run(rule, problem, states, opts, history_size, normalize, strategy)


@eqx.filter_jit
def _grid(rule, problem, grid, states, opts, history_size, normalize, strategy) -> Result:
    def one_setting(values):
        return _run(rule, problem.replace(**values), states, opts, history_size, normalize, strategy)

    if strategy == "vmap":
        return jax.vmap(one_setting)(grid)
    return jax.lax.map(one_setting, grid)


def _prepare(rule, problem, L0, R0, stopping, overrides, history_size, normalize, strategy):
    check_static_options(history_size, normalize)
    stop = (stopping or DEFAULT_STOPPING).replace(**overrides).validate()
    strategy = strategy or batching_strategy(rule)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}")
    if L0.ndim != 3 or R0.ndim != 3 or L0.shape[0] != R0.shape[0]:
        raise ValueError(
            f"L0 and R0 must be stacks of starting factors with one leading axis, got shapes "
            f"{L0.shape} and {R0.shape}"
        )
    states = jax.vmap(lambda L, R: rule.init(problem, L, R))(L0, R0)
    return states, stop.traced(L0.dtype), strategy


def run_restarts(
    rule,
    problem: Problem,
    L0: Array,
    R0: Array,
    *,
    stopping: Stopping | None = None,
    max_iterations: int | None = None,
    min_xstep: float | None = None,
    tol: float | None = None,
    rel_tol: float | None = None,
    history_size: int = 1000,
    normalize=None,
    strategy: str | None = None,
) -> Result:
    """Fit from each of the starting points ``L0[i], R0[i]`` as one compiled program.

    Args:
        rule: an NMF rule; ``rule.check(problem)`` runs first.
        problem: the :class:`~jnmf.problem.Problem` (run as given: ``jnmf.fit`` also
            rescales the data, see :func:`jnmf.fitting.fit`).
        L0, R0: starting factors with a leading restart axis, ``(b, m, k)`` and ``(b, k, n)``.
        stopping, max_iterations, min_xstep, tol, rel_tol: as for :func:`jnmf.driver.iterate`.
        history_size, normalize: as for :func:`jnmf.driver.iterate`.
        strategy: ``"vmap"`` or ``"map"`` (default: :func:`batching_strategy`).

    Returns:
        A :class:`~jnmf.driver.Result` whose leaves have a leading restart axis.
    """
    rule.check(problem)
    overrides = dict(max_iterations=max_iterations, min_xstep=min_xstep, tol=tol, rel_tol=rel_tol)
    states, opts, strategy = _prepare(
        rule, problem, L0, R0, stopping, overrides, history_size, normalize, strategy
    )
    return _restarts(rule, problem, states, opts, int(history_size), normalize, strategy)


def run_grid(
    rule,
    problem: Problem,
    grid: Mapping[str, Array],
    L0: Array,
    R0: Array,
    *,
    stopping: Stopping | None = None,
    max_iterations: int | None = None,
    min_xstep: float | None = None,
    tol: float | None = None,
    rel_tol: float | None = None,
    history_size: int = 1000,
    normalize=None,
    strategy: str | None = None,
) -> Result:
    """Fit every (setting, restart) pair as one compiled program.

    Args:
        rule, problem, L0, R0, stopping, ...: as for :func:`run_restarts`.
        grid: maps leaf names of :meth:`jnmf.problem.Problem.replace` (``lambda_1L`` ...
            ``gamma_2R``, ``W_1L``, ``W_1R``, ``W_0R``, ``W_0C``) to arrays with one leading
            axis of equal length G (one entry per setting).  Each value REPLACES the
            problem's.

    Returns:
        A :class:`~jnmf.driver.Result` whose leaves have leading axes (G, restarts).
    """
    dt = L0.dtype
    m, n = problem.Y.shape
    k = L0.shape[-1]
    grid = {key: np.asarray(v, dt) for key, v in grid.items()}
    sizes = {v.shape[0] if v.ndim else None for v in grid.values()}
    if not grid or None in sizes or len(sizes) != 1:
        raise ValueError("grid must map names to arrays with one leading axis of equal length")
    for i in range(next(iter(sizes))):
        values = {key: v[i] for key, v in grid.items()}
        check_replacements(values, m, n, k)
        rule.check(problem.replace(**values))
    overrides = dict(max_iterations=max_iterations, min_xstep=min_xstep, tol=tol, rel_tol=rel_tol)
    states, opts, strategy = _prepare(
        rule, problem, L0, R0, stopping, overrides, history_size, normalize, strategy
    )
    grid = {key: jnp.asarray(v) for key, v in grid.items()}
    return _grid(rule, problem, grid, states, opts, int(history_size), normalize, strategy)
