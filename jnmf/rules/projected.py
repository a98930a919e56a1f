"""Projected first-order methods for eq. 3: any optax optimizer, then max(., 0).

One step alternates, as every other rule of jnmf does:

    g_L = grad_L f(L, R);        L <- max(L + optax_update(g_L), 0)
    g_R = grad_R f(L_new, R);    R <- max(R + optax_update(g_R), 0)

with f the objective of Pav (2024), eq. 3, and the gradients those of its half
problems (``G x + d``, eqs. 8-9; :meth:`jnmf.quadratic.HalfProblem.gradient`).  Why
alternating rather than one simultaneous update of (L, R): R's gradient at the new L
sees L's progress (Gauss-Seidel rather than Jacobi), and it costs the same two
``m x n x k`` products per step; the R half problem at the new L then gives eq. 3 at the
new iterate almost for free (:func:`jnmf.quadratic.objective_after_R_step`), where a
simultaneous update would need a third product for its objective.  L and R keep
separate optimizer states (Adam's moments, say), each shaped like its factor.

Every penalty and weight of eq. 3 is supported (the gradients are exact).  Nothing
guarantees monotone decrease: that depends on the optimizer and its step size
(plain ``optax.sgd`` with a learning rate below ``1 / ||G||`` for both half problems
does decrease monotonically).

The optimizer is a static field: build it once and reuse it, since a new optax
object (even with the same settings) compiles anew.  To sweep a learning rate
without recompiling use ``optax.inject_hyperparams``, which puts it in the state.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import optax
from jaxtyping import Array, PyTree

from ..problem import Problem
from ..quadratic import half_problem_L, half_problem_R, objective_after_R_step
from .base import Rule, StepInfo, max_abs


class PGState(eqx.Module):
    """The factors (L factor-major, as ``Lt``) and one optimizer state per factor."""

    Lt: Array
    R: Array
    opt_L: PyTree
    opt_R: PyTree

    @property
    def L(self) -> Array:
        return jnp.swapaxes(self.Lt, -1, -2)  # also right for a batch of states


class ProjectedGradient(Rule):
    """Alternating projected optax steps on L, then R (see the module docstring).

    Example: ``ProjectedGradient(optax.adam(1e-2))``.
    """

    optimizer: optax.GradientTransformation = eqx.field(static=True)

    def __init__(self, optimizer: optax.GradientTransformation):
        self.optimizer = optimizer

    def init(self, problem: Problem, L: Array, R: Array) -> PGState:
        return PGState(L.T, R, self.optimizer.init(L.T), self.optimizer.init(R))

    def step(self, problem: Problem, state: PGState):
        Lt, R = state.Lt, state.R
        opt = self.optimizer
        g_L = half_problem_L(problem, Lt, R).gradient(Lt)
        u_L, opt_L = opt.update(g_L, state.opt_L, Lt)
        Lt_new = jnp.maximum(optax.apply_updates(Lt, u_L), 0.0)

        hp_R = half_problem_R(problem, Lt_new, R)
        g_R = hp_R.gradient(R)
        u_R, opt_R = opt.update(g_R, state.opt_R, R)
        R_new = jnp.maximum(optax.apply_updates(R, u_R), 0.0)

        info = StepInfo(
            steps=jnp.stack([max_abs(Lt_new - Lt), max_abs(R_new - R)]),
            objective=objective_after_R_step(problem, hp_R, Lt_new, R_new),
            stuck=jnp.zeros((), bool),
        )
        return PGState(Lt_new, R_new, opt_L, opt_R), info
