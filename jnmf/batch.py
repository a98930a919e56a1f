"""Batching (layer 5): restarts and penalty grids as one compiled program.

Everything here runs the one driver loop over a batch of fits (the rule's step
under ``jax.vmap``, see :func:`jnmf.driver.iterate_impl`).  Y is shared (not
batched), so each product with Y becomes one large GEMM over all fits: JAX's
batching rule for ``dot_general`` folds the batch axis of the factor into its
free dimension, i.e. the restarts are stacked along the rank axis
(``(b k) x n`` times ``n x m``), which runs near the machine's matmul peak where a
loop of small ``k x n`` products cannot.

The batched ``while_loop`` runs until every fit has stopped; fits that stopped
early are frozen (their state is carried unchanged), so results equal the
unbatched ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .driver import Result, check_static_options, iterate_impl, traced_options
from .problem import Problem

# The penalty leaves a sweep may vary, and where they live in a Problem built by
# jnmf.build_problem (the first two L2 pairs per side are the scalar form of eq. 4).
SWEEPABLE = ("lambda_1L", "lambda_1R", "lambda_2L", "lambda_2R", "gamma_2L", "gamma_2R")


def with_scalar_penalties(problem: Problem, **values) -> Problem:
    """A copy of ``problem`` with eq.-4 scalars added/set; traced values are fine.

    lambda_1* are added to W_1* (the base problem should hold 0 for swept keys);
    lambda_2* and gamma_2* replace the values of the scalar-form L2 pairs.
    """
    unknown = set(values) - set(SWEEPABLE)
    if unknown:
        raise ValueError(f"cannot sweep {sorted(unknown)}; sweepable: {SWEEPABLE}")
    dt = problem.Y.dtype
    out = problem
    for side in ("L", "R"):
        if f"lambda_1{side}" in values:
            out = eqx.tree_at(
                lambda p, s=side: getattr(p, f"W_1{s}"),
                out,
                getattr(out, f"W_1{side}") + jnp.asarray(values[f"lambda_1{side}"], dt),
            )
        if f"lambda_2{side}" in values:
            out = eqx.tree_at(
                lambda p, s=side: getattr(p, f"l2_{s}")[0][0].value,
                out,
                jnp.asarray(values[f"lambda_2{side}"], dt),
            )
        if f"gamma_2{side}" in values:
            out = eqx.tree_at(
                lambda p, s=side: getattr(p, f"l2_{s}")[1][1].value,
                out,
                jnp.asarray(values[f"gamma_2{side}"], dt),
            )
    return out


def _run_many(rule, problem, states, opts, history_size, normalize):
    return iterate_impl(rule, problem, states, *opts, history_size, normalize, batched=True)


@eqx.filter_jit
def _restarts(rule, problem, states, opts, history_size, normalize) -> Result:
    return _run_many(rule, problem, states, opts, history_size, normalize)


@eqx.filter_jit
def _grid(rule, problem, grid, states, opts, history_size, normalize) -> Result:
    def one_setting(values):
        return _run_many(
            rule, with_scalar_penalties(problem, **values), states, opts, history_size, normalize
        )

    return jax.vmap(one_setting)(grid)


def run_restarts(
    rule,
    problem: Problem,
    L0: Array,
    R0: Array,
    *,
    max_iterations=1000,
    min_xstep=0.0,
    tol=0.0,
    rel_tol=0.0,
    history_size: int = 1000,
    normalize=None,
) -> Result:
    """Fit from each of the starting points ``L0[i], R0[i]`` in one jitted, vmapped loop.

    Returns a :class:`~jnmf.driver.Result` whose leaves have a leading restart axis.
    """
    check_static_options(history_size, normalize)
    states = jax.vmap(lambda L, R: rule.init(problem, L, R))(L0, R0)
    opts = traced_options(L0.dtype, max_iterations, min_xstep, tol, rel_tol)
    return _restarts(rule, problem, states, opts, int(history_size), normalize)


def run_grid(
    rule,
    problem: Problem,
    grid: Mapping[str, Array],
    L0: Array,
    R0: Array,
    *,
    max_iterations=1000,
    min_xstep=0.0,
    tol=0.0,
    rel_tol=0.0,
    history_size: int = 1000,
    normalize=None,
) -> Result:
    """Fit every (penalty setting, restart) pair as one program.

    ``grid`` maps sweepable names to 1-d arrays of equal length G (one entry per
    setting); the result's leaves have leading axes (G, restarts).
    """
    check_static_options(history_size, normalize)
    dt = L0.dtype
    grid = {key: jnp.asarray(v, dt) for key, v in grid.items()}
    states = jax.vmap(lambda L, R: rule.init(problem, L, R))(L0, R0)
    opts = traced_options(dt, max_iterations, min_xstep, tol, rel_tol)
    return _grid(rule, problem, grid, states, opts, int(history_size), normalize)
