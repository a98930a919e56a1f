"""GIQPM, the general iterative QP method of Pav (2024), Algorithm 2, on an explicit (G, d).

It lives beside the NMF rules (it solves the vector QP of eq. 10, not an NMF) and is
run by the same driver.  The step primitives it shares with AURNMF (the Lee-Seung
ratio, step lengths, tau annealing, zero snapping) are in :mod:`jnmf.quadratic`.

Step directions (rnnmf's ``step_func``): ``"lee_seung"`` (the default,
``-grad (.) x (/) Gx`` with non-positive Gx replaced by 1), ``"steepest"``
(``-grad``; it stalls on the boundary, see section 3.1), ``"complementarity"``
(``-grad (.) x``), or a callable ``f(grad, Gx, G, d, x) -> h``.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .quadratic import VectorQP, anneal, giqpm_step, lee_seung_direction, snap_zeros
from .rules.base import StepInfo, as_setting


def lee_seung(grad, Gx, G, d, x):
    """h = -grad (.) x (/) Gx (eq. 22), dividing by 1 where Gx <= 0 or is NaN."""
    return lee_seung_direction(x, grad, Gx)


def steepest_direction(grad, Gx, G, d, x):
    return -grad


def complementarity_direction(grad, Gx, G, d, x):
    return -grad * x


DIRECTIONS: dict[str, Callable] = {
    "lee_seung": lee_seung,
    "steepest": steepest_direction,
    "complementarity": complementarity_direction,
}


class GIQPMState(eqx.Module):
    x: Array
    tau_k: Array


class GIQPM(eqx.Module):
    """Algorithm 2 with tau annealing and zero snapping, as rnnmf's giqpm.

    Implements the driver's protocol (``init``, ``step``, ``objective``, ``factors``,
    ``result_factors``) on a :class:`~jnmf.quadratic.VectorQP`.
    """

    tau: Array
    annealing_rate: Array
    zero_tolerance: Array
    direction: Callable = eqx.field(static=True)
    check_optimal_step: bool = eqx.field(static=True)

    def __init__(
        self,
        tau=0.5,
        annealing_rate=0.25,
        check_optimal_step=True,
        step="lee_seung",
        zero_tolerance=1e-9,
    ):
        self.tau = as_setting(tau)
        self.annealing_rate = as_setting(annealing_rate)
        self.zero_tolerance = as_setting(zero_tolerance)
        self.direction = DIRECTIONS[step] if isinstance(step, str) else step
        self.check_optimal_step = bool(check_optimal_step)

    def init(self, qp: VectorQP, x: Array) -> GIQPMState:
        return GIQPMState(x, self.tau.astype(x.dtype))

    def factors(self, state: GIQPMState):
        return (state.x,)

    def check(self, qp: VectorQP) -> None:
        """Every QP of eq. 10 is supported."""

    def result_factors(self, state: GIQPMState):
        return (state.x,)

    def objective(self, qp: VectorQP, state: GIQPMState) -> Array:
        return qp.value(state.x)

    def step(self, qp: VectorQP, state: GIQPMState):
        x = state.x
        Gx = qp.apply_G(x)
        grad = Gx + qp.d
        h = self.direction(grad, Gx, qp.G, qp.d, x)
        tau_k = anneal(state.tau_k, self.annealing_rate.astype(x.dtype))
        GH = qp.apply_G(h) if self.check_optimal_step else None
        x_new, step = giqpm_step(x, grad, h, GH, tau_k)
        x_new = snap_zeros(x_new, self.zero_tolerance.astype(x.dtype))
        # rnnmf stops at an all-zero direction before annealing tau or counting the pass
        halted = ~jnp.any(h != 0)
        tau_k = jnp.where(halted, state.tau_k, tau_k)
        info = StepInfo(step[None], qp.value(x_new), jnp.zeros((), bool), halted)
        return GIQPMState(x_new, tau_k), info
