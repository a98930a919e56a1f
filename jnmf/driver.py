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
        objective: the objective at the final iterate.
        history: objective after iterations ``stride, 2 stride, ...`` (NaN-padded),
            a fixed-size buffer so ``max_iterations`` never changes shapes.
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


def rescale_columns(L: Array, R: Array, mode: Literal["max", "sum"]) -> tuple[Array, Array]:
    """Scale the columns of L to unit inf-norm ("max") or 1-norm ("sum"), moving the
    scale into the rows of R so LR is unchanged (seed 001, algorithms I and II).
    Zero columns are left alone.
    """
    scale = jnp.max(L, axis=0) if mode == "max" else jnp.sum(L, axis=0)
    scale = jnp.where(scale > 0, scale, 1.0)
    return L / scale[None, :], R * scale[:, None]


def _relative_change(new: tuple, old: tuple) -> Array:
    total = 0.0
    for a, b in zip(new, old, strict=True):
        nb = jnp.sqrt(jnp.sum(b * b))
        total = total + jnp.sqrt(jnp.sum((a - b) ** 2)) / jnp.where(nb > 0, nb, 1.0)
    return total


def iterate_impl(
    rule, problem, state, max_iterations, min_xstep, tol, rel_tol, history_size, normalize
) -> Result:
    """The loop itself, unjitted (batch.py vmaps it inside its own jit)."""
    dtype = rule.factors(state)[0].dtype
    f0 = rule.objective(problem, state).astype(dtype)
    n_factors = len(rule.factors(state))
    stride = jnp.maximum(1, -(-max_iterations // history_size)).astype(jnp.int32)

    def cond(carry):
        k, _, _, _, _, _, done = carry
        return ~done

    def body(carry):
        k, state, f, history, _, _, _ = carry
        old = rule.factors(state)
        state, info = rule.step(problem, state)
        if normalize is not None:
            L, R = rescale_columns(*rule.factors(state), normalize)
            state = rule.with_factors(state, (L, R))
        halted = jnp.zeros((), bool) if info.halted is None else info.halted
        k = k + jnp.where(halted, 0, 1).astype(k.dtype)
        f_new = info.objective.astype(dtype)
        record = (k % stride) == 0
        slot = jnp.clip(k // stride - 1, 0, history_size - 1)
        history = history.at[slot].set(jnp.where(record, f_new, history[slot]))
        steps = info.steps.astype(dtype)
        converged = jnp.max(steps) < min_xstep
        converged |= (tol > 0) & (jnp.abs(f - f_new) <= tol * jnp.abs(f))
        converged |= (rel_tol > 0) & (_relative_change(rule.factors(state), old) < rel_tol)
        converged |= halted
        done = converged | (k >= max_iterations) | info.stuck
        return k, state, f_new, history, steps, converged, done

    carry = (
        jnp.zeros((), jnp.int32),
        state,
        f0,
        jnp.full((history_size,), jnp.nan, dtype),
        jnp.full((n_factors,), jnp.inf, dtype),
        jnp.zeros((), bool),
        max_iterations <= 0,
    )
    k, state, f, history, steps, converged, _ = jax.lax.while_loop(cond, body, carry)
    return Result(rule.factors(state), k, converged, f, history, stride, steps, state)


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
