"""HALS: hierarchical alternating least squares (Cichocki & Phan 2009), with the
acceleration of Gillis & Glineur (2012).

Each half step minimizes phi (eq. 9) over one column of the unknown X at a time,
holding the others fixed.  The block of G belonging to column j is
``sum_t B_t[j, j] A_t`` (A_t the p-side, B_t the k-side weight of each quadratic
term, the loss included).  When every A_t is diagonal (identity, scalar or
diagonal loss weights; ridge; non-orthogonality of L) the block is diagonal and
the column minimization is closed form:

    X[:, j] <- max(0, X[:, j] - (G X + d)[:, j] / c_j),   c_j = diag of the block.

Otherwise (full W_0R / W_0C, non-orthogonality of R, whose c x c weight
gamma (11' - I) couples the rows of R') each A_t is replaced by its diagonal
majorizer Diag(A_t 1) (Lemma 2.1 with b = 1; all weights have non-negative
entries), so the same update still never increases phi; it is then a
majorization step rather than an exact block minimization.

The expensive part of a half step is ``d`` (a product with Y, O(mnk)); a column
sweep costs only O(pk^2).  Accelerated HALS therefore repeats the sweep, reusing
d and the Gram matrix, while it pays: at most ``1 + alpha * rho`` sweeps, where
rho ~ (cost of d) / (cost of a sweep), stopping early when a sweep changes X by
less than ``delta`` times what the first sweep did (Gillis & Glineur, sec. 3).

**Extrapolation** (``HALS(extrapolate=True)``; Ang & Gillis 2019, "Accelerating
nonnegative matrix factorization algorithms using extrapolation", Neural Computation
31(2)): after each half step the new factor is pushed further along its last move,
``X_hat = max(0, X_k + beta (X_k - X_{k-1}))``, and the other factor's half step is
solved at ``X_hat``.  In jnmf's order (L first):

    L_k     = HALS half step from L_hat_{k-1} with R fixed at R_hat_{k-1}
    L_hat_k = max(0, L_k + beta (L_k - L_{k-1}))
    R_k     = HALS half step from R_hat_{k-1} with L fixed at L_hat_k
    R_hat_k = max(0, R_k + beta (R_k - R_{k-1}))

The iterate a step reports is ``(L_hat_k, R_k)``: both non-negative, and its objective
is the free one of the R half problem, which is built at ``L_hat_k``.  Ang & Gillis's
restart rule tunes beta: when the objective increased, beta shrinks by ``eta``, its
ceiling drops to the old beta and the next L step is solved at ``R_k`` (no
extrapolation of R); otherwise beta grows by ``gamma`` up to its ceiling, and the
ceiling by ``gamma_bar`` up to 1.  The objective can therefore rise for one step at a
restart, so the rule keeps the best iterate seen (starting point included) as the
state's ``Lt``, ``R``, which a fit returns, and runs the iteration on points kept in
``aux``: a fit with extrapolation never returns a worse objective than any iterate it
reported.  The per-iteration objective (history, ``tol``, ``target``) is the reported
iterate's; the step sizes (``min_xstep``) are measured from the best iterate.

Implementation note: the sweep runs on the factor-major unknown Xt (k x p, see
jnmf/quadratic.py), so each column update of X reads and writes one contiguous
row.  A coordinate with zero curvature (a vanished column of the fixed factor)
is left unchanged, which keeps float32 free of division by zero.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..compile_options import CHEAP_OPTIONS
from ..problem import Problem
from ..quadratic import HalfProblem, half_problem, objective_after_R_step
from .base import AlternatingRule, HalfStep, NMFState, as_setting, rescale_rows, unsupported
from .hals_sweeps import hals_sweeps


def hals_is_exact(hp: HalfProblem) -> bool:
    """Whether the row blocks of G are diagonal (the closed form is exact)."""
    diagonal_kinds = ("identity", "scalar", "diag")
    p_sides = [hp.weight] + [p_side for _, p_side in hp.penalties]
    return all(w.kind in diagonal_kinds for w in p_sides)


def accelerated_sweeps(p: int, q: int, k: int, alpha: float, entries: int | None = None) -> int:
    """1 + floor(alpha * rho) with rho = (pqk + qk^2) / (pk + p k^2): the number of
    sweeps that cost about as much as computing d (Gillis & Glineur, eq. 3.3).

    ``entries`` is the number of entries of Y the product visits (default ``pq``, dense
    data; the stored entries of sparse data, whose product costs ``nnz k``, not ``pqk``)."""
    entries = p * q if entries is None else entries
    rho = (entries * k + q * k * k) / (p * k + p * k * k)
    return 1 + int(alpha * rho)


class Extrapolation(eqx.Module):
    """Ang & Gillis's (2019) settings: ``beta0`` the first extrapolation weight, ``eta``
    its shrink factor at a restart, ``gamma`` its growth factor otherwise, ``gamma_bar``
    the growth factor of its ceiling (array leaves: changing them never recompiles)."""

    beta0: Array
    eta: Array
    gamma: Array
    gamma_bar: Array


class ExtrapolationState(eqx.Module):
    """What extrapolated HALS carries between iterations (``NMFState.aux``; the state's
    own ``Lt``, ``R`` hold the best iterate so far, which the fit returns).

    Attributes:
        Lt, R: the last reported iterate ``(L_hat_k, R_k)`` (factor-major L).
        Lt_base: ``L_k``, the last L half step before extrapolation.
        R_hat: the extrapolated R: the fixed factor of the next L half step and the
            start of the next R half step.
        beta: the current extrapolation weight.
        beta_max: its current ceiling (the paper's beta bar).
        last: the objective of the last reported iterate.
        best: the objective of the best iterate (the state's factors).  A fresh state
            (:meth:`HALS.init_aux`) holds ``inf`` in both: the driver's loop puts the start's
            objective there (:meth:`HALS.begin_fit`), from the objective it computes anyway.
        improved: whether the last reported iterate became the best (the state's factors
            are then replaced by it, :meth:`HALS.keep_factors`).
    """

    Lt: Array
    R: Array
    Lt_base: Array
    R_hat: Array
    beta: Array
    beta_max: Array
    last: Array
    best: Array
    improved: Array


def extrapolate(X_new: Array, X_old: Array, beta: Array) -> Array:
    """Ang & Gillis's (2019) extrapolation, projected so the other factor's half problem
    stays one of non-negative factors.

    Args:
        X_new: the factor after the latest half step.
        X_old: the same factor one iteration earlier.
        beta: the extrapolation weight (a scalar in [0, 1]).

    Returns:
        ``max(0, X_new + beta (X_new - X_old))``, in ``X_new``'s dtype.
    """
    return jnp.maximum(X_new + beta.astype(X_new.dtype) * (X_new - X_old), 0.0)


class HALS(AlternatingRule):
    """HALS / accelerated HALS for eq. 3 (exact column minimization for diagonal
    weights, a monotone majorization step otherwise; see the module docstring).

    ``inner_sweeps=1`` is plain HALS (Cichocki & Phan 2009).  ``inner_sweeps=None``
    picks Gillis & Glineur's ``1 + alpha * rho`` for each half step from the shapes,
    with the early exit ``delta``.  Their rho counts flops; here a sweep is
    memory-bound and runs several times below the GEMM's flop rate, so the default
    ``alpha`` is 0.2 rather than their 0.5 (on ORL faces, rank 25, time to a fixed
    error was flat for alpha in [0.1, 0.25] and 45% longer at 0.5; see
    experiments/bench_orl.py; re-measured 2026-12-04 as iterations to error 0.1755: 50, 39,
    34, 42 for alpha 0.1, 0.2, 0.3, 0.5, i.e. ~0.52, 0.45, 0.41, 0.58 s at a quiet
    machine's cost per iteration).  Supports every term of eq. 3.

    ``extrapolate=True`` adds Ang & Gillis's (2019) extrapolation with restarts (see
    the module docstring), with settings ``beta0``, ``eta``, ``gamma``, ``gamma_bar``
    (defaults 0.5, 1.5, 1.01, 1.005: the authors' defaults for A-HALS in their published
    MATLAB code, ``FroNMF``); not with an elementwise loss weight (whose objective is not
    free per iteration): ``check`` raises.  ``extrapolate="auto"`` extrapolates wherever
    that is supported and runs the plain rule (no auxiliary state, the same iterates as
    ``extrapolate=False``) on problems with an elementwise weight (``M``, missing
    values); method ``"ahals"``, jnmf's default, is accelerated HALS with
    ``extrapolate="auto"`` (``"ahals-plain"``: without it).
    On ORL it cut accelerated HALS's iterations to error 0.1755 from 39 to 22 and plain
    HALS's from 161 to 65 (experiments/README.md, bench_orl.py ``--parts hals_rule``).
    The objective it reports can rise for an iteration at its restarts (so can a fit's
    ``history``); the fit returns the best iterate; the ``tol`` test counts only a small
    decrease, not a rise (:meth:`objective_may_rise`), and the stopping tests on the
    factors (``rel_tol``, the labels) follow the iteration (:meth:`factors`), not the best
    iterate, which stands still at a restart.
    """

    method_name: ClassVar[str] = "hals"
    # a small problem's loop: the cheapest compile (jnmf.compile_options.SMALL_LOOP_ENTRIES)
    small_compiler_options: ClassVar[dict | None] = CHEAP_OPTIONS
    alpha: float = eqx.field(static=True)
    inner_sweeps: int | None = eqx.field(static=True)
    delta: Array
    extrapolation: Extrapolation | None
    auto: bool = eqx.field(static=True)

    def __init__(
        self,
        inner_sweeps: int | None = 1,
        alpha: float = 0.2,
        delta=0.1,
        *,
        extrapolate: bool | str = False,
        beta0=0.5,
        eta=1.5,
        gamma=1.01,
        gamma_bar=1.005,
    ):
        """
        Args:
            inner_sweeps: sweeps per half step (1: HALS; None: accelerated HALS's rule).
            alpha: accelerated HALS's share of a product's cost spent on sweeps.
            delta: accelerated HALS's early exit (fraction of the first sweep's change).
            extrapolate: add Ang & Gillis's (2019) extrapolation with restarts: True,
                False, or ``"auto"`` (where supported: not with an elementwise weight,
                where the rule is then plain HALS / accelerated HALS).
            beta0: the first extrapolation weight, in [0, 1].
            eta: beta's shrink factor when the objective increased (> 1).
            gamma: beta's growth factor otherwise (>= 1).
            gamma_bar: the growth factor of beta's ceiling (>= 1).
        """
        self.inner_sweeps = inner_sweeps
        self.alpha = float(alpha)
        self.delta = as_setting(delta)
        if extrapolate not in (True, False, "auto"):
            raise ValueError(f"extrapolate must be True, False or 'auto'; got {extrapolate!r}")
        self.auto = extrapolate == "auto"
        if extrapolate:
            settings = {"beta0": beta0, "eta": eta, "gamma": gamma, "gamma_bar": gamma_bar}
            if not 0.0 <= float(beta0) <= 1.0:
                raise ValueError(f"beta0 must be in [0, 1]; got {beta0!r}")
            if not float(eta) > 1.0:
                raise ValueError(f"eta must be > 1; got {eta!r}")
            for name in ("gamma", "gamma_bar"):
                if not float(settings[name]) >= 1.0:
                    raise ValueError(f"{name} must be >= 1; got {settings[name]!r}")
            self.extrapolation = Extrapolation(*(as_setting(v) for v in settings.values()))
        else:
            self.extrapolation = None

    def sweeps(self, p: int, q: int, k: int, entries: int | None = None) -> int:
        """How many sweeps a half step on a ``k x p`` unknown may take (fixed factor ``k x q``;
        ``entries``: the entries of Y its product visits, default ``pq``).

        Gillis & Glineur's count weighs a sweep by its flops, which is right on a CPU.  On
        an accelerator a sweep costs k kernel launches whatever its flops, about as much as
        the product itself, so there accelerated HALS sweeps once: on an NVIDIA H200, ORL
        faces (rank 25) reached relative error 0.1755 in 22 extrapolated iterations of up
        to 4 / 85 sweeps in 0.572 s, and in 73 iterations of one sweep in 0.081 s
        (experiments/README.md, "On a GPU", 2026-12-04)."""
        if self.inner_sweeps is not None:
            return int(self.inner_sweeps)
        if jax.default_backend() != "cpu":
            return 1
        return accelerated_sweeps(p, q, k, self.alpha, entries)

    def half_step(self, hp: HalfProblem, Xt: Array, aux, side: str) -> HalfStep:
        k, p = Xt.shape
        n_sweeps = self.sweeps(p, hp.fixed_size, k, hp.data_entries or None)
        if hp.masked and self.inner_sweeps is None:
            # with an elementwise weight a sweep costs as much as d itself (rho ~ 1/3),
            # so Gillis & Glineur's rule gives a single sweep
            n_sweeps = 1
        delta = self.delta.astype(Xt.dtype)
        if aux is None:  # no extrapolation (or "auto" on a problem that refuses it)
            return HalfStep(hals_sweeps(hp, Xt, n_sweeps, delta), aux)
        # Xt is the best iterate's factor (the state's, which keep_factors compares the
        # new iterate with); the iteration itself runs on the extrapolation's points in aux
        if side == "L":
            # from L_hat_{k-1}; hp is built at R_hat_{k-1} (half_problem below)
            Lt = hals_sweeps(hp, aux.Lt, n_sweeps, delta)
            L_hat = extrapolate(Lt, aux.Lt_base, aux.beta)
            aux = eqx.tree_at(lambda a: (a.Lt, a.Lt_base), aux, (L_hat, Lt))
            return HalfStep(L_hat, aux)
        # from R_hat_{k-1} (Ang & Gillis); hp is built at L_hat_k
        R = hals_sweeps(hp, aux.R_hat, n_sweeps, delta)
        aux = eqx.tree_at(lambda a: (a.R, a.R_hat), aux, (R, extrapolate(R, aux.R, aux.beta)))
        return HalfStep(R, aux)

    # ---------------------------------------------------- extrapolation hooks
    def extrapolates(self, problem: Problem) -> bool:
        """Whether this rule extrapolates on ``problem`` (static): ``extrapolate=True``, or
        ``"auto"`` without an elementwise loss weight."""
        masked = bool(getattr(problem, "masked", False))
        return self.extrapolation is not None and not (self.auto and masked)

    def init_aux(self, problem: Problem, Lt: Array, R: Array) -> ExtrapolationState | None:
        """No state for plain (accelerated) HALS; the extrapolation's state otherwise, with
        the starting point as the best iterate so far.  Every other hook extrapolates
        exactly when this state exists.

        The start's objective is not computed here (a pass over Y, once more than needed:
        the driver computes it for its own first ``tol`` test): ``last`` and ``best`` hold
        ``inf`` until :meth:`begin_fit` puts the driver's value there, inside the compiled
        loop program."""
        ex = self.extrapolation
        if not self.extrapolates(problem):
            return None
        beta = ex.beta0.astype(Lt.dtype)
        unknown = jnp.full_like(beta, jnp.inf)
        improved = jnp.zeros(beta.shape, bool)
        return ExtrapolationState(Lt, R, Lt, R, beta, jnp.ones_like(beta), unknown, unknown, improved)

    def begin_fit(self, problem: Problem, state: NMFState, f0: Array) -> NMFState:
        """The start's objective ``f0`` (the driver's, at the state's factors) as the last and
        best objective of a fresh state (``inf``, see :meth:`init_aux`); a state that holds
        them already (a continued fit) keeps its own.

        Args:
            problem: the problem (unused: ``f0`` is the driver's value of eq. 3 for it).
            state: the starting state.
            f0: eq. 3 at the state's factors.

        Returns:
            The state with the start's objective as its last and best.
        """
        aux = state.aux
        if aux is None:
            return state
        fresh = jnp.isinf(aux.best)
        f0 = f0.astype(aux.best.dtype)
        aux = eqx.tree_at(
            lambda a: (a.last, a.best), aux, (jnp.where(fresh, f0, aux.last), jnp.where(fresh, f0, aux.best))
        )
        return NMFState(state.Lt, state.R, aux)

    def for_problem(self, problem: Problem, state: NMFState) -> NMFState:
        """The state ``init`` makes for ``problem``'s own settings: a grid's settings share
        one starting state, made for the base problem, whose penalties differ (see
        :meth:`AlternatingRule.for_problem`); the start's objective under this setting's
        penalties is then left to the driver (:meth:`begin_fit`).

        Args:
            problem: the problem of one setting.
            state: a starting state made for another setting, from the same factors.

        Returns:
            The state ``init(problem, L0, R0)`` would have made.
        """
        if state.aux is None:
            return state
        return NMFState(state.Lt, state.R, self.init_aux(problem, state.Lt, state.R))

    def half_problem(self, problem: Problem, side: str, Lt: Array, R: Array, aux):
        if aux is not None and side == "L":
            Lt, R = aux.Lt, aux.R_hat  # the L step is solved at the extrapolated R
        return half_problem(problem, side, Lt, R)

    def finish_iteration(self, problem: Problem, hp_R, Lt: Array, R: Array, aux):
        """The objective at the new iterate; with extrapolation that is the reported
        ``(L_hat_k, R_k)``, Ang & Gillis's update of beta follows, and the state keeps
        the better of it and the best so far."""
        f = objective_after_R_step(problem, hp_R, Lt, R)
        ex = self.extrapolation
        if aux is None:
            return Lt, R, aux, f
        dt = aux.beta.dtype
        worse = f > aux.last
        beta_max = jnp.where(worse, aux.beta, jnp.minimum(1.0, ex.gamma_bar.astype(dt) * aux.beta_max))
        beta = jnp.where(
            worse, aux.beta / ex.eta.astype(dt), jnp.minimum(beta_max, ex.gamma.astype(dt) * aux.beta)
        )
        better = f < aux.best
        aux = eqx.tree_at(
            lambda a: (a.R_hat, a.beta, a.beta_max, a.last, a.best, a.improved),
            aux,
            (
                jnp.where(worse, R, aux.R_hat),  # restart: the next L step at R_k itself
                beta,
                beta_max,
                f.astype(dt),
                jnp.where(better, f.astype(dt), aux.best),
                better,
            ),
        )
        # the reported objective is the new iterate's (the stopping tests follow the
        # iteration); keep_factors keeps the better of it and the state's factors, and
        # the fit's final objective is recomputed at the state, the best
        return Lt, R, aux, f

    def keep_factors(self, Lt_old: Array, R_old: Array, Lt: Array, R: Array, aux):
        """With extrapolation the state keeps the best iterate so far: the new one when it
        improved on the best (:meth:`finish_iteration`), else the previous state's.

        The selection is made here, from the state's own factors, rather than from a copy
        of them carried in ``aux`` (as before 2026-12-05): the loop then carries three
        arrays the size of each factor per fit instead of four, and XLA no longer copies
        the state's L into ``aux`` every iteration.

        Args:
            Lt_old, R_old: the state's factors before the iteration (the best so far).
            Lt, R: the reported iterate ``(L_hat_k, R_k)``.
            aux: the extrapolation's state after :meth:`finish_iteration`.

        Returns:
            The state's new ``(Lt, R)``.
        """
        if aux is None:
            return Lt, R
        return jnp.where(aux.improved, Lt, Lt_old), jnp.where(aux.improved, R, R_old)

    def objective_may_rise(self, problem: Problem) -> bool:
        """True where it extrapolates: the objective rises at a restart, which the
        driver's ``tol`` test must not take for convergence."""
        return self.extrapolates(problem)

    def factors(self, state: NMFState) -> tuple[Array, ...]:
        """The factors the driver's stopping tests compare (``rel_tol``, the labels):
        with extrapolation the last reported iterate ``(L_hat_k, R_k)``, not the best one
        (the state's ``Lt``, ``R``, which a fit returns): the best iterate does not move at
        an iteration whose objective rose, and ``rel_tol`` would call that converged."""
        if state.aux is None:
            return (state.Lt, state.R)
        return (state.aux.Lt, state.aux.R)

    def check(self, problem: Problem) -> None:
        if self.extrapolation is not None and not self.auto and getattr(problem, "masked", False):
            raise unsupported(self, "extrapolate=True with an elementwise loss weight (missing values)")

    def rescale(self, state: NMFState, mode: str) -> NMFState:
        """The driver's ``normalize``, on the state (with extrapolation: the best iterate)
        and, with extrapolation, on the last iterate, which restarts it (the rescaled
        iterate becomes both ``L_k`` and ``R_hat``)."""
        Lt, R = rescale_rows(state.Lt, state.R, mode)
        aux = state.aux
        if aux is not None:
            Lt_k, R_k = rescale_rows(aux.Lt, aux.R, mode)
            aux = eqx.tree_at(lambda a: (a.Lt, a.R, a.Lt_base, a.R_hat), aux, (Lt_k, R_k, Lt_k, R_k))
        return NMFState(Lt, R, aux)
