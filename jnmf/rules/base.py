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
    """(L, R) with L stored factor-major as ``Lt = L'`` (``k x m``; see jnmf/quadratic.py)."""

    Lt: Array
    R: Array

    @property
    def L(self) -> Array:
        return jnp.swapaxes(self.Lt, -1, -2)  # also right for a batch of states


def as_setting(x, dtype=None) -> Array:
    """A rule setting as an array leaf (traced under jit, so no recompilation)."""
    return jnp.asarray(x, dtype)


def max_abs(x: Array) -> Array:
    return jnp.max(jnp.abs(x)) if x.size else jnp.zeros((), x.dtype)


def rescale_rows(Lt: Array, R: Array, mode: str) -> tuple[Array, Array]:
    """Scale L's columns (Lt's rows) to unit inf-norm ("max") or 1-norm ("sum"), moving
    the scale into R's rows so LR is unchanged (seed 001, algorithms I and II).
    Vanished factors are left alone."""
    scale = jnp.max(Lt, axis=1) if mode == "max" else jnp.sum(Lt, axis=1)
    scale = jnp.where(scale > 0, scale, 1.0)
    return Lt / scale[:, None], R * scale[:, None]


class Rule(eqx.Module):
    """Base class of the matrix factorization rules.

    States keep L factor-major (``state.Lt``); :meth:`factors` gives the loop layout
    (used for the relative-change test), :meth:`result_factors` the public (L, R).
    """

    def init(self, problem: Problem, L: Array, R: Array) -> NMFState:
        return NMFState(L.T, R)

    def step(self, problem: Problem, state) -> tuple[object, StepInfo]:  # pragma: no cover
        raise NotImplementedError

    def factors(self, state) -> tuple[Array, ...]:
        return (state.Lt, state.R)

    def with_factors(self, state, factors: tuple[Array, ...]):
        return eqx.tree_at(lambda s: (s.Lt, s.R), state, tuple(factors))

    def result_factors(self, state) -> tuple[Array, ...]:
        return (state.Lt.T, state.R)

    def rescale(self, state, mode: str):
        """The driver's ``normalize`` option (columns of L, seed 001)."""
        return self.with_factors(state, rescale_rows(state.Lt, state.R, mode))

    def objective(self, problem: Problem, state) -> Array:
        """The objective this rule decreases (eq. 3 unless the rule says otherwise)."""
        return problem.objective(state.Lt.T, state.R)
