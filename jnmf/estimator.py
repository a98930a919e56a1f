"""``jnmf.NMF``: a scikit-learn drop-in for ``sklearn.decomposition.NMF`` (a surface, layer 6).

Change one import, ``from jnmf import NMF``, and the rest of a scikit-learn program stays
as it is: the same constructor parameters, defaults and meanings as scikit-learn 1.9's
``NMF``, the same fitted attributes, ``fit`` / ``transform`` / ``fit_transform`` /
``inverse_transform`` / ``get_feature_names_out``, pipelines, ``clone``, grid search.  The
fits run on jnmf's compiled solvers.  scikit-learn is an optional dependency of jnmf:
this module needs it, ``import jnmf`` does not (``jnmf.NMF`` imports it on first use).

Orientation: scikit-learn factors ``X ~ W H`` (``n_samples x n_features``); jnmf factors
``Y ~ L R``.  The estimator uses ``Y = X``, ``L = W`` (the transformed data) and ``R = H``
(``components_``).

Objective (scikit-learn's, exactly): ``D_beta(X || WH)`` (half the squared Frobenius
distance for ``beta_loss="frobenius"``) plus

    alpha_W * l1_ratio * n_features * ||W||_1 + 1/2 alpha_W * (1 - l1_ratio) * n_features * ||W||_F^2
  + alpha_H * l1_ratio * n_samples  * ||H||_1 + 1/2 alpha_H * (1 - l1_ratio) * n_samples  * ||H||_F^2,

that is jnmf's eq. 3 / eq. 4 with ``lambda_1L = alpha_W l1_ratio n_features``,
``lambda_2L = alpha_W (1 - l1_ratio) n_features``, ``lambda_1R = alpha_H l1_ratio n_samples``,
``lambda_2R = alpha_H (1 - l1_ratio) n_samples`` (``alpha_H="same"``: ``alpha_H = alpha_W``).
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, check_non_negative, validate_data

from .batch import continue_restarts, initial_state, initial_states
from .data import DataOperator, dense_operator, sparse_operator
from .driver import CONVERGED, MAX_ITERATIONS, NONFINITE, iterate
from .fitting import data_scale, starting_points, validated_data
from .problem import build_problem
from .rules import KLMU, METHODS, AlternatingRule, BetaMU, make_rule
from .rules.base import HalfStep, NMFState
from .rules.beta import BetaHalfProblem, beta_divergence, effective_data
from .rules.kl import kl_objective
from .rules.wrapped import WrappedRule

BETA_LOSSES = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}
INITS = ("random", "nndsvd", "nndsvda", "nndsvdar", "custom")
SOLVERS = ("cd", "mu")
# "nan": NaN entries of X are missing (weight 0 in the loss), as jnmf.fit's missing="nan"
ESTIMATOR_MISSING = ("error", "nan")
# one compiled program each (eager, their many small operations compile one by one per shape)
_jit_beta_divergence = jax.jit(beta_divergence)
_jit_loss = jax.jit(lambda problem, W, H: problem.loss(W, H))
_jit_kl = jax.jit(lambda problem, W, H, eps: kl_objective(problem, W, H, None, eps))


def check_real_param(owner: str, name: str, value, low: float = 0.0, high: float | None = None) -> None:
    """A real estimator parameter in ``[low, high]`` (scikit-learn's message), or ValueError.

    Args:
        owner: the estimator's class name, for the message.
        name: the parameter's name.
        value: its value (bools, non-reals and non-finite values are refused).
        low, high: the bounds (``high`` None: no upper bound).
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not np.isfinite(value)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"The '{name}' parameter of {owner} must be a real number {bound}; got {value!r}")


def check_int_param(owner: str, name: str, value, low: int, none: bool = False) -> None:
    """An integer estimator parameter ``>= low`` (or None when ``none``), or ValueError.

    Args:
        owner: the estimator's class name, for the message.
        name: the parameter's name.
        value: its value (bools are refused).
        low: the smallest value allowed.
        none: whether None is allowed.
    """
    if none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"The '{name}' parameter of {owner} must be an int >= {low}; got {value!r}")


def _has_zero(X) -> bool:
    """Whether X (dense or scipy.sparse) has a zero entry (unstored entries are zeros)."""
    if sp.issparse(X):
        return X.nnz < X.shape[0] * X.shape[1] or (X.nnz > 0 and X.data.min() == 0)
    return bool(X.min() == 0)


def _any_nonzero(X) -> bool:
    if isinstance(X, DataOperator):
        return float(X.maximum()) > 0
    return bool(np.any(X))


# floor of WH (relative to max(X)) in the beta-divergences, as in the rules' epsilon
_MODEL_FLOOR = 1e-10
# iterations between convergence tests (scikit-learn's mu solver tests every 10)
_CHECK_EVERY = 10


class FixedRRule(WrappedRule):
    """A rule with R held fixed: its L half steps only (the estimator's ``transform``).

    Wraps any alternating rule: every hook is the wrapped rule's (:class:`WrappedRule`),
    and the R half step returns R unchanged (its half problem is still formed, which the
    wrapped rule's bookkeeping and objective may use).

    Attributes:
        rule: the wrapped rule.
    """

    def half_step(self, hp, Xt, aux, side: str) -> HalfStep:
        if side == "R":
            return HalfStep(Xt, aux, step=jnp.zeros((), Xt.dtype))
        return super().half_step(hp, Xt, aux, side)


