"""What every update rule shares (layer 3).

A rule is an ``eqx.Module`` of its settings with two methods, in the style of
optax transformations and optimistix solvers:

* ``init(problem, L, R) -> state``: the rule's state (always with fields L, R);
* ``step(problem, state) -> (state, StepInfo)``: one full iteration (both half steps).

Numeric settings are array leaves, so changing them never recompiles the driver.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..problem import Problem


class StepInfo(eqx.Module):
    """What a step reports to the driver.

    Attributes:
        steps: the largest absolute change of each factor (rnnmf's Lstep, Rstep).
        objective: the objective at the new iterate (rules compute it cheaply from
            quantities of the last half step).
        stuck: True when the rule can make no further progress (MURNMF with no
            positive denominator, as in rnnmf): the loop ends, not converged.
        halted: True when the step found nothing to do (GIQPM's all-zero direction):
            as in rnnmf the pass is not counted and the run ends converged.
    """

    steps: Array
    objective: Array
    stuck: Array
    halted: Array | None = None


class NMFState(eqx.Module):
    L: Array
    R: Array


def as_setting(x, dtype=None) -> Array:
    """A rule setting as an array leaf (traced under jit, so no recompilation)."""
    return jnp.asarray(x, dtype)


def max_abs(x: Array) -> Array:
    return jnp.max(jnp.abs(x)) if x.size else jnp.zeros((), x.dtype)


class Rule(eqx.Module):
    """Base class of the matrix factorization rules."""

    def init(self, problem: Problem, L: Array, R: Array) -> NMFState:
        return NMFState(L, R)

    def step(self, problem: Problem, state) -> tuple[object, StepInfo]:  # pragma: no cover
        raise NotImplementedError

    def factors(self, state) -> tuple[Array, ...]:
        return (state.L, state.R)

    def with_factors(self, state, factors: tuple[Array, ...]):
        return eqx.tree_at(lambda s: (s.L, s.R), state, tuple(factors))

    def objective(self, problem: Problem, state) -> Array:
        """The objective this rule decreases (eq. 3 unless the rule says otherwise)."""
        return problem.objective(state.L, state.R)
