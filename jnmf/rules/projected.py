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

from typing import TYPE_CHECKING, ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from ..compile_options import CHEAP_OPTIONS
from ..problem import Problem
from ..quadratic import HalfProblem
from .base import AlternatingRule, HalfStep

if TYPE_CHECKING:  # imported on use (0.35 s): a plain fit never needs it
    import optax


class ProjectedGradient(AlternatingRule):
    """Alternating projected optax steps on L, then R (see the module docstring).

    ``NMFState.aux`` is the pair of optimizer states ``(for L, for R)``: where this
    rule differs from the others, it carries state between half steps of the same side.
    Example: ``ProjectedGradient(optax.adam(1e-2))``.  Supports every term of eq. 3.
    """

    method_name: ClassVar[str] = "pg"
    # a small problem's loop: the cheapest compile (jnmf.compile_options.SMALL_LOOP_ENTRIES)
    small_compiler_options: ClassVar[dict | None] = CHEAP_OPTIONS
    optimizer: optax.GradientTransformation = eqx.field(static=True)

    def __init__(self, optimizer: optax.GradientTransformation):
        self.optimizer = optimizer

    def init_aux(self, problem: Problem, Lt: Array, R: Array) -> PyTree:
        return (self.optimizer.init(Lt), self.optimizer.init(R))

    def half_step(self, hp: HalfProblem, Xt: Array, aux: PyTree, side: str) -> HalfStep:
        which = 0 if side == "L" else 1
        update, opt_state = self.optimizer.update(hp.gradient(Xt), aux[which], Xt)
        import optax  # imported already: the optimizer is optax's

        X = jnp.maximum(optax.apply_updates(Xt, update), 0.0)
        aux = (opt_state, aux[1]) if which == 0 else (aux[0], opt_state)
        return HalfStep(X, aux)