def sweep_violation(hp, old: jax.Array, new: jax.Array) -> jax.Array:
    """scikit-learn's coordinate-descent violation of one HALS sweep from ``old`` to ``new``
    (factor-major, ``k x p``): the sum over the entries of ``|projected gradient|``, each
    taken just before its update (sklearn/decomposition/_cdnmf_fast.pyx).

    Row j is updated after rows ``< j``, so its gradient is that of the rows ``< j`` of
    ``new`` and the rows ``>= j`` of ``old``: the k-side weight of each term of G splits
    into its strictly lower and its upper triangle.  The projected gradient of an entry at
    zero is ``min(g, 0)``.  For half problems without an elementwise weight.

    Args:
        hp: the half problem the sweep solved.
        old, new: the unknown before and after the sweep.

    Returns:
        The violation (a scalar).
    """

    def before(B):
        return jnp.tril(B, -1) @ new + jnp.triu(B) @ old

    mixing, others = hp.split_terms()
    g = before(mixing) + hp.linear
    for p_side, B in others:
        g = g + p_side.right(before(B))
    return jnp.sum(jnp.abs(jnp.where(old == 0, jnp.minimum(g, 0.0), g)))


class ViolationRule(WrappedRule):
    """A one-sweep HALS rule that also sums scikit-learn's cd violation over each iteration,
    and stops on ``solver="cd"``'s test ``violation / violation_init <= tol`` inside the
    compiled loop (:meth:`converged`; ``violation_init`` is the first iteration's).

    Its aux is ``(violation, violation_init)``: the violation of the iteration's L and R
    sweeps so far, and the first iteration's (negative until that iteration ends).  The
    wrapped rule keeps no auxiliary state (one-sweep HALS); every other hook is its own
    (:class:`WrappedRule`).

    Attributes:
        rule: the wrapped HALS rule (one sweep per half step, as scikit-learn's cd).
        tol: scikit-learn's ``tol`` (an array leaf: a new value never recompiles).
    """

    tol: jax.Array = eqx.field(converter=lambda t: np.asarray(t, np.float64), default=0.0)

    def inner_aux(self, aux):
        return None

    def outer_aux(self, inner, aux):
        return aux

    def half_step(self, hp, Xt, aux, side: str) -> HalfStep:
        out = self.rule.half_step(hp, Xt, None, side)
        violation, first = aux
        return HalfStep(out.X, (violation + sweep_violation(hp, Xt, out.X), first), out.step, out.stuck)

    def init_aux(self, problem, Lt, R):
        return jnp.zeros((), Lt.dtype), jnp.full((), -1, Lt.dtype)

    def begin_iteration(self, aux):
        violation, first = aux
        return jnp.zeros_like(violation), first

    def converged(self, aux):
        violation, first = aux
        # scikit-learn breaks when violation_init == 0, or violation / violation_init <= tol
        return (first == 0) | (violation <= self.tol.astype(violation.dtype) * first)

    def finish_iteration(self, problem, hp_R, Lt, R, aux):
        Lt, R, _, objective = self.rule.finish_iteration(problem, hp_R, Lt, R, None)
        violation, first = aux
        return Lt, R, (violation, jnp.where(first < 0, violation, first)), objective


def computed_where(pred: jax.Array, f, *args):
    """``f(*args)`` when ``pred``, else zeros of its shape, under a ``lax.cond``.

    Under ``vmap`` (a batch of fits, each with its own ``pred``) a ``lax.cond`` becomes a
    select that evaluates ``f`` for every fit at every call; here the batched form is one
    ``lax.cond`` on ANY fit's ``pred`` that computes ``f`` for all fits (vmapped) when one
    needs it, as the driver's guarded values do (``jax.custom_batching.custom_vmap``).
    Fits whose ``pred`` is False may get ``f``'s value instead of zeros: callers select.

    Args:
        pred: a boolean scalar.
        f: a function of ``args`` (every array it uses passed in ``args``, none closed over).
        args: pytrees of arrays.

    Returns:
        ``f(*args)``, or zeros of its shape and dtype.
    """
    shape = jax.eval_shape(f, *args)
    leaves, tree = jax.tree.flatten(args)

    def zeros(lead=()):
        return jax.tree.map(lambda s: jnp.zeros(lead + s.shape, s.dtype), shape)

    @jax.custom_batching.custom_vmap
    def run(pred, *leaves):
        return jax.lax.cond(pred, lambda: f(*jax.tree.unflatten(tree, leaves)), zeros)

    @run.def_vmap
    def run_batched(axis_size, in_batched, pred, *leaves):
        _, *batched = in_batched  # the predicate is reduced with any() either way
        args = jax.tree.unflatten(tree, leaves)
        axes = jax.tree.unflatten(tree, [0 if b else None for b in batched])
        if any(batched):
            every = lambda: jax.vmap(f, in_axes=tuple(axes))(*args)
        else:
            every = lambda: jax.tree.map(lambda a: jnp.broadcast_to(a, (axis_size,) + a.shape), f(*args))
        out = jax.lax.cond(jnp.any(pred), every, lambda: zeros((axis_size,)))
        return out, jax.tree.map(lambda _: True, shape)

    return run(pred, *leaves)


