"""The one iteration driver (layer 4): a single ``lax.while_loop`` for every rule.

It owns step counting, the stopping rules, the objective history and the
result.  Everything that may change between calls without changing shapes
(``max_iterations``, ``min_xstep``, ``tol``, ``rel_tol``, penalty values, rule
settings) is traced, so changing it never recompiles; only ``history_size`` and
``normalize`` are static.

Stopping rules (any may end the loop):

* rnnmf's: the largest absolute step of every factor is below ``min_xstep``;
* relative objective change: ``|f_{k-1} - f_k| <= tol |f_{k-1}|`` (``tol=0`` disables);
* the lecture's relative change of the factors (seed 001):
  ``delta = sum_i ||X_i^{k} - X_i^{k-1}||_F / ||X_i^{k-1}||_F < rel_tol`` (``0`` disables);
* ``max_iterations`` reached, or the rule reports it is stuck.
"""

from __future__ import annotations

from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

Normalize = Literal["max", "sum"] | None


class Result(eqx.Module):
    """The outcome of a fit.

    Attributes:
        factors: the final factors ((L, R) for NMF rules, (x,) for GIQPM).
        iterations: number of iterations taken.
        converged: whether a convergence test (not the iteration cap) stopped it.
        objective: the objective at the final iterate (computed from the residual).
        history: objective after iterations ``stride, 2 stride, ...`` (NaN-padded),
            a fixed-size buffer so ``max_iterations`` never changes shapes.  Rules
            compute it cheaply from the last half step, which is exact only to about
            ``eps * ||Y||^2`` (cancellation): below that floor, use ``objective``.
        history_stride: iterations between history entries.
        steps: the last largest absolute step of each factor.
        state: the final rule state.
    """

    factors: tuple
    iterations: Array
    converged: Array
    objective: Array
    history: Array
    history_stride: Array
    steps: Array
    state: Any

    @property
    def L(self) -> Array:
        return self.factors[0]

    @property
    def R(self) -> Array:
        return self.factors[1]

    @property
    def x(self) -> Array:
        return self.factors[0]

    @property
    def Lstep(self) -> Array:
        return self.steps[0]

    @property
    def Rstep(self) -> Array:
        return self.steps[1]


def _relative_change(new: tuple, old: tuple) -> Array:
    total = 0.0
    for a, b in zip(new, old, strict=True):
        nb = jnp.sqrt(jnp.sum(b * b))
        total = total + jnp.sqrt(jnp.sum((a - b) ** 2)) / jnp.where(nb > 0, nb, 1.0)
    return total


def iterate_impl(
    rule,
    problem,
    state,
    max_iterations,
    min_xstep,
    tol,
    rel_tol,
    history_size,
    normalize,
    batched: bool = False,
) -> Result:
    """The loop itself, unjitted.

    With ``batched=True`` every leaf of ``state`` has a leading fit axis and the one
    loop advances all fits together (``vmap`` of the step); it runs while any fit is
    unfinished and freezes finished ones.  Unlike ``vmap`` of the whole loop, the
    freezing select is skipped (``lax.cond``) while no fit has finished, which saves
    full passes over every factor per iteration: with many restarts of a large
    problem the factors do not fit in cache, so those passes cost as much as the
    small products.
    """
    per_fit = (lambda f: jax.vmap(f)) if batched else (lambda f: f)
    factors0 = rule.factors(state)
    dtype = factors0[0].dtype
    f0 = per_fit(lambda s: rule.objective(problem, s).astype(dtype))(state)
    lead = f0.shape  # () or (batch,)
    stride = jnp.maximum(1, -(-max_iterations // history_size)).astype(jnp.int32)

    def advance(k, state, f, history):
        """One iteration of one fit, and its stopping tests."""
        old = rule.factors(state)
        state, info = rule.step(problem, state)
        if normalize is not None:
            state = rule.rescale(state, normalize)
        halted = jnp.zeros((), bool) if info.halted is None else info.halted
        k = k + jnp.where(halted, 0, 1).astype(k.dtype)
        f_new = info.objective.astype(dtype)
        record = (k % stride) == 0
        slot = jnp.clip(k // stride - 1, 0, history_size - 1)
        history = history.at[slot].set(jnp.where(record, f_new, history[slot]))
        steps = info.steps.astype(dtype)
        converged = jnp.max(steps) < min_xstep
        converged |= (tol > 0) & (jnp.abs(f - f_new) <= tol * jnp.abs(f))
        # the relative change costs passes over the factors: only when asked for
        rel = jax.lax.cond(
            rel_tol > 0,
            lambda: _relative_change(rule.factors(state), old),
            lambda: jnp.asarray(jnp.inf, dtype),
        )
        converged |= rel < rel_tol
        converged |= halted
        done = converged | (k >= max_iterations) | info.stuck
        return k, state, f_new, history, steps, converged, done

    def cond(carry):
        return jnp.any(~carry[-1])

    def body(carry):
        new = per_fit(advance)(*carry[:4])
        if not batched:
            return new
        done = carry[-1]

        def freeze():
            return jax.tree.map(
                lambda a, b: jnp.where(done.reshape(done.shape + (1,) * (a.ndim - 1)), a, b), carry, new
            )

        return jax.lax.cond(jnp.any(done), freeze, lambda: new)

    carry = (
        jnp.zeros(lead, jnp.int32),
        state,
        f0,
        jnp.full(lead + (history_size,), jnp.nan, dtype),
        jnp.full(lead + (len(factors0),), jnp.inf, dtype),
        jnp.zeros(lead, bool),
        jnp.broadcast_to(max_iterations <= 0, lead),
    )
    k, state, _, history, steps, converged, _ = jax.lax.while_loop(cond, body, carry)
    # The per-iteration objective (history, tol test) is the cheap form of
    # quadratic.objective_after_R_step, exact only to ~eps ||Y||^2; the reported
    # final objective is recomputed once, from the residual.
    f = per_fit(lambda s: rule.objective(problem, s).astype(dtype))(state)
    factors = per_fit(rule.result_factors)(state)
    return Result(factors, k, converged, f, history, jnp.broadcast_to(stride, lead), steps, state)


_iterate = eqx.filter_jit(iterate_impl)


def traced_options(dtype, max_iterations, min_xstep, tol, rel_tol) -> tuple:
    """The run options as arrays, so new values never recompile."""
    return (
        jnp.asarray(max_iterations, jnp.int32),
        jnp.asarray(min_xstep, dtype),
        jnp.asarray(tol, dtype),
        jnp.asarray(rel_tol, dtype),
    )


def check_static_options(history_size, normalize) -> None:
    if normalize not in (None, "max", "sum"):
        raise ValueError(f"normalize must be None, 'max' or 'sum'; got {normalize!r}")
    if int(history_size) < 1:
        raise ValueError(f"history_size must be positive; got {history_size}")


def iterate(
    rule,
    problem,
    state,
    *,
    max_iterations: int = 1000,
    min_xstep: float = 1e-9,
    tol: float = 0.0,
    rel_tol: float = 0.0,
    history_size: int = 1000,
    normalize: Normalize = None,
) -> Result:
    """Run ``rule`` from ``state`` until a stopping rule fires (see module docstring).

    Jittable and vmappable: ``jax.vmap`` over starting states or problem leaves
    runs all fits in one loop (finished ones are frozen by the batched loop).
    """
    check_static_options(history_size, normalize)
    dtype = rule.factors(state)[0].dtype
    opts = traced_options(dtype, max_iterations, min_xstep, tol, rel_tol)
    return _iterate(rule, problem, state, *opts, int(history_size), normalize)
