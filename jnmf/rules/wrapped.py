"""A rule built on another rule: every hook forwarded, on the wrapped rule's part of the state.

Some rules add one thing to another rule and keep the rest: the scikit-learn estimator's
stopping tests inside the compiled loop (:class:`jnmf.estimator.ViolationRule`,
:class:`jnmf.estimator.ErrorTestRule`) and its ``transform`` with R held fixed
(:class:`jnmf.estimator.FixedRRule`).  Writing each hook of
:class:`~jnmf.rules.base.AlternatingRule` out by hand in each of them left hooks behind
(a wrapper that did not forward :meth:`~AlternatingRule.converged` ran ``transform`` to
``max_iter``; one that did not forward :meth:`~AlternatingRule.for_problem` or
:meth:`~AlternatingRule.start_objective` fell back to the defaults).  :class:`WrappedRule`
forwards every hook once; a subclass overrides what it changes.

A wrapper may keep state of its own beside the wrapped rule's: :meth:`WrappedRule.inner_aux`
reads the wrapped rule's auxiliary state out of the wrapper's, and
:meth:`WrappedRule.outer_aux` puts an updated one back (by default the two are the same:
the wrapper keeps nothing of its own).
"""

from __future__ import annotations

from jaxtyping import Array, PyTree

from ..problem import Problem
from .base import AlternatingRule, HalfStep, NMFState


def _wrapped(name: str) -> property:
    """The wrapped rule's class-level setting ``name`` (method name, XLA options)."""
    return property(lambda self: getattr(self.rule, name, None))


class WrappedRule(AlternatingRule):
    """An :class:`AlternatingRule` that runs ``rule`` with every hook forwarded to it.

    The wrapped rule's settings that are class-level (its ``method_name``, which picks the
    batching strategy, and its XLA options, :mod:`jnmf.compile_options`) are the
    wrapper's too.

    Attributes:
        rule: the wrapped rule.
    """

    rule: AlternatingRule
    method_name = _wrapped("method_name")
    compiler_options = _wrapped("compiler_options")
    small_compiler_options = _wrapped("small_compiler_options")

    # ------------------------------------------- the wrapper's part of the state
    def inner_aux(self, aux: PyTree) -> PyTree:
        """The wrapped rule's auxiliary state within the wrapper's ``aux`` (default: all of it).

        Args:
            aux: the wrapper's auxiliary state.

        Returns:
            The wrapped rule's.
        """
        return aux

    def outer_aux(self, inner: PyTree, aux: PyTree) -> PyTree:
        """The wrapper's auxiliary state ``aux`` with the wrapped rule's part replaced by ``inner``.

        Args:
            inner: the wrapped rule's new auxiliary state.
            aux: the wrapper's auxiliary state it replaces a part of.

        Returns:
            The wrapper's new auxiliary state (default: ``inner``).
        """
        del aux
        return inner

    def inner_state(self, state: NMFState) -> NMFState:
        """``state`` as the wrapped rule sees it."""
        return NMFState(state.Lt, state.R, self.inner_aux(state.aux))

    def outer_state(self, inner: NMFState, aux: PyTree) -> NMFState:
        """The wrapped rule's state ``inner`` with the wrapper's own part of ``aux`` added back."""
        return NMFState(inner.Lt, inner.R, self.outer_aux(inner.aux, aux))

    # ------------------------------------------------------- forwarded hooks
    @property
    def loss_degree(self) -> float:
        return self.rule.loss_degree

    def half_step(self, hp, Xt: Array, aux: PyTree, side: str) -> HalfStep:
        out = self.rule.half_step(hp, Xt, self.inner_aux(aux), side)
        return HalfStep(out.X, self.outer_aux(out.aux, aux), out.step, out.stuck)

    def init_aux(self, problem: Problem, Lt: Array, R: Array) -> PyTree:
        return self.rule.init_aux(problem, Lt, R)

    def begin_fit(self, problem: Problem, state: NMFState, f0: Array) -> NMFState:
        return self.outer_state(self.rule.begin_fit(problem, self.inner_state(state), f0), state.aux)

    def begin_iteration(self, aux: PyTree) -> PyTree:
        return self.outer_aux(self.rule.begin_iteration(self.inner_aux(aux)), aux)

    def converged(self, aux: PyTree) -> Array | None:
        return self.rule.converged(self.inner_aux(aux))

    def half_problem(self, problem: Problem, side: str, Lt: Array, R: Array, aux: PyTree):
        return self.rule.half_problem(problem, side, Lt, R, self.inner_aux(aux))

    def finish_iteration(self, problem: Problem, hp_R, Lt: Array, R: Array, aux: PyTree):
        Lt, R, inner, objective = self.rule.finish_iteration(problem, hp_R, Lt, R, self.inner_aux(aux))
        return Lt, R, self.outer_aux(inner, aux), objective

    def keep_factors(self, Lt_old: Array, R_old: Array, Lt: Array, R: Array, aux: PyTree):
        return self.rule.keep_factors(Lt_old, R_old, Lt, R, self.inner_aux(aux))

    def check(self, problem: Problem) -> None:
        self.rule.check(problem)

    def costly_objective(self, problem: Problem) -> bool:
        return self.rule.costly_objective(problem)

    def objective_may_rise(self, problem: Problem) -> bool:
        return self.rule.objective_may_rise(problem)

    def objective(self, problem: Problem, state: NMFState) -> Array:
        return self.rule.objective(problem, self.inner_state(state))

    def start_objective(self, problem: Problem, state: NMFState) -> Array:
        return self.rule.start_objective(problem, self.inner_state(state))

    def for_problem(self, problem: Problem, state: NMFState) -> NMFState:
        return self.outer_state(self.rule.for_problem(problem, self.inner_state(state)), state.aux)

    def factors(self, state: NMFState) -> tuple[Array, ...]:
        return self.rule.factors(self.inner_state(state))

    def result_factors(self, state: NMFState) -> tuple[Array, ...]:
        return self.rule.result_factors(self.inner_state(state))

    def rescale(self, state: NMFState, mode: str) -> NMFState:
        return self.outer_state(self.rule.rescale(self.inner_state(state), mode), state.aux)

    def in_loop(self, problem: Problem, state: NMFState) -> NMFState:
        return self.outer_state(self.rule.in_loop(problem, self.inner_state(state)), state.aux)

    def out_of_loop(self, state: NMFState) -> NMFState:
        return self.outer_state(self.rule.out_of_loop(self.inner_state(state)), state.aux)