class ErrorTestRule(WrappedRule):
    """Any rule with scikit-learn's mu-style stopping test inside the compiled loop
    (sklearn/decomposition/_nmf.py, ``_fit_multiplicative_update``): every
    ``_CHECK_EVERY`` (10) iterations, when ``tol > 0``, the error ``e = sqrt(2 D)`` (D the
    loss without the penalties, scikit-learn's ``_beta_divergence(..., square_root=True)``)
    is computed, and the fit stops (:meth:`converged`) when
    ``(e_previous - e) / e_init < tol`` (``e_previous`` the last tested error, ``e_init``
    the start's); ``n_iter_`` is then the tested iteration.

    Its aux is ``(inner, count, error_init, previous, stop)``: the wrapped rule's aux, the
    iterations done (all chunks of a fit together), the start's error (negative until the
    first loop's :meth:`begin_fit` sets it, so later chunks keep it), the last tested error
    and the test's outcome.  The error is the wrapped rule's objective less its penalties;
    a rule whose objective is costly (KL, beta, masked data) evaluates it at the tested
    iterations only (:func:`computed_where`: in a vmapped batch of fits too).

    Attributes:
        rule: the wrapped rule.
        tol: scikit-learn's ``tol`` (an array leaf: a new value never recompiles).
    """

    tol: jax.Array = eqx.field(converter=lambda t: np.asarray(t, np.float64), default=0.0)

    def inner_aux(self, aux):
        return aux[0]

    def outer_aux(self, inner, aux):
        return (inner, *aux[1:])

    def init_aux(self, problem, Lt, R):
        minus = jnp.full((), -1, Lt.dtype)
        count, stop = jnp.zeros((), jnp.int32), jnp.zeros((), bool)
        return self.rule.init_aux(problem, Lt, R), count, minus, minus, stop

    def _error(self, problem, Lt, R, f):
        loss = f - problem.penalty_L.value(Lt.T) - problem.penalty_R.value(R)
        return jnp.sqrt(2.0 * jnp.maximum(loss, 0.0))

    def start_objective(self, problem, state):
        # the exact start: scikit-learn's error_at_init is the residual's, and every test
        # divides by it
        return self.objective(problem, state)

    def begin_fit(self, problem, state, f0):
        inner = self.rule.begin_fit(problem, self.inner_state(state), f0)
        _, count, error_init, previous, stop = state.aux
        error = self._error(problem, state.Lt, state.R, f0).astype(error_init.dtype)
        first = error_init < 0  # the fit's first loop: later chunks keep the start's error
        aux = (None, count, jnp.where(first, error, error_init), jnp.where(first, error, previous), stop)
        return self.outer_state(inner, aux)

    def finish_iteration(self, problem, hp_R, Lt, R, aux):
        Lt, R, inner, objective = self.rule.finish_iteration(problem, hp_R, Lt, R, aux[0])
        _, count, error_init, previous, _ = aux
        count = count + 1
        tol = self.tol.astype(error_init.dtype)
        test = (tol > 0) & (count % _CHECK_EVERY == 0)
        if self.rule.costly_objective(problem):  # static: only at the tests
            exact = lambda rule, problem, state: rule.objective(problem, state).astype(error_init.dtype)
            f = computed_where(test, exact, self.rule, problem, NMFState(Lt, R, inner))
        else:
            f = objective.astype(error_init.dtype)
        error = self._error(problem, Lt, R, f)
        stop = test & ((previous - error) / error_init < tol)  # 0 / 0 at an exact start: no stop
        return Lt, R, (inner, count, error_init, jnp.where(test, error, previous), stop), objective

    def converged(self, aux):
        inner = self.rule.converged(aux[0])
        return aux[-1] if inner is None else aux[-1] | inner


class FrobeniusMU(BetaMU):
    """``solver="mu"`` for the Frobenius loss: :class:`~jnmf.rules.BetaMU` at beta = 2 (Lee &
    Seung 2001, penalties in the denominator, as scikit-learn's), with its half problem
    from products with the factors, as scikit-learn forms it: ``L <- L (.) (Y R') (/)
    (L (R R') + W_1L + Q_L(L))``.  BetaMU forms ``(Y (.) P^0) R'`` and ``P R'`` from the
    ``m x n`` model ``P = L R`` and its powers (beta is an array leaf), ~25 times the time
    of an iteration at 1000 x 500, rank 10.  The same iterates up to rounding (BetaMU
    floors ``P`` at ``epsilon``: a difference only where ``LR < epsilon``); with an
    elementwise weight or loss weights, BetaMU's half problem.
    """

    def __init__(self, epsilon=1e-10):
        super().__init__(2.0, epsilon)

    @staticmethod
    def _plain(problem) -> bool:
        """No elementwise or loss weights (static): the products form the half problem."""
        return not problem.masked and problem.W_0R.kind == "identity" and problem.W_0C.kind == "identity"

    def half_problem(self, problem, side, Lt, R, aux):
        if not self._plain(problem):
            return super().half_problem(problem, side, Lt, R, aux)
        if side == "L":
            W_1 = problem.penalty_L.l1()
            denominator = (R @ R.T) @ Lt + (W_1.T if W_1.ndim == 2 else W_1)
            pairs = tuple((col, row) for row, col in problem.penalty_L.pairs())
            return BetaHalfProblem(problem.data_product_L(R), denominator, pairs)
        denominator = (Lt @ Lt.T) @ R + problem.penalty_R.l1()
        return BetaHalfProblem(problem.data_product_R(Lt), denominator, problem.penalty_R.pairs())

    def objective(self, problem, state):
        if not self._plain(problem):
            return super().objective(problem, state)
        return problem.objective(state.Lt.T, state.R)  # eq. 3: no powers of L R


def beta_loss_value(beta_loss) -> float:
    """``beta_loss`` as a float (the names map to 2, 1, 0)."""
    if isinstance(beta_loss, str):
        return BETA_LOSSES[beta_loss]
    return float(beta_loss)


def _compute_precision(dtype):
    """Float64 data are computed in float64: JAX's 64-bit mode for this call only."""
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


def _host_scaled(A, dtype, root: float) -> np.ndarray:
    """``A / root`` in ``dtype``, on the host (as XLA rounds it: one division in ``dtype``)."""
    return np.asarray(np.asarray(A, dtype) / np.asarray(root, dtype), dtype)


def _check_init_factor(A, shape, whom: str) -> np.ndarray:
    """A user starting factor: right shape, non-negative, not all zero."""
    A = check_array(A)
    if shape[0] != "auto" and A.shape[0] != shape[0]:
        raise ValueError(
            f"Array with wrong first dimension passed to {whom}. Expected {shape[0]}, but got {A.shape[0]}."
        )
    if shape[1] != "auto" and A.shape[1] != shape[1]:
        raise ValueError(
            f"Array with wrong second dimension passed to {whom}. Expected {shape[1]}, but got {A.shape[1]}."
        )
    check_non_negative(A, whom)
    if np.max(A) == 0:
        raise ValueError(f"Array passed to {whom} is full of zeros.")
    return A


