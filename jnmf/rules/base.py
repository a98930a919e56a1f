"""The one protocol of jnmf's NMF update rules (layer 3).

Every NMF rule is an :class:`AlternatingRule`: an ``eqx.Module`` of its settings that
implements ONE abstract method, :meth:`AlternatingRule.half_step`, a step on the
half-step problem of Pav (2024), eqs. 6-9, for the factor-major unknown ``Xt``
(``k x p``: ``L'`` in the L step, ``R`` in the R step; see jnmf/quadratic.py).  The
shared, final :meth:`AlternatingRule.step` (:func:`alternate`) does "L half step,
then R half step" for every rule, with rnnmf's bookkeeping: the largest step of each
factor, whether the rule is stuck, the objective at the new iterate.

Rules differ only in ``half_step`` and, where their algorithm needs it, in a few
optional hooks with neutral defaults:

* :meth:`~AlternatingRule.init_aux`: rule-specific state carried in ``NMFState.aux``
  (AURNMF's annealed ``tau_k``, an optax optimizer's state per factor, KL's ``L R``);
* :meth:`~AlternatingRule.begin_fit`: once, when the driver's loop starts, with the
  start's objective (extrapolated HALS keeps it as its best so far), which the driver
  gets from :meth:`~AlternatingRule.start_objective` (eq. 3 in the steps' cheap form,
  one product with Y; a rule with its own objective: that objective);
* :meth:`~AlternatingRule.begin_iteration`: once per iteration, before the L step
  (AURNMF anneals ``tau_k`` here);
* :meth:`~AlternatingRule.half_problem`: the subproblem of a side (eq. 8's ``(G, d)``
  by default; the KL rule, whose objective is not eq. 3, builds its own);
* :meth:`~AlternatingRule.finish_iteration`: after the R step, the objective at the
  new iterate and any clean-up (AURNMF snaps tiny values to zero);
* :meth:`~AlternatingRule.keep_factors`: which factors the state keeps, the previous
  state's or the new iterate's (extrapolated HALS keeps the best iterate so far);
* :meth:`~AlternatingRule.in_loop` / :meth:`~AlternatingRule.out_of_loop`: what the
  driver's loop carries beyond the public state (KL's ``L R``), added and dropped.

One state type, :class:`NMFState`, serves every rule.  Numeric settings are array
leaves, so changing them never recompiles the driver.  Each rule also says what it
can solve: :meth:`~AlternatingRule.check` raises a ``ValueError`` naming the setting,
and every entry point (``iterate``, the batch functions, ``fit``, ``sweep``) calls it.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from .._validate import is_traced, on_device
from ..problem import Problem
from ..quadratic import half_problem, max_abs, objective_after_R_step


class StepInfo(eqx.Module):
    """What a full step reports to the driver.

    Attributes:
        steps: the largest absolute change of each factor (rnnmf's Lstep, Rstep).
        objective: the objective at the new iterate (rules compute it cheaply from
            quantities of the last half step).
        stuck: True when the rule can make no further progress (MURNMF with no
            positive denominator, as in rnnmf): the loop ends, not converged.
        halted: True when the step found nothing to do (GIQPM's all-zero direction):
            as in rnnmf the pass is not counted and the run ends converged.
        converged: True when the rule's own stopping test passed after this step
            (:meth:`AlternatingRule.converged`; scikit-learn's cd violation test): the
            step counts and the run ends converged.  None: the driver's tests only.
    """

    steps: Array
    objective: Array
    stuck: Array
    halted: Array | None = None
    converged: Array | None = None


class HalfStep(eqx.Module):
    """What :meth:`AlternatingRule.half_step` returns.

    Attributes:
        X: the new factor-major unknown.
        aux: the rule's auxiliary state after this half step.
        step: the largest absolute change, when the rule has it for free (None: the
            shared code computes ``max |X_new - X|``).
        stuck: True when no element could be updated (None: False).
    """

    X: Array
    aux: PyTree = None
    step: Array | None = None
    stuck: Array | None = None


class NMFState(eqx.Module):
    """The state of every NMF rule.

    Attributes:
        Lt: L stored factor-major, ``L'`` (``k x m``; see jnmf/quadratic.py).
        R: ``k x n``.
        aux: rule-specific auxiliaries (None for most rules).
    """

    Lt: Array
    R: Array
    aux: PyTree = None

    @property
    def L(self) -> Array:
        return jnp.swapaxes(self.Lt, -1, -2)  # also right for a batch of states


def as_setting(x, dtype=None) -> Array:
    """A rule setting as an array leaf (traced under jit, so no recompilation)."""
    return on_device(x, dtype)


def rescale_rows(Lt: Array, R: Array, mode: str) -> tuple[Array, Array]:
    """Scale L's columns (Lt's rows) to unit inf-norm ("max") or 1-norm ("sum"), moving
    the scale into R's rows so LR is unchanged (the column normalization of Lee &
    Seung's KL algorithm).  Vanished factors are left alone."""
    scale = jnp.max(Lt, axis=1) if mode == "max" else jnp.sum(Lt, axis=1)
    scale = jnp.where(scale > 0, scale, 1.0)
    return Lt / scale[:, None], R * scale[:, None]


def unsupported(rule: AlternatingRule, what: str) -> ValueError:
    """The error every support check raises: names the method and the setting."""
    return ValueError(f"method {rule.method_name!r} ({type(rule).__name__}) does not support {what}")


def nonzero_value(x) -> bool:
    """True when ``x`` is concrete and has a non-zero entry (traced values: False; the
    surfaces check swept values on the host before tracing)."""
    if x is None or is_traced(x):
        return False
    return bool(np.any(np.asarray(x) != 0))


class AlternatingRule(eqx.Module):
    """Base of the NMF rules: alternate ``half_step`` on L, then on R (see module docstring)."""

    method_name: ClassVar[str] = "custom"
    # XLA options for this rule's loop program on XLA:CPU (jnmf.compile_options; None:
    # XLA's defaults).  Results must not depend on them beyond rounding.
    compiler_options: ClassVar[dict | None] = None
    # Options added on top of them for a small problem's loop program
    # (jnmf.compile_options.loop_options), for rules whose iteration at that size costs
    # too little for XLA's optimizations to pay for their compile time.  None: none.
    small_compiler_options: ClassVar[dict | None] = None

    # ----------------------------------------------------------- the protocol
    @abc.abstractmethod
    def half_step(self, hp: Any, Xt: Array, aux: PyTree, side: str) -> HalfStep:
        """One half step on the subproblem ``hp`` for the factor-major unknown ``Xt``.

        Args:
            hp: the subproblem of :meth:`half_problem` (a
                :class:`~jnmf.quadratic.HalfProblem`, eqs. 6-9, unless the rule says
                otherwise).
            Xt: the current unknown, ``k x p``.
            aux: the rule's auxiliary state.
            side: ``"L"`` or ``"R"`` (static).

        Returns:
            A :class:`HalfStep`.
        """

    # ------------------------------------------------------ optional hooks
    def init_aux(self, problem: Problem, Lt: Array, R: Array) -> PyTree:
        return None

    def begin_fit(self, problem: Problem, state: NMFState, f0: Array) -> NMFState:
        """The state the driver's loop starts from, given the start's objective ``f0`` (which
        the driver computes anyway): a rule whose auxiliary state needs that value takes it
        from here rather than computing it again (default: the state unchanged).

        Args:
            problem: the problem the loop runs on.
            state: the starting state (one fit's; the driver vmaps over a batch).
            f0: the rule's :meth:`objective` at ``state``, inside the compiled loop program.

        Returns:
            The state the loop starts from.
        """
        del problem, f0
        return state

    def begin_iteration(self, aux: PyTree) -> PyTree:
        return aux

    def converged(self, aux: PyTree) -> Array | None:
        """The rule's own stopping test after an iteration, read from its auxiliary state
        (e.g. scikit-learn's cd test on the iteration's violation, jnmf.estimator): True
        ends the run converged, inside the compiled loop.

        Args:
            aux: the auxiliary state after the iteration (after :meth:`finish_iteration`).

        Returns:
            A boolean scalar, or None (the default): no test of the rule's own.
        """
        del aux
        return None

    def half_problem(self, problem: Problem, side: str, Lt: Array, R: Array, aux: PyTree):
        return half_problem(problem, side, Lt, R)

    def finish_iteration(self, problem: Problem, hp_R, Lt: Array, R: Array, aux: PyTree):
        """(Lt, R, aux, objective) at the end of an iteration."""
        return Lt, R, aux, objective_after_R_step(problem, hp_R, Lt, R)

    def keep_factors(
        self, Lt_old: Array, R_old: Array, Lt: Array, R: Array, aux: PyTree
    ) -> tuple[Array, Array]:
        """The factors the state keeps after an iteration (default: the new iterate's).

        Called after :meth:`finish_iteration` with the previous state's factors, so a rule
        that keeps an earlier iterate (extrapolated HALS keeps the best so far) selects
        between the two here instead of carrying a copy of the old factors in ``aux``:
        a factor the loop carries in two places is copied by XLA every iteration.

        Args:
            Lt_old, R_old: the factors of the state before the iteration.
            Lt, R: the factors :meth:`finish_iteration` returned.
            aux: the auxiliary state :meth:`finish_iteration` returned.

        Returns:
            The state's new ``(Lt, R)``.
        """
        del Lt_old, R_old, aux
        return Lt, R

    def check(self, problem: Problem) -> None:
        """Raise a ValueError naming the setting when this rule cannot solve ``problem``
        exactly (weight kinds are static; values are checked when concrete)."""

    def costly_objective(self, problem: Problem) -> bool:
        """Whether this rule's per-iteration objective costs a pass over the data (static).

        The step reports eq. 3 almost for free from the R half problem, except with an
        elementwise weight M (the masked loss needs ``m x n`` work).  When True the
        driver ignores the step's objective (XLA then drops its computation) and
        evaluates :meth:`objective` only at the iterations that need it: a relative
        change or target test, a history slot, the iteration cap.
        """
        return bool(getattr(problem, "masked", False))

    def objective_may_rise(self, problem: Problem) -> bool:
        """Whether this rule's per-iteration objective may rise by design (static; False:
        a descent method, up to rounding).  When True the driver's ``tol`` test counts
        only a small decrease as convergence, not a rise (extrapolated HALS)."""
        return False

    def objective(self, problem: Problem, state: NMFState) -> Array:
        """The objective this rule decreases (eq. 3 unless the rule says otherwise)."""
        return problem.objective(state.Lt.T, state.R)

    def start_objective(self, problem: Problem, state: NMFState) -> Array:
        """The objective at the start of a fit, for the driver's first ``tol`` test and
        :meth:`begin_fit`: in the same cheap form as the per-iteration objective the steps
        report (:func:`~jnmf.quadratic.objective_after_R_step`, from the R half problem at
        the start: one product with Y and ``O(n k^2)`` work, where :meth:`objective`'s
        residual costs about twice that), so the first iteration's objective is compared
        with a value of the same form.  A rule with its own objective (KL, beta) or a
        problem whose per-iteration objective is costly (an elementwise weight) gets
        :meth:`objective` itself.  The fit's final objective is always :meth:`objective`.

        Args:
            problem: the problem the loop runs on (prepared: its constant of eq. 7 computed).
            state: the starting state (one fit's).

        Returns:
            eq. 3 at the state's factors (to about ``eps ||Y||^2``).
        """
        own = type(self).objective is not AlternatingRule.objective
        if own or self.costly_objective(problem) or not isinstance(problem, Problem):
            return self.objective(problem, state)
        hp_R = half_problem(problem, "R", state.Lt, state.R)
        return objective_after_R_step(problem, hp_R, state.Lt, state.R)

    @property
    def loss_degree(self) -> float:
        """The degree of homogeneity of the rule's loss in ``(Y, LR)``: 2 for eq. 3's
        Frobenius loss (``loss(c Y, c LR) = c^2 loss(Y, LR)``).  ``fit`` and ``sweep``
        rescale the data and the penalties with it (:meth:`jnmf.problem.Problem.scaled`).
        Rules with another loss override it (1 for KL, beta for the beta-divergence)."""
        return 2.0

    # ----------------------------------------------------- final machinery
    def init(self, problem: Problem, L: Array, R: Array) -> NMFState:
        """The starting state from L (``m x k``) and R (``k x n``)."""
        Lt = jnp.swapaxes(L, -1, -2)
        return NMFState(Lt, R, self.init_aux(problem, Lt, R))

    def step(self, problem: Problem, state: NMFState) -> tuple[NMFState, StepInfo]:
        return alternate(self, problem, state)

    def for_problem(self, problem: Problem, state: NMFState) -> NMFState:
        """A starting state (``init``'s) remade for ``problem``, the same data and shapes
        with other settings: :func:`jnmf.batch.run_grid` makes its starts' states once, for
        the base problem, and each setting of the grid passes them through this.  The
        default keeps the state (the auxiliary states here do not depend on the settings);
        a rule whose starting state does (extrapolated HALS keeps the start's objective,
        eq. 3 with the setting's penalties) recomputes it.

        Args:
            problem: the problem of one setting.
            state: a state ``init`` made for another setting, from the same factors.

        Returns:
            The state ``init(problem, L0, R0)`` would have made.
        """
        del problem
        return state

    def factors(self, state: NMFState) -> tuple[Array, ...]:
        return (state.Lt, state.R)

    def result_factors(self, state: NMFState) -> tuple[Array, ...]:
        return (state.Lt.T, state.R)

    def rescale(self, state: NMFState, mode: str) -> NMFState:
        """The driver's ``normalize`` option: L's columns to unit norm, LR unchanged."""
        Lt, R = rescale_rows(state.Lt, state.R, mode)
        return NMFState(Lt, R, state.aux)

    def in_loop(self, problem: Problem, state: NMFState) -> NMFState:
        """The state as the driver's loop carries it (default: unchanged).

        A rule may carry a quantity derived from the factors between iterations (KL: the
        product ``L R``, which the objective and the next L half step share).  The driver
        calls this when the loop starts and after rescaling the factors (``normalize``),
        and :meth:`out_of_loop` when it ends, so such a quantity never leaves the loop
        (it would be an ``m x n`` array per fit in every result).

        Args:
            problem: the problem the loop runs on.
            state: a state with the factors only.

        Returns:
            The state as the loop carries it.
        """
        del problem
        return state

    def out_of_loop(self, state: NMFState) -> NMFState:
        """The state a result holds: what :meth:`in_loop` added dropped (default: unchanged).

        Args:
            state: the state as the loop carries it.

        Returns:
            The state with the factors only.
        """
        return state


def _per_fit(transform, f):
    """``transform(f)``, or ``f`` itself when every argument is None (vmap needs an array)."""
    if transform is None:
        return f

    def g(*args):
        if all(a is None for a in args):
            return f(*args)
        return transform(f)(*args)

    return g


def alternate(
    rule: AlternatingRule, problem: Problem, state: NMFState, shared=None, solo=None
) -> tuple[NMFState, StepInfo]:
    """One iteration of any alternating rule: L half step, then R half step at the new L.

    The step of each factor is rnnmf's ``max |X_new - X|``; the rule is stuck when its
    R half step reports so (rnnmf's murnmf ends when no denominator of the R step
    is positive).

    ``shared`` and ``solo`` let the batch layer run a batch of fits (``state`` with a
    leading fit axis): ``shared`` transforms the per-fit work that batching stacks
    (building each half problem: its products with Y), ``solo`` the half steps
    themselves (e.g. ``jax.vmap`` or a ``lax.map`` loop over fits).  None, the
    default, is one fit.
    """
    sh = lambda f: _per_fit(shared, f)
    so = lambda f: _per_fit(solo, f)
    aux = sh(rule.begin_iteration)(state.aux)
    hp_L = sh(lambda Lt, R, aux: rule.half_problem(problem, "L", Lt, R, aux))(state.Lt, state.R, aux)
    half_L = so(lambda hp, X, aux: rule.half_step(hp, X, aux, "L"))(hp_L, state.Lt, aux)
    hp_R = sh(lambda Lt, R, aux: rule.half_problem(problem, "R", Lt, R, aux))(half_L.X, state.R, half_L.aux)
    half_R = so(lambda hp, X, aux: rule.half_step(hp, X, aux, "R"))(hp_R, state.R, half_L.aux)

    def bookkeeping(half_L, half_R, Lt_old, R_old, hp_R):
        step_L = max_abs(half_L.X - Lt_old) if half_L.step is None else half_L.step
        step_R = max_abs(half_R.X - R_old) if half_R.step is None else half_R.step
        Lt, R, aux, objective = rule.finish_iteration(problem, hp_R, half_L.X, half_R.X, half_R.aux)
        Lt, R = rule.keep_factors(Lt_old, R_old, Lt, R, aux)
        stuck = jnp.zeros((), bool) if half_R.stuck is None else half_R.stuck
        info = StepInfo(jnp.stack([step_L, step_R]), objective, stuck, converged=rule.converged(aux))
        return NMFState(Lt, R, aux), info

    return sh(bookkeeping)(half_L, half_R, state.Lt, state.R, hp_R)


Rule = AlternatingRule  # the short name used across jnmf: every NMF rule is alternating