def scikit_learn_start(X, k: int, init: str, random_state) -> tuple[np.ndarray, np.ndarray]:
    """The starting point scikit-learn's ``NMF`` draws for ``init`` (its documented
    initializations, on the host, in X's dtype), so that ``jnmf.NMF(..., random_state=s)``
    starts where ``sklearn.decomposition.NMF(..., random_state=s)`` does.

    ``"random"``: ``|N(0, 1)| * sqrt(mean(X) / k)``, H drawn before W.  The NNDSVD family
    (Boutsidis & Gallopoulos 2008) from scikit-learn's randomized SVD (its public
    ``randomized_svd``, seeded by ``random_state``): the leading pair ``sqrt(s_1) |u_1|``,
    ``sqrt(s_1) |v_1|``, then for each further triplet the non-negative part pair with the
    larger product of norms, normalized and scaled by ``sqrt(s_j mu)``; entries below
    1e-6 set to 0; ``"nndsvda"`` fills zeros with ``mean(X)``, ``"nndsvdar"`` with
    ``|mean(X) N(0, 1)| / 100`` (W's zeros first), from a fresh ``check_random_state``.

    Args:
        X: the data, ``n_samples x n_features`` (dense or scipy.sparse, no NaN).
        k: the number of components.
        init: ``"random"``, ``"nndsvd"``, ``"nndsvda"`` or ``"nndsvdar"``.
        random_state: as scikit-learn's (int, RandomState or None).

    Returns:
        ``(W, H)``, ``n_samples x k`` and ``k x n_features``.
    """
    from sklearn.utils.extmath import randomized_svd
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    dtype = X.dtype
    mean = X.mean()
    if init == "random":
        rng = check_random_state(random_state)
        scale = np.sqrt(mean / k)
        H = np.abs(scale * rng.standard_normal(size=(k, X.shape[1])).astype(dtype, copy=False))
        W = np.abs(scale * rng.standard_normal(size=(X.shape[0], k)).astype(dtype, copy=False))
        return W, H
    with threadpool_limits(1, user_api="blas"):
        # one BLAS thread: OpenBLAS's threads beside XLA's made this 25-60 times slower on
        # the 2-core machine (1000 x 500: 1.5 s against 0.06; 4000 x 2000: 3.1 against 0.5)
        U, S, V = randomized_svd(X, k, random_state=random_state)
    W, H = np.zeros_like(U), np.zeros_like(V)
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    H[0, :] = np.sqrt(S[0]) * np.abs(V[0, :])
    for j in range(1, k):
        u, v = U[:, j], V[j, :]
        parts = [(np.maximum(u, 0), np.maximum(v, 0)), (np.maximum(-u, 0), np.maximum(-v, 0))]
        norms = [(np.linalg.norm(a), np.linalg.norm(b)) for a, b in parts]
        side = 0 if norms[0][0] * norms[0][1] > norms[1][0] * norms[1][1] else 1
        (a, b), (na, nb) = parts[side], norms[side]
        weight = np.sqrt(S[j] * (na * nb))
        W[:, j] = weight * (a / na)  # normalized first: the same rounding as scikit-learn's
        H[j, :] = weight * (b / nb)
    W[W < 1e-6] = 0
    H[H < 1e-6] = 0
    if init == "nndsvda":
        W[W == 0] = mean
        H[H == 0] = mean
    elif init == "nndsvdar":
        rng = check_random_state(random_state)
        W[W == 0] = np.abs(mean * rng.standard_normal(size=int((W == 0).sum())) / 100)
        H[H == 0] = np.abs(mean * rng.standard_normal(size=int((H == 0).sum())) / 100)
    return W.astype(dtype, copy=False), H.astype(dtype, copy=False)


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Non-negative matrix factorization ``X ~ W H``, scikit-learn's ``NMF`` on jnmf's solvers.

    A drop-in for ``sklearn.decomposition.NMF`` (scikit-learn 1.9): same parameters,
    defaults, meanings, attributes and methods; change the import to ``from jnmf import NMF``.

    Orientation: ``X`` is ``n_samples x n_features``; ``W`` (``n_samples x n_components``,
    what ``transform`` returns) is jnmf's ``L`` and ``H = components_``
    (``n_components x n_features``) is jnmf's ``R``, with ``Y = X``.  The objective is
    scikit-learn's (see the module docstring for the exact penalty mapping).

    Parameters:
        n_components: int, ``"auto"`` (default; from a custom ``H``, else ``n_features``) or
            None (``n_features``).
        init: None (``"nndsvda"`` when ``n_components <= min(n_samples, n_features)``, else
            ``"random"``), ``"random"``, ``"nndsvd"``, ``"nndsvda"``, ``"nndsvdar"`` (the first
            restart starts exactly where scikit-learn's NMF does for the same
            ``random_state``, :func:`scikit_learn_start`; further restarts from jnmf's
            initializers, :mod:`jnmf.init`, seeded from ``random_state``) or ``"custom"`` (the
            ``W`` and ``H`` passed to ``fit`` / ``fit_transform``).
        solver: ``"cd"`` (default): jnmf's HALS, ``method="hals"`` (Cichocki & Phan 2009), the
            same column-wise exact minimization as scikit-learn's coordinate descent;
            Frobenius loss only.  ``"mu"``: multiplicative updates:
            :class:`~jnmf.rules.BetaMU` (Févotte & Idier 2011; for beta = 2
            :class:`FrobeniusMU`, the Lee & Seung 2001 update with the penalties in the
            denominator, from products with the factors as scikit-learn's; jnmf's
            ``method="mu"`` is Pav's MURNMF, whose clipped numerator is not the same) and
            :class:`~jnmf.rules.KLMU` for Kullback-Leibler (an exact majorize-minimize step
            for the ridge, where scikit-learn's is a heuristic).
        beta_loss: ``"frobenius"`` (2), ``"kullback-leibler"`` (1), ``"itakura-saito"`` (0) or
            a float; anything but 2 needs ``solver="mu"`` (or a matching ``method``); for
            ``beta_loss <= 0`` X must have no zeros.
        tol: scikit-learn's stopping tests.  ``solver="cd"``: after every iteration, stop
            when its violation (the sum of ``|projected gradient|`` over the entries, each
            taken just before its coordinate update) is at most ``tol`` times the first
            iteration's, as scikit-learn's cd (with ``missing="nan"``, the mu test below).
            ``solver="mu"`` and ``method``: every 10 iterations, stop when the error
            ``e = sqrt(2 D)`` (D the loss without the penalties, as scikit-learn's) improved
            by less than ``tol * e_0`` (``e_0`` at the start) since the last test; 0 disables
            it.  Both tests run inside the compiled loop (:class:`ViolationRule`,
            :class:`ErrorTestRule`).
        max_iter: the iteration cap (default 200).
        random_state: seeds the random initializations (int, RandomState or None).
        alpha_W, alpha_H, l1_ratio: the regularization, as in scikit-learn.
        verbose: print the error at each stopping test (``solver="cd"``: every iteration;
            otherwise every 10, when ``tol > 0``) as the fit runs, then the outcome: the
            loop then runs in chunks from the host, one per test, and stops at the same
            iteration as the silent fit, which is one compiled loop.
        shuffle: accepted for compatibility and ignored: jnmf's HALS sweeps the
            components in order (the result differs only by the path taken).
        restarts: jnmf extra: fit from this many starting points (different seeds; useful
            with ``init="random"``) as one compiled program and keep the best by objective.
        method: jnmf extra: a method name of :data:`jnmf.METHODS` (e.g. ``"ahals"``,
            ``"anls"``, ``"au"``, ``"pg"``, ``"kl"``, ``"beta"``) or a jnmf rule, overriding
            ``solver``.  ``"kl"`` needs ``beta_loss=1``; ``"beta"`` uses ``beta_loss``; the
            others minimize the Frobenius loss.
        missing: jnmf extra: ``"error"`` (default: NaN in X is an error, as scikit-learn) or
            ``"nan"``: NaN entries of X (dense) are missing values, left out of the loss
            (weight 0, as :func:`jnmf.fit`'s ``missing="nan"``) in ``fit`` and ``transform``
            and out of ``reconstruction_err_``.

    Attributes:
        components_: ``H``, ``n_components x n_features``.
        n_components_: the number of components.
        reconstruction_err_: ``||X - WH||_F`` for the Frobenius loss, else
            ``sqrt(2 D_beta(X || WH))`` (the true divergence: scikit-learn leaves out the
            entries with ``X <= 1.2e-7``, so for ``beta_loss <= 0`` the two may differ).
        n_iter_: iterations of the returned fit.
        n_features_in_, feature_names_in_: as in scikit-learn.

    Input: dense arrays and scipy.sparse matrices (CSR/CSC; densified: jnmf's solvers are
    dense).  Output dtype: float32 input gives float32, float64 (and integer) input
    float64.  Float64 is computed in float64: JAX's 64-bit mode is switched on for the
    duration of each call only (the global setting is left alone).

    Sources: Cichocki & Phan (2009) (HALS); Lee & Seung (2001) (MU); Févotte & Idier
    (2011), "Algorithms for nonnegative matrix factorization with the beta-divergence"
    (beta MU); scikit-learn's NMF documentation for the interface and the objective.
    """

    def __init__(
        self,
        n_components="auto",
        *,
        init=None,
        solver="cd",
        beta_loss="frobenius",
        tol=1e-4,
        max_iter=200,
        random_state=None,
        alpha_W=0.0,
        alpha_H="same",
        l1_ratio=0.0,
        verbose=0,
        shuffle=False,
        restarts=1,
        method=None,
        missing="error",
    ):
        self.n_components = n_components
        self.init = init
        self.solver = solver
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.verbose = verbose
        self.shuffle = shuffle
        self.restarts = restarts
        self.method = method
        self.missing = missing

    # ------------------------------------------------------------ validation
    def _validate_params(self) -> None:
        """Check every parameter on the host; ValueError naming it (before compiling)."""

        real = functools.partial(check_real_param, "NMF")
        integer = functools.partial(check_int_param, "NMF")

        n = self.n_components
        if not (n is None or (isinstance(n, str) and n == "auto")):
            integer("n_components", n, 1)
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"The 'init' parameter of NMF must be None or one of {INITS}; got {self.init!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"The 'solver' parameter of NMF must be one of {SOLVERS}; got {self.solver!r}")
        if isinstance(self.beta_loss, str):
            if self.beta_loss not in BETA_LOSSES:
                raise ValueError(
                    f"The 'beta_loss' parameter of NMF must be a float or one of {tuple(BETA_LOSSES)}; "
                    f"got {self.beta_loss!r}"
                )
        else:
            real("beta_loss", self.beta_loss, low=-np.inf)
        real("tol", self.tol)
        integer("max_iter", self.max_iter, 1)
        real("alpha_W", self.alpha_W)
        if not (isinstance(self.alpha_H, str) and self.alpha_H == "same"):
            real("alpha_H", self.alpha_H)
        real("l1_ratio", self.l1_ratio, 0.0, 1.0)
        if not isinstance(self.verbose, numbers.Integral | np.bool_):
            raise ValueError(f"The 'verbose' parameter of NMF must be an int or bool; got {self.verbose!r}")
        if not isinstance(self.shuffle, bool | np.bool_):
            raise ValueError(f"The 'shuffle' parameter of NMF must be a bool; got {self.shuffle!r}")
        integer("restarts", self.restarts, 1)
        if not (isinstance(self.missing, str) and self.missing in ESTIMATOR_MISSING):
            raise ValueError(
                f"The 'missing' parameter of NMF must be one of {ESTIMATOR_MISSING}; got {self.missing!r}"
            )
        if self.method is not None and not isinstance(self.method, AlternatingRule):
            if not isinstance(self.method, str) or self.method not in METHODS:
                raise ValueError(
                    f"The 'method' parameter of NMF must be None, a jnmf rule or one of {sorted(METHODS)}; "
                    f"got {self.method!r}"
                )
        self._rule(beta_loss_value(self.beta_loss))  # solver / method / beta_loss consistency

    def _rule(self, beta: float) -> AlternatingRule:
        """The jnmf rule for ``solver`` / ``method`` and the loss parameter ``beta``."""
        if self.method is not None:
            rule = make_rule(self.method)
            if self.method == "beta":
                return BetaMU(beta)
            if isinstance(rule, BetaMU):
                if float(rule.beta) != beta:
                    raise ValueError(
                        f"method BetaMU({float(rule.beta)}) does not match beta_loss={self.beta_loss!r}"
                    )
                return rule
            loss = 1.0 if isinstance(rule, KLMU) else 2.0
            if loss != beta:
                raise ValueError(
                    f"Invalid beta_loss parameter: method {rule.method_name!r} minimizes beta_loss = {loss}, "
                    f"not beta_loss = {self.beta_loss!r}; use method='beta' (or solver='mu')"
                )
            return rule
        if self.solver == "cd":
            if beta != 2.0:
                raise ValueError(
                    f"Invalid beta_loss parameter: solver {self.solver!r} does not handle "
                    f"beta_loss = {self.beta_loss!r}"
                )
            return make_rule("hals")
        if beta == 1.0:
            return KLMU()
        return FrobeniusMU() if beta == 2.0 else BetaMU(beta)

    def _penalties(self, n_samples: int, n_features: int) -> dict:
        """scikit-learn's regularization as jnmf's eq.-4 scalars (see the module docstring)."""
        alpha_W = float(self.alpha_W)
        alpha_H = alpha_W if isinstance(self.alpha_H, str) else float(self.alpha_H)
        l1 = float(self.l1_ratio)
        return dict(
            lambda_1L=n_features * alpha_W * l1,
            lambda_2L=n_features * alpha_W * (1.0 - l1),
            lambda_1R=n_samples * alpha_H * l1,
            lambda_2R=n_samples * alpha_H * (1.0 - l1),
        )

    # ------------------------------------------------------------ fitting
    def _fit_transform(self, X, y=None, W=None, H=None, update_H=True):
        """Fit ``X ~ W H`` (``update_H=True``) or solve for W with H fixed.

        The same contract as scikit-learn's private ``NMF._fit_transform`` (so
        ``sklearn.decomposition.non_negative_factorization`` can drive this estimator).

        Args:
            X: validated data (dense or CSR/CSC, float32 or float64).
            W, H: starting factors for ``init="custom"``; with ``update_H=False``, H is the
                fixed ``components_`` and W is ignored.
            update_H: fit both factors (True) or W only (False).

        Returns:
            ``(W, H, n_iter)`` in X's dtype.
        """
        beta = beta_loss_value(self.beta_loss)
        rule = self._rule(beta)
        if sp.issparse(X) and isinstance(rule, BetaMU):
            # the beta-divergence update (solver="mu" with beta_loss != 1) needs (WH)^(beta-1)
            # at every entry, zeros included: it runs on the dense X (KL and cd stay sparse)
            X = X.toarray()
        if not sp.issparse(X):
            X = np.asarray(X)
        check_non_negative(X, "NMF (input X)")
        n_samples, n_features = X.shape
        if _has_zero(X) and beta <= 0:
            raise ValueError(
                "When beta_loss <= 0 and X contains zeros, the solver may diverge. Please add small "
                "values to X, or use a positive beta_loss (the beta-divergence is infinite at X = 0)."
            )
        k = self.n_components
        if k is None:
            k = n_features
        if self.solver == "mu" and self.method is None and self.init == "nndsvd" and update_H:
            warnings.warn(
                "The multiplicative update ('mu') solver cannot update zeros present in the "
                "initialization; with init='nndsvd' they stay zero. Try init='nndsvda' or 'nndsvdar'.",
                UserWarning,
                stacklevel=3,
            )
        if not update_H:
            if W is not None:
                warnings.warn(
                    "When update_H=False, the provided initial W is not used.", RuntimeWarning, stacklevel=3
                )
            H = _check_init_factor(H, (k, n_features), "NMF (input H)")
            if H.dtype != X.dtype:
                raise TypeError(f"H should have the same dtype as X. Got H.dtype = {H.dtype}.")
            k = H.shape[0]
            init = None
        elif self.init == "custom":
            H = _check_init_factor(H, (k, n_features), "NMF (input H)")
            W = _check_init_factor(W, (n_samples, k), "NMF (input W)")
            if H.dtype != X.dtype or W.dtype != X.dtype:
                raise TypeError(
                    f"H and W should have the same dtype as X. Got H.dtype = {H.dtype} and "
                    f"W.dtype = {W.dtype}."
                )
            k = H.shape[0]
            init = (W, H)
        else:
            if W is not None or H is not None:
                warnings.warn(
                    "When init!='custom', provided W or H are ignored. Set init='custom' to use them "
                    "as initialization.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            if k == "auto":
                k = n_features
            init = self.init
            if init is None:
                init = "nndsvda" if k <= min(n_samples, n_features) else "random"
            elif init != "random" and k > min(n_samples, n_features):
                raise ValueError(
                    f"init = '{init}' can only be used when n_components <= min(n_samples, n_features)"
                )
        if update_H:
            self._n_components = k
        penalties = self._penalties(n_samples, n_features)
        W, H, n_iter, status = self._solve(X, k, rule, init, H, update_H, penalties)
        if status == MAX_ITERATIONS and self.tol > 0:
            warnings.warn(
                f"Maximum number of iterations {self.max_iter} reached. Increase it to improve convergence.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return W, H, n_iter

    def _solve(self, X, k: int, rule, init, H_fixed, update_H: bool, penalties: dict):
        """Run jnmf on the scaled data in X's precision; ``(W, H, n_iter, status)``.

        A sparse X reaches the rules as a :class:`jnmf.data.SparseData` (never densified)."""
        dtype = X.dtype
        restarts = int(self.restarts) if update_H else 1
        m, n = X.shape
        M = None
        X_host = X
        if sp.issparse(X):
            X = sparse_operator("X", X, dtype=dtype)
        elif self.missing == "nan":
            # NaN entries zeroed and given weight 0 (M), as jnmf.fit's missing="nan"
            with _compute_precision(dtype):
                X, M = validated_data(X, None, "nan")
        if not _any_nonzero(X):  # the zero factors are the exact solution
            H = np.zeros((k, n), dtype) if update_H else np.asarray(H_fixed, dtype)
            return np.zeros((m, k), dtype), H, 0, CONVERGED
        # the first restart starts where scikit-learn's NMF does (same init, same random_state)
        first = None
        if update_H and isinstance(init, str) and M is None:
            first = scikit_learn_start(X_host, k, init, self.random_state)
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        scale = data_scale(X)
        root = float(np.sqrt(scale))
        # scikit-learn's cd stops on its violation; every other solver on the mu test: both
        # inside the compiled loop (the rule's converged hook)
        violation_test = self.method is None and self.solver == "cd" and M is None
        rule = ViolationRule(rule, np.float64(self.tol)) if violation_test else rule
        with _compute_precision(dtype):
            problem = build_problem(dense_operator(X), k, M=M, **penalties).scaled(scale, rule.loss_degree)
            # starts given on the host are scaled there (NumPy rounds x / root as XLA
            # does): a first fit of a new shape compiles no program for it
            if not update_H:
                avg = np.sqrt(float(X.mean()) / k) / root
                L0 = np.full((1, m, k), avg, dtype)
                R0 = _host_scaled(H_fixed, dtype, root)[None]
                rule = FixedRRule(rule)
            elif isinstance(init, tuple):
                L0 = np.broadcast_to(_host_scaled(init[0], dtype, root), (restarts, m, k))
                R0 = np.broadcast_to(_host_scaled(init[1], dtype, root), (restarts, k, n))
            else:
                # one compiled draw, at fit's draw options (jnmf.fitting.starting_points)
                if first is not None and restarts == 1:  # no draw to compile
                    L0, R0 = (_host_scaled(A, dtype, root)[None] for A in first)
                else:
                    L0, R0 = starting_points(problem.data, k, init, restarts, jax.random.key(seed))
                    if first is not None:
                        L0 = L0.at[0].set(_host_scaled(first[0], dtype, root))
                        R0 = R0.at[0].set(_host_scaled(first[1], dtype, root))
            if not violation_test:
                rule = ErrorTestRule(rule, np.float64(self.tol))
            # the problem's errors are the data's over scale^(degree / 2) (Problem.scaled)
            error_unit = scale ** (rule.loss_degree / 2)
            L, R, n_iter, status = self._iterate(rule, problem, L0, R0, error_unit)
        ok = np.isfinite(L).all(axis=(1, 2)) & np.isfinite(R).all(axis=(1, 2)) & (status != NONFINITE)
        if not ok.any():
            raise FloatingPointError(
                "every fit produced non-finite values; please report the data's shape and range"
            )
        best = self._best
        W = np.asarray(L[best] * root, dtype)
        H = np.asarray(R[best] * root, dtype) if update_H else np.asarray(H_fixed, dtype)
        return W, H, int(n_iter[best]), int(status[best])

    def _iterate(self, rule, problem, L0, R0, error_unit: float = 1.0):
        """Iterate all restarts to scikit-learn's stopping test, which ``rule`` applies inside
        the compiled loop (:class:`ErrorTestRule`: every 10 iterations; :class:`ViolationRule`,
        ``solver="cd"``: every iteration): one loop program call per fit, no round trip per
        test.  With ``verbose`` (and a test to report) the loop runs in chunks from the host
        instead, one per test (10 iterations; cd: 1), printing each test's error (times
        ``error_unit``: the data's units); chunks continue the rule's state exactly
        (:func:`jnmf.batch.continue_restarts`) and the rule's test stops each fit, so the
        iterates and the iteration counts are those of the silent run.  Returns the factors
        (at the iteration each fit was done), iteration counts and statuses, per restart,
        and sets ``self._best``.
        """
        b = L0.shape[0]
        if b == 1:  # one fit: the unbatched state and loop (no programs to drop or add an axis)
            states = initial_state(rule, problem, L0[0], R0[0])  # one program
        else:
            states = initial_states(rule, problem, L0, R0)  # one program
        cd = not isinstance(rule, ErrorTestRule)  # ViolationRule (or FixedRRule of one)

        def advance(states, iterations):
            if b == 1:
                return iterate(rule, problem, states, max_iterations=iterations, tol=0.0, history_size=1)
            return continue_restarts(
                rule, problem, states, max_iterations=iterations, tol=0.0, history_size=1
            )

        def host(a, dtype=None):
            """A result field on the host, with the leading fit axis (added here for one fit)."""
            a = np.asarray(a, dtype)
            return a[None] if b == 1 else a

        start = time.perf_counter()
        if not (self.verbose and self.tol > 0):
            res = advance(states, self.max_iter)  # the whole fit: one compiled loop
            n_iter = host(res.iterations, np.int64)
            status = host(res.status).copy()
            L, R = host(res.L, np.float64), host(res.R, np.float64)
            objective = host(res.objective, np.float64)
        else:
            n_iter = np.zeros(b, np.int64)
            status = np.full(b, MAX_ITERATIONS)
            done = np.zeros(b, bool)
            L = R = objective = None
            while not done.all() and n_iter.max() < self.max_iter:
                chunk = int(min(1 if cd else _CHECK_EVERY, self.max_iter - n_iter.max()))
                res = advance(states, chunk)
                states = res.state
                live = ~done
                if L is None:
                    L, R = host(res.L, np.float64).copy(), host(res.R, np.float64).copy()
                    objective = host(res.objective, np.float64).copy()
                L[live], R[live] = host(res.L)[live], host(res.R)[live]
                objective[live] = host(res.objective)[live]
                n_iter[live] += host(res.iterations)[live]
                status[live] = host(res.status)[live]
                done |= live & (status != MAX_ITERATIONS)
                if cd:  # scikit-learn's cd reports every iteration; the objective's error
                    error = np.sqrt(2.0 * np.maximum(objective, 0.0))
                else:  # the tested error (the loss without penalties)
                    error = host(res.state.aux[3], np.float64)
                seconds = time.perf_counter() - start
                for i in np.flatnonzero(live):
                    tag = f"restart {i}: " if b > 1 else ""
                    print(
                        f"{tag}Epoch {n_iter[i]:02d} reached after {seconds:.3f} seconds, "
                        f"error: {error[i] * error_unit:f}"
                    )
        ok = np.isfinite(objective) & (status != NONFINITE)
        self._best = int(np.argmin(np.where(ok, objective, np.inf)))
        if self.verbose:
            outcome = "Converged" if status[self._best] == CONVERGED else "Stopped"
            print(f"{outcome} at iteration {n_iter[self._best]}")
        return L, R, n_iter, status

    def _reconstruction_error(self, X, W: np.ndarray, H: np.ndarray) -> float:
        beta = beta_loss_value(self.beta_loss)
        if sp.issparse(X) and beta in (1.0, 2.0):
            # from the stored entries: no dense X or W H
            with _compute_precision(X.dtype):
                data = sparse_operator("X", X, dtype=X.dtype)
                problem = build_problem(data, W.shape[1])
                W_, H_ = jnp.asarray(W, X.dtype), jnp.asarray(H, X.dtype)
                if beta == 2.0:
                    value = float(_jit_loss(problem, W_, H_))
                else:
                    eps = jnp.asarray(_MODEL_FLOOR * data_scale(data), X.dtype)
                    value = float(_jit_kl(problem, W_, H_, eps))
            return float(np.sqrt(2.0 * max(value, 0.0)))
        if sp.issparse(X):
            X = X.toarray()
        if self.missing == "nan":
            X = np.where(np.isnan(X), W @ H, X)  # a missing entry adds nothing to the error
        if beta == 2.0:
            return float(np.linalg.norm(X - W @ H))
        scale = data_scale(X)
        with _compute_precision(X.dtype):
            eps = jnp.asarray(_MODEL_FLOOR * scale, X.dtype)
            Y = effective_data(jnp.asarray(X), jnp.asarray(beta, X.dtype), eps)
            divergence = float(_jit_beta_divergence(Y, jnp.asarray(W @ H), beta, eps))
        return float(np.sqrt(2.0 * max(divergence, 0.0)))

    def fit_transform(self, X, y=None, W=None, H=None):
        """Fit the model to X and return the transformed data W.

        Args:
            X: ``n_samples x n_features`` non-negative data (array-like or scipy.sparse,
                densified).
            y: ignored.
            W, H: starting factors when ``init="custom"``.

        Returns:
            W, ``n_samples x n_components``, in X's floating dtype.
        """
        self._validate_params()
        X = validate_data(
            self,
            X,
            accept_sparse=("csr", "csc"),
            dtype=[np.float64, np.float32],
            ensure_non_negative=True,
            ensure_all_finite=self._finite,
        )
        W, H, n_iter = self._fit_transform(X, W=W, H=H)
        self.reconstruction_err_ = self._reconstruction_error(X, W, H)
        self.n_components_ = H.shape[0]
        self.components_ = H
        self.n_iter_ = n_iter
        return W

    def fit(self, X, y=None, **params):
        """Fit the model to X (``params``: ``W``, ``H`` for ``init="custom"``); returns self."""
        self.fit_transform(X, **params)
        return self

    def transform(self, X):
        """W for new data X with ``components_`` fixed (the fit's solver, W steps only).

        Args:
            X: ``n_samples x n_features`` non-negative data (array-like or scipy.sparse).

        Returns:
            W, ``n_samples x n_components``, in X's floating dtype.
        """
        check_is_fitted(self)
        X = validate_data(
            self,
            X,
            accept_sparse=("csr", "csc"),
            dtype=[np.float64, np.float32],
            reset=False,
            ensure_non_negative=True,
            ensure_all_finite=self._finite,
        )
        H = self.components_.astype(X.dtype, copy=False)
        W, _, _ = self._fit_transform(X, H=H, update_H=False)
        return W

    @property
    def _finite(self):
        """scikit-learn's ``ensure_all_finite`` for X: NaN passes with ``missing="nan"``."""
        return "allow-nan" if self.missing == "nan" else True

    def inverse_transform(self, X):
        """The data back from W: ``X @ components_`` (``n_samples x n_features``)."""
        check_is_fitted(self)
        return X @ self.components_

    @property
    def _n_features_out(self):
        """Number of transformed output features (for ``get_feature_names_out``)."""
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = self.missing == "nan"
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
